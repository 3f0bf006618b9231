"""What each result explains: the fitted model, the data's conditional structure, or marginal association.

Every table the pipeline writes ends with an ``explains`` column and every summary JSON carries an
``explains`` key, so that a reader never mistakes a statement about the fitted model (SHAP, CV accuracy)
for one about the biology of the cohort (knockoffs, dCRT, CPI) or for plain gene-by-gene association
(univariate effects, over-representation of a univariate list). docs/pipeline.md lists every file's value.

The three kinds:

* ``model``: the fitted model's behaviour. Another model fitted on the same data can say otherwise.
* ``data``: the data's conditional structure: whether a gene carries information on the outcome given all
  the other measured genes, whatever model was fitted (knockoffs, dCRT, conditional permutation).
* ``association``: the marginal association of each gene with the outcome, ignoring every other gene.

No file I/O here (io/step_outputs.py appends the column when it writes).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

KINDS = ("model", "data", "association")
# a table column of several kinds (biomarkers.tsv) or a report summary: only in the column statements
MIXED = "mixed"

MEANING = {
    "model": "the fitted model's behaviour (another model fitted on the same data can rank genes differently)",
    "data": "the data's conditional structure: information on the outcome given all other measured genes, "
            "whatever model was fitted",
    "association": "marginal association of each gene with the outcome, ignoring every other gene",
    MIXED: "columns of several kinds; see biomarkers_columns.tsv and the per-row explains column",
}

# the report's badge text per kind
BADGE = {"model": "explains the model", "data": "explains the data", "association": "marginal association",
         MIXED: "model, data and association side by side"}

# what each step's tables and summary describe when a table does not say otherwise
STEP_KIND = {"train": "model", "explain": "model", "select": "data", "compare": "model"}


def with_explains(frame: pd.DataFrame, kind: str) -> pd.DataFrame:
    """``frame`` with an ``explains`` column equal to ``kind`` appended last; unchanged if it has one.

    Parameters
    ----------
    frame : pandas.DataFrame
    kind : {'model', 'data', 'association'}

    Returns
    -------
    pandas.DataFrame
        A new frame (the input is not modified) or ``frame`` itself when it already says what it explains.
    """
    if kind not in KINDS:
        raise ValueError(f"explains: {kind!r} is not one of {', '.join(KINDS)}")
    if "explains" in frame.columns:
        return frame
    return frame.assign(explains=kind)


def describe_table(frame: pd.DataFrame) -> str:
    """One word for a table's ``explains`` column: its single kind, ``per row`` when rows differ, or ``mixed``
    for a table without the column.
    """
    if "explains" not in frame.columns:
        return MIXED
    values = sorted({str(v) for v in frame["explains"].dropna() if str(v)})
    return values[0] if len(values) == 1 else ("per row" if values else "none")


def query_kind(query_source: str | None) -> str | None:
    """The kind of an over-representation query list, from ``gene_sets.query_source`` of report_summary.json.

    A knockoff (or dCRT) selection describes the data; the top of the SHAP ranking the model; the top genes
    by univariate p-value marginal association; None without a query.
    """
    source = str(query_source or "")
    if source.startswith("knockoff selection"):
        return "data"
    if "explain ranking" in source:
        return "model"
    if "univariate" in source:
        return "association"
    return None


def ranking_kind(metric: str | None) -> str | None:
    """The kind of the rank-based set test's gene scores, from ``gene_sets.ranking_metric``."""
    return {"mean_abs_shap": "model", "univariate": "association", "knockoff_w": "data"}.get(str(metric))


def gene_set_row_kinds(table: pd.DataFrame, query_source: str | None, ranking_metric: str | None,
                       ranking_signed: bool = True) -> pd.Series:
    """Per gene set: the kind of the evidence that ranks it (``gene_sets.tsv``'s ``explains`` column).

    A set is ranked by its smallest q-value (docs/report.md): the row's kind is the over-representation
    query's when one of its q-values (the unsigned list's or a direction's) is the smallest, the rank-based
    test's when ``gsea_q_value`` is strictly smaller; a set with neither is ordered by its group attribution
    (summed |SHAP|), which describes the model. A tie goes to the over-representation test, which the sort
    also reads first. On an unsigned ranking (mean |SHAP|) ``gsea_q_value`` counts only where NES > 0, as in
    the sort.

    Parameters
    ----------
    table : pandas.DataFrame
        ``gene_sets.tsv`` rows (``q_value``, ``gsea_q_value`` and optionally ``q_value_positive_class`` /
        ``q_value_other_class``).
    query_source, ranking_metric : str or None
        ``report_summary.json: gene_sets.query_source`` and ``gene_sets.ranking_metric``.
    ranking_signed : bool
        ``gene_sets.ranking_signed``.

    Returns
    -------
    pandas.Series of str, aligned with ``table``; empty string where no evidence ranks the row.
    """
    ora = query_kind(query_source)
    rank = ranking_kind(ranking_metric)
    q_cols = [c for c in ("q_value", "q_value_positive_class", "q_value_other_class") if c in table.columns]
    ora_q = (pd.concat([pd.to_numeric(table[c], errors="coerce") for c in q_cols], axis=1).min(axis=1)
             if q_cols else pd.Series(np.nan, index=table.index))
    gsea_q = (pd.to_numeric(table["gsea_q_value"], errors="coerce") if "gsea_q_value" in table.columns
              else pd.Series(np.nan, index=table.index))
    if not ranking_signed and "nes" in table.columns:
        gsea_q = gsea_q.where(pd.to_numeric(table["nes"], errors="coerce") > 0)
    attribution = (pd.to_numeric(table["group_attribution"], errors="coerce") if "group_attribution" in table.columns
                   else pd.Series(np.nan, index=table.index))
    out = pd.Series("", index=table.index, dtype=object)
    out[attribution.notna()] = "model"
    if rank is not None:
        out[gsea_q.notna() & ~(ora_q <= gsea_q)] = rank
    if ora is not None:
        out[ora_q.notna() & ~(gsea_q < ora_q)] = ora
    return out


def gene_sets_with_explains(table: pd.DataFrame, gene_set_summary: dict | None) -> pd.DataFrame:
    """``gene_sets.tsv`` with its per-row ``explains`` column appended (unchanged if it has one).

    ``gene_set_summary``: the ``gene_sets`` block of report_summary.json (``query_source``, ``ranking_metric``).
    """
    if "explains" in table.columns:
        return table
    block = gene_set_summary or {}
    return table.assign(explains=gene_set_row_kinds(table, block.get("query_source"), block.get("ranking_metric"),
                                                    block.get("ranking_signed", True) is not False).to_numpy())


def step_summary_with_explains(summary: dict, kind: str) -> dict:
    """A step's summary JSON with ``explains`` (the step's kind) unless it has the key."""
    return summary if "explains" in summary else {**summary, "explains": kind}


# biomarkers_columns.tsv: a column that names the gene rather than stating a result
IDENTIFIER = "identifier"

# biomarkers.tsv: what each column describes and what it is (written as biomarkers_columns.tsv next to it);
# None = decided per run (the gene-set columns follow the gene-set analysis)
BIOMARKER_COLUMN_KINDS = {
    "rank": (MIXED, "position under the sort rule: knockoff-selected genes (data) first, then non-zero mean "
                    "|SHAP| by explain rank (model), then univariate q-value (association); the row's explains "
                    "column says which placed it"),
    "gene_id": (IDENTIFIER, "measured gene id (an identifier, not a result)"),
    "symbol": (IDENTIFIER, "harmonised gene symbol (an identifier, not a result)"),
    "knockoff_selected": ("data", "selected by select at the target FDR (knockoffs or dCRT)"),
    "explain_rank": ("model", "rank in explain's gene_ranking.tsv (mean |SHAP|)"),
    "mean_abs_shap": ("model", "mean |SHAP| of the fitted model"),
    "mean_shap": ("model", "mean signed SHAP of the fitted model"),
    "shap_sd": ("model", "spread of mean |SHAP| across folds or bootstraps"),
    "explain_rank_low": ("model", "low end of the explain rank interval across folds or bootstraps"),
    "explain_rank_high": ("model", "high end of the explain rank interval across folds or bootstraps"),
    "top_k_frequency": ("model", "fraction of folds or bootstraps with the gene in the model's top k"),
    "permutation_importance": ("model", "held-out permutation importance of the fitted model"),
    "permutation_importance_sd": ("model", "sd of the permutation importance"),
    "used_by_model": ("model", "whether the gene reaches the final estimator"),
    "knockoff_w": ("data", "knockoff (or dCRT) statistic W"),
    "knockoff_rank": ("data", "rank by W"),
    "selection_frequency": ("data", "fraction of knockoff draws selecting the gene"),
    "e_value": ("data", "e-value of derandomised knockoffs"),
    "effect": ("association", "univariate effect of the gene on the outcome"),
    "effect_type": ("association", "kind of the univariate effect"),
    "higher_in": ("association", "class with the higher mean (univariate)"),
    "statistic": ("association", "univariate test statistic"),
    "statistic_type": ("association", "kind of the univariate statistic"),
    "p_value": ("association", "p-value of the univariate statistic"),
    "rank_test_p_value": ("association", "p-value of the univariate rank test"),
    "q_value": ("association", "Benjamini-Hochberg q-value of the univariate p-value over genes"),
    "n_gene_sets": (None, "number of significant gene sets containing the gene's symbol"),
    "gene_sets": (None, "the significant gene sets containing the gene's symbol"),
    "explains": (MIXED, "what placed this row at its rank: data (knockoff-selected), model (non-zero mean "
                        "|SHAP|), association (univariate q-value); NA when nothing did"),
}
UNDOCUMENTED = "undocumented"


def biomarker_row_kinds(biomarkers: pd.DataFrame) -> pd.Series:
    """Per gene: the kind of the evidence that placed it at its rank in ``biomarkers.tsv`` (sort rule).

    Knockoff-selected genes come first (``data``), then genes with mean |SHAP| > 0 (``model``), then genes
    with a univariate q-value (``association``); the others are ordered by id only (empty string).
    """
    selected = biomarkers["knockoff_selected"].map(lambda v: v is True or v == True)  # noqa: E712
    shap = pd.to_numeric(biomarkers["mean_abs_shap"], errors="coerce") > 0
    q = pd.to_numeric(biomarkers["q_value"], errors="coerce").notna()
    out = pd.Series("", index=biomarkers.index, dtype=object)
    out[q] = "association"
    out[shap] = "model"
    out[selected.astype(bool)] = "data"
    return out


def biomarker_columns(columns, gene_set_kind: str | None = None) -> pd.DataFrame:
    """``biomarkers_columns.tsv``: one row per column of ``biomarkers.tsv`` (column, explains, meaning).

    Parameters
    ----------
    columns : sequence of str
        The columns of biomarkers.tsv, in order.
    gene_set_kind : str, optional
        The kind of the gene-set evidence behind ``n_gene_sets`` / ``gene_sets`` (one kind, ``mixed`` when
        the significant sets rest on several, None = no gene sets).

    Returns
    -------
    pandas.DataFrame
        Columns ``column``, ``explains``, ``meaning``. A column missing from
        :data:`BIOMARKER_COLUMN_KINDS` says ``undocumented`` (tests fail on it: a new column must say what it
        explains).
    """
    rows = []
    for col in columns:
        kind, meaning = BIOMARKER_COLUMN_KINDS.get(col, (UNDOCUMENTED, "not documented in iml_genomics/explains.py"))
        if kind is None:
            kind = gene_set_kind or ""
            meaning += " (per set: gene_sets.tsv's explains column)"
        rows.append({"column": col, "explains": kind, "meaning": meaning})
    return pd.DataFrame(rows, columns=["column", "explains", "meaning"])


def combined_kind(kinds) -> str | None:
    """One kind for several (``mixed`` when they differ; None when there is none)."""
    found = sorted({str(k) for k in kinds if k})
    return None if not found else found[0] if len(found) == 1 else MIXED
