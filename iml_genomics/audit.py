"""Sensitive-attribute audit (``data.sensitive``): ``audit.tsv`` of the `explain` step.

For every attribute (a sample-metadata column such as sex, ancestry or batch) three questions:

1. **Does the model work equally well in every group?** (``quantity = performance``, ``explains = model``)
   The model's out-of-fold predictions (train's CV; recomputed with the same folds when explain is not
   handed them) are scored per group: AUROC of the explained class for two classes (balanced accuracy
   when a group holds one class only, or for more classes), R^2 for a continuous outcome, each with a
   seeded bootstrap 95% interval and the group's n.
2. **Do the model's top genes encode the attribute?** (``quantity = predictability``, ``explains = data``)
   A balanced logistic regression on the model's top-k genes (``explain.top_k``, genes only), scored by
   stratified 5-fold CV: balanced accuracy (chance = 1 / number of groups) and, for two groups, AUROC.
   It describes the cohort's expression restricted to the genes the model chose, not the model's output.
3. **How much of the model's attribution lands on genes associated with the attribute?**
   (``quantity = attribution_share``, ``explains = model``) Genes are tested one by one against the
   attribute (ANOVA F-test, Benjamini-Hochberg q <= 0.05 over every gene); the share is the sum of their
   mean |SHAP| (permutation importance when SHAP was not run) over the total of every input (genes and
   covariates).

A numeric attribute with more than 10 distinct values is cut into quartiles first (groups are ranges).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

AUDIT_COLUMNS = ["attribute", "group", "quantity", "metric", "value", "ci_low", "ci_high", "n", "chance", "n_genes",
                 "explains", "note"]
ASSOCIATION_Q = 0.05
MAX_NUMERIC_LEVELS = 10
N_BOOTSTRAP = 200


def attribute_groups(values: pd.Series) -> pd.Series:
    """Group labels of an attribute column (strings); many-valued numbers become quartile ranges."""
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.notna().all() and numeric.nunique() > MAX_NUMERIC_LEVELS:
        bins = pd.qcut(numeric, 4, duplicates="drop")
        return bins.astype(str)
    return values.astype(str)


def _bootstrap_ci(score, idx: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """Percentile 95% interval of ``score(rows)`` over bootstrap resamples of ``idx`` (NaN resamples skipped)."""
    stats = []
    for _ in range(N_BOOTSTRAP):
        value = score(rng.choice(idx, size=idx.size, replace=True))
        if np.isfinite(value):
            stats.append(value)
    if len(stats) < N_BOOTSTRAP // 2:
        return float("nan"), float("nan")
    return float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))


def binary_auroc(is_positive: np.ndarray, score: np.ndarray) -> float:
    """AUROC of ``score`` for the rows where ``is_positive`` is true: the Mann-Whitney U over n1 x n0.

    Equal to :func:`sklearn.metrics.roc_auc_score` (ties count one half) without its input validation,
    which cost ~6 ms per call: the bootstrap interval of every group calls it ``N_BOOTSTRAP`` times.

    Parameters
    ----------
    is_positive : ndarray of bool
    score : ndarray of float

    Returns
    -------
    float
        NaN when one of the two classes is absent.
    """
    from scipy.stats import rankdata

    is_positive = np.asarray(is_positive, dtype=bool)
    n1 = int(is_positive.sum())
    n0 = is_positive.size - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    # average ranks are halves of integers: their sum and U are exact in float64, one rounding in the division
    u = rankdata(score)[is_positive].sum() - n1 * (n1 + 1) / 2.0
    return float(u / (n1 * n0))


def _performance_rows(attribute, groups, oof, y_true, classes, positive, rng) -> list[dict]:
    """Per-group metric of the out-of-fold predictions (one row per group)."""
    from sklearn import metrics

    rows = []
    for group in sorted(groups.unique()):
        idx = np.flatnonzero(groups.to_numpy() == group)
        row = {"attribute": attribute, "group": group, "quantity": "performance", "n": idx.size,
               "explains": "model", "n_genes": np.nan, "chance": np.nan}
        if classes is None:
            def score(rows_, _t=y_true, _p=oof):
                return metrics.r2_score(_t[rows_], _p[rows_]) if len(np.unique(_t[rows_])) > 1 else np.nan
            row.update(metric="r2", note="out-of-fold predictions")
        else:
            probs = oof
            k = classes.index(positive) if positive is not None else len(classes) - 1
            two = len(classes) == 2
            present = np.unique(y_true[idx])
            if two and present.size == 2:
                def score(rows_, _t=y_true, _p=probs, _k=k):
                    t = _t[rows_] == _k
                    return binary_auroc(t, _p[rows_, _k]) if 0 < t.sum() < t.size else np.nan
                row.update(metric="auroc", note=f"out-of-fold AUROC of class '{classes[k]}'", chance=0.5)
            else:
                def score(rows_, _t=y_true, _p=probs):
                    return metrics.balanced_accuracy_score(_t[rows_], _p[rows_].argmax(axis=1))
                row.update(metric="balanced_accuracy", chance=1.0 / len(classes),
                           note="out-of-fold balanced accuracy" + (" (one class only in this group)"
                                                                  if present.size < 2 else ""))
        row["value"] = float(score(idx))
        row["ci_low"], row["ci_high"] = _bootstrap_ci(score, idx, rng)
        rows.append(row)
    return rows


def _predictability_rows(attribute, groups, X_top, n_top, seed) -> list[dict]:
    """CV balanced accuracy (and AUROC for two groups) of a balanced logistic regression on the top genes."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    labels = groups.to_numpy()
    levels, counts = np.unique(labels, return_counts=True)
    base = {"attribute": attribute, "group": "all", "quantity": "predictability", "n": labels.size,
            "n_genes": n_top, "explains": "data", "ci_low": np.nan, "ci_high": np.nan}
    n_splits = int(min(5, counts.min()))
    if levels.size < 2 or n_splits < 2 or n_top == 0:
        return [{**base, "metric": "balanced_accuracy", "value": np.nan, "chance": np.nan,
                 "note": "not computed: fewer than 2 groups with 2 samples each, or no gene used"}]
    clf = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=2000))
    cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    proba = cross_val_predict(clf, X_top, labels, cv=cv, method="predict_proba")
    note = (f"balanced logistic regression on the model's top {n_top} genes, stratified {n_splits}-fold CV "
            f"(how well these genes predict the attribute)")
    rows = [{**base, "metric": "balanced_accuracy", "chance": 1.0 / levels.size, "note": note,
             "value": float(balanced_accuracy_score(labels, levels[proba.argmax(axis=1)]))}]
    if levels.size == 2:
        rows.append({**base, "metric": "auroc", "chance": 0.5, "note": note,
                     "value": float(roc_auc_score(labels == levels[1], proba[:, 1]))})
    return rows


def _share_row(attribute, groups, X_genes, gene_ids, importance: pd.Series, score_name: str) -> dict:
    """Share of total importance on genes associated with the attribute (ANOVA F, BH q <= 0.05)."""
    from scipy.stats import false_discovery_control
    from sklearn.feature_selection import f_classif

    labels = groups.to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        _, p = f_classif(X_genes, labels)
    p = np.where(np.isfinite(p), p, 1.0)  # a constant gene is associated with nothing
    q = false_discovery_control(p, method="bh")
    associated = [g for g, qq in zip(gene_ids, q) if qq <= ASSOCIATION_Q]
    imp = importance.fillna(0.0).abs()
    total = float(imp.sum())
    share = float(imp.reindex(associated).fillna(0.0).sum() / total) if total > 0 else float("nan")
    return {"attribute": attribute, "group": "all", "quantity": "attribution_share", "metric": f"{score_name}_share",
            "value": share, "ci_low": np.nan, "ci_high": np.nan, "n": labels.size, "chance": np.nan,
            "n_genes": len(associated), "explains": "model",
            "note": f"share of total {score_name} on the {len(associated)} genes associated with the attribute "
                    f"(ANOVA F-test, BH q <= {ASSOCIATION_Q:g})"}


def sensitive_audit(obs: pd.DataFrame, attributes: list[str], *, X_genes, gene_ids, ranking: pd.DataFrame,
                    top_k: int, oof: pd.DataFrame | None, y_true=None, classes=None, positive_class=None,
                    random_state: int = 0, source: str = "labels") -> pd.DataFrame:
    """``audit.tsv``: per attribute and group, performance, predictability and attribution share.

    Parameters
    ----------
    obs : pandas.DataFrame
        Sample metadata in the rows' order; holds every attribute.
    attributes : list of str
        ``data.sensitive``.
    X_genes : ndarray
        Samples x genes (raw expression, the model's input genes).
    gene_ids : list of str
    ranking : pandas.DataFrame
        ``gene_ranking.tsv`` (``gene_id``, ``used``, ``mean_abs_shap`` or ``permutation_importance``,
        ``feature_type``).
    top_k : int
        Genes for the predictability classifier (``explain.top_k``).
    oof : pandas.DataFrame or None
        ``oof_predictions.tsv`` rows of these samples (averaged over repeats); None = no performance rows.
    y_true : ndarray, optional
        Encoded outcome (class codes or values), in the rows' order.
    classes : list of str or None
    positive_class : str or None
    random_state : int
        Seeds the bootstrap and the CV folds.
    source : str
        For error messages.

    Returns
    -------
    pandas.DataFrame
        :data:`AUDIT_COLUMNS`.

    Raises
    ------
    InputDataError
        An attribute column that is absent or has a blank value.
    """
    from iml_genomics.covariates import require_column

    rng = np.random.default_rng(random_state)
    X_genes = X_genes.toarray() if hasattr(X_genes, "toarray") else np.asarray(X_genes, dtype=np.float64)
    score_name = "mean_abs_shap" if ranking["mean_abs_shap"].notna().any() else "permutation_importance"
    importance = ranking.set_index(ranking["gene_id"].astype(str))[score_name]
    used = ranking[ranking["used"].astype(bool) & (ranking.get("feature_type", "gene") == "gene")]
    top = [g for g in used.sort_values("rank")["gene_id"].astype(str) if g in set(gene_ids)][:top_k]
    col = {g: i for i, g in enumerate(gene_ids)}
    X_top = X_genes[:, [col[g] for g in top]]
    scores = None
    if oof is not None and y_true is not None:
        if classes is None:
            scores = oof.groupby("sample_id", sort=False)["y_pred"].mean().reindex(obs.index).to_numpy()
        else:
            cols = [f"prob_{c}" for c in classes]
            scores = oof.groupby("sample_id", sort=False)[cols].mean().reindex(obs.index).to_numpy()
    rows = []
    for attribute in attributes:
        groups = attribute_groups(require_column(obs, attribute, source=source, key="data.sensitive"))
        if scores is not None:
            rows += _performance_rows(attribute, groups, scores, np.asarray(y_true), classes, positive_class, rng)
        rows += _predictability_rows(attribute, groups, X_top, len(top), random_state)
        rows.append(_share_row(attribute, groups, X_genes, list(gene_ids), importance, score_name))
    table = pd.DataFrame(rows, columns=AUDIT_COLUMNS)
    table["n"] = table["n"].astype("Int64")
    table["n_genes"] = table["n_genes"].astype("Int64")
    return table
