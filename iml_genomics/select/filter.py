"""The knockoff filter end to end: covariance -> S -> draws -> W -> threshold -> table.

:func:`knockoff_select` is the public entry point (also used by the
calibration study); it takes a preprocessed matrix and returns the
``knockoff_selection.tsv`` table and the ``select_summary.json`` dict.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from iml_genomics.errors import ConfigError, InputDataError
from iml_genomics.parallel import Backend, blas_threads, fixed_blas_threads, resolve_backend, spawn_seeds
from iml_genomics.select.covariance import DENSE_MAX_GENES, CovarianceModel, fit_covariance
from iml_genomics.select.diagnostics import fit_checked_covariance
from iml_genomics.select.groups import canonical_groups, cluster_genes, group_equicorrelated, group_w
from iml_genomics.select.sampler import prepare_sampler, sample_knockoffs
from iml_genomics.select.smatrix import check_psd, compute_s, min_eig_2c_minus_s
from iml_genomics.select.statistics import STATISTICS, check_positive_class
from iml_genomics.select.threshold import ebh, knockoff_evalues, knockoff_threshold

TABLE_COLUMNS = ["gene_id", "w", "selected", "selection_frequency", "e_value", "rank", "group", "tested", "p_value",
                 "q_value"]
#: Group knockoffs need the dense correlation matrix; above this many genes they are refused.
GROUP_MAX_GENES = 5000


@dataclass
class KnockoffResult:
    """Result of :func:`knockoff_select`.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per gene, columns ``TABLE_COLUMNS``, sorted best first.
    summary : dict
        The ``select_summary.json`` content.
    W : ndarray of shape (n_draws, n_units)
        W of every draw (units are genes, or groups for group knockoffs).
    s : ndarray
        Diagonal of S (or of the group S) on the correlation scale.
    """

    table: pd.DataFrame
    summary: dict
    W: np.ndarray
    s: np.ndarray = field(repr=False)


def constant_columns(R: np.ndarray) -> np.ndarray:
    """Mask of the columns without variation, by the covariance fit's rule (sd <= 1e-12 x max(1, |mean|))."""
    return R.std(axis=0) <= 1e-12 * np.maximum(1.0, np.abs(R.mean(axis=0)))


def check_variation(R: np.ndarray, gene_ids, *, method: str, covariates: bool) -> None:
    """Refuse genes without variation (after the covariates), naming the first by its id.

    The covariance model standardises every gene; a constant one has no conditional law to sample or test.
    Checked here, where the gene ids are known, with the same rule as the covariance fit, so the message
    names a gene of the user's file and not a column index of the filtered matrix.
    """
    const = np.flatnonzero(constant_columns(R))
    if const.size:
        where = " after the covariates are regressed out" if covariates else ""
        raise InputDataError(f"expression: gene '{gene_ids[const[0]]}' is constant across samples{where} "
                             f"({const.size} such gene(s)); {method} needs variation in every gene. Remove them "
                             f"or filter genes (preprocess.min_expression, preprocess.top_k_variable).")


def aligned_inputs(X, y, gene_ids) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """X as float64, y as an array and gene ids as strings, refusing a count that does not match X."""
    X = np.asarray(X, dtype=np.float64)
    n, p = X.shape
    gene_ids = [str(g) for g in gene_ids]
    if len(gene_ids) != p:
        raise InputDataError(f"expression: {len(gene_ids)} gene ids for {p} columns.")
    y = np.asarray(y)
    if y.shape[0] != n:
        raise InputDataError(f"labels: {y.shape[0]} labels for {n} samples.")
    return X, y, gene_ids


def covariate_matrix(covariates) -> np.ndarray | None:
    """Numeric covariate matrix: numeric columns as they are, others one-hot (first level dropped)."""
    if covariates is None:
        return None
    if isinstance(covariates, pd.DataFrame):
        if covariates.shape[1] == 0:
            return None
        parts = []
        for col in covariates.columns:
            values = covariates[col]
            numeric = pd.to_numeric(values, errors="coerce")
            if numeric.notna().all():
                parts.append(numeric.to_numpy(dtype=float)[:, None])
            else:
                dummies = pd.get_dummies(values.astype(str), drop_first=True, dtype=float)
                if dummies.shape[1]:
                    parts.append(dummies.to_numpy())
        return np.hstack(parts) if parts else None
    arr = np.asarray(covariates, dtype=float)
    return arr[:, None] if arr.ndim == 1 else arr


def linear_part(X: np.ndarray, covariates: np.ndarray | None) -> np.ndarray:
    """Least-squares fit of X on [1, covariates] (the part of X the knockoffs keep)."""
    if covariates is None:
        return None  # no covariates: nothing to keep (saves an n x p array at genome scale)
    A = np.hstack([np.ones((X.shape[0], 1)), covariates])
    coef, *_ = np.linalg.lstsq(A, X, rcond=None)
    return A @ coef


def _one_draw(seed, model, prep, X, fitted, y, task, statistic, stat_kwargs, covariates, n_jobs):
    """One knockoff draw and its importances (a top-level function so joblib can ship it).

    BLAS runs single-threaded here whatever the worker count, because a
    different thread count changes floating-point summation order, and
    --jobs must not change a single bit of the output.
    """
    with blas_threads(1):
        return _draw(seed, model, prep, X, fitted, y, task, statistic, stat_kwargs, covariates, n_jobs)


def _draw(seed, model, prep, X, fitted, y, task, statistic, stat_kwargs, covariates, n_jobs):
    R = X if fitted is None else X - fitted
    Rk = sample_knockoffs(model, prep["S"], R, random_state=seed, prepared=prep["sampler"])
    Xk = Rk if fitted is None else fitted + Rk
    # |corr(X_j, X~_j)| on the residual scale (what the knockoff model describes)
    Rc, Rkc = R - R.mean(axis=0), Rk - Rk.mean(axis=0)
    corr = np.sum(Rc * Rkc, axis=0) / np.sqrt(np.sum(Rc**2, axis=0) * np.sum(Rkc**2, axis=0))
    imp, imp_k, info = STATISTICS[statistic](X, Xk, y, task=task, covariates=covariates,
                                             random_state=seed, n_jobs=n_jobs, **stat_kwargs)
    return {"imp": imp, "imp_k": imp_k, "mean_abs_corr": float(np.mean(np.abs(corr))), "info": info}


def swap_check(X: np.ndarray, *, covariance: str, factor_rank: int | None, s_method: str, random_state: int = 0,
               max_genes: int = 500, holdout: float = 0.25, n_pairs: int = 2000) -> dict:
    """Exchangeability check of the knockoff construction on held-out samples.

    The covariance model (same kind and rank) and S are refitted on 75% of the
    samples for a random subset of at most ``max_genes`` genes; knockoffs are
    drawn for the held-out 25%. If (X, X~) are exchangeable, the correlations
    corr(X_j, X_k), corr(X_j, X~_k) and corr(X~_j, X~_k) of random gene pairs
    agree up to sampling noise; the root-mean-square differences are reported
    next to ``noise_rmse``, the RMS difference expected between two
    independent estimates of the same correlation on the held-out samples.
    ``passed`` is rmse <= 1.5 * noise_rmse for both comparisons.
    """
    rng = np.random.default_rng(random_state)
    n, p = X.shape
    n_hold = int(round(holdout * n))
    if n_hold < 8 or n - n_hold < 8 or p < 3:
        return {"skipped": f"too few samples ({n}) or genes ({p}) for a held-out check"}
    genes = np.sort(rng.choice(p, size=min(p, max_genes), replace=False))
    order = rng.permutation(n)
    hold, train = np.sort(order[:n_hold]), np.sort(order[n_hold:])
    # the kind of the model actually used (never "auto": the caller passes model.kind)
    kind = covariance if covariance != "auto" else ("ledoit_wolf" if genes.size <= DENSE_MAX_GENES
                                                    else "factor_blocks")
    rank = factor_rank
    try:
        model = fit_covariance(X[np.ix_(train, genes)], method=kind, rank=rank, random_state=random_state)
        s, _ = compute_s(model, s_method, random_state=random_state)
    except InputDataError as exc:
        return {"skipped": str(exc)}
    Xh = X[np.ix_(hold, genes)]
    Xkh = sample_knockoffs(model, s, Xh, random_state=rng)
    m = genes.size
    j = rng.integers(0, m, n_pairs)
    k = (j + rng.integers(1, m, n_pairs)) % m
    stacked = np.hstack([Xh, Xkh])
    # a gene expressed in a few cells only (single-cell data) can be constant on the held-out samples: its
    # correlations are undefined, so only pairs whose three correlations exist are compared (a NaN would
    # make the RMSEs NaN and the check fail without saying why)
    varies = np.ptp(stacked, axis=0) > 0
    defined = varies[j] & varies[k] & varies[m + j] & varies[m + k]
    j, k = j[defined], k[defined]
    if j.size == 0:
        return {"skipped": "every sampled gene pair has a gene constant on the held-out samples"}
    with np.errstate(invalid="ignore", divide="ignore"):
        both = np.corrcoef(stacked, rowvar=False)
    a, c, b = both[j, k], both[j, m + k], both[m + j, m + k]
    noise = np.sqrt(np.mean(2.0 * (1.0 - a**2) ** 2 / (n_hold - 1)))
    rmse_c = float(np.sqrt(np.mean((a - c) ** 2)))
    rmse_b = float(np.sqrt(np.mean((a - b) ** 2)))
    return {"n_genes": int(m), "n_train": int(train.size), "n_heldout": int(n_hold), "n_pairs": int(j.size),
            "n_pairs_undefined": int(n_pairs - j.size),
            "covariance_model": kind, "rmse_corr_xx_vs_x_xk": rmse_c, "rmse_corr_xx_vs_xk_xk": rmse_b,
            "noise_rmse": float(noise), "passed": bool(rmse_c <= 1.5 * noise and rmse_b <= 1.5 * noise)}


def _user_groups(groups, p: int) -> tuple[np.ndarray, list[str]]:
    """Group ids 0..G-1 and the user's group names; a gene with no group (None, NaN or "") is a group alone.

    Genes alone get the name "" in the ``group`` column: they are not part of any group the user gave.
    """
    labels = list(groups)
    if len(labels) != p:
        raise InputDataError(f"groups: {len(labels)} group labels for {p} genes.")
    missing = [g is None or (isinstance(g, float) and np.isnan(g)) or str(g) == "" for g in labels]
    keys = [("", i) if miss else (str(g), -1) for i, (g, miss) in enumerate(zip(labels, missing))]
    ids = canonical_groups(np.array([f"{name}\x00{i}" for name, i in keys], dtype=object))
    names = [""] * (int(ids.max()) + 1)
    for gid, (name, _) in zip(ids, keys):
        names[gid] = name
    return ids, names


def with_untested_genes(table: pd.DataFrame, gene_ids) -> pd.DataFrame:
    """The selection table with a row for every input gene.

    Genes the preprocessing filter removed were never tested: they get
    ``tested = False``, no W or e-value, ``selected = False``, and ranks after
    every tested gene (by gene id), the same convention as ``used = False``
    in ``gene_ranking.tsv``. A filtered gene is "not tested", which is not the
    same as "tested and not selected".
    """
    tested = set(table["gene_id"].astype(str))
    missing = sorted(str(g) for g in gene_ids if str(g) not in tested)
    if not missing:
        return table
    extra = pd.DataFrame({"gene_id": missing, "w": np.nan, "selected": False, "selection_frequency": np.nan,
                          "e_value": np.nan, "rank": np.arange(len(table) + 1, len(table) + len(missing) + 1),
                          "group": "", "tested": False, "p_value": np.nan, "q_value": np.nan})
    return pd.concat([table, extra[TABLE_COLUMNS]], ignore_index=True)


# the written results must not depend on the BLAS threads of the calling process (parallel.py)
@fixed_blas_threads()
def knockoff_select(X, y, gene_ids, *, task, fdr=0.1, offset=1, statistic="lasso", s_method="mvr",
                    covariance="auto", factor_rank=None, n_draws=1, groups=None, covariates=None,
                    random_state=0, n_jobs=1, cluster_correlation=0.5, derandomize_fdr=None,
                    model="l1_logistic", model_params=None, max_pairs=None, check_swap=True,
                    positive_class=None, backend: Backend | None = None) -> KnockoffResult:
    """Model-X knockoff selection with FDR control.

    Parameters
    ----------
    X : ndarray of shape (n, p)
        Preprocessed expression, samples x genes.
    y : array-like of shape (n,)
        Class labels (classification) or floats (regression).
    gene_ids : sequence of str
    task : {'classification', 'regression'}
    fdr : float
        Target FDR q.
    offset : {0, 1}
        1 = knockoff+ (FDR control), 0 = knockoff (modified FDR).
    statistic : {'lasso', 'random_forest', 'model'}
    s_method : {'mvr', 'sdp', 'equicorrelated'}
    covariance : {'auto', 'ledoit_wolf', 'factor', 'factor_blocks'}
    factor_rank : int, optional
    n_draws : int
        Knockoff draws; more than one aggregates e-values with e-BH
        (derandomised knockoffs, Ren and Barber 2023).
    groups : None, 'clusters' or array-like of length p
        Group knockoffs over clusters of the sample correlation, or over the
        given group names (kept in the ``group`` column; None, NaN or "" =
        a gene on its own, with an empty ``group``).
    covariates : DataFrame or ndarray, optional
        Fixed covariates, in every fit, never tested.
    random_state : int
    n_jobs : int
        Workers (draws in parallel, else CV folds); results do not depend on it. Used only when ``backend``
        is None.
    cluster_correlation : float
        Sample-correlation threshold of ``groups='clusters'`` (average linkage on 1 - |corr|).
    derandomize_fdr : float, optional
        Knockoff level inside each draw when ``n_draws > 1`` (default fdr / 2).
    model, model_params
        Registry model for ``statistic='model'``.
    max_pairs : int, optional
        Gene/knockoff pairs kept by screening before the lasso (default max(1000, 2n)).
    check_swap : bool
        Run the held-out swap check (random pairs) and the neighbour
        exchangeability check (:func:`~iml_genomics.select.diagnostics.exchangeability_check`,
        one more covariance fit and S on 75% of the samples; under ``covariance='auto'`` a Ledoit-Wolf fit that
        fails it is replaced by ``factor_blocks`` when that passes); False reports both as skipped.
    positive_class : str, optional
        Two classes: the class whose indicator the lasso statistic regresses on (the last class when None);
        W does not depend on it. Recorded in the summary.
    backend : iml_genomics.parallel.Backend, optional
        Where the draws (several: one task each; one: a single task) and the threads of the S solver run;
        it decides over ``n_jobs``.

    Returns
    -------
    KnockoffResult
    """
    backend = resolve_backend(backend, n_jobs)
    X, y, gene_ids = aligned_inputs(X, y, gene_ids)
    n, p = X.shape
    if statistic not in STATISTICS:
        raise ConfigError(f"config: select.statistic must be one of {', '.join(STATISTICS)}; got {statistic!r}.")
    check_positive_class(y, task, positive_class)
    cov = covariate_matrix(covariates)
    fitted = linear_part(X, cov)
    R = X if fitted is None else X - fitted
    check_variation(R, gene_ids, method="knockoffs", covariates=cov is not None)
    use_groups = groups is not None and not (isinstance(groups, str) and groups == "none")
    if use_groups and p > GROUP_MAX_GENES:
        raise ConfigError(f"config: group knockoffs need the dense correlation matrix and are limited to "
                          f"{GROUP_MAX_GENES} genes (got {p}); filter genes (preprocess.top_k_variable) "
                          f"or set select.groups: none.")
    # the neighbour exchangeability check runs on the model before anything is drawn: under ``auto`` a failing
    # Ledoit-Wolf fit is replaced by factor_blocks when that passes (fit_checked_covariance)
    model_, exchangeability, auto_note = fit_checked_covariance(
        R, covariance=covariance, factor_rank=factor_rank, s_method="equicorrelated" if use_groups else s_method,
        gene_ids=gene_ids, random_state=random_state, check=check_swap, backend=backend)

    group_labels = None
    if use_groups:
        C = model_.dense()
        if isinstance(groups, str) and groups == "clusters":
            # clusters of the *sample* correlation, as select.cluster_correlation is documented: the model's
            # correlation is shrunk (Ledoit-Wolf) or low rank, which splits real modules into many clusters
            group_labels = cluster_genes(np.corrcoef(R, rowvar=False), cluster_correlation)
            group_names = [f"group_{g + 1:05d}" for g in range(int(group_labels.max()) + 1)]
        else:
            group_labels, group_names = _user_groups(groups, p)
        if model_.corr is None:  # group S is block-diagonal, so sample from the dense model
            # keep the kind and blocks: the diagnostics refit model_.kind, and a plain factor model there would
            # check (and fail on) a model that misses the local correlation this one keeps
            model_ = CovarianceModel(model_.kind, model_.mean, model_.scale, corr=C, d=model_.d, U=model_.U,
                                     block=model_.block, edge_threshold=model_.edge_threshold)
        S, gamma = group_equicorrelated(C, group_labels)
        s_diag, S_for_sampler, s_info = np.diag(S), S, {"approximation": "none", "n_blocks": 1, "gamma": gamma}
        s_used = "group_equicorrelated"
        min_eig = min_eig_2c_minus_s(model_, s_diag, S_full=S)
    else:
        s_diag, s_info = compute_s(model_, s_method, random_state=random_state, backend=backend)
        S_for_sampler, s_used = s_diag, s_method
        min_eig = min_eig_2c_minus_s(model_, s_diag)
    check_psd(min_eig)
    prep = {"S": S_for_sampler, "sampler": prepare_sampler(model_, S_for_sampler)}

    stat_kwargs = {}
    if statistic == "lasso" and max_pairs is not None:
        stat_kwargs["max_pairs"] = max_pairs
    if statistic == "lasso" and positive_class is not None:
        stat_kwargs["positive_class"] = positive_class
    if statistic == "model":
        stat_kwargs = {"model": model, "model_params": model_params}
    seeds = spawn_seeds(random_state, n_draws)
    # several draws: one task each, single-threaded inside; one draw: its statistic's CV folds use the workers
    # (in this process, or inside the one task on a Dask worker)
    inner_jobs = backend.n_jobs if n_draws == 1 else 1
    runner = backend if n_draws > 1 or backend.distributed else backend.local_part(1)
    draws = runner.map(_one_draw, [(sd, model_, prep, X, fitted, y, task, statistic, stat_kwargs, cov, inner_jobs)
                                   for sd in seeds])

    if group_labels is not None:
        W = np.array([group_w(d["imp"], d["imp_k"], group_labels) for d in draws])
    else:
        W = np.array([d["imp"] - d["imp_k"] for d in draws])
    thresholds = np.array([knockoff_threshold(w, fdr, offset) for w in W])
    sel_draws = W >= thresholds[:, None]
    frequency = sel_draws.mean(axis=0)
    if n_draws == 1:
        e_values, _ = knockoff_evalues(W[0], fdr, offset)
        selected = sel_draws[0]
        threshold, aggregation, level_kn = float(thresholds[0]), "none", fdr
    else:
        level_kn = derandomize_fdr if derandomize_fdr is not None else fdr / 2
        e_values = np.mean([knockoff_evalues(w, level_kn, offset)[0] for w in W], axis=0)
        selected, threshold = ebh(e_values, fdr)
        aggregation = "ebh"
    w_mean = W.mean(axis=0)

    unit = group_labels if group_labels is not None else np.arange(p)
    table = pd.DataFrame({
        "gene_id": gene_ids,
        "w": w_mean[unit],
        "selected": selected[unit],
        "selection_frequency": frequency[unit],
        "e_value": e_values[unit],
        "group": [group_names[g] for g in group_labels] if group_labels is not None else [""] * p,
    })
    table = table.sort_values(["e_value", "w", "gene_id"], ascending=[False, False, True], kind="mergesort")
    table.insert(5, "rank", np.arange(1, p + 1))
    table["tested"] = True
    table["p_value"] = table["q_value"] = np.nan  # dCRT columns; knockoffs give no per-gene p-value
    table = table[TABLE_COLUMNS].reset_index(drop=True)

    swap = (swap_check(R, covariance=model_.kind, factor_rank=model_.rank,
                       s_method=s_method if group_labels is None else "equicorrelated", random_state=random_state)
            if check_swap else {"skipped": "disabled"})
    # the swap check above samples random pairs, which are almost never correlated neighbours; the exchangeability
    # check (run with the model fit) checks each gene's nearest neighbours, where a model that misses local
    # correlation breaks exchangeability
    notes = [auto_note] if auto_note else []
    if statistic == "lasso" and task == "classification":
        notes.append("lasso statistic on class indicators (linear-probability lasso, swap-symmetric).")
    screened = draws[0]["info"].get("n_screened")
    if screened is not None and screened < p:
        notes.append(f"lasso fitted on {screened} of {p} gene/knockoff pairs kept by swap-symmetric marginal "
                     f"screening; the others have w = 0.")
    if s_info.get("approximation") == "blockdiag":
        notes.append(f"S solved on a block-diagonal approximation ({s_info['n_blocks']} blocks) and scaled to "
                     f"feasibility.")
    if model_.n_blocks is not None:
        notes.append(f"covariance: {model_.rank} factor(s) plus a block-diagonal residual ({model_.n_blocks} blocks "
                     f"of 2-{model_.max_block_size} genes linked at |residual corr| > {model_.edge_threshold:.3f}); "
                     f"local correlation beyond a block is not modelled.")
    if group_labels is not None:
        notes.append(f"group knockoffs over {int(group_labels.max()) + 1} groups: FDR is controlled over groups; "
                     f"every gene of a selected group is marked selected.")
    if aggregation == "ebh":
        notes.append(f"derandomised knockoffs: e-values averaged over {n_draws} draws (knockoff level "
                     f"{level_kn:g} per draw), e-BH at {fdr:g}; threshold is the e-value cut-off.")
    if not int(selected.sum()):
        notes.append("nothing selected at this FDR; this is a result, not an error.")
    summary = {
        "method": "knockoffs",
        "target_fdr": float(fdr),
        "positive_class": None if positive_class is None else str(positive_class),
        "offset": int(offset),
        "threshold": float(threshold) if np.isfinite(threshold) else None,
        "n_selected": int(table["selected"].sum()),
        "n_selected_units": int(selected.sum()),
        "n_genes_tested": int(p),
        "n_samples": int(n),
        "task": task,
        "covariance_model": model_.kind,
        "factor_rank": model_.rank,
        "n_blocks": model_.n_blocks,
        "max_block_size": model_.max_block_size,
        "ledoit_wolf_shrinkage": model_.shrinkage,
        "s_method": s_used,
        "s_approximation": s_info.get("approximation"),
        "mean_s": float(np.mean(s_diag)),
        "statistic": statistic,
        "n_draws": int(n_draws),
        "aggregation": aggregation,
        "draw_thresholds": [float(t) if np.isfinite(t) else None for t in thresholds],
        "n_groups": int(group_labels.max()) + 1 if group_labels is not None else None,
        "n_covariates": 0 if cov is None else int(cov.shape[1]),
        "explanation_kind": "system-level (conditional independence under the model-X assumption)",
        "diagnostics": {
            "mean_abs_corr_x_xk": float(np.mean([d["mean_abs_corr"] for d in draws])),
            "min_eig_2sigma_minus_s": float(min_eig),
            "swap_check": swap,
            "exchangeability": exchangeability,
            "fraction_negative_w": float(np.mean(W < 0)),
        },
        "notes": notes,
    }
    return KnockoffResult(table=table, summary=summary, W=W, s=s_diag)
