"""Exchangeability diagnostic of a knockoff construction on each gene's nearest neighbours.

If (X, X~) is a valid knockoff pair, swapping X_j with X~_j leaves the joint
distribution unchanged, so for every pair of genes j != k

    corr(X_j, X_k) = corr(X~_j, X_k) = corr(X~_j, X~_k).

A covariance model that misses local structure (a rank-2 factor model on
genes whose neighbours correlate at 0.8) breaks exactly these equalities for
*correlated neighbours*, and almost nowhere else: random gene pairs are
nearly uncorrelated under the truth and under the model alike, which is why a
random-pair check cannot see it. :func:`exchangeability_check` therefore
compares the three correlations for each gene's most correlated neighbours,
found on the samples the model was fitted on, and measured on samples it did
not see.
"""

from __future__ import annotations

import numpy as np

from iml_genomics.errors import InputDataError
from iml_genomics.select.covariance import fit_covariance
from iml_genomics.select.sampler import sample_knockoffs
from iml_genomics.select.smatrix import compute_s

#: Below this many samples the check runs in-sample (a 25% held-out set would be too small to measure anything).
MIN_HELDOUT_SAMPLES = 60
#: A pair is discrepant when its correlation discrepancy exceeds TOLERANCE plus this many standard errors.
Z_THRESHOLD = {"heldout": 3.0, "in_sample": 2.0}
#: Discrepancy in correlation units tolerated beyond sampling noise (every regularised model has some bias).
TOLERANCE = 0.1
#: Largest share of discrepant pairs a passing construction may have. Measured (docs/select.md): 10% on
#: bench_select's block design under Ledoit-Wolf (FDR held), 57% on AR(1) 0.8 at p = 1,000 under Ledoit-Wolf
#: (mean FDP 0.175 at q = 0.1), > 90% under the factor model at p = 3,000 (FDP 0.22).
MAX_FRACTION = 0.2


def nearest_neighbours(Z: np.ndarray, genes: np.ndarray, n_neighbours: int, *, chunk_size: int = 256) -> np.ndarray:
    """The ``n_neighbours`` genes of largest |corr| with each of ``genes``.

    Parameters
    ----------
    Z : ndarray of shape (n, p)
        Standardised expression (columns centred, unit variance).
    genes : ndarray of int
        Query genes.
    n_neighbours : int
    chunk_size : int
        Query genes per block: a block costs ``chunk_size x p`` floats, so
        the p x p correlation matrix is never formed (p = 20,000 would be 3.2 GB).

    Returns
    -------
    ndarray of shape (len(genes), n_neighbours)
        Neighbour indices, most correlated first (ties by index).
    """
    p = Z.shape[1]
    m = min(n_neighbours, p - 1)
    out = np.empty((genes.size, m), dtype=np.int64)
    for start in range(0, genes.size, chunk_size):
        q = genes[start:start + chunk_size]
        G = np.abs(Z[:, q].T @ Z)
        G[np.arange(q.size), q] = -1.0  # a gene is not its own neighbour
        top = np.argpartition(-G, m - 1, axis=1)[:, :m]
        # order the m chosen by |corr| descending, then index, so the output does not depend on argpartition
        vals = np.take_along_axis(G, top, axis=1)
        order = np.lexsort((top, -vals), axis=1)
        out[start:start + q.size] = np.take_along_axis(top, order, axis=1)
    return out


def _standardise_columns(X: np.ndarray) -> np.ndarray:
    Z = X - X.mean(axis=0)
    sd = np.sqrt(np.mean(Z**2, axis=0))
    Z /= np.where(sd > 0, sd, 1.0)
    return Z


def exchangeability_check(X: np.ndarray, *, covariance: str, factor_rank: int | None = None, s_method: str = "mvr",
                          gene_ids=None, random_state: int = 0, holdout: float = 0.25, max_genes: int = 1000,
                          n_neighbours: int = 5, z_threshold: float | None = None, tolerance: float = TOLERANCE,
                          max_fraction: float = MAX_FRACTION,
                          n_worst: int = 10, n_jobs: int = 1, backend=None) -> dict:
    """Compare corr(X_j, X_k), corr(X~_j, X_k) and corr(X~_j, X~_k) for each gene's nearest neighbours.

    The covariance model (same ``covariance`` kind and ``factor_rank``) and S
    are refitted on a random ~75% of the samples on *all* genes (the model of
    a gene depends on the others); knockoffs are drawn for the held-out
    samples. For up to ``max_genes`` random genes j, the ``n_neighbours`` genes
    k of largest |corr| on the training samples are found in column chunks; on
    the held-out samples each ordered pair (j, k) gives r(X_j, X_k),
    r(X~_j, X_k) and r(X~_j, X~_k). Its discrepancy is the larger of
    |r(X_j,X_k) - r(X~_j,X_k)| and |r(X_j,X_k) - r(X~_j,X~_k)|, and the pair
    is discrepant when that exceeds ``tolerance + z_threshold * se`` with
    ``se = sqrt(2 / (n - 1)) (1 - r^2)``, the sd of the difference of two
    *independent* estimates of one correlation. The estimates here share
    samples and are positively correlated, so under exchangeability the
    spread is at most that; a model that misses the neighbours' correlation
    makes it large. ``tolerance`` absorbs the bias every regularised model has
    (without it, any shrinkage fails once n is large). ``passed`` = at most
    ``max_fraction`` of the pairs are discrepant.

    With fewer than :data:`MIN_HELDOUT_SAMPLES` samples the check runs
    in-sample (``mode = 'in_sample'``): the model is fitted on all samples
    and knockoffs are drawn for the same ones. The model has then seen the
    sampling noise of the correlations it is checked on, which shrinks the
    discrepancy of a correct model below the independent-estimate noise, so
    the default ``z_threshold`` is tightened from 3 to 2.

    Parameters
    ----------
    X : ndarray of shape (n, p)
        Expression on the scale the knockoffs are built for (residuals after covariates).
    covariance : str
        Covariance kind passed to :func:`~iml_genomics.select.covariance.fit_covariance`
        (the kind of the fitted model, not ``auto``, so the check tests the same model kind).
    factor_rank : int, optional
        Rank of the fitted model (None for dense models).
    s_method : str
        S solver passed to :func:`~iml_genomics.select.smatrix.compute_s`.
    gene_ids : sequence of str, optional
        Names used in ``worst_pairs`` (column indices when None).
    random_state : int
    holdout : float
        Share of samples held out.
    max_genes : int
        Genes j sampled (all genes when p is smaller).
    n_neighbours : int
        Neighbours k per gene.
    z_threshold : float, optional
        Standard errors allowed beyond ``tolerance`` (default 3 held out, 2 in-sample).
    tolerance : float
        Discrepancy in correlation units allowed beyond sampling noise.
    max_fraction : float
        Largest share of discrepant pairs that passes.
    n_worst : int
        Pairs listed in ``worst_pairs``.
    n_jobs : int
        Passed to ``compute_s`` (its result does not depend on it); used only when ``backend`` is None.
    backend : iml_genomics.parallel.Backend, optional
        Passed to ``compute_s``; it decides over ``n_jobs``.

    Returns
    -------
    dict
        ``mode`` ('heldout' or 'in_sample'), ``n_train``, ``n_eval``,
        ``n_genes``, ``n_neighbours``, ``n_pairs``, ``covariance_model``,
        ``factor_rank``, ``rmse_corr_xx_vs_xkx`` (r(X_j,X_k) - r(X~_j,X_k)),
        ``rmse_corr_xx_vs_xkxk``, ``noise_rmse`` (RMS difference of two
        independent estimates, the RMS of se), ``rms_z`` (RMS of discrepancy / se),
        ``z_threshold``, ``tolerance``, ``fraction_exceeding``, ``max_fraction``,
        ``worst_pairs`` (the pairs furthest over the limit: gene_j, gene_k,
        corr_x_x, corr_xk_x, corr_xk_xk, z = discrepancy / se) and ``passed``;
        or ``{"skipped": reason}``.
    """
    X = np.asarray(X, dtype=np.float64)
    n, p = X.shape
    if p < 2 or n < 10:
        return {"skipped": f"too few samples ({n}) or genes ({p}) for an exchangeability check"}
    rng = np.random.default_rng(random_state)
    if n >= MIN_HELDOUT_SAMPLES:
        mode = "heldout"
        order = rng.permutation(n)
        n_eval = int(round(holdout * n))
        hold, train = np.sort(order[:n_eval]), np.sort(order[n_eval:])
    else:
        mode = "in_sample"
        hold = train = np.arange(n)
    Xt, Xh = X[train], X[hold]
    try:
        model = fit_covariance(Xt, method=covariance, rank=factor_rank, random_state=random_state)
        s, _ = compute_s(model, s_method, random_state=random_state, n_jobs=n_jobs, backend=backend)
    except InputDataError as exc:
        # e.g. a gene constant on the training split: the check cannot run, which is not a pass
        return {"skipped": f"{mode} refit failed: {exc}", "mode": mode}
    Xkh = sample_knockoffs(model, s, Xh, random_state=rng)

    genes = np.arange(p) if p <= max_genes else np.sort(rng.choice(p, size=max_genes, replace=False))
    # float32 is plenty to rank |corr| and halves the cost of the search, the largest part of the check at
    # p = 20,000 (1,000 genes x 750 samples x 20,000 genes)
    nbrs = nearest_neighbours(_standardise_columns(Xt).astype(np.float32), genes, n_neighbours)
    j = np.repeat(genes, nbrs.shape[1])
    k = nbrs.ravel()
    used = np.union1d(j, k)  # standardise only the columns the pairs touch
    pos = np.searchsorted(used, np.arange(p))
    Zh, Zk = _standardise_columns(Xh[:, used]), _standardise_columns(Xkh[:, used])
    jj, kk = pos[j], pos[k]
    n_eval = hold.size
    a = np.einsum("ij,ij->j", Zh[:, jj], Zh[:, kk]) / n_eval
    c = np.einsum("ij,ij->j", Zk[:, jj], Zh[:, kk]) / n_eval
    b = np.einsum("ij,ij->j", Zk[:, jj], Zk[:, kk]) / n_eval

    # per pair: the larger of |r(X_j,X_k) - r(X~_j,X_k)| and |r(X_j,X_k) - r(X~_j,X~_k)|, against the sd of
    # the difference of two independent estimates of one correlation, sqrt(2 / (n - 1)) (1 - r^2)
    d_c, d_b = a - c, a - b
    d = np.where(np.abs(d_c) >= np.abs(d_b), d_c, d_b)
    se = np.sqrt(2.0 / (n_eval - 1)) * (1.0 - np.clip(a, -1.0, 1.0) ** 2)
    z_thr = z_threshold if z_threshold is not None else Z_THRESHOLD[mode]
    limit = tolerance + z_thr * se
    exceeds = np.abs(d) > limit
    frac = float(np.mean(exceeds))
    noise = float(np.sqrt(np.mean(se**2)))
    z = d / np.maximum(se, 1e-12)
    names = [str(g) for g in gene_ids] if gene_ids is not None else [str(i) for i in range(p)]
    worst = np.lexsort((k, j, -(np.abs(d) - limit)))[:n_worst]
    return {
        "mode": mode,
        "n_train": int(train.size),
        "n_eval": int(n_eval),
        "n_genes": int(genes.size),
        "n_neighbours": int(nbrs.shape[1]),
        "n_pairs": int(j.size),
        "covariance_model": model.kind,
        "factor_rank": model.rank,
        "rmse_corr_xx_vs_xkx": float(np.sqrt(np.mean((a - c) ** 2))),
        "rmse_corr_xx_vs_xkxk": float(np.sqrt(np.mean((a - b) ** 2))),
        "noise_rmse": noise,
        "rms_z": float(np.sqrt(np.mean(z**2))),
        "z_threshold": float(z_thr),
        "tolerance": float(tolerance),
        "fraction_exceeding": frac,
        "max_fraction": float(max_fraction),
        "worst_pairs": [{"gene_j": names[j[i]], "gene_k": names[k[i]], "corr_x_x": float(a[i]),
                         "corr_xk_x": float(c[i]), "corr_xk_xk": float(b[i]), "z": float(z[i])} for i in worst],
        "passed": bool(frac <= max_fraction),
    }


def fit_checked_covariance(X: np.ndarray, *, covariance: str, factor_rank: int | None, s_method: str, gene_ids=None,
                           random_state: int = 0, n_jobs: int = 1, check: bool = True, backend=None):
    """Fit the covariance model and run :func:`exchangeability_check` on it; ``auto`` falls back on failure.

    ``covariance="auto"`` keeps dense Ledoit-Wolf while its shrinkage is at most
    ``MAX_AUTO_SHRINKAGE``, a rule measured at n = 300. At larger n the check's
    limit tightens, and a shrinkage below that bound can still pull strongly
    correlated neighbours far enough apart to fail it (AR(1) rho 0.8,
    n = p = 1,000: shrinkage 0.22, 27% of neighbour pairs discrepant, while
    ``factor_blocks`` has 1.4%). So when ``auto`` chose Ledoit-Wolf and the check
    fails, ``factor_blocks`` is fitted and checked too, and used when it passes.
    Neither fit nor check sees the outcome, so this choice does not touch the
    FDR argument.

    Parameters
    ----------
    X : ndarray of shape (n, p)
        Expression on the scale the model is built for (residuals after covariates).
    covariance : str
        As for :func:`~iml_genomics.select.covariance.fit_covariance`.
    factor_rank : int, optional
    s_method : str
        S solver of the check's knockoffs.
    gene_ids : sequence of str, optional
    random_state : int
    n_jobs : int
        Used only when ``backend`` is None.
    backend : iml_genomics.parallel.Backend, optional
        Runs the check's S solver (:func:`exchangeability_check`).
    check : bool
        False: no check (and no fallback); the check is reported as skipped.

    Returns
    -------
    model : CovarianceModel
    exchangeability : dict
        The check of the returned model (see :func:`exchangeability_check`).
    note : str or None
        What the fallback did, when it was used.
    """
    model = fit_covariance(X, method=covariance, rank=factor_rank, random_state=random_state)
    if not check:
        return model, {"skipped": "disabled"}, None

    def run(m):
        return exchangeability_check(X, covariance=m.kind, factor_rank=m.rank, s_method=s_method, gene_ids=gene_ids,
                                     random_state=random_state, n_jobs=n_jobs, backend=backend)

    result = run(model)
    if covariance == "auto" and model.kind == "ledoit_wolf" and result.get("passed") is False:
        try:
            alt = fit_covariance(X, method="factor_blocks", rank=factor_rank, random_state=random_state)
        except InputDataError:
            return model, result, None
        alt_result = run(alt)
        if alt_result.get("passed"):
            note = (f"covariance auto: Ledoit-Wolf (shrinkage {model.shrinkage:.2f}) failed the exchangeability check "
                    f"({result['fraction_exceeding']:.1%} of neighbour pairs discrepant); factor_blocks passed "
                    f"({alt_result['fraction_exceeding']:.1%}) and was used.")
            return alt, alt_result, note
    return model, result, None
