"""What the local methods (LIME, anchors, explanation by example) share: the explained output, the model's
predicted class, the cohort's per-gene marginals, and the rule for runs without ``explain.samples``.

No file I/O. Every random draw takes a generator seeded from ``(random_state, sample row)`` so a sample's
result does not depend on which other samples are explained or on ``--jobs``.
"""

from __future__ import annotations

import numpy as np

from iml_genomics.explain.shap_values import explained_outputs, model_output, output_scale, preprocess, split_pipeline


def dense_columns(X, cols) -> np.ndarray:
    """Columns ``cols`` of X (dense or sparse) as a float64 array."""
    sub = X[:, cols]
    sub = sub.toarray() if hasattr(sub, "toarray") else np.asarray(sub)
    return np.ascontiguousarray(sub, dtype=np.float64)


def dense_row(X, row: int) -> np.ndarray:
    """Row ``row`` of X (dense or sparse) as a 1-d float64 array."""
    r = X[row]
    r = r.toarray() if hasattr(r, "toarray") else np.asarray(r)
    return np.asarray(r, dtype=np.float64).ravel()


def explained_class(ctx) -> str:
    """The output LIME explains, the same one as ``ctx.local_shap``: the positive class (two classes), the
    first class (several classes; SHAP's first output), '' for regression."""
    _, est = split_pipeline(ctx.pipeline)
    return explained_outputs(est, ctx.classes, ctx.positive_class)[0]


class ModelOutput:
    """``f(X_raw) -> (n,)``: the model's output on SHAP's scale for SHAP's first explained output.

    The scale is that of the SHAP values (log-odds / margin for boosting and linear models, probability for
    forests, raw for regression), so a local surrogate fitted to ``f`` is comparable with the sample's SHAP.
    A class rather than a closure so that worker processes can receive it.
    """

    def __init__(self, pipeline, classes, positive_class):
        self.pre, self.est = split_pipeline(pipeline)
        self.classes, self.positive_class = classes, positive_class
        self.scale = output_scale(self.est, classes)

    def __call__(self, X_raw) -> np.ndarray:
        return model_output(self.est, preprocess(self.pre, X_raw), self.classes, self.positive_class)[:, 0]


def output_function(pipeline, classes, positive_class):
    """(:class:`ModelOutput` of the pipeline, its scale)."""
    f = ModelOutput(pipeline, classes, positive_class)
    return f, f.scale


def predicted_classes(pipeline, X_raw, classes) -> np.ndarray:
    """Index (into ``classes``) of the class the model predicts for each row (highest score)."""
    from iml_genomics.models import predict_scores

    return np.asarray(predict_scores(pipeline, X_raw, classes)).argmax(axis=1)


def skipped_without_samples(name: str, what: str) -> tuple[dict, list]:
    """Summary and warning of a local method run without ``explain.samples``."""
    reason = "no samples chosen (explain.samples / --samples)"
    return ({"skipped": reason},
            [f"explain: warning: {name} skipped, {reason}; pass --samples ID,... to get {what}"])


DEFAULT_TOP_GENES = 20


def check_gene_count(key: str, k: int | None, n_genes: int) -> None:
    """Refuse ``explain.<key>`` = ``k`` genes when the expression matrix has fewer.

    Raises
    ------
    iml_genomics.errors.ConfigError
    """
    from iml_genomics.errors import ConfigError

    if k is not None and k > n_genes:
        raise ConfigError(f"explain.{key} ({k}) is larger than the {n_genes} genes of the expression "
                          f"matrix; set explain.{key} to at most {n_genes} or leave it unset.")


def check_top_genes(ctx, key: str, k: int | None) -> list:
    """The top ``k`` used genes of the ranking (``k`` None: up to :data:`DEFAULT_TOP_GENES`); see
    :func:`check_gene_count`."""
    check_gene_count(key, k, len(ctx.gene_ids))
    return ctx.ranking_top_genes(DEFAULT_TOP_GENES if k is None else k)
