"""Partial dependence (PDP) and individual conditional expectation (ICE) curves (``explain.methods: pdp``).

For each of the top ``explain.pdp_top_k`` genes of the ranking, scikit-learn's
:func:`sklearn.inspection.partial_dependence` (``kind='both'``, brute force) on the fitted pipeline: the gene is set
to each grid value in every sample (the rest of the sample unchanged) and the model's output is averaged (PDP) or
kept per sample (ICE). The grid is ``explain.pdp_grid_points`` percentiles (5th to 95th) of the gene's **raw**
expression over the cohort (the pipeline's input), so the curve reads in the matrix's units and stays where there
are data. The output is the probability of the explained class (two classes: the positive class; several: every
class), the decision function for a classifier without probabilities (linear SVM), or the prediction
(regression).

A PDP describes the **model** (``explains = model``): it shows what the fitted model does when one gene moves
and the others stay as they are, which includes combinations of gene values that may not occur in real samples
when genes are correlated. ICE curves that cross or fan out show that the gene's effect depends on the sample
(an interaction).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from iml_genomics.errors import ConfigError
from iml_genomics.explain.methods import MethodContext, MethodOutput

PDP_COLUMNS = ["gene_id", "class", "curve", "grid_value", "value", "average", "scale", "explains"]


def _one_gene(pipeline, Xs, col: int, grid: np.ndarray, response_method: str):
    """Average and individual curves of one gene (picklable for Backend.map)."""
    from sklearn.inspection import partial_dependence

    from iml_genomics.parallel import blas_threads

    with blas_threads(1):
        res = partial_dependence(pipeline, Xs, [col], kind="both", method="brute", custom_values={col: grid},
                                 response_method=response_method)
    return np.asarray(res["average"]), np.asarray(res["individual"])


def grid_for(values: np.ndarray, n_points: int) -> np.ndarray:
    """Distinct values at ``n_points`` evenly spaced percentiles from 5 to 95 of ``values``."""
    return np.unique(np.percentile(values, np.linspace(5, 95, n_points)))


def _monotonicity(grid: np.ndarray, curve: np.ndarray) -> dict:
    """Spearman correlation of the PD curve with the grid, its range, and a word for its shape."""
    from scipy.stats import spearmanr

    rng = float(curve.max() - curve.min())
    rho = float(spearmanr(grid, curve).statistic) if len(grid) > 2 and np.ptp(curve) > 0 else 0.0
    steps = np.diff(curve)
    tol = 0.05 * rng
    if rng == 0:
        shape = "flat"
    elif (steps >= -tol).all():
        shape = "increasing"
    elif (steps <= tol).all():
        shape = "decreasing"
    else:
        shape = "non-monotone"
    return {"range": rng, "spearman": rho, "shape": shape}


def validate(explain_cfg, *, gene_ids, sample_ids=None, classes=None) -> None:
    """``explain.pdp_top_k`` must not exceed the matrix's genes (called before the step's long work); the
    default is capped at the genes the model uses instead."""
    from iml_genomics.explain.methods import is_default

    k = explain_cfg.pdp_top_k
    if k > len(gene_ids) and not is_default(explain_cfg, "pdp_top_k"):
        raise ConfigError(f"explain.pdp_top_k = {k} is larger than the {len(gene_ids)} genes of the expression "
                          f"matrix; lower explain.pdp_top_k.")


def run(ctx: MethodContext) -> MethodOutput:
    """PDP and ICE curves of the top genes; table ``partial_dependence.tsv``.

    See docs/explain.md, "Partial dependence and ICE".
    """
    cfg = ctx.explain_cfg
    k = cfg.pdp_top_k
    validate(cfg, gene_ids=ctx.gene_ids, sample_ids=ctx.sample_ids)
    out = MethodOutput()
    genes = ctx.ranking_top_genes(k)
    if len(genes) < k:
        out.warnings.append(f"explain: pdp: the model uses {len(genes)} genes; curves for those (pdp_top_k = {k})")
    n = ctx.X.shape[0]
    rng = np.random.default_rng(ctx.random_state)
    rows = np.arange(n) if n <= cfg.pdp_max_samples else np.sort(rng.choice(n, cfg.pdp_max_samples, replace=False))
    ice_pos = np.sort(rng.choice(len(rows), min(cfg.pdp_ice_samples, len(rows)), replace=False))
    Xs = ctx.X[rows]
    Xs = Xs.toarray() if hasattr(Xs, "toarray") else np.asarray(Xs)

    classification = ctx.task == "classification"
    proba = classification and hasattr(ctx.pipeline, "predict_proba")
    response = "predict_proba" if proba else ("decision_function" if classification else "auto")
    scale = "probability" if proba else ("decision_function" if classification else "prediction")
    two = classification and len(ctx.classes) == 2
    explained = None
    if two:
        explained = ctx.positive_class if ctx.positive_class in ctx.classes else ctx.classes[-1]
    tasks = []
    grids = {}
    for g in genes:
        col = ctx.gene_column(g)
        raw = ctx.X[:, col]
        raw = raw.toarray().ravel() if hasattr(raw, "toarray") else np.asarray(raw, dtype=np.float64).ravel()
        grids[g] = grid_for(raw, cfg.pdp_grid_points)
        tasks.append((ctx.pipeline, Xs, col, grids[g], response))
    results = ctx.backend.map(_one_gene, tasks)

    frames, shapes = [], {}
    ice_ids = [ctx.sample_ids[rows[i]] for i in ice_pos]
    for g, (avg, ind) in zip(genes, results):
        grid = grids[g]
        if two:
            # sklearn returns the output of classes_[1] (code 1); the explained class may be the other one
            flip = explained != ctx.classes[1]
            avg = (1 - avg if proba else -avg) if flip else avg
            ind = (1 - ind if proba else -ind) if flip else ind
            labels = [explained]
        elif classification:
            labels = [str(c) for c in ctx.classes]
        else:
            labels = [""]
        shapes[g] = {}
        for o, cls in enumerate(labels):
            curve_avg = avg[o]
            shapes[g][cls] = _monotonicity(grid, curve_avg)
            parts = [pd.DataFrame({"gene_id": g, "class": cls, "curve": "average", "grid_value": grid,
                                   "value": curve_avg, "average": curve_avg})]
            for sid, i in zip(ice_ids, ice_pos):
                parts.append(pd.DataFrame({"gene_id": g, "class": cls, "curve": sid, "grid_value": grid,
                                           "value": ind[o, i], "average": curve_avg}))
            frames.append(pd.concat(parts, ignore_index=True))
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=PDP_COLUMNS[:-2])
    table["scale"] = scale
    table["explains"] = "model"
    out.tables["partial_dependence.tsv"] = table[PDP_COLUMNS]
    out.summary = {"genes": genes, "scale": scale, "response_method": response,
                   "classes": [explained] if two else ([str(c) for c in ctx.classes] if classification else [""]),
                   "grid": f"{cfg.pdp_grid_points} percentiles from 5 to 95 of each gene's raw expression "
                           f"(distinct values kept)",
                   "n_samples_averaged": int(len(rows)), "n_ice_curves": int(len(ice_pos)),
                   "method": "sklearn.inspection.partial_dependence (brute, kind='both')", "shapes": shapes}
    return out
