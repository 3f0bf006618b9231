"""LIME for chosen samples: a weighted local linear surrogate of the model around each sample (Ribeiro et al. 2016).

For a chosen sample x, the top ``explain.lime_top_genes`` genes of ``gene_ranking.tsv`` are perturbed: each
perturbation draws every one of these genes independently from its empirical marginal in the cohort (a random
cohort sample's value, on the raw scale), the other genes stay at x's values. The model's output on SHAP's
scale (log-odds / margin, probability for forests, raw for regression; the same class SHAP explains) is
regressed on the perturbed genes standardized with the cohort's mean and sd, by ridge regression (alpha 1)
weighted by the kernel ``sqrt(exp(-d^2 / width^2))`` of the standardized distance d to x (LIME's tabular
kernel). Outputs per gene: the slope (``lime_weight``, change of the output per cohort sd) and the
contribution relative to the cohort mean (``lime_contribution = lime_weight * z``, z the sample's standardized
value), which is what a SHAP value is for a linear model (``phi_j = b_j (x_j - E x_j)``); per sample: the
weighted R^2 of the surrogate on held-out perturbations (``local_fidelity``; 5 interleaved folds of them;
the in-sample value, the lime package's score, is ``local_fidelity_in_sample``) and the Spearman correlation of the
contributions with the sample's SHAP values (``shap_agreement_spearman``).

Why not the ``lime`` package (0.2.0.1, June 2020, sdist only): its tabular explainer explains probabilities only
(a logistic model's log-odds, the scale SHAP uses, cannot be asked for in classification mode), discretizes
genes into quartile indicators by default (weights then are not per-gene slopes), perturbs every input gene
(20,000 here) instead of the ranking's top genes, draws from a Gaussian of the training mean / sd (negative
counts for skewed genes), and installs scikit-image. The estimator itself is a few lines of numpy and
scikit-learn's Ridge, tested below against known linear truth.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from iml_genomics.explain.methods import MethodOutput
from iml_genomics.explain.perturb import (check_top_genes, dense_columns, dense_row, explained_class,
                                          output_function, skipped_without_samples)

LIME_COLUMNS = ["sample_id", "gene_id", "rank", "lime_weight", "lime_contribution", "expression",
                "shap_value", "explained_class", "scale", "local_fidelity", "shap_agreement_spearman",
                "n_perturbations", "explains", "local_fidelity_in_sample"]
# rows of the perturbed matrix the model sees at once: bounds memory at p = 20,000 genes (~80 MB of float64)
_MAX_CELLS = 10_000_000
RIDGE_ALPHA = 1.0
FIDELITY_FOLDS = 5  # folds of the perturbations for the held-out local fidelity


def lime_sample(f, X, row: int, cols: np.ndarray, cohort: np.ndarray, *, n_samples: int, kernel_width: float,
                seed) -> dict:
    """LIME of one sample.

    Parameters
    ----------
    f : callable
        Raw expression (n x all genes) -> the explained output (n,).
    X : array or sparse matrix
        The cohort (samples x all genes, raw).
    row : int
        The explained sample's row in X.
    cols : ndarray of int
        Columns of the perturbed genes.
    cohort : ndarray
        ``X[:, cols]`` dense: the empirical marginals perturbations are drawn from.
    n_samples : int
        Perturbations (the first is the sample itself, as in LIME).
    kernel_width : float
    seed : int or sequence of int

    Returns
    -------
    dict
        ``weight``, ``contribution``, ``z`` (the sample's standardized values), ``fidelity`` (weighted R^2 on
        held-out folds of the perturbations), ``fidelity_in_sample`` (on the perturbations it was fitted to),
        ``intercept``, ``output`` (f at the sample), ``local_prediction`` (the surrogate at the sample).
    """
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(seed)
    n, m = cohort.shape
    mean = cohort.mean(axis=0)
    sd = cohort.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)  # a constant gene is never perturbed away from its value: weight 0
    x = dense_row(X, row)
    P = cohort[rng.integers(0, n, size=(n_samples, m)), np.arange(m)]
    P[0] = x[cols]
    y = np.empty(n_samples)
    step = max(1, _MAX_CELLS // max(X.shape[1], 1))
    for start in range(0, n_samples, step):
        block = np.repeat(x[None, :], min(step, n_samples - start), axis=0)
        block[:, cols] = P[start:start + len(block)]
        y[start:start + len(block)] = f(block)
    Z = (P - mean) / sd
    z0 = Z[0]
    d2 = ((Z - z0) ** 2).sum(axis=1)
    w = np.sqrt(np.exp(-d2 / kernel_width ** 2))
    model = Ridge(alpha=RIDGE_ALPHA).fit(Z, y, sample_weight=w)
    # weighted R^2 on the perturbations; a constant output (the model ignores these genes here) fits exactly.
    # In-sample it is what the lime package reports, and it is ~1 whatever the model once the perturbations are
    # not many more than the genes (60 draws of 60 genes: 0.96 on an XOR forest); the fidelity reported is the
    # held-out one: the same ridge on interleaved folds of the perturbations, each fold predicted by the others
    fidelity_in = float(model.score(Z, y, sample_weight=w)) if np.ptp(y) > 0 else 1.0
    fidelity = fidelity_in
    if np.ptp(y) > 0:
        from sklearn.metrics import r2_score

        fold = np.arange(n_samples) % FIDELITY_FOLDS
        held = np.empty(n_samples)
        for k in range(FIDELITY_FOLDS):
            te = fold == k
            held[te] = Ridge(alpha=RIDGE_ALPHA).fit(Z[~te], y[~te], sample_weight=w[~te]).predict(Z[te])
        fidelity = float(r2_score(y, held, sample_weight=w))
    coef = np.asarray(model.coef_, dtype=np.float64)
    return {"weight": coef, "contribution": coef * z0, "z": z0, "fidelity": fidelity,
            "fidelity_in_sample": fidelity_in,
            "intercept": float(model.intercept_), "output": float(y[0]),
            "local_prediction": float(model.predict(z0[None, :])[0])}


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation; NaN when fewer than 3 pairs or either side is constant (undefined)."""
    from scipy.stats import spearmanr

    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return float("nan")
    return float(spearmanr(a[ok], b[ok]).statistic)


def _lime_task(f, X, row, cols, cohort, n_samples, kernel_width, seed):
    return lime_sample(f, X, row, cols, cohort, n_samples=n_samples, kernel_width=kernel_width, seed=seed)


def validate(explain_cfg, *, gene_ids, sample_ids=None, classes=None) -> None:
    """Refuse ``explain.lime_top_genes`` above the matrix's genes before the explain step starts."""
    from iml_genomics.explain.perturb import check_gene_count

    check_gene_count("lime_top_genes", explain_cfg.lime_top_genes, len(gene_ids))


def run(ctx) -> MethodOutput:
    """LIME for every sample of ``explain.samples``: ``lime.tsv`` (explains = model)."""
    cfg = ctx.explain_cfg
    if not cfg.samples:
        summary, warnings = skipped_without_samples("lime", "LIME surrogates")
        return MethodOutput(summary=summary, warnings=warnings)
    genes = check_top_genes(ctx, "lime_top_genes", cfg.lime_top_genes)
    cols = np.array([ctx.gene_column(g) for g in genes], dtype=int)
    m = len(genes)
    width = float(cfg.lime_kernel_width) if cfg.lime_kernel_width is not None else 0.75 * math.sqrt(m)
    f, scale = output_function(ctx.pipeline, ctx.classes, ctx.positive_class)
    cohort = dense_columns(ctx.X, cols)
    rows = ctx.sample_rows()
    # one seed per (seed, row): a sample's LIME is the same whichever samples are explained with it
    results = ctx.backend.map(_lime_task, [(f, ctx.X, r, cols, cohort, cfg.lime_n_samples, width,
                                            [int(ctx.random_state), int(r)]) for r in rows])
    cls = explained_class(ctx)
    warnings, per_sample = [], {}
    frames = []
    shap_pos = {g: i for i, g in enumerate(ctx.shap_genes)}
    for sid, r, res in zip(cfg.samples, rows, results):
        sv = ctx.local_shap.get(sid)
        shap = np.array([sv[shap_pos[g]] if sv is not None and g in shap_pos else np.nan for g in genes])
        agree = _spearman(res["contribution"], shap)
        order = np.lexsort((np.arange(m), -np.abs(res["weight"])))
        rank = np.empty(m, dtype=int)
        rank[order] = np.arange(1, m + 1)
        frames.append(pd.DataFrame({
            "sample_id": sid, "gene_id": genes, "rank": rank, "lime_weight": res["weight"],
            "lime_contribution": res["contribution"], "expression": cohort[r], "shap_value": shap,
            "explained_class": cls, "scale": scale, "local_fidelity": res["fidelity"],
            "shap_agreement_spearman": agree, "n_perturbations": cfg.lime_n_samples,
            "explains": "model", "local_fidelity_in_sample": res["fidelity_in_sample"]}).iloc[order])
        # null, not NaN, in the JSON summary (NaN is not JSON)
        per_sample[sid] = {"local_fidelity": res["fidelity"],
                           "local_fidelity_in_sample": res["fidelity_in_sample"],
                           "shap_agreement_spearman": None if np.isnan(agree) else agree,
                           "model_output": res["output"], "surrogate_output": res["local_prediction"]}
    if not ctx.local_shap:
        warnings.append("explain: warning: lime: no SHAP values (explain --method permutation), so "
                        "shap_value and shap_agreement_spearman are empty")
    table = pd.concat(frames, ignore_index=True)[LIME_COLUMNS]
    summary = {"explained_class": cls, "scale": scale, "n_genes_perturbed": m, "n_perturbations":
               cfg.lime_n_samples, "kernel_width": width, "ridge_alpha": RIDGE_ALPHA,
               "perturbation": "each perturbed gene drawn independently from its empirical cohort marginal; "
                               "other genes held at the sample's value", "samples": per_sample}
    return MethodOutput(tables={"lime.tsv": table}, summary=summary, warnings=warnings)
