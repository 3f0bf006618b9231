"""Uncertainty of a gene ranking: refit on CV folds (or bootstraps), rank in each, compare.

A gene that is first in one fold and absent from the next is not a
biomarker; these functions make that visible per gene (sd of the importance,
rank interval, top-k frequency) and for the ranking as a whole (Jaccard of the
top-k sets and Kendall's tau between refits).
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from iml_genomics.parallel import Backend, resolve_backend, spawn_seeds

RANK_INTERVAL = (5.0, 95.0)


def bootstrap_splits(n_samples: int, *, n_bootstraps: int, random_state: int = 0, y=None, stratify: bool = False):
    """(repeat, 1, train_idx, oob_idx) for bootstrap refits; the out-of-bag rows are held out.

    With ``stratify`` (classification) each class is resampled within itself, so every refit sees every class.
    """
    out = []
    groups = [np.arange(n_samples)]
    if stratify and y is not None:
        y = np.asarray(y)
        groups = [np.flatnonzero(y == c) for c in sorted(set(y.tolist()))]
    for b, seed in enumerate(spawn_seeds(random_state, n_bootstraps)):
        rng = np.random.default_rng(seed)
        train = np.sort(np.concatenate([g[rng.integers(0, len(g), len(g))] for g in groups]))
        oob = np.setdiff1d(np.arange(n_samples), train)
        out.append((b + 1, 1, train, oob))
    return out


def _ranks(importance: np.ndarray, gene_ids: np.ndarray) -> np.ndarray:
    """1-based competition ranks (largest first); genes with equal importance share the best rank."""
    order = np.lexsort((gene_ids, -importance))
    ranks = np.empty(len(importance), dtype=np.int64)
    sorted_imp = importance[order]
    first = np.r_[True, sorted_imp[1:] != sorted_imp[:-1]]
    pos = np.arange(1, len(order) + 1)
    ranks[order] = np.maximum.accumulate(np.where(first, pos, 0))
    return ranks


def _top_set(importance: np.ndarray, gene_ids: np.ndarray, k: int) -> set:
    """The k most important genes with importance > 0 (ties by gene id)."""
    order = np.lexsort((gene_ids, -importance))
    return {int(j) for j in order[:k] if importance[j] > 0}


def ranking_stability(importances, *, gene_ids, top_k: int = 20,
                      rank_interval: tuple[float, float] = RANK_INTERVAL):
    """Per-gene stability of a ranking across refits, and the agreement between refits.

    Parameters
    ----------
    importances : array, (n_refits, n_genes)
        Importance of each gene in each refit (larger = more important; 0 for
        genes a refit did not use).
    gene_ids : list of str
    top_k : int
    rank_interval : (low, high) percentiles
        Of the per-refit ranks; default 5th and 95th (``numpy.percentile``
        with method 'lower' / 'higher', so the bounds are observed ranks).

    Returns
    -------
    table : pandas.DataFrame
        gene_id, mean_importance, sd (ddof=1 across refits), rank_low,
        rank_high, median_rank, top_k_frequency (share of refits in which the
        gene is in the top k with importance > 0), in input gene order.
    agreement : dict
        jaccard_top_k_mean / _sd / _min over refit pairs, kendall_tau_mean /
        _sd over refit pairs (tau-b on all genes), n_refits, n_pairs, top_k.
    """
    from scipy.stats import kendalltau

    imp = np.asarray(importances, dtype=np.float64)
    if imp.ndim != 2:
        raise ValueError("importances must be 2-D (n_refits, n_genes)")
    ids = np.asarray([str(g) for g in gene_ids], dtype=object)
    n_refits, n_genes = imp.shape
    ranks = np.stack([_ranks(row, ids) for row in imp])
    tops = [_top_set(row, ids, top_k) for row in imp]
    freq = np.zeros(n_genes)
    for s in tops:
        freq[list(s)] += 1
    lo, hi = rank_interval
    table = pd.DataFrame({
        "gene_id": ids,
        "mean_importance": imp.mean(axis=0),
        "sd": imp.std(axis=0, ddof=1) if n_refits > 1 else np.full(n_genes, np.nan),
        "rank_low": np.percentile(ranks, lo, axis=0, method="lower").astype(np.int64),
        "rank_high": np.percentile(ranks, hi, axis=0, method="higher").astype(np.int64),
        "median_rank": np.median(ranks, axis=0),
        "top_k_frequency": freq / n_refits,
    })
    jacc, taus = [], []
    for a, b in itertools.combinations(range(n_refits), 2):
        union = tops[a] | tops[b]
        jacc.append(len(tops[a] & tops[b]) / len(union) if union else 1.0)
        if np.ptp(imp[a]) == 0 or np.ptp(imp[b]) == 0:
            taus.append(np.nan)
        else:
            taus.append(float(kendalltau(imp[a], imp[b]).statistic))
    jacc_a, taus_a = np.asarray(jacc), np.asarray(taus)

    def stat(f, a):
        a = a[~np.isnan(a)]
        return float(f(a)) if a.size else None

    agreement = {
        "n_refits": int(n_refits),
        "n_pairs": len(jacc),
        "top_k": int(top_k),
        "jaccard_top_k_mean": stat(np.mean, jacc_a),
        "jaccard_top_k_sd": stat(lambda a: np.std(a, ddof=1) if a.size > 1 else np.nan, jacc_a),
        "jaccard_top_k_min": stat(np.min, jacc_a),
        "kendall_tau_mean": stat(np.mean, taus_a),
        "kendall_tau_sd": stat(lambda a: np.std(a, ddof=1) if a.size > 1 else np.nan, taus_a),
        "rank_interval_percentiles": [lo, hi],
    }
    return table, agreement


# ---------------------------------------------------------------------------
# refits: one task per split computes everything the ranking needs
# ---------------------------------------------------------------------------


def _refit_task(pipeline, X, y, train_idx, test_idx, classes, gene_ids, seed, do_shap, shap_mode, background_size,
                do_perm, n_repeats, scoring, engine="fast"):
    from sklearn.base import clone

    from iml_genomics.explain.permutation import permutation_importance_fitted
    from iml_genomics.explain.shap_values import shap_attributions

    model = clone(pipeline).fit(X[train_idx], y[train_idx])
    n_genes = X.shape[1]
    out = {"mean_abs_shap": None, "permutation": None}
    if do_shap:
        res = shap_attributions(model, X[test_idx], gene_ids=gene_ids, classes=classes, mode=shap_mode,
                                background_size=background_size, chunk_size=max(1, len(test_idx)), n_jobs=1,
                                random_state=seed, additivity_tolerance=np.inf, engine=engine)
        from iml_genomics.preprocess import used_gene_mask

        full = np.zeros(n_genes)
        mask = used_gene_mask(model, n_genes)
        # mean |phi| over held-out samples, summed over the explained outputs (classes)
        full[mask] = np.abs(res.values).mean(axis=0).sum(axis=1)
        out["mean_abs_shap"] = full
    if do_perm:
        out["permutation"] = permutation_importance_fitted(model, X[test_idx], y[test_idx], classes=classes,
                                                           n_repeats=n_repeats, random_state=seed, n_jobs=1,
                                                           scoring=scoring)
    return out


def refit_importances(pipeline, X, y, *, splits, classes, gene_ids, shap: bool = True,
                      shap_mode: str = "tree_path_dependent", background_size: int = 100,
                      permutation: bool = True, n_repeats: int = 5, scoring: str = "auto",
                      random_state: int = 0, n_jobs: int | None = 1, backend: Backend | None = None,
                      tree_shap_engine: str = "fast") -> dict:
    """Refit ``pipeline`` on each split and measure importances on its held-out rows.

    Parameters
    ----------
    pipeline : Pipeline (cloned)
    X, y : cohort (raw expression) and outcome
    splits : list of (repeat, fold, train_idx, test_idx)
        ``models.cv_splits`` or :func:`bootstrap_splits`.
    shap, permutation : bool
        Which importances to compute.
    random_state : int
        Child seeds are spawned per split before dispatch (``n_jobs`` does not change results).
    n_jobs : int
        Splits run in parallel; used only when ``backend`` is None.
    backend : iml_genomics.parallel.Backend, optional
        Runs one task per split (processes or Dask tasks); it decides over ``n_jobs``. Inside a task the
        SHAP and permutation work runs in that task's process.
    tree_shap_engine : {'fast', 'shap'}
        Tree SHAP implementation of the refits (``explain.tree_shap_engine``).

    Returns
    -------
    dict
        'mean_abs_shap': (n_splits, n_genes) or None; 'permutation': list of
        (n_genes, n_repeats) arrays or None; 'splits': the splits.
    """
    seeds = spawn_seeds(random_state, len(splits))
    tasks = [(pipeline, X, y, tr, te, classes, list(gene_ids), s, shap, shap_mode, background_size, permutation,
              n_repeats, scoring, tree_shap_engine) for (_, _, tr, te), s in zip(splits, seeds)]
    results = resolve_backend(backend, n_jobs).map(_refit_task, tasks)
    return {
        "mean_abs_shap": np.stack([r["mean_abs_shap"] for r in results]) if shap else None,
        "permutation": [r["permutation"] for r in results] if permutation else None,
        "splits": splits,
    }
