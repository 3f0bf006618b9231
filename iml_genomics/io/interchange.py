"""Tables that pandas and R read alike (docs/pipeline.md, "Reading the tables in R and pandas").

Every TSV iml-genomics writes spells booleans ``TRUE`` / ``FALSE`` and missing
values (numbers and text) ``NA``: ``pandas.read_csv(sep="\\t")`` reads them as
bool / NaN and R's ``read.delim`` as logical / NA, with no option. Python's
``True``/``False`` (which R reads as text) and empty cells (which R reads as
``""``, not NA) were the old spelling; every reader of our own outputs accepts
both, so results of older runs still feed ``report`` and ``evaluate``.

Cross-validation summaries live in their own tidy table, ``cv_summary.tsv``
(one row per metric: ``metric``, ``mean``, ``sd``, ``n_folds``), so that
``cv_metrics.tsv`` holds only per-fold rows and a column mean over it is the
cross-validated mean.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

TRUE, FALSE, NA = "TRUE", "FALSE", "NA"

# rows older versions appended to cv_metrics.tsv after the folds
SUMMARY_SPLITS = ("mean", "sd")
# cv_metrics.tsv columns that describe a fold rather than score it
CV_FOLD_COLUMNS = ("split", "repeat", "fold", "n_train", "n_test")
CV_SUMMARY_COLUMNS = ("metric", "mean", "sd", "n_folds")


def _bool_text(value):
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return value
    if isinstance(value, (bool, np.bool_)):
        return TRUE if value else FALSE
    return value


def interchange_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` with booleans as ``TRUE``/``FALSE`` and empty text cells missing.

    Numbers are left alone (the writer formats them); every missing value,
    including an empty string in a text column, is then written as ``NA`` by
    :func:`iml_genomics.io.writers.tsv_text`.
    """
    out = frame.copy()
    for col in out.columns:
        s = out[col]
        if pd.api.types.is_bool_dtype(s.dtype):
            # numpy bool and pandas' nullable "boolean" (which may hold <NA>)
            out[col] = s.astype(object).map(_bool_text).astype(object)
        elif s.dtype == object or pd.api.types.is_string_dtype(s.dtype):
            values = s.astype(object)
            out[col] = values.map(_bool_text).where(values.map(lambda v: not (isinstance(v, str) and v == "")),
                                                    None)
    return out


def cv_summary_table(cv_metrics: pd.DataFrame) -> pd.DataFrame:
    """The tidy ``cv_summary.tsv``: one row per metric with ``mean``, ``sd`` (ddof 1) and ``n_folds``.

    Parameters
    ----------
    cv_metrics : pandas.DataFrame
        Per-fold rows of ``cv_metrics.tsv``; ``mean``/``sd`` rows of an older
        file are ignored (the summary is recomputed from the folds).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`CV_SUMMARY_COLUMNS`, metrics in the column order of
        ``cv_metrics``; ``n_folds`` counts the folds where the metric is
        defined (AUROC is undefined on a test fold of one class).
    """
    folds = cv_fold_rows(cv_metrics)
    metrics = [c for c in folds.columns if c not in CV_FOLD_COLUMNS]
    rows = []
    for m in metrics:
        v = pd.to_numeric(folds[m], errors="coerce")
        rows.append({"metric": m, "mean": v.mean(), "sd": v.std(ddof=1), "n_folds": int(v.notna().sum())})
    table = pd.DataFrame(rows, columns=list(CV_SUMMARY_COLUMNS))
    table["n_folds"] = table["n_folds"].astype("int64")
    return table


def cv_fold_rows(cv_metrics: pd.DataFrame) -> pd.DataFrame:
    """Only the per-fold rows (an older ``cv_metrics.tsv`` also had ``mean`` and ``sd`` rows)."""
    if "split" not in cv_metrics.columns:
        return cv_metrics
    keep = ~cv_metrics["split"].astype(str).isin(SUMMARY_SPLITS)
    if keep.all():
        return cv_metrics
    folds = cv_metrics[keep.to_numpy()].reset_index(drop=True)
    # the summary rows had no repeat/fold: once they are gone, the integer columns are integers again
    for col in ("repeat", "fold", "n_train", "n_test"):
        if col in folds.columns and folds[col].notna().all():
            folds[col] = pd.to_numeric(folds[col]).astype("int64")
    return folds


def cv_summary_value(summary: pd.DataFrame, metric: str, stat: str = "mean") -> float:
    """``stat`` (mean or sd) of ``metric`` from a ``cv_summary.tsv`` table."""
    row = summary.loc[summary["metric"].astype(str) == metric]
    if row.empty:
        raise KeyError(metric)
    return float(row[stat].iloc[0])
