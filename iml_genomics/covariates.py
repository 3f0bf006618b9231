"""Covariates (``data.covariates``) as model inputs in `train` and `explain`.

The approach (one of the two the issue allows, chosen for being the same model
whatever explains it): the covariates are **extra inputs of the model**, next to
the genes. Each column of ``data.covariates`` is encoded as `select` encodes it
(:func:`iml_genomics.select.filter.covariate_matrix`): a column whose every
value parses as a number stays numeric; any other column is one-hot encoded
with its first level (sorted) dropped. The levels are fixed on the training
cohort and recorded in ``model.json`` (``covariates``), so `explain` and
`evaluate` encode a new cohort the same way and refuse a level the model never
saw.

Inside the model's pipeline :class:`WithCovariates` splits the input matrix
into genes and covariate columns: the genes go through the configured
preprocessing (transform, filter, scaling), the covariate columns through a
``StandardScaler`` of their own, fitted on the training fold like everything
else, and the two are put side by side before the model. scikit-learn's L1/L2
penalties apply to every column alike, so the covariates are penalised like a
gene *on the unit-variance scale*: a covariate that explains the outcome better
than the genes that merely track it wins the penalised fit, which is what moves
attribution off batch-driven genes (tests/test_covariates.py measures it). They
are not unpenalised; a covariate the model finds useless can get a zero weight,
and `explain` then reports that as an attribution of zero.

Covariate columns appear in the explanations under the feature id
``covariate:<column>`` (numeric) or ``covariate:<column>=<level>`` (one level of
a categorical column), marked ``feature_type = covariate`` in gene_ranking.tsv.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import sparse
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted

from iml_genomics.errors import InputDataError
from iml_genomics.io.ids import show_id

PREFIX = "covariate:"


def require_column(obs: pd.DataFrame, column: str, *, source: str, key: str = "data.covariates") -> pd.Series:
    """``obs[column]``, refusing an absent column or a blank value (one line naming both).

    ``key`` is the config key that named the column (``data.covariates`` or ``data.sensitive``).
    """
    what = "covariate" if key == "data.covariates" else "sensitive"
    if column not in obs.columns:
        raise InputDataError(f"{source}: {what} column '{show_id(column)}' ({key}) not found in the sample "
                             f"metadata. Give a labels table (or .h5ad obs) that has it, or fix {key}.")
    values = obs[column]
    blank = values.isna() | (values.astype(str).str.strip() == "")
    if blank.any():
        first = values.index[np.flatnonzero(blank.to_numpy())[0]]
        raise InputDataError(f"{source}: {what} column '{show_id(column)}' ({key}) is empty for "
                             f"{int(blank.sum())} sample(s) (first: '{show_id(first)}'). Fill the values in, remove "
                             f"those samples, or drop the column from {key}.")
    return values


def fit_encoding(obs: pd.DataFrame, columns: list[str], *, source: str, gene_ids=()) -> list[dict]:
    """How each covariate column becomes model inputs, learned from the training cohort.

    Parameters
    ----------
    obs : pandas.DataFrame
        Sample metadata (``adata.obs``).
    columns : list of str
        ``data.covariates``.
    source : str
        Where ``obs`` came from, for error messages.
    gene_ids : sequence of str
        The model's genes; a covariate feature id equal to a gene id is refused.

    Returns
    -------
    list of dict
        One entry per column: ``column``, ``kind`` (numeric | categorical), ``levels`` (categorical: every
        level, sorted; the first is the reference and has no feature) and ``features`` (the feature ids).

    Raises
    ------
    InputDataError
        An absent column, a blank value, a column with a single value, a feature id that is also a gene id.
    """
    encoding = []
    genes = set(map(str, gene_ids))
    for column in columns:
        values = require_column(obs, column, source=source)
        numeric = pd.to_numeric(values, errors="coerce")
        if numeric.notna().all():
            entry = {"column": column, "kind": "numeric", "levels": None, "features": [f"{PREFIX}{column}"]}
            constant = float(numeric.max() - numeric.min()) == 0.0
        else:
            levels = sorted(values.astype(str).unique())
            entry = {"column": column, "kind": "categorical", "levels": levels,
                     "features": [f"{PREFIX}{column}={level}" for level in levels[1:]]}
            constant = len(levels) < 2
        if constant:
            raise InputDataError(f"{source}: covariate column '{show_id(column)}' (data.covariates) has the same "
                                 f"value for every sample; it cannot be adjusted for. Drop it from data.covariates.")
        clash = next((f for f in entry["features"] if f in genes), None)
        if clash is not None:
            raise InputDataError(f"{source}: covariate feature '{show_id(clash)}' has the name of a gene. Rename "
                                 f"the gene or the covariate column.")
        encoding.append(entry)
    return encoding


def apply_encoding(obs: pd.DataFrame, encoding: list[dict], *, source: str) -> np.ndarray:
    """The covariate columns of the model's input (samples x features, float64), encoded as recorded.

    Raises
    ------
    InputDataError
        An absent column, a blank value, a non-number in a numeric covariate or a level the model never saw.
    """
    parts = []
    for entry in encoding:
        column = entry["column"]
        values = require_column(obs, column, source=source)
        if entry["kind"] == "numeric":
            numeric = pd.to_numeric(values, errors="coerce")
            if numeric.isna().any():
                first = values.index[np.flatnonzero(numeric.isna().to_numpy())[0]]
                raise InputDataError(f"{source}: covariate column '{show_id(column)}' was numeric in training but "
                                     f"sample '{show_id(first)}' has '{show_id(str(values[first]))}'. Give numbers.")
            parts.append(numeric.to_numpy(dtype=np.float64)[:, None])
        else:
            text = values.astype(str)
            levels = list(entry["levels"])
            unseen = ~text.isin(levels)
            if unseen.any():
                first = text.index[np.flatnonzero(unseen.to_numpy())[0]]
                raise InputDataError(f"{source}: covariate column '{show_id(column)}' has level "
                                     f"'{show_id(text[first])}' (sample '{show_id(first)}') that the model was not "
                                     f"trained on (levels: {', '.join(show_id(v, 40) for v in levels[:10])}).")
            parts.append((text.to_numpy()[:, None] == np.asarray(levels[1:], dtype=object)[None, :]).astype(np.float64))
    n = obs.shape[0]
    return np.hstack(parts) if parts else np.zeros((n, 0))


def features(encoding: list[dict] | None) -> list[str]:
    """Feature ids of every covariate column, in input order."""
    return [f for entry in encoding or [] for f in entry["features"]]


def with_covariates(X, Z: np.ndarray):
    """``[X, Z]``: the model's input matrix (sparse stays CSR)."""
    if Z.shape[1] == 0:
        return X
    if sparse.issparse(X):
        return sparse.hstack([X, sparse.csr_matrix(Z)], format="csr")
    return np.hstack([np.asarray(X, dtype=np.float64), Z])


def check_manifest_covariates(manifest: dict, cfg_covariates: list[str], source: str) -> list[dict]:
    """The bundle's covariate encoding; the config must not ask for other covariates than it was trained with."""
    encoding = manifest.get("covariates") or []
    trained = [e["column"] for e in encoding]
    if cfg_covariates and list(cfg_covariates) != trained:
        raise InputDataError(f"{source}: data.covariates ({', '.join(map(show_id, cfg_covariates))}) differ from "
                             f"the covariates the model was trained with ({', '.join(map(show_id, trained)) or 'none'})."
                             f" Use the model's covariates or re-train.")
    return encoding


class WithCovariates(TransformerMixin, BaseEstimator):
    """Gene preprocessing on the first columns, a standard scaler on the last ``n_covariates`` columns.

    Parameters
    ----------
    genes : sklearn.pipeline.Pipeline
        The configured gene preprocessing (transform, filter, scaling), unfitted.
    n_covariates : int
        Number of covariate feature columns at the end of the input.

    Attributes
    ----------
    genes_ : Pipeline
        ``genes`` fitted on the gene columns of the training data.
    covariate_scaler_ : StandardScaler
        Fitted on the covariate columns of the training data (zero-variance columns keep scale 1).
    """

    def __init__(self, genes=None, n_covariates: int = 0):
        self.genes = genes
        self.n_covariates = n_covariates

    def _split(self, X):
        p = X.shape[1] - self.n_covariates
        Z = X[:, p:]
        Z = Z.toarray() if sparse.issparse(Z) else np.asarray(Z, dtype=np.float64)
        return X[:, :p], Z

    def fit(self, X, y=None):
        G, Z = self._split(X)
        self.genes_ = clone(self.genes).fit(G)
        self.covariate_scaler_ = StandardScaler().fit(Z)
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X):
        check_is_fitted(self, "genes_")
        G, Z = self._split(X)
        G = self.genes_.transform(G)
        Zs = self.covariate_scaler_.transform(Z)
        if sparse.issparse(G):
            return sparse.hstack([G, sparse.csr_matrix(Zs)], format="csr")
        return np.hstack([np.asarray(G, dtype=np.float64), Zs])

    def get_support(self) -> np.ndarray:
        """Boolean mask over the input columns: the genes the gene filters keep, and every covariate column."""
        check_is_fitted(self, "genes_")
        mask = np.ones(self.n_features_in_ - self.n_covariates, dtype=bool)
        for _, step in self.genes_.steps:
            if hasattr(step, "get_support"):
                new = np.zeros_like(mask)
                new[np.flatnonzero(mask)[step.get_support()]] = True
                mask = new
        return np.concatenate([mask, np.ones(self.n_covariates, dtype=bool)])
