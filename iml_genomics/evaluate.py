"""Score gene rankings and selections against a known truth.

Selections (a set of genes, e.g. knockoffs) get the false discovery
proportion and power; rankings (genes best first, e.g. mean |SHAP|) get
precision at k and the area under the precision-recall curve; several
rankings or selections of the same question (folds, seeds, methods) get
the Jaccard agreement of their top-k sets; and the prediction gaps of
Bontonou et al. (2023, arXiv 2303.11336) measure how much accuracy a model
loses when the k most (PGI) or least (PGU) important genes are removed.

Everything here takes gene ids and arrays and returns numbers or tidy
DataFrames; reading files is the CLI's job.
"""

from __future__ import annotations

import itertools
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from iml_genomics.errors import InputDataError
from iml_genomics.io.readers import tested_rows, truthy



# ---------------------------------------------------------------------------
# Tables written by explain / select -> gene lists
# ---------------------------------------------------------------------------


def ranking_from_table(frame: pd.DataFrame, source: str = "ranking") -> dict[str, list[str]]:
    """Gene ids best first from a ranking table (``gene_ranking.tsv``, ``knockoff_selection.tsv``).

    Rows are ordered by the ``rank`` column (ties by gene id); a table
    without ``rank`` is taken in file order. A table with a ``method`` column
    holding several methods gives one ranking per method, named
    ``"{source}:{method}"``.

    Raises
    ------
    InputDataError
        No ``gene_id`` column, non-numeric ranks or duplicated genes.
    """
    if "gene_id" not in frame.columns:
        raise InputDataError(f"{source}: no 'gene_id' column (columns: {', '.join(map(str, frame.columns))}). "
                             f"Pass a gene_ranking.tsv or knockoff_selection.tsv.")
    frame = tested_rows(frame)  # knockoff_selection.tsv: genes the preprocessing removed were never ranked
    groups = [(source, frame)]
    if "method" in frame.columns and frame["method"].nunique() > 1:
        groups = [(f"{source}:{m}", part) for m, part in frame.groupby("method", sort=True)]
    out = {}
    for name, part in groups:
        part = part.assign(gene_id=part["gene_id"].astype(str).str.strip())
        dup = part["gene_id"][part["gene_id"].duplicated()]
        if len(dup):
            raise InputDataError(f"{name}: gene '{dup.iloc[0]}' appears {int((part['gene_id'] == dup.iloc[0]).sum())} "
                                 f"times; a ranking lists each gene once.")
        if "rank" in part.columns:
            ranks = pd.to_numeric(part["rank"], errors="coerce")
            if ranks.isna().any():
                bad = part.loc[ranks.isna(), "gene_id"].iloc[0]
                raise InputDataError(f"{name}: non-numeric rank for gene '{bad}'. Ranks are 1-based integers.")
            part = part.assign(_rank=ranks.to_numpy()).sort_values(["_rank", "gene_id"], kind="stable")
        out[name] = part["gene_id"].tolist()
    return out


def selection_from_table(frame: pd.DataFrame, source: str = "selection") -> list[str]:
    """Selected gene ids from a selection table (``knockoff_selection.tsv``).

    Genes whose ``selected`` column is true (``True``/``1``/``yes``) are
    selected; a table without ``selected`` is a plain gene list, every row
    selected.
    """
    if "gene_id" not in frame.columns:
        raise InputDataError(f"{source}: no 'gene_id' column (columns: {', '.join(map(str, frame.columns))}). "
                             f"Pass a knockoff_selection.tsv or a table with gene_id.")
    genes = frame["gene_id"].astype(str).str.strip()
    if "selected" not in frame.columns:
        return genes.tolist()
    return genes[truthy(frame["selected"]).to_numpy()].tolist()


def truth_from_table(frame: pd.DataFrame, source: str = "truth") -> list[str]:
    """True gene ids: the ``gene_id`` column, else the first column."""
    col = "gene_id" if "gene_id" in frame.columns else frame.columns[0]
    genes = frame[col].astype(str).str.strip()
    genes = genes[genes != ""]
    if genes.empty:
        raise InputDataError(f"{source}: the truth table lists no genes.")
    return list(dict.fromkeys(genes))


# ---------------------------------------------------------------------------
# Selections
# ---------------------------------------------------------------------------


def selection_metrics(selected: Iterable[str], truth: Iterable[str]) -> dict:
    """False discovery proportion and power of one selection.

    FDP = V / max(R, 1) with V false discoveries among R selected genes (0
    for an empty selection, the convention under which FDR = E[FDP]);
    power = true discoveries / number of true genes.

    Returns
    -------
    dict
        n_selected, n_true, true_positives, false_positives,
        false_negatives, fdp, power.
    """
    sel = set(selected)
    true = set(truth)
    tp = len(sel & true)
    fp = len(sel) - tp
    return {"n_selected": len(sel), "n_true": len(true), "true_positives": tp, "false_positives": fp,
            "false_negatives": len(true) - tp, "fdp": fp / max(len(sel), 1),
            "power": tp / len(true) if true else float("nan")}


# ---------------------------------------------------------------------------
# Rankings
# ---------------------------------------------------------------------------


def precision_at_k(ranking: Sequence[str], truth: Iterable[str], k_values: Iterable[int]) -> pd.DataFrame:
    """Precision, recall and FDP of the top-k genes of a ranking, for each k.

    A k larger than the ranking uses the whole ranking (``n_in_top_k`` says
    how many genes that was).

    Returns
    -------
    pandas.DataFrame
        Columns k, n_in_top_k, true_positives, precision_at_k, recall_at_k, fdp_at_k.
    """
    true = set(truth)
    hits = np.cumsum([g in true for g in ranking]) if len(ranking) else np.zeros(0, int)
    rows = []
    for k in sorted(set(int(k) for k in k_values)):
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        m = min(k, len(ranking))
        tp = int(hits[m - 1]) if m else 0
        rows.append({"k": k, "n_in_top_k": m, "true_positives": tp, "precision_at_k": tp / m if m else float("nan"),
                     "recall_at_k": tp / len(true) if true else float("nan"),
                     "fdp_at_k": (m - tp) / m if m else 0.0})
    return pd.DataFrame(rows, columns=["k", "n_in_top_k", "true_positives", "precision_at_k", "recall_at_k",
                                       "fdp_at_k"])


def average_precision(ranking: Sequence[str], truth: Iterable[str]) -> float:
    """Area under the precision-recall curve of a ranking (non-interpolated average precision).

    AP = (1 / |T|) sum over true genes found at position r of precision@r.
    True genes missing from the ranking contribute 0 (never retrieved). For a
    ranking of every gene this equals
    ``sklearn.metrics.average_precision_score`` with scores = -rank.
    """
    true = set(truth)
    if not true:
        return float("nan")
    is_true = np.array([g in true for g in ranking], dtype=float)
    if not is_true.any():
        return 0.0
    precision = np.cumsum(is_true) / np.arange(1, len(is_true) + 1)
    return float(np.sum(precision * is_true) / len(true))


def ranking_metrics(ranking: Sequence[str], truth: Iterable[str]) -> dict:
    """Summary of one ranking: AUPRC, R-precision and the position of the first false gene.

    Returns
    -------
    dict
        n_ranked, n_true, n_true_ranked, auprc, r_precision (precision at
        k = number of true genes), first_false_rank (1-based; the length of
        the clean head of the ranking is first_false_rank - 1), last_true_rank.
    """
    true = set(truth)
    flags = [g in true for g in ranking]
    n_true = len(true)
    first_false = next((i + 1 for i, f in enumerate(flags) if not f), None)
    last_true = max((i + 1 for i, f in enumerate(flags) if f), default=None)
    r_prec = sum(flags[:n_true]) / n_true if n_true else float("nan")
    return {"n_ranked": len(ranking), "n_true": n_true, "n_true_ranked": int(sum(flags)),
            "auprc": average_precision(ranking, true), "r_precision": r_prec,
            "first_false_rank": first_false, "last_true_rank": last_true}


# ---------------------------------------------------------------------------
# Agreement between rankings / selections
# ---------------------------------------------------------------------------


def jaccard(a: Iterable[str], b: Iterable[str]) -> float:
    """|a & b| / |a | b|; 1 for two empty sets (they agree)."""
    a, b = set(a), set(b)
    union = a | b
    return len(a & b) / len(union) if union else 1.0


def kendall_tau(ranking_a: Sequence[str], ranking_b: Sequence[str]) -> float:
    """Kendall's tau-b between two rankings over the genes both rank (NaN if fewer than 2)."""
    from scipy.stats import kendalltau

    pos_b = {g: i for i, g in enumerate(ranking_b)}
    common = [g for g in ranking_a if g in pos_b]
    if len(common) < 2:
        return float("nan")
    return float(kendalltau(np.arange(len(common)), [pos_b[g] for g in common]).statistic)


def ranking_agreement(rankings: Mapping[str, Sequence[str]], k_values: Iterable[int]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pairwise agreement of several rankings (folds, seeds, methods).

    Returns
    -------
    pairs : pandas.DataFrame
        source_a, source_b, k, jaccard (of the top-k sets), kendall_tau
        (whole rankings, common genes).
    summary : pandas.DataFrame
        k, n_sets, mean_jaccard, sd_jaccard, min_jaccard, max_jaccard,
        mean_kendall_tau.
    """
    names = list(rankings)
    ks = sorted(set(int(k) for k in k_values))
    taus = {(a, b): kendall_tau(rankings[a], rankings[b]) for a, b in itertools.combinations(names, 2)}
    rows = [{"source_a": a, "source_b": b, "k": k, "jaccard": jaccard(rankings[a][:k], rankings[b][:k]),
             "kendall_tau": taus[(a, b)]}
            for k in ks for a, b in itertools.combinations(names, 2)]
    pairs = pd.DataFrame(rows, columns=["source_a", "source_b", "k", "jaccard", "kendall_tau"])
    summary = _agreement_summary(pairs, ks, len(names))
    return pairs, summary


def selection_agreement(selections: Mapping[str, Iterable[str]]) -> dict:
    """Mean, sd, min and max pairwise Jaccard of several selections."""
    sets = {k: set(v) for k, v in selections.items()}
    values = [jaccard(sets[a], sets[b]) for a, b in itertools.combinations(sets, 2)]
    return _jaccard_stats(values, len(sets))


def _jaccard_stats(values, n_sets: int) -> dict:
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return {"n_sets": n_sets, "mean_jaccard": float("nan"), "sd_jaccard": float("nan"),
                "min_jaccard": float("nan"), "max_jaccard": float("nan")}
    return {"n_sets": n_sets, "mean_jaccard": float(v.mean()),
            "sd_jaccard": float(v.std(ddof=1)) if v.size > 1 else float("nan"),
            "min_jaccard": float(v.min()), "max_jaccard": float(v.max())}


def _agreement_summary(pairs: pd.DataFrame, ks, n_sets: int) -> pd.DataFrame:
    rows = []
    for k in ks:
        part = pairs[pairs["k"] == k]
        taus = part["kendall_tau"].dropna()
        rows.append({"k": k, **_jaccard_stats(part["jaccard"].to_numpy(), n_sets),
                     "mean_kendall_tau": float(taus.mean()) if len(taus) else float("nan")})
    return pd.DataFrame(rows, columns=["k", "n_sets", "mean_jaccard", "sd_jaccard", "min_jaccard", "max_jaccard",
                                       "mean_kendall_tau"])


# ---------------------------------------------------------------------------
# Prediction gaps (refit without genes)
# ---------------------------------------------------------------------------


def complete_ranking(ranking: Sequence[str], gene_ids: Sequence[str]) -> list[str]:
    """The ranking restricted to ``gene_ids``, then the unranked genes (least important, by id)."""
    present = set(gene_ids)
    head = [g for g in ranking if g in present]
    seen = set(head)
    return head + sorted(g for g in gene_ids if g not in seen)


def _cv_score(pipeline, X, y, keep, classes, task, n_splits, n_repeats, seed, metric):
    from iml_genomics.models import cross_validate

    sample_ids = [str(i) for i in range(X.shape[0])]
    cv = cross_validate(pipeline, X[:, keep], y, sample_ids=sample_ids, classes=classes, task=task,
                        n_splits=n_splits, n_repeats=n_repeats, seed=seed, n_jobs=1)
    from iml_genomics.io.interchange import cv_summary_value

    return cv_summary_value(cv.summary, metric)


def prediction_gaps(X, y, gene_ids: Sequence[str], ranking: Sequence[str], *, pipeline, task: str,
                    classes: list | None, k_values: Iterable[int], n_splits: int = 5, n_repeats: int = 1,
                    n_random: int = 3, cv_seed: int = 0, random_state: int = 0, n_jobs: int | None = 1,
                    metric: str | None = None, backend=None) -> pd.DataFrame:
    """Accuracy lost when the k most (PGI), least (PGU) or k random (PGR) genes are removed.

    After Bontonou et al. (2023), but refitting instead of masking: the
    model (``pipeline``, with its fold-safe preprocessing) is cross-validated
    on all genes and again without the removed genes, on the same folds, and
    the gap is the drop of the CV score. A ranking that finds the genes the
    outcome depends on has a large PGI, a PGU near 0, and PGI > PGR.
    Refitting measures whether the *data* still predict the outcome without
    those genes (correlated genes can stand in for removed ones), which is
    the question a biomarker list answers.

    Parameters
    ----------
    X : array, samples x genes
    y : array
    gene_ids : sequence of str
        Columns of ``X``.
    ranking : sequence of str
        Genes best first; completed with :func:`complete_ranking`.
    pipeline : sklearn.pipeline.Pipeline
        Unfitted preprocessing + model (e.g. ``build_pipeline(cfg, task)``).
    task : {'classification', 'regression'}
    classes : list of str or None
    k_values : iterable of int
        Numbers of genes removed; each must leave at least one gene.
    n_splits, n_repeats, cv_seed
        Cross-validation, identical for every gene subset (paired comparison).
    n_random : int
        Random removals per k for PGR (seeds spawned from ``random_state``).
    n_jobs : int
        Subsets run in parallel; results do not depend on it. Used only when ``backend`` is None.
    backend : iml_genomics.parallel.Backend, optional
        Runs the subsets' cross-validations; it decides over ``n_jobs``.
    metric : str, optional
        CV metric; balanced_accuracy (classification) or r2 (regression) by default.

    Returns
    -------
    pandas.DataFrame
        k, metric, score_all, score_without_top, score_without_bottom,
        score_without_random, pgi, pgu, pgr (one row per k).
    """
    from iml_genomics.parallel import resolve_backend, spawn_seeds

    metric = metric or ("r2" if task == "regression" else "balanced_accuracy")
    gene_ids = list(gene_ids)
    p = len(gene_ids)
    order = complete_ranking(ranking, gene_ids)
    col = {g: j for j, g in enumerate(gene_ids)}
    order_idx = np.array([col[g] for g in order], dtype=int)
    ks = sorted(set(int(k) for k in k_values))
    for k in ks:
        if not 1 <= k < p:
            raise ValueError(f"k must be between 1 and {p - 1} (the number of genes - 1), got {k}")
    seeds = spawn_seeds(random_state, len(ks) * n_random)
    all_idx = np.arange(p)
    subsets = [("all", 0, all_idx)]
    for i, k in enumerate(ks):
        subsets.append(("top", k, np.sort(order_idx[k:])))
        subsets.append(("bottom", k, np.sort(order_idx[:p - k])))
        for r in range(n_random):
            drop = np.random.default_rng(seeds[i * n_random + r]).choice(p, size=k, replace=False)
            subsets.append(("random", k, np.setdiff1d(all_idx, drop)))
    scores = resolve_backend(backend, n_jobs).map(
        _cv_score, [(pipeline, X, y, keep, classes, task, n_splits, n_repeats, cv_seed, metric)
                    for _, _, keep in subsets])
    base = scores[0]
    rows = []
    for k in ks:
        top = [s for (kind, kk, _), s in zip(subsets, scores) if kind == "top" and kk == k][0]
        bottom = [s for (kind, kk, _), s in zip(subsets, scores) if kind == "bottom" and kk == k][0]
        rand = float(np.mean([s for (kind, kk, _), s in zip(subsets, scores) if kind == "random" and kk == k]))
        rows.append({"k": k, "metric": metric, "score_all": base, "score_without_top": top,
                     "score_without_bottom": bottom, "score_without_random": rand,
                     "pgi": base - top, "pgu": base - bottom, "pgr": base - rand})
    return pd.DataFrame(rows, columns=["k", "metric", "score_all", "score_without_top", "score_without_bottom",
                                       "score_without_random", "pgi", "pgu", "pgr"])


# ---------------------------------------------------------------------------
# Everything at once
# ---------------------------------------------------------------------------


def evaluate_against_truth(truth: Iterable[str], *, rankings: Mapping[str, Sequence[str]] | None = None,
                           selections: Mapping[str, Iterable[str]] | None = None,
                           k_values: Iterable[int] = (10, 20, 50)) -> dict[str, pd.DataFrame]:
    """All truth-based metrics for several rankings and selections.

    Returns
    -------
    dict of str -> pandas.DataFrame
        ``selection_metrics`` (source + :func:`selection_metrics`),
        ``ranking_metrics`` (source + :func:`ranking_metrics`),
        ``precision_at_k`` (source + :func:`precision_at_k`), and
        ``stability`` / ``stability_pairs`` (agreement of top-k sets and of
        selections) when there are at least two rankings or selections.
    """
    truth = list(dict.fromkeys(truth))
    rankings = dict(rankings or {})
    selections = dict(selections or {})
    k_values = sorted(set(int(k) for k in k_values))
    sel_rows = [{"source": name, **selection_metrics(genes, truth)} for name, genes in selections.items()]
    out = {
        "selection_metrics": pd.DataFrame(sel_rows, columns=["source", "n_selected", "n_true", "true_positives",
                                                             "false_positives", "false_negatives", "fdp", "power"]),
        "ranking_metrics": pd.DataFrame([{"source": n, **ranking_metrics(r, truth)} for n, r in rankings.items()],
                                        columns=["source", "n_ranked", "n_true", "n_true_ranked", "auprc",
                                                 "r_precision", "first_false_rank", "last_true_rank"]),
    }
    for col in ("first_false_rank", "last_true_rank"):
        out["ranking_metrics"][col] = out["ranking_metrics"][col].astype("Int64")
    pk = [precision_at_k(r, truth, k_values).assign(source=n) for n, r in rankings.items()]
    cols = ["source", "k", "n_in_top_k", "true_positives", "precision_at_k", "recall_at_k", "fdp_at_k"]
    out["precision_at_k"] = pd.concat(pk, ignore_index=True)[cols] if pk else pd.DataFrame(columns=cols)
    stab_cols = ["kind", "k", "n_sets", "mean_jaccard", "sd_jaccard", "min_jaccard", "max_jaccard", "mean_kendall_tau"]
    stab_parts, pair_parts = [], []
    if len(rankings) >= 2:
        pairs, summary = ranking_agreement(rankings, k_values)
        stab_parts.append(summary.assign(kind="ranking_top_k"))
        pair_parts.append(pairs.assign(kind="ranking_top_k"))
    if len(selections) >= 2:
        stab_parts.append(pd.DataFrame([{"kind": "selection", "k": pd.NA, **selection_agreement(selections),
                                         "mean_kendall_tau": float("nan")}]))
        sets = {k: set(v) for k, v in selections.items()}
        pair_parts.append(pd.DataFrame([{"kind": "selection", "source_a": a, "source_b": b, "k": pd.NA,
                                         "jaccard": jaccard(sets[a], sets[b]), "kendall_tau": float("nan")}
                                        for a, b in itertools.combinations(sets, 2)]))
    if stab_parts:
        stab = pd.concat(stab_parts, ignore_index=True)[stab_cols]
        stab["k"] = stab["k"].astype("Int64")
        pairs = pd.concat(pair_parts, ignore_index=True)[["kind", "source_a", "source_b", "k", "jaccard", "kendall_tau"]]
        pairs["k"] = pairs["k"].astype("Int64")
        out["stability"], out["stability_pairs"] = stab, pairs
    return out
