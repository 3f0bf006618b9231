"""Model registry, leakage-free cross-validation and safe model bundles."""

from __future__ import annotations

import difflib
import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.pipeline import Pipeline

from iml_genomics.errors import BundleError, ConfigError
from iml_genomics.parallel import Backend, resolve_backend
from iml_genomics.preprocess import make_preprocessing_steps

log = logging.getLogger("iml_genomics.models")

# ---------------------------------------------------------------------------
# Registry: one entry per config name, each a ModelSpec: (classifier, regressor) builders and the
# model's declared kind. Builders take (seed, params) and return an unfitted estimator.
# ---------------------------------------------------------------------------


def _l1_logistic(seed, params):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(**{"l1_ratio": 1.0, "C": 1.0, "solver": "saga", "max_iter": 5000, "tol": 1e-4,
                                 "random_state": seed, **params})


def _enet_logistic(seed, params):
    return _l1_logistic(seed, {"l1_ratio": 0.5, **params})


def _lasso(seed, params):
    from sklearn.linear_model import Lasso

    return Lasso(**{"alpha": 0.05, "max_iter": 10000, "random_state": seed, **params})


def _enet(seed, params):
    from sklearn.linear_model import ElasticNet

    return ElasticNet(**{"alpha": 0.05, "l1_ratio": 0.5, "max_iter": 10000, "random_state": seed, **params})


def _forest(cls_name):
    def build(seed, params, *, regression):
        import sklearn.ensemble as ens

        cls = getattr(ens, cls_name + ("Regressor" if regression else "Classifier"))
        return cls(**{"n_estimators": 300, "random_state": seed, "n_jobs": 1, **params})

    return (lambda s, p: build(s, p, regression=False), lambda s, p: build(s, p, regression=True))


def _gboost():
    def build(seed, params, *, regression):
        import sklearn.ensemble as ens

        cls = ens.GradientBoostingRegressor if regression else ens.GradientBoostingClassifier
        return cls(**{"n_estimators": 100, "max_depth": 3, "subsample": 1.0, "random_state": seed, **params})

    return (lambda s, p: build(s, p, regression=False), lambda s, p: build(s, p, regression=True))


def _linear_svm():
    def clf(seed, params):
        from sklearn.svm import LinearSVC

        return LinearSVC(**{"C": 0.1, "max_iter": 20000, "random_state": seed, **params})

    def reg(seed, params):
        from sklearn.svm import LinearSVR

        return LinearSVR(**{"C": 0.1, "max_iter": 20000, "random_state": seed, **params})

    return clf, reg


def _tree():
    def build(seed, params, *, regression):
        from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

        cls = DecisionTreeRegressor if regression else DecisionTreeClassifier
        return cls(**{"max_depth": 4, "random_state": seed, **params})

    return (lambda s, p: build(s, p, regression=False), lambda s, p: build(s, p, regression=True))


def _hist_gboost():
    def build(seed, params, *, regression):
        import sklearn.ensemble as ens

        cls = ens.HistGradientBoostingRegressor if regression else ens.HistGradientBoostingClassifier
        # early_stopping='auto' would hold out 10% of the rows once n > 10,000: off, so a bundle is fitted
        # on every training row whatever the cohort size (set it in model.params to have it)
        return cls(**{"max_iter": 100, "learning_rate": 0.1, "early_stopping": False, "random_state": seed,
                      **params})

    return (lambda s, p: build(s, p, regression=False), lambda s, p: build(s, p, regression=True))


def _mlp():
    def build(seed, params, *, regression):
        from sklearn.neural_network import MLPClassifier, MLPRegressor

        cls = MLPRegressor if regression else MLPClassifier
        # Expression cohorts have n << p: one small hidden layer with a strong L2 penalty (alpha) on inputs the
        # pipeline has standardized. L-BFGS on the full batch: no minibatch shuffling and no held-out
        # early-stopping split, so the fit depends only on random_state (the initial weights) and every training
        # row is used. tanh, not relu: a smooth network makes integrated gradients' path integral converge in a
        # few dozen quadrature nodes (a relu network's gradient jumps at every kink it crosses).
        return cls(**{"hidden_layer_sizes": (32,), "activation": "tanh", "solver": "lbfgs", "alpha": 1.0,
                      "max_iter": 1000, "random_state": seed, **params})

    return (lambda s, p: build(s, p, regression=False), lambda s, p: build(s, p, regression=True))


MODEL_KINDS = ("tree", "linear", "neural", "other")
SHAP_ALGORITHMS = ("tree", "linear", "agnostic")


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry: how to build the model and what the explainers may assume about it.

    Iterating (or indexing) a spec gives ``(classifier_builder, regressor_builder)``, the pair
    ``MODEL_REGISTRY`` held before kinds were declared, so ``MODEL_REGISTRY[name][1]`` and
    ``for build in MODEL_REGISTRY[name]`` keep working.

    Attributes
    ----------
    classifier, regressor : callable
        ``(seed, params) -> unfitted estimator``.
    kind : {'tree', 'linear', 'neural', 'other'}
        What the fitted model is made of; 'neural' is a feed-forward network with ``coefs_`` / ``intercepts_``
        (integrated gradients differentiates it exactly).
    shap : {'tree', 'linear', 'agnostic'}
        The SHAP algorithm that applies: exact Tree SHAP (``shap.TreeExplainer``), the exact linear closed
        form, or the approximate model-agnostic permutation estimator.
    exact_multiclass : bool
        The exact algorithm handles more than two classes (shap's TreeExplainer refuses multiclass
        ``GradientBoostingClassifier``); False means multiclass SHAP is refused, not approximated.
    log_odds_output : bool
        Classifiers: the explained output is the decision function (log-odds / logits), not a probability.
    forest : bool
        The prediction is the plain average of ``estimators_``' trees: permutation importance re-evaluates
        only the trees that split on the permuted gene.
    openmp_predict : bool
        ``predict`` runs an OpenMP parallel region, so workers must not be forked after it (a forked child
        of a process that used OpenMP can hang).
    log_link_losses : tuple of str
        Regression ``loss`` values whose prediction is exp(sum of the trees): Tree SHAP explains the sum,
        so these are refused by SHAP (:func:`iml_genomics.explain.shap_values.check_shap_supported`).
    fit_only_attributes : tuple of str
        Fitted attributes only ``fit`` reads, left out of a saved bundle (:func:`save_bundle`): histogram
        boosting's feature-subsampling ``numpy.random.Generator``, which skops can only rebuild by calling a
        class named in the file, a loader the bundle allow-list refuses.
    """

    classifier: Callable
    regressor: Callable
    kind: str
    shap: str
    exact_multiclass: bool = True
    log_odds_output: bool = False
    forest: bool = False
    openmp_predict: bool = False
    log_link_losses: tuple = ()
    fit_only_attributes: tuple = ()

    def __post_init__(self):
        if self.kind not in MODEL_KINDS or self.shap not in SHAP_ALGORITHMS:
            raise ValueError(f"ModelSpec kind must be one of {MODEL_KINDS} and shap one of {SHAP_ALGORITHMS}; "
                             f"got {self.kind!r}, {self.shap!r}")

    def __iter__(self):
        return iter((self.classifier, self.regressor))

    def __getitem__(self, index):
        return (self.classifier, self.regressor)[index]

    def __len__(self):
        return 2


MODEL_REGISTRY: dict[str, ModelSpec] = {
    # The linear names are task-generic: for a continuous outcome an L1
    # logistic model is the lasso, and for classes the lasso is L1 logistic.
    "l1_logistic": ModelSpec(_l1_logistic, _lasso, kind="linear", shap="linear", log_odds_output=True),
    "lasso": ModelSpec(_l1_logistic, _lasso, kind="linear", shap="linear", log_odds_output=True),
    "elasticnet_logistic": ModelSpec(_enet_logistic, _enet, kind="linear", shap="linear", log_odds_output=True),
    "elasticnet": ModelSpec(_enet_logistic, _enet, kind="linear", shap="linear", log_odds_output=True),
    "random_forest": ModelSpec(*_forest("RandomForest"), kind="tree", shap="tree", forest=True),
    "extra_trees": ModelSpec(*_forest("ExtraTrees"), kind="tree", shap="tree", forest=True),
    # shap 0.51's TreeExplainer: "GradientBoostingClassifier is only supported for binary classification"
    "gradient_boosting": ModelSpec(*_gboost(), kind="tree", shap="tree", exact_multiclass=False,
                                   log_odds_output=True),
    # shap reads the HistGradientBoosting predictors itself (raw margins, one stack of trees per class)
    "hist_gradient_boosting": ModelSpec(*_hist_gboost(), kind="tree", shap="tree", log_odds_output=True,
                                        openmp_predict=True, log_link_losses=("poisson", "gamma"),
                                        fit_only_attributes=("_feature_subsample_rng",)),
    # a linear SVM's margin is not a log-odds: the explained scale is 'raw'
    "linear_svm": ModelSpec(*_linear_svm(), kind="linear", shap="linear"),
    "decision_tree": ModelSpec(*_tree(), kind="tree", shap="tree"),
    # no exact SHAP for a network: the model-agnostic permutation estimator explains its probabilities
    "mlp": ModelSpec(*_mlp(), kind="neural", shap="agnostic"),
}


@functools.lru_cache(maxsize=1)
def _specs_by_class() -> dict[type, tuple[str, ModelSpec]]:
    out: dict[type, tuple[str, ModelSpec]] = {}
    for name, spec in MODEL_REGISTRY.items():
        for build in spec:
            out.setdefault(type(build(0, {})), (name, spec))
    return out


def _lookup(estimator) -> tuple[str, ModelSpec] | None:
    # through the MRO: a subclass of a registry class (a wrapper built in Python) is still that model; bundles
    # cannot hold one (their allow-list names exact classes)
    table = _specs_by_class()
    for cls in type(estimator).__mro__:
        if cls in table:
            return table[cls]
    return None


def spec_for_estimator(estimator) -> ModelSpec | None:
    """The registry entry whose builders make ``estimator``'s class (or a base class of it), or None.

    Parameters
    ----------
    estimator : object
        A (fitted or not) final estimator, e.g. the last step of a loaded bundle's pipeline.

    Returns
    -------
    ModelSpec or None
        None for an estimator outside the registry. Several names share one class (``lasso`` and
        ``l1_logistic``); they share the declared kind too.
    """
    found = _lookup(estimator)
    return None if found is None else found[1]


def registry_name_for_estimator(estimator) -> str | None:
    """The first registry name whose builders make ``estimator``'s class (for messages), or None."""
    found = _lookup(estimator)
    return None if found is None else found[0]


def build_estimator(name: str, task: str, *, seed: int, params: dict | None = None, n_classes: int | None = None):
    """Unfitted estimator for registry ``name`` and ``task``.

    ``n_classes`` lets binary L1 logistic models use liblinear, which is
    hundreds of times faster than saga on wide expression matrices
    (0.02 s vs 15 s on Golub, 38 x 3051) but cannot do multiclass.

    Raises
    ------
    ConfigError
        Unknown model name, or a parameter the estimator does not accept.
    """
    if name not in MODEL_REGISTRY:
        near = difflib.get_close_matches(name, list(MODEL_REGISTRY), n=1)
        raise ConfigError(f"config: unknown model.name '{name}'" + (f"; did you mean '{near[0]}'?" if near else "")
                          + f" Available: {', '.join(MODEL_REGISTRY)}.")
    params = dict(params or {})
    builder = MODEL_REGISTRY[name][1 if task == "regression" else 0]
    if builder is _l1_logistic and n_classes == 2 and "solver" not in params:
        params = {"solver": "liblinear", **params}
    from iml_genomics.errors import shorten

    accepted = builder(seed, {}).get_params()
    for key in params:
        if key not in accepted:
            near = difflib.get_close_matches(key, list(accepted), n=1) if len(str(key)) <= 200 else []
            raise ConfigError(f"config: model.params key {shorten(key)} is not a parameter of "
                              f"{type(builder(seed, {})).__name__}" + (f"; did you mean '{near[0]}'?" if near else "") + ".")
    try:
        return builder(seed, params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config: invalid model.params for '{name}': {shorten(str(exc))[1:-1]}.") from None


def build_pipeline(cfg, task: str, *, sparse_input: bool = False, n_classes: int | None = None,
                   n_covariates: int = 0) -> Pipeline:
    """Preprocessing steps and the configured model in one Pipeline.

    Pass ``n_classes`` for classification so the fastest valid solver is used. With ``n_covariates`` > 0 the
    input's last ``n_covariates`` columns are covariates: the gene preprocessing is wrapped in
    :class:`iml_genomics.covariates.WithCovariates` (one step named ``preprocess``), which scales them apart.
    """
    model = build_estimator(cfg.model.name, task, seed=cfg.seed, params=cfg.model.params, n_classes=n_classes)
    steps = make_preprocessing_steps(cfg.preprocess, sparse_input=sparse_input)
    if n_covariates:
        from iml_genomics.covariates import WithCovariates

        return Pipeline([("preprocess", WithCovariates(Pipeline(steps), n_covariates)), ("model", model)])
    return Pipeline([*steps, ("model", model)])


# ---------------------------------------------------------------------------
# Cross-validation
# ---------------------------------------------------------------------------


def cv_splits(y, task: str, *, n_splits: int, n_repeats: int, seed: int) -> list[tuple[int, int, np.ndarray, np.ndarray]]:
    """(repeat, fold, train_idx, test_idx) for repeated (stratified) k-fold."""
    from sklearn.model_selection import RepeatedKFold, RepeatedStratifiedKFold

    cls = RepeatedKFold if task == "regression" else RepeatedStratifiedKFold
    splitter = cls(n_splits=n_splits, n_repeats=n_repeats, random_state=seed)
    out = []
    for i, (tr, te) in enumerate(splitter.split(np.zeros(len(y)), y)):
        out.append((i // n_splits + 1, i % n_splits + 1, tr, te))
    return out


def predict_scores(model, X, classes: list[str] | None) -> np.ndarray:
    """Probabilities (n x classes) for classifiers, predictions (n,) for regressors.

    Classifiers without ``predict_proba`` (linear SVM) return their decision
    function passed through a logistic / softmax so columns still rank
    samples; their log loss is not reported.
    """
    if classes is None:
        return np.asarray(model.predict(X), dtype=np.float64)
    if hasattr(model, "predict_proba"):
        return np.asarray(model.predict_proba(X), dtype=np.float64)
    dec = np.asarray(model.decision_function(X), dtype=np.float64)
    if dec.ndim == 1:
        p = 1.0 / (1.0 + np.exp(-dec))
        return np.column_stack([1 - p, p])
    e = np.exp(dec - dec.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def score_predictions(y_true, scores: np.ndarray, classes: list[str] | None, *, calibrated: bool = True,
                      positive_class: str | None = None) -> dict:
    """Metrics for one fold: AUROC, AP, balanced accuracy, log loss; or R2, RMSE, MAE.

    Two classes: AUROC and average precision treat ``positive_class`` (default: the last of the sorted
    ``classes``) as the positive label. AUROC does not depend on that choice; average precision does.
    """
    from sklearn import metrics

    from iml_genomics.io.cohort import positive_index

    if classes is None:
        return {
            "r2": metrics.r2_score(y_true, scores),
            "rmse": float(np.sqrt(metrics.mean_squared_error(y_true, scores))),
            "mae": metrics.mean_absolute_error(y_true, scores),
        }
    y_idx = np.searchsorted(np.asarray(classes, dtype=object), y_true)
    present = np.unique(y_idx)
    pred = scores.argmax(axis=1)
    out = {"balanced_accuracy": metrics.balanced_accuracy_score(y_idx, pred)}
    if len(classes) == 2:
        k = positive_index(classes, positive_class)
        out["auroc"] = metrics.roc_auc_score(y_idx == k, scores[:, k])
        out["average_precision"] = metrics.average_precision_score(y_idx == k, scores[:, k])
    else:
        onehot = np.eye(len(classes))[y_idx]
        cols = [c for c in range(len(classes)) if c in present]
        out["auroc"] = (metrics.roc_auc_score(y_idx, scores, multi_class="ovr", average="macro", labels=range(len(classes)))
                        if len(present) == len(classes) else float("nan"))
        out["average_precision"] = float(np.mean([metrics.average_precision_score(onehot[:, c], scores[:, c]) for c in cols]))
    out["log_loss"] = (metrics.log_loss(y_idx, np.clip(scores, 1e-15, 1), labels=range(len(classes)))
                       if calibrated else float("nan"))
    return {k: float(v) for k, v in out.items()}


CLASSIFICATION_METRICS = ("auroc", "average_precision", "balanced_accuracy", "log_loss")
REGRESSION_METRICS = ("r2", "rmse", "mae")


def _fit_fold(pipeline, X, y, train_idx, test_idx, classes):
    model = clone(pipeline).fit(X[train_idx], y[train_idx])
    scores = predict_scores(model, X[test_idx], classes)
    return model, scores


@dataclass
class CVResult:
    """Cross-validation output.

    Attributes
    ----------
    metrics : pandas.DataFrame
        One row per fold (``cv_metrics.tsv``).
    summary : pandas.DataFrame
        One row per metric: mean, sd, n_folds (``cv_summary.tsv``).
    oof : pandas.DataFrame
        Out-of-fold predictions, one row per sample and repeat.
    models : list
        Fitted fold pipelines, in split order.
    splits : list
        (repeat, fold, train_idx, test_idx).
    """

    metrics: pd.DataFrame
    oof: pd.DataFrame
    models: list
    splits: list

    @property
    def summary(self) -> pd.DataFrame:
        from iml_genomics.io.interchange import cv_summary_table

        return cv_summary_table(self.metrics)


def cross_validate(pipeline: Pipeline, X, y, *, sample_ids, classes, task: str, n_splits: int,
                   n_repeats: int = 1, seed: int = 0, n_jobs: int | None = 1,
                   positive_class: str | None = None, backend: Backend | None = None) -> CVResult:
    """Repeated (stratified) k-fold CV with preprocessing refit inside each fold.

    Parameters
    ----------
    pipeline : sklearn.pipeline.Pipeline
        Unfitted preprocessing + model; cloned for every fold.
    X : array or sparse matrix, samples x genes
    y : array
    sample_ids : list of str
    classes : list of str or None
        Sorted class names (classification) or None (regression).
    n_jobs : int
        Folds run in parallel; results are the same for any value. Used only when ``backend`` is None.
    positive_class : str, optional
        Two classes: the positive label of AUROC / average precision (the last class when None).
    backend : iml_genomics.parallel.Backend, optional
        Runs the folds (processes or Dask tasks); it decides over ``n_jobs``.
    """
    splits = cv_splits(y, task, n_splits=n_splits, n_repeats=n_repeats, seed=seed)
    results = resolve_backend(backend, n_jobs).map(_fit_fold, [(pipeline, X, y, tr, te, classes)
                                                              for _, _, tr, te in splits])
    calibrated = hasattr(pipeline[-1], "predict_proba")
    rows, oof_parts = [], []
    for (rep, fold, tr, te), (_, scores) in zip(splits, results):
        rows.append({"split": f"r{rep}_f{fold}", "repeat": rep, "fold": fold, "n_train": len(tr), "n_test": len(te),
                     **score_predictions(y[te], scores, classes, calibrated=calibrated,
                                        positive_class=positive_class)})
        part = pd.DataFrame({"sample_id": np.asarray(sample_ids, dtype=object)[te], "repeat": rep, "fold": fold,
                             "y_true": y[te]})
        if classes is None:
            part["y_pred"] = scores
        else:
            part["y_pred"] = np.asarray(classes, dtype=object)[scores.argmax(axis=1)]
            for k, c in enumerate(classes):
                part[f"prob_{c}"] = scores[:, k]
        oof_parts.append(part)
    # per-fold rows only: the mean and sd per metric are CVResult.summary (cv_summary.tsv), so a column mean
    # over cv_metrics.tsv is the cross-validated mean (issue 17)
    metrics_table = pd.DataFrame(rows)
    for col in ("repeat", "fold", "n_train", "n_test"):
        metrics_table[col] = metrics_table[col].astype("Int64")
    oof = pd.concat(oof_parts, ignore_index=True)
    order = {s: i for i, s in enumerate(sample_ids)}
    oof = oof.sort_values(["repeat", "sample_id"], key=lambda c: c.map(order) if c.name == "sample_id" else c,
                          kind="stable").reset_index(drop=True)
    return CVResult(metrics_table, oof, [m for m, _ in results], splits)


# ---------------------------------------------------------------------------
# Model bundle: skops file + JSON manifest, loaded only with trusted types.
# ---------------------------------------------------------------------------

BUNDLE_MODEL = "model.skops"
BUNDLE_MANIFEST = "model.json"


def _deterministic_skops(data: bytes) -> bytes:
    """Make a skops file byte-stable: equal models give equal bytes.

    skops names arrays and nodes by ``id()`` (memory addresses) and stamps the
    zip with the current time; renumber ids in order of first appearance and
    fix the timestamps. Loading is unaffected (ids are only cross-references).
    """
    import io
    import re
    import zipfile

    src = zipfile.ZipFile(io.BytesIO(data))
    schema = src.read("schema.json").decode()
    mapping: dict[str, str] = {}

    def renumber(match: re.Match) -> str:
        new = mapping.setdefault(match.group(2), str(len(mapping) + 1))
        return f"{match.group(1)}{new}"

    schema = re.sub(r'("__id__": |"file": ")(\d+)', renumber, schema)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as dst:
        members = []
        for info in src.infolist():
            name = info.filename
            stem = name[:-4] if name.endswith(".npy") else None
            if stem is not None and stem in mapping:
                name = f"{mapping[stem]}.npy"
            members.append((name, info.filename))
        for name, original in sorted(members):
            fixed = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            fixed.compress_type = zipfile.ZIP_DEFLATED
            fixed.external_attr = 0o644 << 16
            dst.writestr(fixed, schema.encode() if original == "schema.json" else src.read(original))
    return buf.getvalue()


def _without_fit_state(pipeline: Pipeline) -> Pipeline:
    """``pipeline`` with its final model's ``fit_only_attributes`` dropped (a shallow copy; the input is untouched)."""
    import copy

    final = pipeline.steps[-1][1]
    spec = spec_for_estimator(final)
    drop = [a for a in (spec.fit_only_attributes if spec is not None else ()) if hasattr(final, a)]
    if not drop:
        return pipeline
    final = copy.copy(final)
    for attr in drop:
        delattr(final, attr)
    out = copy.copy(pipeline)
    out.steps = [*pipeline.steps[:-1], (pipeline.steps[-1][0], final)]
    return out


def save_bundle(directory: str | Path, pipeline: Pipeline, manifest: dict) -> None:
    """Write ``model.skops`` and ``model.json`` (with the model's sha256) into ``directory``."""
    import skops.io as sio

    from iml_genomics.io.writers import atomic_write_bytes, file_sha256, write_json

    directory = Path(directory)
    atomic_write_bytes(_deterministic_skops(sio.dumps(_without_fit_state(pipeline))), directory / BUNDLE_MODEL)
    write_json({**manifest, "model_file": BUNDLE_MODEL, "model_sha256": file_sha256(directory / BUNDLE_MODEL)},
               directory / BUNDLE_MANIFEST)


# A 500-tree forest on n = 10,000 samples is ~1 GB (tree nodes grow with n, not p); far above that
# is not a bundle this package wrote.
_MAX_BUNDLE_BYTES = 8 * 2**30
# model.json lists the genes and the config: ~0.5 MB at p = 20,000
_MAX_MANIFEST_BYTES = 256 * 2**20


def load_bundle(directory: str | Path) -> tuple[Pipeline, dict]:
    """Load a bundle written by :func:`save_bundle`, refusing anything it does not write.

    Nothing from the bundle is imported or called before it passed every
    check: the manifest is parsed as plain JSON and its fields typed; the
    model bytes are read once (so what is checked is what is loaded) and must
    match the manifest's sha256 (this catches accidental corruption, not
    tampering: whoever edits the model can edit the manifest); the skops
    schema may hold only the loaders and classes this package writes
    (:mod:`iml_genomics.bundle_audit`, names resolved to the very classes);
    after loading, tree arrays are bounds-checked and the model must accept
    the manifest's genes.

    Raises
    ------
    BundleError
        Missing files, a malformed manifest, a hash mismatch, a type or
        loader iml-genomics never writes, or a malformed model; one line.
    """
    import hashlib

    import skops.io as sio

    from iml_genomics.bundle_audit import check_manifest, read_checked_zip

    directory = Path(directory)
    manifest_path, model_path = directory / BUNDLE_MANIFEST, directory / BUNDLE_MODEL
    if not manifest_path.is_file() or not model_path.is_file():
        raise BundleError(f"{directory}: not a model bundle (needs {BUNDLE_MANIFEST} and {BUNDLE_MODEL}); "
                          f"pass the --out directory of 'iml-genomics train'.")
    if manifest_path.stat().st_size > _MAX_MANIFEST_BYTES:
        raise BundleError(f"{manifest_path}: {manifest_path.stat().st_size} bytes, larger than any manifest "
                          f"iml-genomics writes ({_MAX_MANIFEST_BYTES} bytes at most); refusing to read it. "
                          f"Pass the --out directory of 'iml-genomics train'.")
    try:
        manifest = json.loads(manifest_path.read_bytes())
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BundleError(f"{manifest_path}: unreadable bundle manifest ({str(exc).splitlines()[0][:200]}).") from None
    manifest = check_manifest(manifest, manifest_path)
    size = model_path.stat().st_size
    if size > _MAX_BUNDLE_BYTES:
        # read whole (what is checked is what is loaded), so a file claiming tens of GiB (a sparse
        # file costs nothing to make) would exhaust memory before the sha256 could refuse it
        raise BundleError(f"{model_path}: {size} bytes, larger than any bundle iml-genomics writes "
                          f"({_MAX_BUNDLE_BYTES} bytes at most); refusing to read it. Re-train with 'iml-genomics train'.")
    try:
        data = model_path.read_bytes()
    except MemoryError:
        raise BundleError(f"{model_path}: {size} bytes do not fit in memory; refusing to load this bundle. "
                          f"Re-train with 'iml-genomics train' or load it on a larger machine.") from None
    if hashlib.sha256(data).hexdigest() != manifest["model_sha256"]:
        raise BundleError(f"{model_path}: sha256 does not match {BUNDLE_MANIFEST}; the file was changed or "
                          f"damaged after training. Re-run 'iml-genomics train' to recreate it.")
    trusted = read_checked_zip(data, str(model_path))
    import warnings

    from sklearn.exceptions import InconsistentVersionWarning

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", InconsistentVersionWarning)
            pipeline = sio.loads(data, trusted=trusted)
    except Exception as exc:  # noqa: BLE001 - any failure of a checked file is a damaged bundle, in one line
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise BundleError(f"{model_path}: not a readable skops file ({first[:200]}). "
                          f"Re-train with 'iml-genomics train'.") from None
    versions = sorted({(w.message.original_sklearn_version, w.message.current_sklearn_version) for w in caught
                       if isinstance(w.message, InconsistentVersionWarning)})
    if versions:
        # scikit-learn's own warning is a paragraph per estimator; one line says the same
        log.warning("%s: trained with scikit-learn %s, loaded with %s; predictions may differ slightly. Re-train "
                    "with this version to be sure.", model_path, versions[0][0], versions[0][1])
    _check_loaded(pipeline, manifest, str(model_path))
    _check_manifest_config(pipeline, manifest, manifest_path)
    return pipeline, manifest


def _check_manifest_config(pipeline, manifest: dict, manifest_path: Path) -> None:
    """The manifest's config is valid and builds the same kind of model the bundle holds.

    explain and evaluate refit that config (folds, prediction gaps), so a bad
    value in it would otherwise surface as a traceback from inside a fit.
    """
    from iml_genomics.config import config_from_dict

    cfg = config_from_dict(manifest["config"], source=str(manifest_path))
    classes = manifest.get("classes")
    expected = build_estimator(cfg.model.name, manifest["task"], seed=cfg.seed, params=cfg.model.params,
                               n_classes=len(classes) if classes else None)
    try:
        getattr(expected, "_validate_params", lambda: None)()
    except (TypeError, ValueError) as exc:
        first = (str(exc).splitlines() or [""])[0]
        raise BundleError(f"{manifest_path}: config.model.params rejected ({first[:200]}); "
                          f"re-train with 'iml-genomics train'.") from None
    final = pipeline.steps[-1][1]
    if type(final) is not type(expected):
        raise BundleError(f"{manifest_path}: config says model '{cfg.model.name}' ({type(expected).__name__}) but "
                          f"{BUNDLE_MODEL} holds a {type(final).__name__}; re-train with 'iml-genomics train'.")


def _check_loaded(pipeline, manifest: dict, source: str) -> None:
    """The loaded object is a fitted pipeline of our steps that fits the manifest.

    Objects of allowed classes can still carry any attributes (or lack some):
    whatever goes wrong while inspecting them is a malformed bundle, in one line.
    """
    try:
        _check_loaded_parts(pipeline, manifest, source)
    except BundleError:
        raise
    except Exception as exc:  # noqa: BLE001 - a hostile object may fail in any way when inspected
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise BundleError(f"{source}: malformed model ({type(exc).__name__}: {first[:200]}); "
                          f"re-train with 'iml-genomics train'.") from None


def _check_loaded_parts(pipeline, manifest: dict, source: str) -> None:
    from iml_genomics.bundle_audit import check_trees

    if not isinstance(pipeline, Pipeline) or not isinstance(pipeline.steps, list) or not pipeline.steps:
        raise BundleError(f"{source}: the model is a {type(pipeline).__name__}, not a fitted pipeline; "
                          f"re-train with 'iml-genomics train'.")
    if pipeline.memory is not None:
        # a cache directory would make every refit write files wherever the bundle says
        raise BundleError(f"{source}: the pipeline has a cache directory set (memory); iml-genomics never "
                          f"writes one. Re-train with 'iml-genomics train'.")
    from iml_genomics.bundle_audit import pipeline_step_classes

    step_classes, final_classes = pipeline_step_classes()
    kinds = [type(step) for step in (s[1] if isinstance(s, tuple) and len(s) == 2 else s for s in pipeline.steps)]
    from iml_genomics.covariates import WithCovariates

    for s in pipeline.steps[:-1]:
        # covariates (model.json 'covariates'): the gene preprocessing sits inside WithCovariates
        inner = getattr(s[1], "genes_", None) if isinstance(s, tuple) and type(s[1]) is WithCovariates else None
        if inner is not None:
            if not isinstance(inner, Pipeline) or not isinstance(inner.steps, list) or inner.memory is not None:
                raise BundleError(f"{source}: the covariate step holds a {type(inner).__name__} that is not a plain "
                                  f"pipeline of preprocessing steps; re-train with 'iml-genomics train'.")
            else:
                kinds[:0] = [type(t[1]) if isinstance(t, tuple) and len(t) == 2 else type(t) for t in inner.steps]
    if kinds[-1] not in final_classes or any(k not in step_classes for k in kinds[:-1]):
        raise BundleError(f"{source}: the pipeline's steps ({', '.join(k.__name__ for k in kinds)[:200]}) are not "
                          f"preprocessing followed by a registry model; re-train with 'iml-genomics train'.")
    from iml_genomics.covariates import features as covariate_features

    n_genes = len(manifest["gene_ids"]) + len(covariate_features(manifest.get("covariates")))
    n_in = getattr(pipeline.steps[0][1], "n_features_in_", None)
    if n_in != n_genes:
        raise BundleError(f"{source}: the model expects {n_in} genes but {BUNDLE_MANIFEST} lists {n_genes}; "
                          f"re-train with 'iml-genomics train'.")
    final = pipeline.steps[-1][1]
    n_final = getattr(final, "n_features_in_", None)
    if not isinstance(n_final, int) or n_final < 1:
        raise BundleError(f"{source}: the final model is not fitted; re-train with 'iml-genomics train'.")
    check_trees(final, n_final, source)
    classes = manifest.get("classes")
    if classes is not None and [str(c) for c in getattr(final, "classes_", [])] != list(classes):
        raise BundleError(f"{source}: the model's classes differ from {BUNDLE_MANIFEST}'s; "
                          f"re-train with 'iml-genomics train'.")
    try:
        # one prediction on a row of zeros: array shapes inside the model agree with each other
        predict_scores(pipeline, np.zeros((1, n_genes)), classes)
    except Exception as exc:  # noqa: BLE001 - a model that cannot predict is a damaged bundle
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise BundleError(f"{source}: the model cannot predict ({first[:200]}); "
                          f"re-train with 'iml-genomics train'.") from None
