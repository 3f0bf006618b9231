"""The distilled conditional randomization test (dCRT, Liu, Katsevich, Janson and Ramdas 2022).

One p-value per gene for "y is independent of gene j given all other genes",
under the same Gaussian model of the genes as the knockoffs
(:func:`iml_genomics.select.covariance.fit_covariance`, correlation scale),
then Benjamini-Hochberg (or Benjamini-Yekutieli) at q.

For gene j, with ``Theta = C^{-1}``, the model says
``z_j | z_{-j} ~ N(mu_j, 1 / Theta_jj)`` with
``z_j - mu_j = (Z Theta)_j / Theta_jj``. The outcome is *distilled* on the
other genes: a lasso of y on ``Z_{-j}`` (at the penalty cross-validated on all
genes) gives the residual ``r = y - Z_{-j} b``, which depends on y and
``Z_{-j}`` only. Under the null, ``e_j = z_j - mu_j`` is N(0, sigma_j^2 I)
independent of (y, Z_{-j}), so

    T_j = <r, e_j> / (sigma_j ||r||)

is exactly N(0, 1) given (y, Z_{-j}) (``scale="model"``); the p-value is
2 * Phi(-|T_j|) and no resampling is needed (the resampled CRT with this
statistic converges to the same number). The default (``scale="empirical"``)
replaces sigma_j by the observed ``||e_j||``: the cosine of r and e_j as a t
statistic, free of the conditional variance that a shrunk covariance
estimate gets wrong, with the lasso's degrees of freedom taken off because
the covariance is estimated on the same samples (see :func:`dcrt_select`).
Screening: genes whose coefficient is zero in the lasso of y on
*all* genes get p = 1. That is valid whatever the screening did, because
p_j >= the dCRT p-value, which is itself valid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from iml_genomics.errors import ConfigError, InputDataError
from iml_genomics.parallel import Backend, blas_threads, fixed_blas_threads, resolve_backend
from iml_genomics.select.covariance import CovarianceModel
from iml_genomics.select.diagnostics import fit_checked_covariance
from iml_genomics.select.filter import TABLE_COLUMNS, aligned_inputs, check_variation, covariate_matrix, linear_part
from iml_genomics.select.statistics import (check_positive_class, class_targets, cv_lasso_path,
                                            residualize)

FDR_PROCEDURES = ("bh", "by")
#: KKT slack of the working-set lasso: a gene outside the working set enters when |z_k'r| / n > alpha (1 + this)
_KKT_SLACK = 1e-7
#: coordinate-descent tolerance inside the working set (scikit-learn's dual-gap rule, relative to ||y||^2)
_CD_TOL = 1e-10


@dataclass
class DCRTResult:
    """Result of :func:`dcrt_select`.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per gene, columns ``TABLE_COLUMNS``, sorted by p-value.
    summary : dict
        The ``select_summary.json`` content.
    T : ndarray of shape (p,)
        Signed statistic of every gene (0 for screened-out genes).
    p_values : ndarray of shape (p,)
    """

    table: pd.DataFrame
    summary: dict
    T: np.ndarray
    p_values: np.ndarray


def precision_columns(model: CovarianceModel, idx: np.ndarray, chunk: int = 512) -> np.ndarray:
    """Columns ``idx`` of ``C^{-1}`` (p x len(idx)), through ``model.solve`` on identity columns.

    Only the tested genes' columns are needed (their diagonal entries give the
    conditional variances, the columns the conditional means), so nothing of
    size p x p is formed whatever the covariance model.
    """
    idx = np.asarray(idx, dtype=int)
    p = model.p
    out = np.empty((p, idx.size))
    for start in range(0, idx.size, chunk):
        cols = idx[start:start + chunk]
        B = np.zeros((p, cols.size))
        B[cols, np.arange(cols.size)] = 1.0
        out[:, start:start + chunk] = model.solve(B)
    return out


def precision_diagonal(model: CovarianceModel, chunk: int = 512) -> np.ndarray:
    """diag(C^{-1}) of a covariance model, never forming p x p.

    Uses ``model.precision_diagonal()`` when the model provides one; the
    factor model by Woodbury, ``1/d - rowsum((D^-1 U) M^-1 * (D^-1 U))`` with
    ``M = I + U' D^-1 U``; otherwise chunks of ``model.solve`` on identity columns.
    """
    if hasattr(model, "precision_diagonal"):
        return np.asarray(model.precision_diagonal(), dtype=float)
    if model.kind == "factor" and model.corr is None and model.U is not None:
        DinvU = model.U / model.d[:, None]
        M = np.eye(model.U.shape[1]) + model.U.T @ DinvU
        return 1.0 / model.d - np.einsum("ij,ij->i", DinvU @ np.linalg.inv(M), DinvU)
    p = model.p
    out = np.empty(p)
    for start in range(0, p, chunk):
        cols = np.arange(start, min(start + chunk, p))
        out[cols] = precision_columns(model, cols, chunk)[cols, np.arange(cols.size)]
    return out


def _lasso_working_set(Z: np.ndarray, y: np.ndarray, alpha: float, coef_init: np.ndarray,
                       exclude: int | None = None, max_rounds: int = 50) -> np.ndarray:
    """Lasso ``min (1/2n)||y - Z b||^2 + alpha ||b||_1`` (with ``b_exclude = 0``) by a working set.

    Starts from the support of ``coef_init`` (the warm start: the fit with every
    gene), solves the lasso on the working set to a tight tolerance, then adds
    every gene that violates the KKT condition ``|z_k'r| / n <= alpha`` and
    repeats. Each round costs one n x p product, so a refit without one gene
    costs a few products instead of a full coordinate-descent path over p genes.
    The result solves the lasso on all allowed genes up to the KKT slack.
    """
    from sklearn.linear_model import Lasso

    n, p = Z.shape
    allowed = np.ones(p, dtype=bool)
    if exclude is not None:
        allowed[exclude] = False
    work = np.flatnonzero((coef_init != 0) & allowed)
    coef = np.zeros(p)
    start = coef_init[work].copy()
    for _ in range(max_rounds):
        if work.size:
            est = Lasso(alpha=alpha, fit_intercept=False, precompute=True, tol=_CD_TOL, max_iter=100000,
                        warm_start=True, selection="cyclic")
            est.coef_ = start
            est.fit(np.asfortranarray(Z[:, work]), y)
            coef[:] = 0.0
            coef[work] = est.coef_
            resid = y - Z[:, work] @ est.coef_
        else:
            resid = y
        grad = np.abs(Z.T @ resid) / n
        grad[~allowed] = 0.0
        grad[work] = 0.0
        violators = np.flatnonzero(grad > alpha * (1.0 + _KKT_SLACK))
        if not violators.size:
            return coef
        new = np.union1d(work, violators)
        start = coef[new].copy()
        work = new
    return coef


def _cv_screen(Z: np.ndarray, yt: np.ndarray, folds, backend: Backend, n_alphas: int = 30,
               eps: float = 1e-2) -> tuple[float | None, np.ndarray]:
    """Cross-validated lasso of y on all genes: the chosen penalty and the coefficients there.

    The same path as the knockoff lasso statistic (descending penalties, paths
    stop once min(250, half the training samples) genes are active), then the
    fit at the chosen penalty is polished by :func:`_lasso_working_set`.
    """
    path = cv_lasso_path(Z, yt, folds, n_alphas=n_alphas, eps=eps, backend=backend)
    if path is None:
        return None, np.zeros(Z.shape[1])
    alphas, best, coefs, _ = path
    start = coefs[min(best, len(coefs) - 1)].copy()
    return float(alphas[best]), _lasso_working_set(Z, yt, float(alphas[best]), start)


def _variance_factor(Z: np.ndarray, b: np.ndarray, e: np.ndarray, m: int) -> float:
    """Null variance of the t statistic relative to its reference, from the genes in the outcome fit.

    With A the lasso's support and f the share of ||e||^2 inside span(Z_A): if
    the model were exact, e would be a random direction and f about |A| / m
    (the t reference is then exact); a covariance fitted on the same samples
    leaves e nearly orthogonal to the other genes in sample (f about 0), and
    then <r, e> only sees the outcome's noise, whose share of ||r||^2 is
    (m - |A|) / m, so |T| is too large by the factor m (1 - f) / (m - |A|).
    Floored at 1: the correction only ever makes the test more conservative.
    """
    support = np.flatnonzero(b)
    k = support.size
    if k == 0 or k >= m:
        return 1.0
    Q, _ = np.linalg.qr(Z[:, support])
    f = float(np.sum((Q.T @ e) ** 2) / (e @ e)) if e @ e > 0 else 0.0
    return max(1.0, m * (1.0 - f) / (m - k))


def _test_chunk(genes, Z, Y, alphas, full_coefs, E, screening, m):
    """dCRT statistics of a chunk of genes (top-level so joblib can ship it).

    Returns, per gene and target, ``<r, e>``, ``||r||``, ``||e||`` and the
    variance factor of :func:`_variance_factor` (``m`` = residual dimension);
    the caller turns them into statistics. BLAS runs single-threaded whatever
    the worker count: a different thread count changes summation order, and
    --jobs must not change a bit.
    """
    with blas_threads(1):
        out = np.zeros((len(genes), Y.shape[1], 4))
        for row, (j, col) in enumerate(genes):
            e = E[:, col]
            out[row, :, 2] = np.linalg.norm(e)
            for t in range(Y.shape[1]):
                if alphas[t] is None or (screening and full_coefs[t][j] == 0):
                    continue  # screened out for this target: p = 1
                if full_coefs[t][j] == 0:
                    b = full_coefs[t]  # the fit without gene j is the full fit: its KKT conditions still hold
                else:
                    b = _lasso_working_set(Z, Y[:, t], alphas[t], full_coefs[t], exclude=j)
                r = Y[:, t] - Z @ b
                out[row, t, 0] = float(r @ e)
                out[row, t, 1] = float(np.linalg.norm(r))
                out[row, t, 3] = _variance_factor(Z, b, e, m)
        return out


# the written results must not depend on the BLAS threads of the calling process (parallel.py)
@fixed_blas_threads()
def dcrt_select(X, y, gene_ids, *, task, fdr=0.1, covariance="auto", factor_rank=None, covariates=None,
                random_state=0, n_jobs=1, fdr_procedure="bh", screening=True, scale="empirical",
                n_folds=5, check_model=True, positive_class=None, backend: Backend | None = None) -> DCRTResult:
    """Distilled conditional randomization test with Benjamini-Hochberg selection.

    Parameters
    ----------
    X : ndarray of shape (n, p)
        Preprocessed expression, samples x genes.
    y : array-like of shape (n,)
        Class labels (classification) or floats (regression). Classes are
        tested as centred class indicators (binary: the last class in sorted
        order); with K > 2 classes each gene is tested once per class
        (one-vs-rest) and gets the smallest p-value times K (Bonferroni), capped at 1.
    gene_ids : sequence of str
    task : {'classification', 'regression'}
    fdr : float
        Target FDR q.
    covariance : str
        Covariance model, as for :func:`~iml_genomics.select.knockoff_select`.
    factor_rank : int, optional
    covariates : DataFrame or ndarray, optional
        Fixed covariates partialled out of genes and outcome, never tested.
    random_state : int
        Seed of the cross-validation folds (and of the randomized SVD).
    n_jobs : int
        Workers; results do not depend on it. Used only when ``backend`` is None.
    backend : iml_genomics.parallel.Backend, optional
        Runs the gene chunks (processes or Dask tasks) and the screening lasso's folds (threads); it decides
        over ``n_jobs``.
    positive_class : str, optional
        Two classes: the class whose centred indicator is distilled and tested
        (the last class when None). The two-sided p-values do not depend on
        it; the sign of ``w`` does. Recorded in the summary.
    check_model : bool
        Run the held-out neighbour exchangeability check of the covariance
        model (:func:`~iml_genomics.select.diagnostics.exchangeability_check`):
        the dCRT's conditional law of each gene comes from the same Gaussian
        model as the knockoffs, so a model that misses local correlation
        fails it here too. Under ``covariance='auto'`` a Ledoit-Wolf fit that fails it is replaced by
        ``factor_blocks`` when that passes.
    fdr_procedure : {'bh', 'by'}
        Benjamini-Hochberg (independent or positively dependent p-values) or
        Benjamini-Yekutieli (any dependence).
    screening : bool
        Test only genes with a non-zero coefficient in the cross-validated
        lasso of y on all genes (others get p = 1; valid, since it only
        raises p-values). False tests every gene (the same lasso refits: a
        gene with a zero coefficient leaves the fit unchanged).
    scale : {'empirical', 'model'}
        'model': ``T = <r, e> / (sigma_j ||r||)`` with the model's conditional
        standard deviation ``sigma_j``, N(0, 1) under the null (the paper's
        and hidimstat's statistic). 'empirical' (default): the correlation c
        of r and e as a t statistic, ``sqrt(d) c / sqrt(1 - c^2)`` with
        ``d = n - 2 - n_covariates - (genes in the outcome fit)``, which does
        not use ``sigma_j`` at all, so a shrunk covariance estimate (which
        overstates the conditional variance; at p > n by orders of
        magnitude in sample) costs no power and an understated one no error
        control. Taking the lasso's degrees of freedom off makes it exact when
        the fitted conditional residual is orthogonal to the other genes in
        sample (a covariance fitted on these samples) and conservative when
        the model is exactly known.
    n_folds : int
        Folds of the cross-validated screening lasso.

    Returns
    -------
    DCRTResult
    """
    if scale not in ("empirical", "model"):
        raise ConfigError(f"dcrt: scale must be 'empirical' or 'model'; got {scale!r}.")
    if fdr_procedure not in FDR_PROCEDURES:
        raise ConfigError(f"config: select.fdr_procedure must be one of {', '.join(FDR_PROCEDURES)}; "
                          f"got {fdr_procedure!r}.")
    from sklearn.model_selection import KFold

    backend = resolve_backend(backend, n_jobs)
    X, y, gene_ids = aligned_inputs(X, y, gene_ids)
    n, p = X.shape
    check_positive_class(y, task, positive_class)
    cov = covariate_matrix(covariates)
    # residual degrees of freedom: r and e live in the complement of [1, covariates]
    dof = n - 1 - (0 if cov is None else int(np.linalg.matrix_rank(cov - cov.mean(axis=0))))
    if dof < 2:
        # one residual dimension (or none): every correlation is +-1 and the t reference has no degrees of
        # freedom, so the p-values would be NaN
        n_cov = 0 if cov is None else int(cov.shape[1])
        raise InputDataError(f"expression: {n} samples leave {max(dof, 0)} residual degree(s) of freedom after the "
                             f"intercept and {n_cov} covariates; the dCRT needs at least 2. Use fewer covariates "
                             f"(data.covariates) or more samples.")
    fitted = linear_part(X, cov)
    R = X if fitted is None else X - fitted
    check_variation(R, gene_ids, method="the dCRT", covariates=cov is not None)
    # checked before the tests run; under ``auto`` a failing Ledoit-Wolf fit is replaced by factor_blocks when that
    # passes (fit_checked_covariance): the dCRT's conditional law of each gene comes from this model
    model, exchangeability, auto_note = fit_checked_covariance(
        R, covariance=covariance, factor_rank=factor_rank, s_method="mvr", gene_ids=gene_ids,
        random_state=random_state, check=check_model, backend=backend)
    # R is already centred and orthogonal to the covariates; standardising keeps that, so the lasso
    # below is the lasso with unpenalised intercept and covariates (Frisch-Waugh)
    Z = np.ascontiguousarray(model.standardize(R))
    Y = residualize(class_targets(y, task, positive_class), cov)
    K = Y.shape[1]
    folds = list(KFold(n_splits=min(n_folds, n), shuffle=True, random_state=random_state).split(Z))

    alphas, full_coefs = [], []
    for t in range(K):
        a, c = _cv_screen(Z, np.ascontiguousarray(Y[:, t]), folds, backend)
        alphas.append(a)
        full_coefs.append(c)
    screened = np.flatnonzero(np.any(np.array(full_coefs) != 0, axis=0))
    tested = screened if screening else np.arange(p)

    stats_all = np.zeros((p, K, 4))
    if tested.size and any(a is not None for a in alphas):
        workers = backend.workers
        chunk_genes = 2048  # bounds the p x chunk precision block and the n x chunk residual block
        for start in range(0, tested.size, chunk_genes):
            block = tested[start:start + chunk_genes]
            Theta = precision_columns(model, block)
            theta_diag = Theta[block, np.arange(block.size)]
            if np.any(theta_diag <= 0) or not np.all(np.isfinite(theta_diag)):
                from iml_genomics.errors import NumericalError

                raise NumericalError("dCRT: the covariance model has a non-positive precision diagonal; "
                                     "use select.covariance: ledoit_wolf.")
            # z_j - mu_j = (Z Theta)_j / Theta_jj for the tested genes only: n x |block|
            E = (Z @ Theta) / theta_diag
            del Theta
            # chunks only group independent genes, so the chunking (which follows the worker count) cannot
            # change a result
            n_chunks = min(block.size, 1 if workers == 1 else 4 * workers)
            pieces = np.array_split(np.arange(block.size), n_chunks)
            tasks = [([(int(block[c]), i) for i, c in enumerate(piece)], Z, Y, alphas, full_coefs,
                      E[:, piece], screening, dof) for piece in pieces]
            results = backend.map(_test_chunk, tasks)
            stats_all[block] = np.concatenate(results)
            if scale == "model":
                stats_all[block, :, 2] = 1.0 / np.sqrt(theta_diag)[:, None]  # sigma_j instead of ||e_j||
    dot, norm_r, norm_e, vfactor = (stats_all[..., i] for i in range(4))
    ok = (norm_r > 0) & (norm_e > 0)
    T_all = np.zeros((p, K))
    if scale == "model":
        # <r, e> / (sigma_j ||r||): exactly N(0, 1) when the model's conditional variance is right
        T_all[ok] = dot[ok] / (norm_e[ok] * norm_r[ok])
        p_class = 2.0 * stats.norm.sf(np.abs(T_all))
    else:
        # the cosine of r and e as a t statistic, whatever the conditional variance: t(dof - 1) when the model
        # is exact; divided by the square root of the variance factor of _variance_factor, because a covariance
        # fitted on these samples leaves e nearly orthogonal to the other genes in sample (without it null T had
        # ~7% too much variance with AR(1) rho 0.8, n = 400, p = 200)
        c = np.zeros((p, K))
        c[ok] = np.clip(dot[ok] / (norm_e[ok] * norm_r[ok]), -1.0, 1.0)
        with np.errstate(divide="ignore"):
            T_all = np.sqrt(dof - 1) * c / np.sqrt(np.maximum(1.0 - c**2, 0.0)) / np.sqrt(np.maximum(vfactor, 1.0))
        df = dof - 1
        p_class = 2.0 * stats.t.sf(np.abs(T_all), df)
    p_class = np.minimum(p_class, 1.0)
    p_class[~ok] = 1.0
    T_all[~ok] = 0.0
    best_class = np.argmin(p_class, axis=1)
    T = T_all[np.arange(p), best_class]
    p_values = np.minimum(p_class[np.arange(p), best_class] * K, 1.0)  # Bonferroni over classes (K = 1: as is)
    q_values = stats.false_discovery_control(p_values, method=fdr_procedure)
    selected = q_values <= fdr
    p_cut = float(p_values[selected].max()) if selected.any() else None
    t_cut = float(np.abs(T[selected]).min()) if selected.any() else None

    table = pd.DataFrame({
        "gene_id": gene_ids,
        "w": T,
        "selected": selected,
        # one deterministic test per gene: selected or not, no draws to average over
        "selection_frequency": selected.astype(float),
        "e_value": np.nan,
        "group": [""] * p,
        "p_value": p_values,
        "q_value": q_values,
    })
    table["abs_t"] = -np.abs(T)
    table = table.sort_values(["p_value", "abs_t", "gene_id"], kind="mergesort").drop(columns="abs_t")
    table.insert(5, "rank", np.arange(1, p + 1))
    table["tested"] = True
    table = table[TABLE_COLUMNS].reset_index(drop=True)

    notes = [f"dCRT: {screened.size} of {p} genes have a non-zero coefficient in the cross-validated lasso of "
             f"the outcome on all genes" + ("; only they were tested, the others have p = 1 and w = 0."
                                             if screening else "; every gene was tested."),
             ("p-values: t test of the correlation between the distilled outcome and the gene's conditional "
              f"residual ({dof - 1} degrees of freedom), corrected for the genes in each outcome fit"
              if scale == "empirical" else "p-values: N(0, 1) tail areas of <r, e> / (sigma_j ||r||)")
             + ", exact under the Gaussian model of the genes (no resampling)."]
    if auto_note:
        notes.append(auto_note)
    if task == "classification":
        notes.append("outcome tested as centred class indicator(s) (linear-probability distillation).")
    if K > 1:
        notes.append(f"{K} classes: each gene tested once per class (one-vs-rest); p-value = smallest x {K} "
                     f"(Bonferroni); w is the statistic of that class.")
    if not int(selected.sum()):
        notes.append("nothing selected at this FDR; this is a result, not an error.")
    summary = {
        "method": "dcrt",
        "target_fdr": float(fdr),
        "fdr_procedure": fdr_procedure,
        "offset": None,
        "threshold": t_cut,
        "p_value_threshold": p_cut,
        "n_selected": int(selected.sum()),
        "n_selected_units": int(selected.sum()),
        "n_genes_tested": int(p),
        "n_screened": int(screened.size),
        "screening": bool(screening),
        "dcrt_scale": scale,
        "t_degrees_of_freedom": int(dof - 1) if scale == "empirical" else None,
        "n_samples": int(n),
        "task": task,
        "positive_class": None if positive_class is None else str(positive_class),
        "n_classes_tested": int(K),
        "covariance_model": model.kind,
        "factor_rank": model.rank,
        "n_blocks": model.n_blocks,
        "max_block_size": model.max_block_size,
        "ledoit_wolf_shrinkage": model.shrinkage,
        "s_method": None,
        "statistic": "dcrt_lasso",
        "screening_alpha": [a for a in alphas],
        "n_draws": None,
        "aggregation": "none",
        "n_groups": None,
        "n_covariates": 0 if cov is None else int(cov.shape[1]),
        "explanation_kind": "system-level (conditional independence under the model-X assumption)",
        "diagnostics": {"exchangeability": exchangeability},
        "notes": notes,
    }
    return DCRTResult(table=table, summary=summary, T=T, p_values=p_values)
