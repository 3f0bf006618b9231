"""Shared by tests/test_explain_{lime,anchors,examples}.py: a real MethodContext for a fitted pipeline.

SHAP is computed by the project's own ``shap_attributions``; the ranking is mean |SHAP| (or the order given),
as the explain step would write it. No refits: these methods do not use the CV folds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from iml_genomics.config import config_from_dict
from iml_genomics.explain.methods import MethodContext
from iml_genomics.explain.shap_values import shap_attributions
from iml_genomics.parallel import Backend


def make_context(pipeline, X, *, classes, y=None, samples=(), task="classification", ranking=None, seed=0,
                 n_jobs=1, **explain):
    """MethodContext over ``X`` (genes ``g0..``, samples ``s0..``); ``explain`` = explain.* config keys."""
    n, p = X.shape
    gene_ids = [f"g{j}" for j in range(p)]
    sample_ids = [f"s{i}" for i in range(n)]
    cfg = config_from_dict({"seed": seed, "explain": {"samples": list(samples), **explain}}).explain
    shap = shap_attributions(pipeline, X, gene_ids=gene_ids, classes=classes, background_size=50,
                             random_state=seed)
    values = shap.values[:, :, 0]
    if ranking is None:
        order = np.argsort(-np.abs(values).mean(axis=0), kind="stable")
        ranking = [shap.gene_ids[j] for j in order]
    used = set(shap.gene_ids)
    ranking = ranking + [g for g in gene_ids if g not in ranking]
    table = pd.DataFrame({"gene_id": ranking, "used": [g in used for g in ranking]})
    pos = {s: i for i, s in enumerate(sample_ids)}
    return MethodContext(
        pipeline=pipeline, refit_pipeline=None, X=X, y=y, gene_ids=gene_ids, sample_ids=sample_ids,
        classes=classes, task=task, positive_class=None, explain_cfg=cfg, splits=None, random_state=seed,
        backend=Backend.local(n_jobs), ranking=table, shap_genes=list(shap.gene_ids),
        local_shap={s: values[pos[s]] for s in samples}, attributions=values)


def pipeline(name: str, X, y, *, task="classification", params=None, n_classes=None):
    """The registry's pipeline for model ``name`` fitted on X, y."""
    from iml_genomics.models import build_pipeline

    cfg = config_from_dict({"seed": 0, "model": {"name": name, "params": params or {}}})
    return build_pipeline(cfg, task, n_classes=n_classes).fit(X, y)
