"""Explanation by example: the cohort samples nearest to each chosen sample, and each class's prototype.

Two spaces, Euclidean distance in both:

- ``attribution``: every sample's SHAP values of the explained output (``ctx.attributions``, samples x genes
  the model uses). Two samples are close when the model reasons about them alike (explains = model);
- ``expression``: the expression of the genes the model uses, each standardized with the cohort's mean and
  sd (explains = data).

``examples.tsv`` lists, for each sample of ``explain.samples``, its ``explain.examples_k`` nearest cohort
samples in each space (itself excluded; ties by cohort order) with their true label and the model's
prediction. ``prototypes.tsv`` gives, per true class and space, the medoid: the member whose summed distance
to the other members is smallest (needs labels and classes; computed in row blocks, never an n x n matrix).
The neighbours come from the cohort given to ``explain``, which is the training cohort when the same files
are passed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from iml_genomics.explain.methods import MethodOutput
from iml_genomics.explain.perturb import dense_columns

EXAMPLE_COLUMNS = ["sample_id", "space", "neighbour_rank", "neighbour_id", "distance", "neighbour_label",
                   "neighbour_prediction", "explains"]
PROTOTYPE_COLUMNS = ["class", "space", "sample_id", "mean_distance", "n_class", "explains"]
SPACES = {"attribution": "model", "expression": "data"}
_BLOCK_CELLS = 4_000_000
REFINE = 10  # medoid candidates whose summed distance is recomputed exactly


def standardized(values: np.ndarray) -> np.ndarray:
    """Columns centred and scaled by the cohort sd (a constant column stays 0)."""
    sd = values.std(axis=0)
    return (values - values.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


def nearest(space: np.ndarray, row: int, k: int):
    """(rows, distances) of the ``k`` nearest rows of ``space`` to ``row``, itself excluded; ties by row."""
    d = np.sqrt(((space - space[row]) ** 2).sum(axis=1))
    idx = np.arange(len(space))
    keep = idx != row
    order = np.lexsort((idx[keep], d[keep]))[:k]
    return idx[keep][order], d[keep][order]


def medoid(points: np.ndarray):
    """(position, mean distance to the others) of the medoid of ``points``: least summed Euclidean distance.

    Summed distances are first computed for every point through a matrix product (BLAS; fast at n x 20,000
    genes but rounded differently with the number of threads), in row blocks (no n x n matrix); the
    :data:`REFINE` best candidates are then recomputed exactly (explicit differences) and the least exact
    sum wins, ties to the first point, so the answer does not depend on BLAS.
    """
    from scipy.spatial.distance import cdist

    n = len(points)
    if n == 1:
        return 0, 0.0
    sq = (points ** 2).sum(axis=1)
    approx = np.empty(n)
    step = max(1, _BLOCK_CELLS // n)  # the block x n distance matrix
    for start in range(0, n, step):
        block = points[start:start + step]
        d2 = sq[start:start + step, None] + sq[None, :] - 2.0 * (block @ points.T)
        approx[start:start + step] = np.sqrt(np.maximum(d2, 0.0)).sum(axis=1)
    cand = np.sort(np.argsort(approx, kind="stable")[:REFINE])
    exact = cdist(points[cand], points).sum(axis=1)
    best = int(np.argmin(exact))  # first of equal sums: cand is sorted by position
    return int(cand[best]), float(exact[best] / (n - 1))


def validate(explain_cfg, *, gene_ids, sample_ids, classes=None) -> None:
    """Refuse ``explain.examples_k`` above the other samples of the cohort, before any work (the default is
    capped at them instead).

    Raises
    ------
    iml_genomics.errors.ConfigError
    """
    from iml_genomics.errors import ConfigError

    from iml_genomics.explain.methods import is_default

    k = explain_cfg.examples_k
    n_samples = len(sample_ids)
    if explain_cfg.samples and k > n_samples - 1 and not is_default(explain_cfg, "examples_k"):
        raise ConfigError(f"explain.examples_k ({k}) is larger than the {n_samples - 1} other samples of the "
                          f"cohort; set explain.examples_k to at most {n_samples - 1}.")


def run(ctx) -> MethodOutput:
    """``examples.tsv`` (nearest samples) and ``prototypes.tsv`` (class medoids)."""
    from iml_genomics.explain.methods import class_codes
    from iml_genomics.explain.perturb import predicted_classes

    cfg = ctx.explain_cfg
    validate(cfg, gene_ids=ctx.gene_ids, sample_ids=ctx.sample_ids)
    k = min(cfg.examples_k, len(ctx.sample_ids) - 1)  # the default on a cohort of fewer samples: all the others
    warnings, summary = [], {"k": k, "distance": "euclidean"}
    used = ctx.ranking[ctx.ranking["used"].astype(bool)]["gene_id"].astype(str).tolist()
    model_genes = ctx.shap_genes or sorted(used, key=ctx.gene_ids.index)
    spaces = {"expression": standardized(dense_columns(ctx.X, [ctx.gene_column(g) for g in model_genes]))}
    if ctx.attributions is not None:
        spaces = {"attribution": np.asarray(ctx.attributions, dtype=np.float64), **spaces}
    else:
        warnings.append("explain: warning: examples: no SHAP values (explain --method permutation), so the "
                        "attribution space is skipped; expression space only")
        summary["attribution_space"] = "skipped: needs SHAP"
    if ctx.classes is not None:
        pred = np.asarray(ctx.classes, dtype=object)[predicted_classes(ctx.pipeline, ctx.X, ctx.classes)]
        labels = None if ctx.y is None else np.asarray(ctx.classes, dtype=object)[class_codes(ctx.y, ctx.classes)]
    else:
        pred = np.asarray(ctx.pipeline.predict(ctx.X), dtype=np.float64)
        labels = None if ctx.y is None else np.asarray(ctx.y, dtype=np.float64)
    tables = {}
    if cfg.samples:
        rows = []
        for sid, r in zip(cfg.samples, ctx.sample_rows()):
            for name, space in spaces.items():
                idx, dist = nearest(space, r, k)
                rows.append(pd.DataFrame({
                    "sample_id": sid, "space": name, "neighbour_rank": np.arange(1, len(idx) + 1),
                    "neighbour_id": [ctx.sample_ids[i] for i in idx], "distance": dist,
                    "neighbour_label": labels[idx] if labels is not None else None,
                    "neighbour_prediction": pred[idx], "explains": SPACES[name]}))
        tables["examples.tsv"] = pd.concat(rows, ignore_index=True)[EXAMPLE_COLUMNS]
    else:
        warnings.append("explain: warning: examples: no samples chosen (explain.samples / --samples), so "
                        "examples.tsv is not written; prototypes only")
        summary["neighbours"] = "skipped: no samples chosen"
    if ctx.classes is not None and ctx.y is not None:
        y = class_codes(ctx.y, ctx.classes)
        protos = []
        for c, name in enumerate(ctx.classes):
            members = np.flatnonzero(y == c)
            if len(members) == 0:
                continue
            for sname, space in spaces.items():
                i, mean_d = medoid(space[members])
                protos.append({"class": str(name), "space": sname, "sample_id": ctx.sample_ids[members[i]],
                               "mean_distance": mean_d, "n_class": len(members), "explains": SPACES[sname]})
        tables["prototypes.tsv"] = pd.DataFrame.from_records(protos, columns=PROTOTYPE_COLUMNS)
    else:
        summary["prototypes"] = "skipped: needs class labels"
    if not tables:
        summary["skipped"] = "no samples chosen and no class labels"
    summary["spaces"] = list(spaces)
    return MethodOutput(tables=tables, summary=summary, warnings=warnings)
