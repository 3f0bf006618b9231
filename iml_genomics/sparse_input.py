"""Sparse (single-cell) input meets models and steps that need dense arrays.

Three places where a sparse ``.h5ad`` used to crash or silently blow up:

* a model that takes no sparse input (scikit-learn's ``HistGradientBoosting*`` says so in its tags) is fit on
  a dense copy of the matrix it is given: the steps hand it their subsample (``cv.max_samples``,
  ``explain.max_samples``), never the whole cohort, and the copy is refused in one line when it would not fit
  in the machine's available memory;
* a bundle whose ``StandardScaler`` was fitted with centring (trained on a dense matrix) cannot transform a
  sparse one ("Cannot center sparse matrices"): the explained rows are densified the same way;
* ``run`` on a cohort whose estimated peak memory exceeds the machine's available memory, or whose estimated
  time is many hours, says so in one warning line before any work.
"""

from __future__ import annotations

import os

import numpy as np
from scipy import sparse

# a run estimated above this is worth a warning: the hidden cost is usually a missing max_samples key
SLOW_RUN_SECONDS = 4 * 3600
# a dense copy may take at most this share of the available memory: the steps hold 2-3 more of its size
DENSE_SHARE = 0.5

MAX_SAMPLES_KEYS = "cv.max_samples, explain.max_samples, select.max_samples, report.max_samples"


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux ``MemAvailable``); None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    # without /proc (macOS, Windows) the physical size is the best bound at hand
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _accepts_sparse(estimator) -> bool:
    try:
        return bool(estimator.__sklearn_tags__().input_tags.sparse)
    except AttributeError:  # not a scikit-learn estimator: assume it takes what the steps hand it
        return True


def dense_reason(pipeline) -> str | None:
    """Why ``pipeline`` cannot take a sparse matrix, or None when it can.

    Parameters
    ----------
    pipeline : sklearn.pipeline.Pipeline or estimator
        Fitted or not. Nested pipelines (the covariates wrapper) are searched through ``get_params``.

    Returns
    -------
    str or None
        The model class that needs dense input, or the centring scaler; None when sparse input is fine.
    """
    from sklearn.base import is_classifier, is_regressor
    from sklearn.preprocessing import StandardScaler

    parts = [pipeline]
    if hasattr(pipeline, "get_params"):
        parts += [v for v in pipeline.get_params(deep=True).values() if hasattr(v, "get_params")]
    for part in parts:
        if isinstance(part, StandardScaler) and part.with_mean:
            return "its StandardScaler centres the genes (fitted on a dense matrix)"
    for part in parts:
        # the model itself, not a Pipeline / search wrapper around it (their tags follow their first step)
        leaf = not hasattr(part, "steps") and not hasattr(part, "estimator")
        if leaf and (is_classifier(part) or is_regressor(part)) and not _accepts_sparse(part):
            return f"{type(part).__name__} takes dense input only"
    return None


def densify_for(X, pipeline, *, key: str, source: str = "expression", available: int | None = None):
    """X as the pipeline can take it: unchanged unless sparse and the pipeline needs dense input.

    Parameters
    ----------
    X : ndarray or sparse matrix
        Already the subsample the step works on (so only that is ever dense).
    pipeline : estimator
        The (fitted or unfitted) pipeline X goes into.
    key : str
        The config key that bounds X's rows (``cv.max_samples``, ``explain.max_samples``), named on refusal.
    source : str
        The expression file, named on refusal.
    available : int, optional
        Bytes available; None = read from the machine (:func:`available_memory`).

    Returns
    -------
    ndarray or sparse matrix

    Raises
    ------
    iml_genomics.errors.ResourceError
        The dense copy (float64) would take more than half of the available memory.
    """
    if not sparse.issparse(X):
        return X
    reason = dense_reason(pipeline)
    if reason is None:
        return X
    from iml_genomics.errors import ResourceError
    from iml_genomics.pipeline import format_bytes

    need = 8 * X.shape[0] * X.shape[1]
    available = available_memory() if available is None else available
    if available is not None and need > DENSE_SHARE * available:
        raise ResourceError(f"{source}: {reason}, so its {X.shape[0]} x {X.shape[1]} sparse matrix would be made "
                            f"dense ({format_bytes(need)}, over half of the {format_bytes(available)} available); "
                            f"set {key} to a smaller subsample of cells (configs/single_cell.yaml) or choose a model "
                            f"that takes sparse input (random_forest, l1_logistic).")
    return np.asarray(X.toarray(), dtype=np.float64)


def resource_warning(estimates, *, steps, available: int | None = None,
                     slow_seconds: float = SLOW_RUN_SECONDS) -> str | None:
    """One warning line when the run is estimated over the available memory or over ``slow_seconds``.

    Parameters
    ----------
    estimates : list of iml_genomics.pipeline.StepEstimate
    steps : list of str
        The steps that will run.
    available : int, optional
        Bytes available; None = read from the machine.
    slow_seconds : float

    Returns
    -------
    str or None
    """
    from iml_genomics.pipeline import format_bytes

    chosen = [e for e in estimates if e.step in steps]
    if not chosen:
        return None
    available = available_memory() if available is None else available
    peak = max(chosen, key=lambda e: e.peak_memory_bytes)
    seconds = sum(e.seconds for e in chosen)
    problems = []
    if available is not None and peak.peak_memory_bytes > available:
        problems.append(f"step '{peak.step}' is estimated at {format_bytes(peak.peak_memory_bytes)}, over the "
                        f"{format_bytes(available)} of memory available")
    if seconds > slow_seconds:
        slowest = max(chosen, key=lambda e: e.seconds)
        problems.append(f"the run is estimated at {seconds / 3600:.1f} h (step '{slowest.step}' "
                        f"{slowest.seconds / 3600:.1f} h)")
    if not problems:
        return None
    return (f"iml-genomics: warning: {'; '.join(problems)}; work on subsamples of cells with {MAX_SAMPLES_KEYS} "
            f"(see configs/single_cell.yaml), or see `run --dry-run`.")


def drop_constant_genes(X: np.ndarray, gene_ids: list) -> tuple[np.ndarray, list, list]:
    """Drop the columns of ``X`` without variation (the rule of :func:`iml_genomics.select.filter.check_variation`).

    In a sparse count matrix, and more so in a subsample of its cells, some genes have no count at all; the
    knockoff model cannot test them, but they are no reason to refuse the other genes.

    Returns
    -------
    X : ndarray
        The kept columns (``X`` itself when none is dropped).
    kept_ids, dropped_ids : list of str
    """
    from iml_genomics.select.filter import constant_columns

    const = constant_columns(X)
    if not const.any():
        return X, list(gene_ids), []
    return (X[:, ~const], [g for g, c in zip(gene_ids, const) if not c],
            [g for g, c in zip(gene_ids, const) if c])


def check_explainable(cfg, task: str, classes) -> None:
    """Refuse, before training, a run whose ``explain.method`` needs SHAP the model cannot give.

    Raises
    ------
    iml_genomics.errors.ConfigError
        Multiclass ``gradient_boosting`` (shap's tree explainer takes binary ``GradientBoostingClassifier``
        only) or a log-link regressor, with ``explain.method`` ``shap`` or ``all``; the line names
        ``explain.method`` and ``model.name``.
    """
    from iml_genomics.errors import ConfigError
    from iml_genomics.explain.shap_values import check_shap_supported
    from iml_genomics.models import build_estimator

    if cfg.explain.method == "permutation":
        return
    estimator = build_estimator(cfg.model.name, task, seed=cfg.seed, params=cfg.model.params,
                                n_classes=len(classes) if classes else None)
    try:
        check_shap_supported(estimator, classes if task != "regression" else None, model_name=cfg.model.name)
    except ConfigError as exc:
        text = str(exc).replace("run explain --method permutation",
                                f"set explain.method: permutation (it is '{cfg.explain.method}')")
        raise ConfigError(f"config: {text[len('explain: '):] if text.startswith('explain: ') else text}") from None


def check_model_statistic(cfg, *, source: str) -> None:
    """Refuse ``select.statistic: model`` for a model with neither ``coef_`` nor ``feature_importances_``.

    :func:`iml_genomics.select.statistics.model_importance` finds out only after fitting on [X, X~]; a ``run``
    found out after train and explain. Linear registry models have ``coef_``; tree models declare
    ``feature_importances_`` on their class (HistGradientBoosting does not, nor does the MLP).

    Raises
    ------
    iml_genomics.errors.ConfigError
    """
    from iml_genomics.errors import ConfigError
    from iml_genomics.models import MODEL_REGISTRY

    spec = MODEL_REGISTRY.get(cfg.model.name)
    if spec is None:
        return  # an unknown model name is refused by its own check
    has_importance = spec.kind == "linear" or all(hasattr(type(build(0, {})), "feature_importances_")
                                                  for build in spec)
    if not has_importance:
        raise ConfigError(f"{source}: select.statistic is 'model' but model '{cfg.model.name}' has neither "
                          f"coef_ nor feature_importances_; use select.statistic: lasso or random_forest.")
