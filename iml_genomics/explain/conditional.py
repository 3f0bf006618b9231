"""Conditional importance of the top genes with a test per gene: LOCO and knockoff CPI (``explain.methods: conditional``).

Both ask whether a gene carries information about the outcome *beyond the other genes*, measured by how much
held-out loss grows without it, on the CV folds of the step:

- **LOCO** (leave one covariate out; Lei et al. 2018, Williamson et al. 2023): for each tested gene and fold the
  model is refitted without the gene; the per-sample held-out loss of the reduced model minus that of the full
  model is the gene's contribution.
- **CPI** (conditional predictive impact; Watson and Wright 2021, Machine Learning 110:2107): the fold's fitted
  model is kept; on its held-out rows the gene is replaced by its Gaussian model-X knockoff (the project's
  sampler, :mod:`iml_genomics.select`, covariance model and S fitted on the training rows of the fold only), and
  the per-sample loss increase is the gene's contribution. A knockoff has the gene's conditional distribution
  given the other genes, so under H0 (y independent of the gene given the others) the swap changes nothing on
  average, whatever the model does with the gene: a correlated bystander of a causal gene is not called.

Loss is the per-sample log loss (classes; all classes, not only the positive one) or squared error
(regression). The importance is the mean of the per-sample differences over the held-out samples (averaged
first over CV repeats and knockoff draws, so every sample counts once); ``ci_low``/``ci_high`` are the two-sided
95% t interval of that mean and ``p_value`` the one-sided paired t-test of H0: importance <= 0 (Watson and
Wright's test). A t-test, not Wilcoxon: the hypothesis is about the *mean* loss difference, and Wilcoxon's
signed-rank test is a test of symmetry about 0 that rejects for skewed differences with mean 0 (log-loss
differences are skewed); the mean of n >= ~30 held-out differences is close to normal, which is all the t-test
needs. ``q_value`` is Benjamini-Hochberg over the tested genes, per method.

LOCO's p-value is conservative for null genes (a refit with a useless gene is slightly *worse*, so the mean
difference of a null gene is <= 0). CPI's is exact on one fold when the knockoffs are right (a swap of gene and
knockoff flips the sign of a null difference) and slightly conservative pooled over CV folds, whose models are
trained on each other's test samples (measured in docs/explain.md). A gene the fold models do not
use (filtered out, never split on, zero coefficient) has CPI differences exactly 0: importance 0, p-value 1; its
LOCO differences are 0 only when the refit is deterministic (a forest refit on fewer columns draws other random
features, so they are refit noise around 0).

No file I/O here; the explain step writes ``conditional_importance.tsv``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import sparse, stats

from iml_genomics.errors import ConfigError
from iml_genomics.parallel import resolve_backend, spawn_seeds

OUTPUT_FILE = "conditional_importance.tsv"
COLUMNS = ["gene_id", "method", "importance", "ci_low", "ci_high", "p_value", "q_value", "explains", "rank",
           "gene_ranking_rank", "n_samples"]
CONFIDENCE = 0.95
#: probabilities are clipped here before the log loss, as scikit-learn's log_loss does for float64
EPS = 1e-15
#: genes whose held-out correlation with a tested gene is compared with its knockoff's (the knockoff check)
N_NEIGHBOURS = 5
#: family-wise false-alarm rate of the knockoff check over all (gene, neighbour, fold) comparisons: valid
#: knockoffs fail it at most this often (Bonferroni; the check statistic's null sd is at most 1)
CHECK_ALPHA = 0.01


# ---------------------------------------------------------------------------
# losses and tests
# ---------------------------------------------------------------------------


def sample_losses(model, X, y, classes, task: str) -> np.ndarray:
    """Per-sample held-out loss of a fitted model: log loss (classes) or squared error (regression).

    Parameters
    ----------
    model : fitted estimator or Pipeline
    X : array, rows to score
    y : array
        Encoded outcome (class codes in ``classes`` order) or values.
    classes : list of str or None
    task : {'classification', 'regression'}

    Returns
    -------
    ndarray of shape (n,)
    """
    from iml_genomics.models import predict_scores

    y = np.asarray(y)
    if task == "regression":
        return (y.astype(np.float64) - np.asarray(model.predict(X), dtype=np.float64).ravel()) ** 2
    proba = predict_scores(model, X, classes)
    # the fold model's columns are the classes of its training rows; a class absent there has probability 0
    fitted = np.asarray(model.classes_)
    col = np.clip(np.searchsorted(fitted, y), 0, len(fitted) - 1)
    present = fitted[col] == y
    p = np.where(present, proba[np.arange(len(y)), col], 0.0)
    return -np.log(np.clip(p, EPS, 1.0))


def paired_test(d, confidence: float = CONFIDENCE) -> tuple[float, float, float, float]:
    """Mean of paired differences, its two-sided t interval and the one-sided t-test p-value of H0: mean <= 0.

    Differences without spread (all equal, e.g. all 0 for a gene the model ignores) give the mean as both
    bounds and p = 1 when the mean is <= 0 (0 otherwise).
    """
    d = np.asarray(d, dtype=np.float64)
    n = d.size
    mean = float(d.mean())
    sd = float(d.std(ddof=1)) if n > 1 else 0.0
    if n < 2 or sd <= 1e-12 * max(1.0, abs(mean)):
        return mean, mean, mean, 1.0 if mean <= 0 else 0.0
    se = sd / np.sqrt(n)
    half = float(stats.t.ppf(0.5 + confidence / 2.0, n - 1)) * se
    p = float(stats.t.sf(mean / se, n - 1))
    return mean, mean - half, mean + half, p


# ---------------------------------------------------------------------------
# knockoffs inside a fold
# ---------------------------------------------------------------------------


def gaussian_knockoffs(X_train: np.ndarray, random_state: int, s_method: str = "mvr"):
    """The project's Gaussian model-X knockoff model, fitted on a fold's training rows.

    Up to ``DENSE_MAX_GENES`` genes: dense Ledoit-Wolf, replaced by factors plus blocks when it fails the
    project's neighbour exchangeability check (:func:`iml_genomics.select.diagnostics.exchangeability_check`)
    and factors plus blocks pass it. Not ``select``'s ``auto`` rule (factors plus blocks whenever Ledoit-Wolf
    shrinks by more than 0.3): heavy shrinkage is also what *independent* genes give, and there a factor model
    finds spurious factors and S collapses (p = 6 independent genes, n = 300: s ~ 0.15 instead of ~1), which
    leaves the knockoff next to the gene and CPI without power. Above it: factors plus blocks. S by
    ``s_method`` (equicorrelated when MVR's solver fails on a near-singular C); 2C - S is checked to be PSD.

    Returns
    -------
    (model, S, prepared)
        For :func:`iml_genomics.select.sampler.sample_knockoffs`.
    """
    from iml_genomics.errors import InputDataError, NumericalError
    from iml_genomics.select.covariance import DENSE_MAX_GENES, fit_covariance
    from iml_genomics.select.diagnostics import exchangeability_check
    from iml_genomics.select.sampler import prepare_sampler
    from iml_genomics.select.smatrix import check_psd, compute_s, min_eig_2c_minus_s

    if X_train.shape[1] > DENSE_MAX_GENES:
        model = fit_covariance(X_train, method="factor_blocks", random_state=random_state)
    else:
        model = fit_covariance(X_train, method="ledoit_wolf", random_state=random_state)

        def passes(m):
            return exchangeability_check(X_train, covariance=m.kind, factor_rank=m.rank, s_method=s_method,
                                         random_state=random_state).get("passed") is not False

        if X_train.shape[1] > 2 and not passes(model):
            try:
                alt = fit_covariance(X_train, method="factor_blocks", random_state=random_state)
            except InputDataError:
                alt = None
            if alt is not None and passes(alt):
                model = alt
    try:
        try:
            s, _ = compute_s(model, s_method, random_state=random_state)
            check_psd(min_eig_2c_minus_s(model, s))
        except NumericalError:
            if s_method == "equicorrelated":
                raise
            # MVR's coordinate descent can lose 2C - S > 0 on a near-singular C; the equicorrelated S (closed
            # form, valid whenever C is positive definite) gives valid, if less powerful, knockoffs
            s, _ = compute_s(model, "equicorrelated", random_state=random_state)
            check_psd(min_eig_2c_minus_s(model, s))
        return model, s, prepare_sampler(model, s)
    except (NumericalError, np.linalg.LinAlgError) as exc:
        # a fold of a handful of training rows has a singular correlation matrix: no knockoff model; the solver's
        # own message would point at select.s_method, a key explain does not read
        raise NumericalError(f"explain.methods conditional: the knockoffs of CPI cannot be fitted on the "
                             f"{X_train.shape[0]} training rows x {X_train.shape[1]} genes of a CV fold "
                             f"({str(exc).splitlines()[0][:120]}); set explain.conditional_tests: loco, or use "
                             f"more samples.") from None


def _dense(A) -> np.ndarray:
    return np.asarray(A.toarray() if sparse.issparse(A) else A, dtype=np.float64)


def _split_transform(model):
    """(stateless value transform, rest of the fitted pipeline): knockoffs are drawn on the transformed scale.

    ``preprocess.transform`` (log1p, log1p_cpm) learns nothing and acts per sample, so a gene swapped after it is
    a gene swapped in the values the model is fitted on; Gaussian knockoffs fit log-scale expression far better
    than raw counts, and log1p_cpm's per-sample totals stay those of the real sample.
    """
    from sklearn.pipeline import Pipeline

    from iml_genomics.preprocess import ExpressionTransform

    if isinstance(model, Pipeline) and len(model.steps) > 1 and isinstance(model.steps[0][1], ExpressionTransform):
        return model.steps[0][1].transform, Pipeline(model.steps[1:])
    return (lambda A: A), model


def _fisher_z(r):
    return np.arctanh(np.clip(r, -0.999999, 0.999999))


def _fold_task(pipeline, X, y, train, test, classes, task, cols, n_draws, seed, do_cpi, knockoff_fit):
    """Fit the full model on one fold; its per-sample held-out losses and, for CPI, the knockoff swaps."""
    from sklearn.base import clone

    from iml_genomics.select.sampler import sample_knockoffs

    model = clone(pipeline).fit(X[train], y[train])
    out = {"full": sample_losses(model, X[test], y[test], classes, task), "cpi": None}
    if not do_cpi:
        return out
    transform, rest = _split_transform(model)
    Xt_tr, Xt_te = _dense(transform(X[train])), _dense(transform(X[test]))
    base = sample_losses(rest, Xt_te, y[test], classes, task)
    # constant genes (in the training rows) have no conditional distribution to draw from: they are left out of
    # the covariance model and a constant tested gene keeps its values (difference 0: the fold model cannot have
    # learnt anything from it)
    sd = Xt_tr.std(axis=0)
    varying = np.flatnonzero(sd > 1e-12 * np.maximum(1.0, np.abs(Xt_tr.mean(axis=0))))
    pos = {int(c): i for i, c in enumerate(varying)}
    kmodel, S, prep = knockoff_fit(Xt_tr[:, varying], seed)
    diffs = np.zeros((len(cols), len(test)))
    gap = np.zeros(len(cols))
    # neighbours of each tested gene: the genes most correlated with it in the training rows
    Ztr = (Xt_tr[:, varying] - Xt_tr[:, varying].mean(axis=0)) / sd[varying]
    Zte = Xt_te[:, varying]
    for d, draw_seed in enumerate(spawn_seeds(seed, n_draws)):
        Xk = sample_knockoffs(kmodel, S, Xt_te[:, varying], random_state=draw_seed, prepared=prep)
        for i, j in enumerate(cols):
            if j not in pos:
                continue
            # swap one column in place and put it back: no n x p copy per gene
            real = Xt_te[:, j].copy()
            Xt_te[:, j] = Xk[:, pos[j]]
            diffs[i] += sample_losses(rest, Xt_te, y[test], classes, task) - base
            Xt_te[:, j] = real
            if d == 0:
                c = Ztr.T @ Ztr[:, pos[j]] / len(train)
                c[pos[j]] = 0.0
                nb = np.argsort(-np.abs(c), kind="stable")[:N_NEIGHBOURS]
                nb = nb[np.abs(c[nb]) > 0]
                if nb.size and len(test) > 3:
                    r_real = np.array([np.corrcoef(Zte[:, pos[j]], Zte[:, m])[0, 1] for m in nb])
                    r_kn = np.array([np.corrcoef(Xk[:, pos[j]], Zte[:, m])[0, 1] for m in nb])
                    # Fisher z of two correlations on the same n rows: the difference has sd <= sqrt(2 / (n - 3))
                    # (equal under independence, smaller when gene and knockoff are correlated)
                    gap[i] = float(np.nanmax(np.abs(_fisher_z(r_real) - _fisher_z(r_kn)))
                                   * np.sqrt((len(test) - 3) / 2.0))
    out["cpi"] = diffs / n_draws
    out["knockoff_gap"] = gap
    out["covariance_model"] = kmodel.kind
    return out


def _loco_task(pipeline, X, y, train, test, classes, task, col):
    """Refit without one gene on one fold; per-sample held-out losses of the reduced model."""
    from sklearn.base import clone

    keep = np.delete(np.arange(X.shape[1]), col)
    model = clone(pipeline).fit(X[train][:, keep], y[train])
    return sample_losses(model, X[test][:, keep], y[test], classes, task)


def _conditional_importance_fit(kind, *args):
    # one map over both kinds so the backend balances LOCO refits and fold fits together
    return _fold_task(*args) if kind == "fold" else _loco_task(*args)


# ---------------------------------------------------------------------------
# the method
# ---------------------------------------------------------------------------


def conditional_importance(refit_pipeline, X, y, *, gene_ids, genes, splits, task: str, classes=None,
                           tests: str = "both", n_draws: int = 1, random_state: int = 0, backend=None,
                           knockoff_fit=None, gene_ranks=None) -> tuple[pd.DataFrame, dict]:
    """LOCO and knockoff CPI for ``genes`` on the CV ``splits``, with a paired t-test per gene and BH per method.

    Parameters
    ----------
    refit_pipeline : unfitted Pipeline
    X : array or sparse matrix, samples x ``gene_ids`` (raw; the pipeline preprocesses)
    y : array
        Encoded outcome.
    gene_ids : list of str
    genes : list of str
        The genes to test (a subset of ``gene_ids``).
    splits : list of (repeat, fold, train_idx, test_idx)
        The step's CV folds; with several repeats a sample's differences are averaged over its repeats.
    task : {'classification', 'regression'}
    classes : list of str or None
    tests : {'both', 'loco', 'cpi'}
    n_draws : int
        Knockoff draws per fold (CPI); a sample's differences are averaged over them.
    random_state : int
    backend : iml_genomics.parallel.Backend, optional
        Runs one task per fold and one per (fold, gene) LOCO refit; results do not depend on it.
    knockoff_fit : callable, optional
        ``(X_train, seed) -> (CovarianceModel, S, prepared)``; :func:`gaussian_knockoffs` when None. Tests pass a
        misspecified one to show that the knockoff check sees it.
    gene_ranks : dict, optional
        Gene -> rank in ``gene_ranking.tsv`` (the ``gene_ranking_rank`` column).

    Returns
    -------
    table : pandas.DataFrame
        :data:`COLUMNS`; LOCO rows first, then CPI, each best first.
    summary : dict
    """
    backend = resolve_backend(backend, 1)
    knockoff_fit = knockoff_fit or gaussian_knockoffs
    y = np.asarray(y)
    cols = [gene_ids.index(g) for g in genes]
    do_loco, do_cpi = tests in ("both", "loco"), tests in ("both", "cpi")
    seeds = spawn_seeds(random_state, len(splits))
    tasks = [("fold", refit_pipeline, X, y, tr, te, classes, task, cols, n_draws, sd, do_cpi, knockoff_fit)
             for (_, _, tr, te), sd in zip(splits, seeds)]
    if do_loco:
        tasks += [("loco", refit_pipeline, X, y, tr, te, classes, task, c) for (_, _, tr, te) in splits for c in cols]
    results = backend.map(_conditional_importance_fit, tasks)
    folds, loco = results[:len(splits)], results[len(splits):]

    n = X.shape[0]
    counts = np.zeros(n)
    for (_, _, _, te) in splits:
        counts[te] += 1
    seen = counts > 0
    rows, summary_tests = [], {}
    for method in ("loco", "cpi"):
        if (method == "loco" and not do_loco) or (method == "cpi" and not do_cpi):
            continue
        per_gene = np.zeros((len(cols), n))
        for f, (_, _, _, te) in enumerate(splits):
            if method == "cpi":
                per_gene[:, te] += folds[f]["cpi"]
            else:
                for i in range(len(cols)):
                    per_gene[i, te] += loco[f * len(cols) + i] - folds[f]["full"]
        per_gene = per_gene[:, seen] / counts[seen]
        res = [paired_test(per_gene[i]) for i in range(len(cols))]
        p = np.array([r[3] for r in res])
        q = stats.false_discovery_control(p, method="bh") if len(p) else p
        for i, g in enumerate(genes):
            rows.append({"gene_id": g, "method": method, "importance": res[i][0], "ci_low": res[i][1],
                         "ci_high": res[i][2], "p_value": p[i], "q_value": float(q[i]), "explains": "data",
                         "gene_ranking_rank": (gene_ranks or {}).get(g), "n_samples": int(seen.sum())})
        summary_tests[method] = {"n_tested": len(cols), "n_q_below_0.1": int(np.sum(q <= 0.1)),
                                 "n_p_below_0.05": int(np.sum(p <= 0.05))}
    table = pd.DataFrame(rows, columns=[c for c in COLUMNS if c != "rank"])
    if len(table):
        table["_m"] = table["method"].map({"loco": 0, "cpi": 1})
        table = table.sort_values(["_m", "importance", "gene_id"], ascending=[True, False, True],
                                  kind="mergesort").drop(columns="_m").reset_index(drop=True)
        table["rank"] = table.groupby("method", sort=False).cumcount() + 1
    else:
        table["rank"] = pd.Series(dtype=np.int64)
    table["gene_ranking_rank"] = pd.array(table["gene_ranking_rank"], dtype="Int64")
    table = table[COLUMNS]

    summary = {"tests": tests, "n_genes_tested": len(cols), "n_folds": len(splits),
               "n_samples": int(seen.sum()),
               "loss": "squared error" if task == "regression" else "log loss over all classes",
               "test": "one-sided paired t-test of H0: importance <= 0 over held-out samples (Watson and Wright "
                       "2021); two-sided t interval",
               "confidence": CONFIDENCE, "multiple_testing": "Benjamini-Hochberg over the tested genes, per method",
               "per_method": summary_tests}
    if do_loco:
        summary["loco_refits"] = len(splits) * len(cols)
    if do_cpi:
        gaps = np.max(np.stack([f["knockoff_gap"] for f in folds]), axis=0) if folds else np.zeros(len(cols))
        threshold = float(stats.norm.isf(CHECK_ALPHA / (2.0 * max(1, N_NEIGHBOURS * len(splits) * len(cols)))))
        failing = [g for g, v in zip(genes, gaps) if v > threshold]
        summary["knockoffs"] = {
            "n_draws": int(n_draws),
            "covariance_models": sorted({f["covariance_model"] for f in folds}),
            "fitted_on": "training rows of each fold (transformed scale of preprocess.transform)",
            "check": f"per tested gene, the largest |Fisher z(corr(gene, neighbour)) - z(corr(knockoff, "
                     f"neighbour))| * sqrt((n_test - 3) / 2) over its {N_NEIGHBOURS} most correlated genes (training "
                     f"rows) and the folds; fails above the Bonferroni normal quantile at family-wise "
                     f"{CHECK_ALPHA:g}",
            "threshold": round(threshold, 4),
            "max_z_gap": {g: round(float(v), 4) for g, v in zip(genes, gaps)},
            "failing_genes": failing,
        }
    return table, summary


def validate(explain_cfg, *, gene_ids, sample_ids=None, classes=None) -> None:
    """``explain.conditional_top_k`` above the genes of the matrix is refused (one line, exit 2); the default is
    capped at the genes the model uses instead."""
    from iml_genomics.explain.methods import is_default

    k = int(explain_cfg.conditional_top_k)
    if k > len(gene_ids) and not is_default(explain_cfg, "conditional_top_k"):
        raise ConfigError(f"config: explain.conditional_top_k is {k} but the expression matrix has "
                          f"{len(gene_ids)} genes; set it to at most {len(gene_ids)}.")


def run(ctx):
    """``explain.methods: conditional``: LOCO and knockoff CPI for the top ``explain.conditional_top_k`` genes."""
    from iml_genomics.explain.methods import MethodOutput

    ecfg = ctx.explain_cfg
    out = MethodOutput()
    if ctx.y is None or ctx.splits is None or ctx.refit_pipeline is None:
        reason = "needs labels (held-out loss of refits and of knockoff swaps); pass --labels and --label-column"
        out.warnings.append(f"explain: conditional importance skipped: {reason}.")
        out.summary["skipped"] = reason
        return out
    validate(ecfg, gene_ids=ctx.gene_ids)
    k = int(ecfg.conditional_top_k)
    genes = ctx.ranking_top_genes(k)
    notes = ["the tested genes were chosen by gene_ranking.tsv on the same samples; p- and q-values do not account "
             "for that choice (test every used gene with conditional_top_k and conditional_tests: cpi for that)"]
    if len(genes) < k:
        notes.append(f"explain.conditional_top_k = {k} but the model uses {len(genes)} genes; tested those.")
    ranks = dict(zip(ctx.ranking["gene_id"].astype(str), ctx.ranking["rank"].astype(int)))
    table, summary = conditional_importance(
        ctx.refit_pipeline, ctx.X, ctx.y, gene_ids=ctx.gene_ids, genes=genes, splits=ctx.splits, task=ctx.task,
        classes=ctx.classes, tests=ecfg.conditional_tests, n_draws=ecfg.conditional_knockoff_draws,
        random_state=ctx.random_state, backend=ctx.backend, gene_ranks=ranks)
    summary["top_k"] = k
    summary["notes"] = notes
    summary["explains"] = ("data: whether the gene carries information on the outcome beyond the other genes, as "
                           "far as this model class can learn it (refits on the CV folds, not the bundle's model)")
    failing = summary.get("knockoffs", {}).get("failing_genes", [])
    if failing:
        out.warnings.append(f"explain: conditional importance: the knockoffs of {len(failing)} tested gene(s) "
                            f"(first {failing[0]}) do not reproduce its correlation with its neighbours; their CPI "
                            f"p-values may be too small (explain_summary.json methods.conditional.knockoffs).")
    out.tables[OUTPUT_FILE] = table
    out.summary.update(summary)
    return out
