"""A 2-D map of the samples in attribution (SHAP) space (``explain.methods: map``).

Every sample's SHAP vector of the explained output (two classes: the positive class; several classes: the
first class, the output the step keeps for all samples; regression: the prediction) is embedded in two
dimensions with UMAP (umap-learn, when installed) or scikit-learn's t-SNE (``explain.map_method``; ``auto`` takes
UMAP when it imports). Samples close on the map are ones **the model explains the same way** (the same genes
push their prediction in the same direction by similar amounts), which can differ from samples with similar
expression: the map describes the model (``explains = model``).

Above 50 genes the SHAP matrix is first reduced to its 50 leading principal components (seeded randomized SVD),
the usual preprocessing of t-SNE / UMAP. Cohorts larger than ``explain.map_max_samples`` are mapped on a seeded
subsample. Everything is seeded and single-threaded, so the coordinates do not depend on ``--jobs``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from iml_genomics.errors import ConfigError
from iml_genomics.explain.methods import MethodContext, MethodOutput

MAP_COLUMNS = ["sample_id", "x", "y", "label", "prediction", "method", "explains"]
MIN_SAMPLES = 5


def umap_available() -> bool:
    """True when umap-learn imports."""
    try:
        import umap  # noqa: F401
    except Exception:  # noqa: BLE001 - any failure to import (numba, llvmlite) means no UMAP
        return False
    return True


def embed(values: np.ndarray, *, method: str, random_state: int) -> tuple[np.ndarray, dict]:
    """2-D coordinates of the rows of ``values`` (samples x features) and what was done.

    Parameters
    ----------
    values : ndarray
    method : {'umap', 'tsne'}
    random_state : int
    """
    from iml_genomics.parallel import blas_threads

    # one OpenMP thread: Barnes-Hut t-SNE sums its gradient over threads (bits would depend on the core count),
    # and its spinning threads slow it ten-fold on a busy machine
    with blas_threads(1):
        return _embed(values, method=method, random_state=random_state)


def _embed(values: np.ndarray, *, method: str, random_state: int) -> tuple[np.ndarray, dict]:
    from sklearn.decomposition import PCA

    n, q = values.shape
    info: dict = {"n_features": int(q)}
    V = np.asarray(values, dtype=np.float64)
    if q > 50 and n > 50:
        V = PCA(50, svd_solver="randomized", random_state=random_state).fit_transform(V)
        info["pca_components"] = 50
    if method == "umap":
        import umap

        n_neighbors = int(min(15, n - 1))
        model = umap.UMAP(n_components=2, n_neighbors=n_neighbors, random_state=random_state, n_jobs=1)
        xy = model.fit_transform(V)
        info.update({"n_neighbors": n_neighbors})
    else:
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, (n - 1) / 3))
        xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=random_state, n_jobs=1,
                  learning_rate="auto").fit_transform(V)
        info.update({"perplexity": perplexity})
    return np.asarray(xy, dtype=np.float64), info


def validate(explain_cfg, *, gene_ids, sample_ids=None, classes=None) -> None:
    """``explain.map_method: umap`` needs umap-learn (called before the step's long work)."""
    if explain_cfg.map_method == "umap" and not umap_available():
        raise ConfigError("explain.map_method is 'umap' but umap-learn is not installed; pip install umap-learn "
                          "(or 'iml-genomics[umap]'), or set explain.map_method: tsne (or auto).")


def run(ctx: MethodContext) -> MethodOutput:
    """The attribution map; table ``attribution_map.tsv``.

    See docs/explain.md, "Map of samples in attribution space".
    """
    cfg = ctx.explain_cfg
    out = MethodOutput()
    if ctx.attributions is None:
        reason = "needs SHAP values of every sample (explain --method shap or all)"
        out.warnings.append(f"explain: map skipped: {reason}")
        out.summary = {"skipped": reason}
        return out
    method = cfg.map_method
    have_umap = umap_available()
    validate(cfg, gene_ids=ctx.gene_ids, sample_ids=ctx.sample_ids)
    if method == "auto":
        method = "umap" if have_umap else "tsne"
    A = np.asarray(ctx.attributions)
    n = A.shape[0]
    if n < MIN_SAMPLES:
        reason = f"{n} samples; a map needs at least {MIN_SAMPLES}"
        out.warnings.append(f"explain: map skipped: {reason}")
        out.summary = {"skipped": reason}
        return out
    rng = np.random.default_rng(ctx.random_state)
    rows = np.arange(n) if n <= cfg.map_max_samples else np.sort(rng.choice(n, cfg.map_max_samples, replace=False))
    if A.shape[1] == 0 or not (np.ptp(A[rows], axis=0) > 0).any():
        # every sample explained alike (a model that predicts one value, e.g. an L1 model with no gene left):
        # t-SNE's PCA start divides by a zero sd and its NaNs crash the process (segmentation fault)
        reason = "every sample has the same SHAP values (the model predicts the same for all), nothing to map"
        out.warnings.append(f"explain: map skipped: {reason}")
        out.summary = {"skipped": reason}
        return out
    xy, info = embed(A[rows], method=method, random_state=ctx.random_state)

    Xr = ctx.X[rows]
    pred = np.asarray(ctx.pipeline.predict(Xr))
    if ctx.task == "classification":
        from iml_genomics.explain.methods import class_codes

        prediction = [str(ctx.classes[c]) for c in class_codes(pred, ctx.classes)]
        label = ([str(ctx.classes[c]) for c in class_codes(np.asarray(ctx.y)[rows], ctx.classes)] if ctx.y is not None
                 else [pd.NA] * len(rows))
    else:
        prediction = pred.astype(np.float64)
        label = np.asarray(ctx.y, dtype=np.float64)[rows] if ctx.y is not None else [pd.NA] * len(rows)
    table = pd.DataFrame({"sample_id": [ctx.sample_ids[i] for i in rows], "x": xy[:, 0], "y": xy[:, 1],
                          "label": label, "prediction": prediction, "method": method, "explains": "model"})
    out.tables["attribution_map.tsv"] = table[MAP_COLUMNS]
    explained = (ctx.positive_class if ctx.task == "classification" and len(ctx.classes) == 2
                 else (str(ctx.classes[0]) if ctx.task == "classification" else ""))
    out.summary = {"method": method, "umap_available": have_umap, "n_samples": int(len(rows)),
                   "n_samples_total": int(n), "subsampled": bool(len(rows) < n), "attributions_of": explained,
                   "n_genes": int(A.shape[1]), **info}
    if method == "tsne" and cfg.map_method == "auto":
        out.summary["note"] = "umap-learn is not installed: t-SNE from scikit-learn"
    return out
