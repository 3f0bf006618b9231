"""What a model bundle may contain, checked before anything in it is imported or called.

A skops file is a zip holding ``schema.json``: a tree of nodes, each naming a
loader (how skops rebuilds it) and a ``module.name``. Several loaders *call*
the named object (``ConstructorFromReduceNode`` calls it with stored
arguments, ``FunctionNode`` / ``MethodNode`` / ``PartialNode`` /
``OperatorFuncNode`` hand a callable to the model, ``DictNode`` /
``TupleNode`` / ``NdArrayNode`` / ``RandomStateNode`` call their class on
stored data). A prefix rule on names ("anything under ``sklearn.``") is not
a safe policy: ``sklearn.utils._testing.check_output`` *is*
``subprocess.check_output``. So the rule here is an allow-list of exactly the
classes :mod:`iml_genomics.models` writes, per loader:

- every loader that is not in :data:`_LOADERS` is refused (functions,
  methods, partials, operator getters, reduce calls, generators, bytes);
- every ``module.name`` must be a name this package writes for that loader,
  and it is resolved (module imported, attribute looked up) only after that
  string check, then the object found must be that very class;
- the zip is checked for members that decompress far beyond their size.

The lists are derived from the model registry and the preprocessing steps
(:func:`allowed_types`), so adding a registry model extends them.
"""

from __future__ import annotations

import functools
import importlib
import io
import json
import pickle
import zipfile
from pathlib import Path

from iml_genomics.errors import BundleError, shorten

# A real bundle's members compress up to ~60 fold (measured: 300-tree forest,
# n = 500, p = 2,000); deflate's ceiling is ~1,030 fold, which only constant
# data reaches (a zip bomb). Members above this size must not exceed this
# ratio; schema.json has its own size cap.
_MAX_RATIO, _RATIO_FROM_BYTES = 500, 16 * 2**20
_MAX_SCHEMA_BYTES = 256 * 2**20

# Loaders iml-genomics bundles use; every other loader is refused outright.
_LOADERS = ("ObjectNode", "TreeNode", "LossNode", "NdArrayNode", "RandomStateNode", "DictNode", "ListNode",
            "TupleNode", "JsonNode", "TypeNode", "CachedNode")
# Loaders that call (or hand over) the object they name: named in refusals.
_CALLING_LOADERS = {"FunctionNode": "a function", "MethodNode": "a bound method", "PartialNode": "a partial function",
                    "OperatorFuncNode": "an operator function", "ConstructorFromReduceNode": "a reduce call",
                    "RandomGeneratorNode": "a generator built from a class name", "ReduceNode": "a reduce call"}


def _clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters (names from a hostile file can be huge)."""
    return text if len(text) <= limit else f"{text[: limit - 25]}...[{len(text)} characters]"


def qualified_name(cls: type) -> str:
    """``module.name`` of ``cls`` as skops writes it (the module it can be imported from)."""
    return f"{pickle.whichmodule(cls, cls.__name__)}.{cls.__name__}"


def _registry_classes() -> set[type]:
    """Estimators of every registry entry, their members, and the pipeline around them."""
    from sklearn.pipeline import Pipeline

    from iml_genomics.config import PreprocessConfig
    from iml_genomics.models import MODEL_REGISTRY
    from iml_genomics.preprocess import make_preprocessing_steps

    from iml_genomics.covariates import WithCovariates

    classes: set[type] = {Pipeline, WithCovariates}
    every_step = PreprocessConfig(min_expression=0.0, top_k_variable=1, standardize=True)
    classes |= {type(step) for _, step in make_preprocessing_steps(every_step)}
    for builders in MODEL_REGISTRY.values():
        for build in builders:
            estimator = build(0, {})
            classes.add(type(estimator))
            member = getattr(estimator, "estimator", None)  # forests: the tree each member is
            if member is not None and not isinstance(member, str):
                classes.add(type(member))
    return classes


def pipeline_step_classes() -> tuple[set[type], set[type]]:
    """(preprocessing step classes, final estimator classes) a saved pipeline may have."""
    from iml_genomics.config import PreprocessConfig
    from iml_genomics.models import MODEL_REGISTRY
    from iml_genomics.preprocess import make_preprocessing_steps

    from iml_genomics.covariates import WithCovariates

    every_step = PreprocessConfig(min_expression=0.0, top_k_variable=1, standardize=True)
    steps = {type(step) for _, step in make_preprocessing_steps(every_step)} | {WithCovariates}
    finals = {type(build(0, {})) for builders in MODEL_REGISTRY.values() for build in builders}
    return steps, finals


def _gb_losses() -> list:
    """One instance of every loss gradient boosting (classic and histogram) can hold.

    Taken from scikit-learn's own tables for the loss names the estimators
    accept, so a ``model.params: {loss: huber}`` bundle loads too.
    """
    from sklearn.ensemble import GradientBoostingRegressor, HistGradientBoostingRegressor, _gb
    from sklearn.ensemble._hist_gradient_boosting import gradient_boosting as _hgb

    losses = [_gb.HalfBinomialLoss(), _gb.HalfMultinomialLoss(n_classes=3), _gb.ExponentialLoss()]
    for name in GradientBoostingRegressor._parameter_constraints["loss"][0].options:
        cls = _gb._LOSSES[name]
        losses.append(cls(quantile=0.9) if name in ("huber", "quantile") else cls())
    for name in HistGradientBoostingRegressor._parameter_constraints["loss"][0].options:
        cls = _hgb._LOSSES[name]
        losses.append(cls(quantile=0.9) if name == "quantile" else cls())
    return losses


def _gradient_boosting_internals() -> set[type]:
    """Stage trees, initial estimators, losses and their links; histogram boosting's predictors and binner."""
    from sklearn.dummy import DummyClassifier, DummyRegressor
    from sklearn.ensemble._hist_gradient_boosting.binning import _BinMapper
    from sklearn.ensemble._hist_gradient_boosting.predictor import TreePredictor
    from sklearn.preprocessing import LabelEncoder
    from sklearn.tree import DecisionTreeRegressor

    # HistGradientBoostingClassifier keeps the LabelEncoder of its fit (classes_ only)
    out = {DummyClassifier, DummyRegressor, DecisionTreeRegressor, TreePredictor, _BinMapper, LabelEncoder}
    for loss in _gb_losses():
        out |= {type(loss), type(loss.link), type(loss.interval_y_true), type(loss.interval_y_pred)}
    return out


def _neural_network_internals() -> set[type]:
    """What a fitted MLP holds besides arrays: its classifier's LabelBinarizer and, when model.params picks the
    'adam' or 'sgd' solver, the optimizer object (learning-rate state: arrays and floats only)."""
    from sklearn.neural_network._stochastic_optimizers import AdamOptimizer, SGDOptimizer
    from sklearn.preprocessing import LabelBinarizer

    return {LabelBinarizer, AdamOptimizer, SGDOptimizer}


def _numpy_scalars() -> set[type]:
    import numpy as np

    return {np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
            np.float16, np.float32, np.float64}


@functools.lru_cache(maxsize=1)
def allowed_types() -> dict[str, dict[str, type]]:
    """Loader -> {``module.name``: class} a bundle may hold.

    Every value is a class (never a function or a builtin function); the
    names are what skops writes for those classes.
    """
    import numpy as np
    from sklearn.tree._tree import Tree

    objects = _registry_classes() | _gradient_boosting_internals() | _neural_network_internals()
    table = {
        "ObjectNode": objects,
        "TreeNode": {Tree},
        "LossNode": {type(loss.closs) for loss in _gb_losses()},
        "NdArrayNode": {np.ndarray} | _numpy_scalars(),
        "RandomStateNode": {np.random.RandomState},
        "DictNode": {dict},
        "ListNode": {list},
        "TupleNode": {tuple},
        # a JsonNode is json.loads of its content: its name is never looked up
        "JsonNode": {str, int, float, bool, list, dict},
        # dict keys are rebuilt by calling their type on the key: plain scalars only
        "TypeNode": {str, int, float, bool},
    }
    out: dict[str, dict[str, type]] = {}
    for loader, classes in table.items():
        for cls in classes:
            if not isinstance(cls, type):  # never a function, whatever the registry grows into
                raise TypeError(f"bundle allow-list entry {cls!r} is not a class")
        out[loader] = {qualified_name(cls): cls for cls in classes}
    return out


def _resolve(name: str) -> object:
    module, _, attr = name.rpartition(".")
    obj: object = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def audit_schema(schema: object, source: str) -> list[str]:
    """Check a parsed ``schema.json``; return the trusted names it uses.

    Parameters
    ----------
    schema : object
        ``json.loads`` of the bundle's ``schema.json``.
    source : str
        The bundle file, for the message.

    Raises
    ------
    BundleError
        A loader or type this package never writes, in one line naming the
        file and up to three offending types.
    """
    from skops.io._protocol import PROTOCOL

    if not isinstance(schema, dict) or schema.get("protocol") != PROTOCOL:
        got = schema.get("protocol") if isinstance(schema, dict) else type(schema).__name__
        raise BundleError(f"{source}: not a skops file of protocol {PROTOCOL} (got {_clip(str(got), 60)}); "
                          f"refusing to load it. Re-train with 'iml-genomics train'.")
    allowed = allowed_types()
    used: set[str] = set()
    offending: list[str] = []
    # iterative walk: a deeply nested crafted schema cannot exhaust the stack
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        stack.extend(node.values())
        if "__loader__" not in node:
            continue
        loader, module, cls = node.get("__loader__"), node.get("__module__"), node.get("__class__")
        if not all(isinstance(v, str) for v in (loader, module, cls)):
            offending.append(f"a malformed node ({_clip(str(loader), 40)})")
            continue
        name = f"{module}.{cls}"
        if loader == "CachedNode":
            continue  # a reference to a node checked where it first appears
        if loader not in _LOADERS:
            what = _CALLING_LOADERS.get(loader, f"loader {_clip(loader, 40)}")
            offending.append(f"{_clip(name, 120)} ({what})")
        elif name not in allowed[loader]:
            what = "a type or builtin function" if loader == "TypeNode" else loader
            offending.append(f"{_clip(name, 120)} ({what})")
        else:
            used.add((loader, name))
        if len(offending) >= 3:
            break
    if not offending:
        # names passed the string check; now make sure each is, once imported, the class we meant
        for loader, name in sorted(used):
            expected = allowed[loader][name]
            try:
                obj = _resolve(name)
            except (ImportError, AttributeError):
                offending.append(f"{name} (cannot be imported)")
                continue
            if obj is not expected or not isinstance(obj, type):
                offending.append(f"{name} (resolves to {shorten(obj, 80)}, not the class iml-genomics writes)")
    if offending:
        raise BundleError(f"{source}: refusing to load this model bundle: it holds {', '.join(dict.fromkeys(offending))}, "
                          f"which iml-genomics never writes (bundles hold only the classes of its model registry). "
                          f"Do not use bundles from untrusted sources; re-train with 'iml-genomics train'.")
    return sorted({name for _, name in used})


def read_checked_zip(data: bytes, source: str) -> list[str]:
    """Open the skops zip in memory, reject bombs and duplicates, audit its schema.

    Returns
    -------
    list of str
        The (all trusted) type names, to pass to ``skops.io.loads``.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise BundleError(f"{source}: not a readable skops file ({_clip(str(exc), 120)}). "
                          f"Re-train with 'iml-genomics train'.") from None
    names = [i.filename for i in infos]
    if len(set(names)) != len(names):
        raise BundleError(f"{source}: the zip holds two members of one name; refusing to load it. "
                          f"Re-train with 'iml-genomics train'.")
    for info in infos:
        if info.filename == "schema.json":
            continue
        if info.file_size > _RATIO_FROM_BYTES and info.file_size > _MAX_RATIO * max(info.compress_size, 1):
            raise BundleError(f"{source}: member {_clip(info.filename, 80)} would decompress to "
                              f"{info.file_size} bytes from {info.compress_size} (a zip bomb?); refusing to load it.")
    arrays = [i for i in infos if i.filename != "schema.json"]
    total, packed = sum(i.file_size for i in arrays), sum(i.compress_size for i in arrays)
    if total > 4 * _RATIO_FROM_BYTES and total > _MAX_RATIO * max(packed, 1):
        # many members each just under the per-member size add up too
        raise BundleError(f"{source}: members would decompress to {total} bytes from {packed} (a zip bomb?); "
                          f"refusing to load it.")
    if "schema.json" not in names:
        raise BundleError(f"{source}: not a skops file (no schema.json). Re-train with 'iml-genomics train'.")
    if archive.getinfo("schema.json").file_size > _MAX_SCHEMA_BYTES:
        raise BundleError(f"{source}: schema.json is larger than {_MAX_SCHEMA_BYTES} bytes; refusing to load it.")
    try:
        schema = json.loads(archive.read("schema.json"))
    except (ValueError, RecursionError, zipfile.BadZipFile, OSError, EOFError) as exc:
        raise BundleError(f"{source}: unreadable schema.json ({_clip(str(exc).splitlines()[0], 120)}). "
                          f"Re-train with 'iml-genomics train'.") from None
    return audit_schema(schema, source)


def check_trees(estimator: object, n_features: int, source: str) -> None:
    """Bounds of every fitted tree, so prediction and Tree SHAP cannot read outside an array.

    Histogram gradient boosting's node arrays are checked by :func:`check_hist_predictors`, called here.

    scikit-learn's ``Tree.__setstate__`` copies the node array without
    checking the child and feature indices, and SHAP sizes its buffers from
    ``max_depth``. A node array written by scikit-learn has children with a
    larger index than their parent, every node reached once from the root,
    features in range and the stored depth equal to the real one; anything
    else is refused.
    """
    import numpy as np
    from sklearn.tree._tree import Tree

    check_hist_predictors(estimator, n_features, source)
    trees = []
    if hasattr(estimator, "tree_"):
        trees.append(estimator.tree_)
    members = getattr(estimator, "estimators_", None)
    if members is not None:
        for member in np.asarray(members, dtype=object).ravel():
            if not hasattr(member, "tree_"):
                continue
            trees.append(member.tree_)
    for k, tree in enumerate(trees):
        if not isinstance(tree, Tree):
            raise BundleError(f"{source}: tree {k} is a {type(tree).__name__}, not a scikit-learn Tree; refusing it.")
        state = tree.__getstate__()
        nodes, count = state["nodes"], int(state["node_count"])
        reason = None
        if not 1 <= count <= len(nodes):
            reason = f"node_count {count} outside 1..{len(nodes)}"
        else:
            nodes = nodes[:count]
            left, right, feature = (nodes["left_child"].astype(np.int64), nodes["right_child"].astype(np.int64),
                                    nodes["feature"].astype(np.int64))
            leaf = (left == -1) & (right == -1)
            inner = ~leaf
            if tree.n_features != n_features:
                reason = f"{tree.n_features} features where the model has {n_features}"
            else:
                reason = _node_structure_problem(left, right, feature, inner, n_features)
                if reason is None:
                    depth = np.zeros(count, dtype=np.int64)
                    frontier, d = np.array([0]), 0
                    while frontier.size:
                        depth[frontier] = d
                        frontier = frontier[inner[frontier]]
                        frontier = np.concatenate([left[frontier], right[frontier]])
                        d += 1
                    if int(state["max_depth"]) != int(depth.max()):
                        reason = f"max_depth {state['max_depth']} where the tree is {int(depth.max())} deep"
        if reason:
            raise BundleError(f"{source}: tree {k} of {type(estimator).__name__} is malformed ({reason}); "
                              f"refusing to load it. Re-train with 'iml-genomics train'.")


def _node_structure_problem(left, right, feature, inner, n_features: int) -> str | None:
    """Why a node array is not one scikit-learn writes (children after parents, each node reached once
    from the root, split features in range), or None."""
    import numpy as np

    count = len(left)
    idx = np.arange(count)
    if np.any(inner & ((left <= idx) | (right <= idx) | (left >= count) | (right >= count))):
        return "a child index out of range or not after its parent"
    if np.any(inner & ((feature < 0) | (feature >= n_features))):
        return "a split on a feature out of range"
    parents = np.bincount(np.concatenate([left[inner], right[inner]]), minlength=count)
    if parents[0] != 0 or np.any(parents[1:] != 1):
        return "a node reached from more than one parent (or never)"
    return None


def check_hist_predictors(estimator: object, n_features: int, source: str) -> None:
    """Bounds of a histogram gradient boosting model's node arrays (``_predictors``).

    scikit-learn's predictor and shap's reader follow ``left`` / ``right`` and read ``feature_idx`` without
    checking them; categorical splits index bitsets by stored values. Models this package trains have no
    categorical features, so any categorical node or binner is refused, and every node array must be one
    scikit-learn writes (the checks of :func:`check_trees`).
    """
    import numpy as np
    from sklearn.ensemble._hist_gradient_boosting.common import PREDICTOR_RECORD_DTYPE
    from sklearn.ensemble._hist_gradient_boosting.predictor import TreePredictor

    stages = getattr(estimator, "_predictors", None)
    if stages is None:
        return
    name = type(estimator).__name__

    def fail(reason: str) -> None:
        raise BundleError(f"{source}: {name} is malformed ({reason}); refusing to load it. "
                          f"Re-train with 'iml-genomics train'.")

    if not isinstance(stages, list) or not stages:
        fail("no list of predictors")
    width = getattr(estimator, "n_trees_per_iteration_", None)
    binner = getattr(estimator, "_bin_mapper", None)
    for flags in (getattr(estimator, "is_categorical_", None), getattr(binner, "is_categorical_", None)):
        if flags is not None and np.any(np.asarray(flags)):
            fail("categorical features, which iml-genomics never trains")
    for i, stage in enumerate(stages):
        if not isinstance(stage, list) or len(stage) != width:
            fail(f"iteration {i} does not hold {width} predictors")
        for k, predictor in enumerate(stage):
            if type(predictor) is not TreePredictor:
                fail(f"iteration {i} holds a {type(predictor).__name__}, not a TreePredictor")
            nodes = predictor.nodes
            if not isinstance(nodes, np.ndarray) or nodes.dtype != PREDICTOR_RECORD_DTYPE or nodes.ndim != 1 \
                    or not len(nodes):
                fail(f"tree {i}/{k}: not a node array scikit-learn writes")
            if np.any(nodes["is_categorical"]):
                fail(f"tree {i}/{k}: a categorical split, which iml-genomics never trains")
            inner = nodes["is_leaf"] == 0
            reason = _node_structure_problem(nodes["left"].astype(np.int64), nodes["right"].astype(np.int64),
                                             nodes["feature_idx"].astype(np.int64), inner, n_features)
            if reason:
                fail(f"tree {i}/{k}: {reason}")


def check_manifest(manifest: object, path: Path) -> dict:
    """The fields explain/evaluate read from ``model.json``, with their types.

    Raises
    ------
    BundleError
        One line naming ``model.json``, the key and what is wrong.
    """
    def fail(reason: str) -> None:
        raise BundleError(f"{path}: {reason}. Pass the --out directory of 'iml-genomics train' "
                          f"(re-train if model.json was edited).")

    if not isinstance(manifest, dict):
        fail(f"must be a JSON object, got a {type(manifest).__name__}")
    for key in ("model_sha256", "task", "gene_ids", "config"):
        if key not in manifest:
            fail(f"key '{key}' is missing")
    if not isinstance(manifest["model_sha256"], str):
        fail(f"key 'model_sha256' must be a string, got {shorten(manifest['model_sha256'])}")
    task = manifest["task"]
    if task not in ("classification", "regression"):
        fail(f"key 'task' must be 'classification' or 'regression', got {shorten(task)}")
    genes = manifest["gene_ids"]
    if not isinstance(genes, list) or not genes or not all(isinstance(g, str) for g in genes):
        fail(f"key 'gene_ids' must be a non-empty list of strings, got {shorten(genes)}")
    if len(set(genes)) != len(genes):
        seen: set[str] = set()
        dup = next(g for g in genes if g in seen or seen.add(g))
        fail(f"key 'gene_ids' repeats {shorten(dup)}")
    classes = manifest.get("classes")
    if task == "classification":
        if (not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) for c in classes)
                or len(set(classes)) != len(classes)):
            fail(f"key 'classes' must list two or more distinct class names, got {shorten(classes)}")
    elif classes is not None:
        fail(f"key 'classes' must be null for a regression model, got {shorten(classes)}")
    if not isinstance(manifest["config"], dict):
        fail(f"key 'config' must be a JSON object, got {shorten(manifest['config'])}")
    for key in ("label_column", "model_name", "positive_class"):
        if manifest.get(key) is not None and not isinstance(manifest[key], str):
            fail(f"key '{key}' must be a string, got {shorten(manifest[key])}")
    positive = manifest.get("positive_class")
    if positive is not None and (task != "classification" or len(classes) != 2 or positive not in classes):
        # explain reads it to choose the class SHAP explains: it must be one of exactly two classes
        fail(f"key 'positive_class' must be null or one of the two 'classes', got {shorten(positive)}")
    used = manifest.get("used_genes")
    if used is not None and (not isinstance(used, list) or not set(used) <= set(genes)):
        fail(f"key 'used_genes' must be a list of genes from 'gene_ids', got {shorten(used)}")
    covariates = manifest.get("covariates")
    if covariates is not None:
        # explain encodes the cohort's covariate columns from these entries (iml_genomics.covariates)
        def entry_ok(e) -> bool:
            if not isinstance(e, dict) or not isinstance(e.get("column"), str) or e.get("kind") not in (
                    "numeric", "categorical") or not isinstance(e.get("features"), list):
                return False
            if not all(isinstance(f, str) for f in e["features"]):
                return False
            if e["kind"] == "numeric":
                return e.get("levels") is None and len(e["features"]) == 1
            levels = e.get("levels")
            return (isinstance(levels, list) and len(levels) >= 2 and all(isinstance(v, str) for v in levels)
                    and len(e["features"]) == len(levels) - 1)
        if not isinstance(covariates, list) or not all(entry_ok(e) for e in covariates):
            fail(f"key 'covariates' must be a list of covariate encodings (column, kind, levels, features), "
                 f"got {shorten(covariates)}")
    return manifest
