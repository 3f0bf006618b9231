"""One validated cohort: expression matched to labels by sample id.

The cohort is an :class:`anndata.AnnData` (X samples x genes, ``obs`` the
label table aligned to the matrix, ``var`` indexed by gene id), the common
currency of every subcommand.
"""

from __future__ import annotations

import logging
import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse

from iml_genomics.errors import InputDataError
from iml_genomics.io.ids import show_id
from iml_genomics.io.readers import read_expression, read_labels

# `run` reads the cohort once; this debug line (one per call) lets a test and `--verbose` count the reads
log = logging.getLogger("iml_genomics.io")


def _few(ids, n: int = 5) -> str:
    ids = list(ids)
    shown = ", ".join(f"'{show_id(i, 100)}'" for i in ids[:n])
    return shown + (", ..." if len(ids) > n else "")


def load_cohort(expression: str | Path, *, labels: str | Path | None, label_column: str | None,
                sample_id_column: str | None = None, genes_as_rows: bool = False,
                layer: str | None = None, drop_unmatched: bool = False,
                covariates: list[str] | None = None, require_labels: bool = True,
                positive_class: str | None = None, sensitive: list[str] | None = None):
    """Read an expression matrix and its labels, matched by sample id.

    Parameters
    ----------
    expression : path
        Expression matrix (CSV/TSV[.gz], Parquet, .h5ad).
    labels : path or None
        Labels table; when None the labels come from the ``.h5ad`` obs.
    label_column : str or None
        Outcome column. May be None only when ``require_labels`` is False.
    sample_id_column, genes_as_rows, layer
        Passed to the readers.
    drop_unmatched : bool
        Keep the samples present in both files instead of failing.
    covariates : list of str, optional
        Label-table columns to carry along (fixed covariates).
    sensitive : list of str, optional
        Label-table columns to carry along for the sensitive-attribute audit (``data.sensitive``); absent or
        blank values are refused like a covariate's.
    positive_class : str, optional
        ``data.positive_class``: when the label column has more than two classes and this is one of them,
        the outcome becomes that class against all the others (:func:`one_vs_rest`).
    require_labels : bool
        Whether the cohort must have an outcome (``train``, ``select``) or may
        be unlabelled (``explain`` of new samples).

    Returns
    -------
    anndata.AnnData
        X float64 (dense or CSR), obs aligned to the matrix order, with the
        source paths in ``uns['sources']``.
    """
    log.debug("load_cohort %s", expression)
    if label_column is not None and label_column in (covariates or []):
        # adjusting for the outcome itself removes all signal: every statistic is zero, nothing is selected
        raise InputDataError(f"{labels or expression}: the label column '{show_id(label_column)}' is also listed in "
                             f"data.covariates. Remove it from data.covariates.")
    X, sample_ids, gene_ids, obs = read_expression(expression, genes_as_rows=genes_as_rows, layer=layer)
    obs_frame = pd.DataFrame(index=pd.Index(sample_ids, name="sample_id"))
    if label_column is None:
        if require_labels:
            raise InputDataError(f"{labels or expression}: no label column given. Pass --label-column COL "
                                 f"(or set data.label_column in the config).")
    else:
        if labels is None:
            if obs is None:
                raise InputDataError(f"{expression}: no labels file given and the matrix has no sample metadata. "
                                     f"Pass --labels FILE (or use an .h5ad with the column in obs).")
            label_source = Path(expression)
            obs.index = obs.index.astype(str)
            table = obs
            missing = [c for c in [label_column, *(covariates or []), *(sensitive or [])] if c not in table.columns]
            if missing:
                what, fix = (("label column", "Pass one with --label-column") if missing[0] == label_column
                             else ("covariate column", "Fix data.covariates in the config")
                             if missing[0] in (covariates or [])
                             else ("sensitive column", "Fix data.sensitive in the config"))
                shown = ", ".join(show_id(c, 60) for c in list(table.columns)[:20]) or "none"
                raise InputDataError(f"{expression}: {what} '{show_id(missing[0])}' not found in obs; available "
                                     f"columns: {shown}. {fix}.")
        else:
            label_source = Path(labels)
            table = read_labels(labels, label_column=label_column, sample_id_column=sample_id_column,
                                extra_columns=covariates, sensitive_columns=sensitive)
        matrix_set, label_set = set(sample_ids), set(table.index)
        only_matrix = [s for s in sample_ids if s not in label_set]
        only_labels = [s for s in table.index if s not in matrix_set]
        if (only_matrix or only_labels) and not drop_unmatched:
            parts = []
            if only_labels:
                parts.append(f"{len(only_labels)} sample(s) in labels not in the matrix ({_few(only_labels)})")
            if only_matrix:
                parts.append(f"{len(only_matrix)} sample(s) in the matrix not in labels ({_few(only_matrix)})")
            hint = _orientation_hint(only_labels, only_matrix, gene_ids, genes_as_rows)
            raise InputDataError(f"{label_source}: sample ids do not match {expression}: {'; '.join(parts)}. "
                                 f"{hint or 'Fix the ids, or pass --drop-unmatched to keep only the shared samples.'}")
        keep = [i for i, s in enumerate(sample_ids) if s in label_set]
        if not keep:
            hint = _orientation_hint(list(table.index), sample_ids, gene_ids, genes_as_rows)
            raise InputDataError(f"{label_source}: no sample id is shared with {expression}; "
                                 f"{hint or 'check --genes-as-rows and the sample id column.'}")
        if len(keep) < len(sample_ids):
            X = X[keep]
            sample_ids = [sample_ids[i] for i in keep]
        obs_frame = table.loc[sample_ids].copy()
        obs_frame.index.name = "sample_id"
        values = obs_frame[label_column]
        check_label_values(values, source=str(label_source), column=label_column)
        text = values.astype(str)
        broken = text.map(lambda v: any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in v))
        if broken.any():
            # class names are written to oof_predictions.tsv and the report: a tab or newline splits the rows
            first = broken.to_numpy().nonzero()[0][0]
            raise InputDataError(f"{label_source}: label '{show_id(text.iloc[first])}' of sample "
                                 f"'{show_id(text.index[first])}' in column '{show_id(label_column)}' contains a "
                                 f"tab, newline or control character. Rename the class.")
        if positive_class is not None:
            obs_frame[label_column] = one_vs_rest(obs_frame[label_column], positive_class)
        for column, key in [*((c, "covariates") for c in covariates or []),
                            *((c, "sensitive") for c in sensitive or [])]:
            # a blank covariate would be one-hot encoded as a level of its own (one column per
            # distinct blank-ish value), silently adjusting for "missing" as if it were a batch
            cov = obs_frame[column]
            blank = cov.isna() | (cov.astype(str).str.strip() == "")
            if blank.any():
                what = "covariate" if key == "covariates" else "sensitive"
                raise InputDataError(f"{label_source}: {what} column '{show_id(column)}' (data.{key}) is "
                                     f"empty for {int(blank.sum())} sample(s) ({_few(cov.index[blank])}). Fill "
                                     f"the values in, remove those samples, or drop the {what} column.")
    import anndata as ad  # imported late: a bad input fails fast, before this heavy import

    adata = ad.AnnData(X=X if sparse.issparse(X) else np.ascontiguousarray(X), obs=obs_frame,
                       var=pd.DataFrame(index=pd.Index(gene_ids, name="gene_id")))
    adata.uns["sources"] = {"expression": str(expression), "labels": str(labels) if labels else None}
    return adata


def check_label_values(values: pd.Series, *, source: str, column: str) -> None:
    """Refuse an outcome with missing values (NaN, None, blank).

    ``astype(str)`` would turn a missing label into a class named ``'nan'`` (or ``'None'``), and a
    two-class column with gaps into a model of "has a label" against "has none". Every step checks here,
    so an in-memory AnnData (``ig.tl``) gets the same refusal as a labels file.

    Parameters
    ----------
    values : pandas.Series
        The label column, indexed by sample id.
    source, column : str
        The labels' file (or ``adata.obs``) and column, for the message.

    Raises
    ------
    InputDataError
        Naming how many samples lack a value and the first few of them.
    """
    missing = values.isna() | (values.astype(str).str.strip() == "")
    if missing.any():
        raise InputDataError(f"{source}: {int(missing.sum())} sample(s) have no value in label column "
                             f"'{show_id(column)}' ({_few(values.index[missing])}). Fill them in or remove "
                             f"those samples.")


def check_variation(adata, source: str) -> None:
    """Refuse a cohort in which every gene is constant across the samples.

    A model fitted on it predicts one value for everyone (cross-validated
    AUROC 0.5 with exit code 0 before this check); such a matrix is a
    placeholder or a mis-export, not data.

    Raises
    ------
    InputDataError
        Naming the file, the counts and one gene's constant value.
    """
    X = adata.X
    if adata.n_obs < 2 or adata.n_vars == 0:
        return
    if sparse.issparse(X):
        X = X.tocsc()
        hi, lo = X.max(axis=0).toarray().ravel(), X.min(axis=0).toarray().ravel()
    else:
        hi, lo = np.max(X, axis=0), np.min(X, axis=0)
    if np.all(hi == lo):
        raise InputDataError(f"{source}: all {adata.n_vars} genes are constant across the {adata.n_obs} samples "
                             f"(every value of '{show_id(adata.var_names[0], 60)}' is {lo[0]:g}); there is nothing "
                             f"to learn. Check that the file holds the expression values.")


def _orientation_hint(label_ids, matrix_ids, gene_ids, genes_as_rows: bool) -> str | None:
    """Advice when the label ids are the matrix's other axis (genes and samples swapped)."""
    label_ids = set(map(str, label_ids))
    if label_ids and len(label_ids & set(gene_ids)) >= max(1, len(label_ids) // 2):
        flag = "drop --genes-as-rows" if genes_as_rows else "pass --genes-as-rows"
        return (f"The labels' sample ids are the matrix's {'row' if genes_as_rows else 'column'} ids: the matrix "
                f"seems to have {'samples' if genes_as_rows else 'genes'} as rows; {flag}.")
    return None


def infer_task(y: pd.Series, requested: str = "auto") -> str:
    """'classification' or 'regression' from the label values.

    Numeric labels with more than 10 distinct values, or non-integer values,
    are treated as continuous; everything else as classes.
    """
    if requested != "auto":
        return requested
    numeric = pd.to_numeric(y, errors="coerce")
    if numeric.notna().all():
        n_unique = numeric.nunique()
        if n_unique > 10 or not np.allclose(numeric, np.round(numeric)):
            return "regression"
    return "classification"


def prepare_target(y: pd.Series, task: str, *, n_splits: int, source: str, column: str):
    """Validate the outcome for cross-validation and return it as an array.

    Returns
    -------
    y : numpy.ndarray
        float64 for regression; the class labels (str) for classification.
    classes : list of str or None
        Sorted class names for classification.
    """
    check_label_values(y, source=source, column=column)
    if task == "regression":
        numeric = pd.to_numeric(y, errors="coerce")
        if numeric.isna().any():
            bad = y[numeric.isna()]
            raise InputDataError(f"{source}: label column '{column}' must be numeric for regression; sample "
                                 f"'{show_id(bad.index[0])}' has '{show_id(bad.iloc[0])}'. Set task: classification or fix the value.")
        if numeric.nunique() < 2:
            raise InputDataError(f"{source}: label column '{column}' is constant; there is nothing to predict. "
                                 f"Check that --label-column names the outcome.")
        if len(numeric) < n_splits:
            raise InputDataError(f"{source}: {len(numeric)} samples is fewer than the {n_splits} CV folds; "
                                 f"lower cv.n_splits (--cv-folds).")
        return numeric.to_numpy(dtype=np.float64), None
    labels = y.astype(str).str.strip()
    counts = labels.value_counts()
    if len(counts) < 2:
        raise InputDataError(f"{source}: label column '{column}' has a single class ('{show_id(counts.index[0])}'); "
                             f"classification needs at least two. Check that --label-column names the outcome "
                             f"and that the file holds samples of every group.")
    small = counts[counts < n_splits]
    if len(small):
        raise InputDataError(f"{source}: class '{show_id(small.index[0])}' of column '{column}' has {int(small.iloc[0])} "
                             f"sample(s), fewer than the {n_splits} CV folds; lower cv.n_splits (--cv-folds) "
                             f"or merge/remove that class.")
    return labels.to_numpy(dtype=object), sorted(counts.index)


# (class of interest, reference) pairs whose default order (the last label in sorted order is positive) picks
# the reference: 'control' sorts after 'case', 'normal' after 'tumour'. Compared lower-cased.
REFERENCE_PAIRS = (
    ("case", "control"), ("patient", "control"), ("disease", "control"), ("treated", "control"),
    ("treatment", "control"), ("disease", "healthy"), ("patient", "healthy"), ("tumour", "normal"),
    ("tumor", "normal"), ("cancer", "normal"), ("treated", "untreated"),
)


REST_LABEL = "rest"


def one_vs_rest(values, positive_class: str | None):
    """The outcome ``positive_class`` against every other class, when a class is asked of a column of several.

    Single-cell labels are cell types; the question a biologist asks is one type against the rest (scanpy's
    ``reference='rest'``). The other classes become one class named ``rest`` (``rest_2``, ... when a class
    is already called so); missing labels stay missing. A column of two classes, a positive class that is
    not a label (the later check says so), or no positive class leaves the values as they are.

    Parameters
    ----------
    values : pandas.Series
        The label column.
    positive_class : str or None

    Returns
    -------
    pandas.Series
        Labels as text, ``positive_class`` or the rest label.
    """
    import pandas as pd

    if positive_class is None:
        return values
    present = values.dropna()
    classes = set(present.astype(str))
    if len(classes) <= 2 or str(positive_class) not in classes:
        return values
    rest, n = REST_LABEL, 1
    while rest in classes:
        n += 1
        rest = f"{REST_LABEL}_{n}"
    text = values.astype(object).where(values.isna(), values.astype(str))
    return pd.Series([v if pd.isna(v) or v == str(positive_class) else rest for v in text], index=values.index,
                     name=values.name, dtype=object)


def resolve_positive_class(classes: list[str] | None, requested: str | None, *, source: str,
                           column: str | None) -> tuple[str | None, str | None]:
    """The class of interest of a two-class outcome, validated, and a warning when the default looks wrong.

    Parameters
    ----------
    classes : list of str or None
        Sorted class names (:func:`prepare_target`); None for regression.
    requested : str or None
        ``data.positive_class`` / ``--positive-class``; None = the last label in sorted order.
    source, column : str
        Labels file and column, for messages.

    Returns
    -------
    positive_class : str or None
        None for regression and for more than two classes (every class is explained).
    warning : str or None
        One line for stderr when the default chose the reference-like label of a pair such as
        case/control or tumour/normal (see :data:`REFERENCE_PAIRS`).

    Raises
    ------
    InputDataError
        A requested class that is not a label, or a positive class given for an outcome that does not have
        exactly two classes (multiclass models explain every class; there is no single class of interest).
    """
    from iml_genomics.errors import shorten

    if requested is not None:
        if classes is not None and requested not in classes:
            raise InputDataError(f"{source}: positive class {shorten(requested)} (data.positive_class / "
                                 f"--positive-class) is not a label of column '{column}'; its labels are "
                                 f"{shorten(', '.join(classes))[1:-1]}. Give one of them.")
        if classes is None or len(classes) != 2:
            what = "a continuous outcome" if classes is None else \
                f"{len(classes)} classes ({shorten(', '.join(classes))[1:-1]})"
            raise InputDataError(f"{source}: data.positive_class (--positive-class) {shorten(requested)} is only "
                                 f"meaningful for two classes, but column '{column}' has {what}. Read the labels "
                                 f"with it (the command line and ig.tl ask it against the rest) or remove it.")
        if requested not in classes:
            raise InputDataError(f"{source}: positive class {shorten(requested)} (data.positive_class / "
                                 f"--positive-class) is not a label of column '{column}'; its labels are "
                                 f"{shorten(', '.join(classes))[1:-1]}. Give one of them.")
        return requested, None
    if classes is None or len(classes) != 2:
        return None, None
    positive, other = classes[-1], classes[0]
    warning = None
    if (other.strip().lower(), positive.strip().lower()) in REFERENCE_PAIRS:
        warning = (f"iml-genomics: warning: positive class is {shorten(positive)} (the last label in sorted order); "
                   f"set data.positive_class (--positive-class {shorten(other, 60)[1:-1]}) if you meant the other")
    return positive, warning


def positive_index(classes: list[str] | None, positive_class: str | None) -> int:
    """Column of the positive class in ``classes``-ordered scores (the last one by default)."""
    if not classes:
        return -1
    return list(classes).index(positive_class) if positive_class in list(classes) else len(classes) - 1
