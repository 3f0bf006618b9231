"""Fold-safe preprocessing: value transforms, gene filters and scaling.

Each step is a scikit-learn transformer, placed in the model's Pipeline so
that anything learned from data (which genes pass a filter, means and
scales) is learned on training folds only.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted

from iml_genomics.errors import InputDataError

COUNT_TRANSFORMS = ("log1p", "log1p_cpm")


class ExpressionTransform(TransformerMixin, BaseEstimator):
    """Per-sample value transform; learns nothing, so it cannot leak.

    Parameters
    ----------
    method : {'none', 'log1p', 'log1p_cpm'}
        The config's ``preprocess.transform``. ``log1p_cpm`` scales each sample to counts per million (by that
        sample's own total) before ``log1p``.
    """

    def __init__(self, method: str = "none"):
        self.method = method

    def fit(self, X, y=None):
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X):
        check_is_fitted(self, "n_features_in_")
        if self.method == "none":
            return X
        if self.method == "log1p_cpm":
            totals = np.asarray(X.sum(axis=1)).ravel()
            scale = np.divide(1e6, totals, out=np.zeros_like(totals, dtype=float), where=totals > 0)
            X = sparse.diags(scale) @ X if sparse.issparse(X) else X * scale[:, None]
        if sparse.issparse(X):
            X = X.tocsr(copy=True)
            X.data = np.log1p(X.data)
            return X
        return np.log1p(X)


class GeneFilter(TransformerMixin, BaseEstimator):
    """Keep expressed and highly variable genes, chosen on the training data.

    Parameters
    ----------
    min_expression : float or None
        A gene is kept when its value is >= ``min_expression`` in at least
        ``min_expression_fraction`` of the training samples.
    min_expression_fraction : float
    top_k_variable : int or None
        Then keep the ``top_k_variable`` genes of largest variance (ties by
        column order).

    Attributes
    ----------
    support_ : ndarray of bool
        Mask of kept genes over the input columns.
    """

    def __init__(self, min_expression=None, min_expression_fraction=0.1, top_k_variable=None):
        self.min_expression = min_expression
        self.min_expression_fraction = min_expression_fraction
        self.top_k_variable = top_k_variable

    def fit(self, X, y=None):
        n_samples, n_genes = X.shape
        keep = np.ones(n_genes, dtype=bool)
        if self.min_expression is not None:
            above = X >= self.min_expression
            frac = np.asarray(above.sum(axis=0)).ravel() / n_samples
            keep &= frac >= self.min_expression_fraction
        if self.top_k_variable is not None and keep.sum() > self.top_k_variable:
            if sparse.issparse(X):
                mean = np.asarray(X.mean(axis=0)).ravel()
                var = np.asarray(X.multiply(X).mean(axis=0)).ravel() - mean**2
            else:
                var = X.var(axis=0)
            var = np.where(keep, var, -np.inf)
            # stable sort: equal variances keep the earlier gene, so the choice is deterministic
            order = np.argsort(-var, kind="stable")[: self.top_k_variable]
            keep = np.zeros(n_genes, dtype=bool)
            keep[order] = True
        if not keep.any():
            raise InputDataError(
                f"gene filter kept no genes (min_expression={self.min_expression}, "
                f"min_expression_fraction={self.min_expression_fraction}); lower preprocess.min_expression.")
        self.support_ = keep
        self.n_features_in_ = n_genes
        return self

    def transform(self, X):
        check_is_fitted(self, "support_")
        return X[:, self.support_]

    def get_support(self):
        """Boolean mask of the kept input genes."""
        check_is_fitted(self, "support_")
        return self.support_


def make_preprocessing_steps(cfg, *, sparse_input: bool = False) -> list[tuple[str, object]]:
    """Pipeline steps for a :class:`~iml_genomics.config.PreprocessConfig`."""
    steps: list[tuple[str, object]] = [("transform", ExpressionTransform(cfg.transform))]
    if cfg.min_expression is not None or cfg.top_k_variable is not None:
        steps.append(("filter", GeneFilter(cfg.min_expression, cfg.min_expression_fraction, cfg.top_k_variable)))
    if cfg.standardize:
        # centring would densify a sparse single-cell matrix; scale only
        steps.append(("scale", StandardScaler(with_mean=not sparse_input)))
    return steps


def check_counts(X, transform: str, source: str, sample_ids, gene_ids) -> None:
    """Count transforms need non-negative values; name the first negative cell."""
    if transform not in COUNT_TRANSFORMS:
        return
    if sparse.issparse(X):
        coo = X.tocoo()
        neg = np.flatnonzero(coo.data < 0)
        if neg.size == 0:
            return
        r, c, n = coo.row[neg[0]], coo.col[neg[0]], neg.size
    else:
        mask = X < 0
        n = int(mask.sum())
        if n == 0:
            return
        r, c = np.unravel_index(int(np.flatnonzero(mask.ravel())[0]), X.shape)
    raise InputDataError(
        f"{source}: {n} negative value(s) but preprocess.transform is '{transform}', which expects counts; "
        f"first at sample '{sample_ids[r]}', gene '{gene_ids[c]}'. Use transform: none for log-scale data.")


def used_gene_mask(pipeline, n_genes: int) -> np.ndarray:
    """Which input genes reach the final estimator of a fitted pipeline."""
    mask = np.ones(n_genes, dtype=bool)
    for _, step in pipeline.steps[:-1]:
        if hasattr(step, "get_support"):
            sub = step.get_support()
            new = np.zeros(n_genes, dtype=bool)
            new[np.flatnonzero(mask)[sub]] = True
            mask = new
    return mask
