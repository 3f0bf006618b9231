"""Model kinds declared in the registry and the explainer routes that follow from them.

The registry (``models.MODEL_REGISTRY``, one ``ModelSpec`` per name) is the only place that says what a model
is: SHAP (``explain/shap_values.py``) and permutation importance (``explain/permutation.py``) look the kind up
from the estimator's class. These tests check the declarations against the fitted models and against shap
itself, then each route: exact Tree SHAP for HistGradientBoosting (against shap directly, additivity in the
margin space), multiclass gradient boosting refused in one line through the CLI, and the permutation shortcuts.
"""

from __future__ import annotations

import json
import typing
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from conftest import one_line, run_cli
from iml_genomics.models import (MODEL_KINDS, MODEL_REGISTRY, SHAP_ALGORITHMS, ModelSpec, build_estimator,
                                 build_pipeline, load_bundle, save_bundle, spec_for_estimator)

# small but real: every tree model grows a few trees with several splits each
SMALL = {"random_forest": {"n_estimators": 5, "max_depth": 3}, "extra_trees": {"n_estimators": 5, "max_depth": 3},
         "gradient_boosting": {"n_estimators": 10}, "hist_gradient_boosting": {"max_iter": 15, "min_samples_leaf": 5},
         "mlp": {"hidden_layer_sizes": (8,), "max_iter": 300}}


def _data(task: str, n_classes: int = 2, n: int = 120, p: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p))
    signal = 2.0 * X[:, 0] + X[:, 1]
    if task == "regression":
        return X, signal + 0.3 * rng.normal(size=n)
    cuts = np.quantile(signal, np.linspace(0, 1, n_classes + 1)[1:-1])
    return X, np.array(["abcdefg"[k] for k in np.digitize(signal + 0.3 * rng.normal(size=n), cuts)], dtype=object)


def _fit(name: str, task: str, n_classes: int = 2, **data_kw):
    X, y = _data(task, n_classes, **data_kw)
    est = build_estimator(name, task, seed=0, params=SMALL.get(name, {}), n_classes=n_classes)
    pipe = Pipeline([("scale", StandardScaler()), ("model", est)]).fit(X, y)
    classes = sorted(set(y)) if task == "classification" else None
    return pipe, X, y, classes


def _has_trees(est) -> bool:
    return hasattr(est, "tree_") or hasattr(est, "estimators_") or hasattr(est, "_predictors")


# ---------------------------------------------------------------------------
# the declarations
# ---------------------------------------------------------------------------


def test_every_registry_class_has_a_declared_kind_that_matches_the_fitted_model():
    for name, spec in MODEL_REGISTRY.items():
        assert isinstance(spec, ModelSpec), name
        assert spec.kind in MODEL_KINDS and spec.shap in SHAP_ALGORITHMS, name
        for task in ("classification", "regression"):
            pipe, *_ = _fit(name, task)
            est = pipe[-1]
            found = spec_for_estimator(est)
            assert found is not None, f"{name}: {type(est).__name__} has no registry entry"
            assert (found.kind, found.shap) == (spec.kind, spec.shap), name  # shared classes agree
            # the declared kind is what the fitted object is made of
            assert (spec.kind == "tree") == _has_trees(est), (name, task)
            assert (spec.kind == "linear") == hasattr(est, "coef_"), (name, task)
            assert spec.shap != "tree" or spec.kind == "tree", name


def test_a_spec_without_a_valid_kind_is_refused_and_unknown_classes_have_none():
    from sklearn.linear_model import BayesianRidge

    builders = MODEL_REGISTRY["lasso"]
    with pytest.raises(ValueError, match="kind"):
        ModelSpec(*builders, kind="quantum", shap="agnostic")
    with pytest.raises(ValueError, match="shap"):
        ModelSpec(*builders, kind="linear", shap="exact")
    assert spec_for_estimator(BayesianRidge()) is None

    class Wrapped(type(build_estimator("l1_logistic", "classification", seed=0))):
        """A subclass built in Python keeps its base class's declared kind."""

    assert spec_for_estimator(Wrapped()) is MODEL_REGISTRY["l1_logistic"]


def test_registry_keeps_its_tuple_interface_and_the_config_lists_every_name():
    from iml_genomics.config import ModelConfig

    for name, spec in MODEL_REGISTRY.items():
        clf, reg = spec
        assert (spec[0], spec[1]) == (clf, reg) and len(spec) == 2
    names = typing.get_args(typing.get_type_hints(ModelConfig)["name"])
    assert set(names) == set(MODEL_REGISTRY)


def test_explainers_name_no_model_class():
    """Kinds come from the registry: no string in the explain code spells (part of) a registry class name."""
    import ast

    names = {type(build(0, {})).__name__ for spec in MODEL_REGISTRY.values() for build in spec}
    root = Path(__file__).resolve().parents[1] / "iml_genomics" / "explain"
    found = []
    for path in sorted(root.glob("*.py")):
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and node.body
                      and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                text = node.value.strip()
                if len(text) >= 6 and any(text in name for name in names):
                    found.append(f"{path.name}:{node.lineno}: {text!r}")
    assert not found, found


def test_exact_multiclass_declarations_agree_with_the_installed_shap():
    import shap

    for name, spec in MODEL_REGISTRY.items():
        if spec.shap != "tree":
            continue
        pipe, *_ = _fit(name, "classification", n_classes=3)
        try:
            shap.TreeExplainer(pipe[-1], feature_perturbation="tree_path_dependent")
            supported = True
        except Exception:  # noqa: BLE001 - shap raises InvalidModelError / NotImplementedError
            supported = False
        assert supported == spec.exact_multiclass, (name, shap.__version__)


# ---------------------------------------------------------------------------
# SHAP route per kind
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MODEL_REGISTRY))
def test_shap_route_and_scale_follow_the_registry(name):
    from iml_genomics.explain.shap_values import plan_shap, shap_attributions

    spec = MODEL_REGISTRY[name]
    pipe, X, _, classes = _fit(name, "classification")
    genes = [f"G{j}" for j in range(X.shape[1])]
    plan, _ = plan_shap(pipe, X, gene_ids=genes, classes=classes, agnostic_pairs=1)
    assert plan.kind == spec.shap
    assert plan.exact == (spec.shap != "agnostic")
    # the model-agnostic route calls predict for every coalition: never in forked workers (plan_shap)
    assert plan.fork == (spec.shap != "agnostic" and not spec.openmp_predict)
    expected_scale = "log_odds" if spec.log_odds_output else ("raw" if spec.shap == "linear" else "probability")
    assert plan.scale == expected_scale
    res = shap_attributions(pipe, X[:20], gene_ids=genes, classes=classes, additivity_tolerance=1e-6)
    assert res.max_additivity_error <= 1e-6


def test_an_estimator_outside_the_registry_takes_the_agnostic_route():
    from sklearn.linear_model import BayesianRidge

    from iml_genomics.explain.shap_values import plan_shap

    X, y = _data("regression")
    pipe = Pipeline([("scale", StandardScaler()), ("model", BayesianRidge())]).fit(X, y)
    plan, payload = plan_shap(pipe, X, gene_ids=[f"G{j}" for j in range(X.shape[1])], classes=None,
                              agnostic_pairs=1)
    assert plan.kind == "agnostic" and not plan.exact and plan.approximations and plan.fork is False


# ---------------------------------------------------------------------------
# HistGradientBoosting: exact Tree SHAP
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("task,n_classes", [("classification", 2), ("classification", 3), ("regression", None)])
@pytest.mark.parametrize("mode", ["tree_path_dependent", "interventional"])
def test_hist_gradient_boosting_is_exact_tree_shap(task, n_classes, mode):
    import shap

    from iml_genomics.explain.shap_values import shap_attributions

    pipe, X, _, classes = _fit("hist_gradient_boosting", task, n_classes or 2)
    est = pipe[-1]
    genes = [f"G{j}" for j in range(X.shape[1])]
    res = shap_attributions(pipe, X, gene_ids=genes, classes=classes, mode=mode, background_size=40,
                            additivity_tolerance=1e-6)
    assert res.method == ("tree_shap_path_dependent" if mode == "tree_path_dependent" else "tree_shap_interventional")
    assert res.exact and res.approximations == []
    Z = pipe[:-1].transform(X)
    # the margin: decision function (log-odds / per-class logits) or the regression prediction
    margin = est.decision_function(Z) if classes else est.predict(Z)
    margin = margin.reshape(len(X), -1)
    total = res.base_values + res.values.sum(axis=1)
    np.testing.assert_allclose(total, margin, rtol=0, atol=1e-6)
    if mode == "interventional":
        # the compiled engine's interventional values are exact; shap 0.51's are not on histogram gradient
        # boosting (up to ~1e-2 off here), so the reference is the enumeration of every coalition (issue 18)
        import itertools
        import math

        from iml_genomics.explain.shap_values import background_rows

        bg = Z[background_rows(len(X), 40, 0)]
        p = Z.shape[1]

        def v(S, z):
            M = bg.copy()
            M[:, list(S)] = z[list(S)]
            return margin_of(M).mean(axis=0)

        margin_of = ((lambda M: est.decision_function(M).reshape(len(M), -1)) if classes
                     else (lambda M: est.predict(M).reshape(len(M), -1)))
        for r in range(0, len(X), 40):  # three rows: 256 coalitions each
            vals = {S: v(S, Z[r]) for k in range(p + 1) for S in itertools.combinations(range(p), k)}
            exact = np.zeros((p, res.values.shape[2]))
            for i in range(p):
                for S, val in vals.items():
                    if i not in S:
                        w = math.factorial(len(S)) * math.factorial(p - len(S) - 1) / math.factorial(p)
                        exact[i] += w * (vals[tuple(sorted(S + (i,)))] - val)
            np.testing.assert_allclose(res.values[r], exact, rtol=0, atol=1e-12)
    else:
        # the same numbers shap gives when called directly
        explainer = shap.TreeExplainer(est, feature_perturbation="tree_path_dependent")
        direct = np.asarray(explainer.shap_values(Z, check_additivity=False))
        direct = direct.reshape(len(X), X.shape[1], -1)
        np.testing.assert_allclose(res.values, direct, rtol=0, atol=1e-12)
    # a signal gene outranks a noise gene
    mean_abs = np.abs(res.values).sum(axis=2).mean(axis=0)
    assert mean_abs[0] > mean_abs[-1]


def test_hist_gradient_boosting_positive_class_flips_the_margin():
    from iml_genomics.explain.shap_values import shap_attributions

    pipe, X, _, classes = _fit("hist_gradient_boosting", "classification")
    genes = [f"G{j}" for j in range(X.shape[1])]
    last = shap_attributions(pipe, X, gene_ids=genes, classes=classes)
    first = shap_attributions(pipe, X, gene_ids=genes, classes=classes, positive_class=classes[0])
    assert first.outputs == [classes[0]] and last.outputs == [classes[1]]
    np.testing.assert_allclose(first.values, -last.values, atol=1e-12)
    np.testing.assert_allclose(first.model_output, -pipe[-1].decision_function(pipe[:-1].transform(X))[:, None],
                               atol=1e-12)


def test_models_without_exact_shap_are_refused_before_any_work():
    import shap

    from iml_genomics.errors import ConfigError
    from iml_genomics.explain.shap_values import plan_shap

    pipe, X, _, classes = _fit("gradient_boosting", "classification", 3)
    genes = [f"G{j}" for j in range(X.shape[1])]
    with pytest.raises(ConfigError, match="'gradient_boosting' .*3 classes.*'hist_gradient_boosting'"):
        plan_shap(pipe, X, gene_ids=genes, classes=classes)
    plan, payload = plan_shap(pipe, X, gene_ids=genes, classes=classes, values=False)  # permutation-only runs
    assert payload is None and plan.outputs == classes
    # a log-link regressor: shap's values add up to the log of the prediction, not to the prediction
    X, y = _data("regression")
    y = np.exp(y / 2)
    est = build_estimator("hist_gradient_boosting", "regression", seed=0, params={"loss": "poisson", "max_iter": 15})
    pipe = Pipeline([("scale", StandardScaler()), ("model", est)]).fit(X, y)
    Z = pipe[:-1].transform(X)
    explainer = shap.TreeExplainer(est)
    total = explainer.shap_values(Z, check_additivity=False).sum(axis=1) + explainer.expected_value
    assert np.max(np.abs(total - est.predict(Z))) > 0.1
    np.testing.assert_allclose(np.exp(total), est.predict(Z), rtol=1e-9)
    with pytest.raises(ConfigError, match="loss 'poisson'.*--method permutation"):
        plan_shap(pipe, X, gene_ids=genes, classes=None)


# ---------------------------------------------------------------------------
# HistGradientBoosting bundles
# ---------------------------------------------------------------------------


def _save(directory: Path, name: str, task: str, n_classes: int = 2, data=None, extra=None):
    """Fit and save a bundle with the manifest fields ``train`` writes."""
    from iml_genomics.config import config_from_dict

    X, y = data if data is not None else _data(task, n_classes)
    cfg = config_from_dict({"model": {"name": name, "params": SMALL.get(name, {})},
                            "data": {"label_column": "condition"}, **(extra or {})})
    classes = sorted(set(y)) if task == "classification" else None
    pipe = build_pipeline(cfg, task, n_classes=len(classes) if classes else None).fit(X, y)
    genes = [f"G{j}" for j in range(X.shape[1])]
    save_bundle(directory, pipe, {"task": task, "classes": classes, "gene_ids": genes, "used_genes": genes,
                                  "label_column": "condition", "model_name": name,
                                  "config": {k: v for k, v in cfg.to_dict().items() if k != "n_jobs"}})
    return pipe, X, classes


@pytest.mark.parametrize("task,n_classes", [("classification", 2), ("classification", 3), ("regression", None)])
def test_hist_gradient_boosting_bundle_round_trip(tmp_path, task, n_classes):
    from iml_genomics.models import predict_scores

    pipe, X, classes = _save(tmp_path / "a", "hist_gradient_boosting", task, n_classes or 2)
    _save(tmp_path / "b", "hist_gradient_boosting", task, n_classes or 2)
    assert (tmp_path / "a" / "model.skops").read_bytes() == (tmp_path / "b" / "model.skops").read_bytes()
    # the fit-only generator is left out of the file, not out of the caller's model
    assert hasattr(pipe[-1], "_feature_subsample_rng")
    loaded, manifest = load_bundle(tmp_path / "a")
    assert not hasattr(loaded[-1], "_feature_subsample_rng")
    np.testing.assert_array_equal(predict_scores(loaded, X, classes), predict_scores(pipe, X, classes))


def test_malformed_hist_gradient_boosting_nodes_are_refused():
    from iml_genomics.bundle_audit import check_trees
    from iml_genomics.errors import BundleError

    pipe, X, _, _ = _fit("hist_gradient_boosting", "classification", 3)
    est = pipe[-1]
    p = est.n_features_in_
    check_trees(est, p, "m")  # a genuine model passes
    nodes = est._predictors[0][0].nodes
    split = int(np.flatnonzero(nodes["is_leaf"] == 0)[0])
    for field, value, reason in (("left", len(nodes) + 7, "child index"), ("right", split, "child index"),
                                 ("feature_idx", p, "feature out of range"), ("is_categorical", 1, "categorical")):
        saved = nodes[field][split]
        nodes[field][split] = value
        with pytest.raises(BundleError, match=reason):
            check_trees(est, p, "m")
        nodes[field][split] = saved
    check_trees(est, p, "m")
    stage = est._predictors[1]
    est._predictors[1] = stage[:2]
    with pytest.raises(BundleError, match="predictors"):
        check_trees(est, p, "m")
    est._predictors[1] = stage
    est._bin_mapper.is_categorical_ = np.ones(p, dtype=bool)
    with pytest.raises(BundleError, match="categorical"):
        check_trees(est, p, "m")


# ---------------------------------------------------------------------------
# permutation importance: the path per kind
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MODEL_REGISTRY))
def test_permutation_relevant_features_and_forest_shortcut_per_kind(name):
    from iml_genomics.explain.permutation import (_encode, _forest_kind, _importance_batch, _predict,
                                                  _score_blocks, permutation_importance_fitted, relevant_features)

    spec = MODEL_REGISTRY[name]
    for task in ("classification", "regression"):
        pipe, X, y, classes = _fit(name, task, p=40)
        est = pipe[-1]
        Z = pipe[:-1].transform(X)
        used = relevant_features(est, Z.shape[1])
        # a feature the model ignores cannot move its prediction: permute each 'unused' one and check
        for j in np.flatnonzero(~used):
            Zp = Z.copy()
            Zp[:, j] = Z[::-1, j]
            np.testing.assert_array_equal(_predict(est, Zp, classes), _predict(est, Z, classes))
        assert used[0], (name, task)  # the strongest signal gene is used
        if spec.kind == "tree":
            assert not used.all(), (name, task)  # small trees leave noise genes unsplit
        kind = _forest_kind(est)
        assert (kind is not None) == spec.forest
        imp = permutation_importance_fitted(pipe, X, y, classes=classes, n_repeats=3, random_state=1)
        assert np.all(imp[~used] == 0) and imp[0].mean() > 0
        if kind is not None:
            # the per-tree shortcut equals re-predicting the whole forest
            genes = np.flatnonzero(used)
            y_idx = _encode(y, classes)
            scoring = "r2" if classes is None else "log_loss"
            base = float(_score_blocks(_predict(est, Z, classes)[None], y_idx, scoring)[0])
            trees_of = {int(g): [t for t, tree in enumerate(est.estimators_) if g in tree.tree_.feature]
                        for g in genes}
            fast = _importance_batch(est, Z.astype(np.float32).astype(np.float64), y_idx,
                                     None if kind == "regressor" else classes, genes, 3, 1, scoring, base,
                                     (kind, trees_of))
            slow = _importance_batch(est, Z.astype(np.float32).astype(np.float64), y_idx, classes, genes, 3, 1,
                                     scoring, base, None)
            np.testing.assert_allclose(fast, slow, atol=1e-9)


# ---------------------------------------------------------------------------
# multiclass boosting through the CLI
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def three_class(tmp_path_factory):
    """A 3-class cohort (CSV + labels) and bundles of both boosting models saved as ``train`` saves them."""
    root = tmp_path_factory.mktemp("three_class")
    X, y = _data("classification", 3, n=60, p=8, seed=3)
    samples = [f"S{i:03d}" for i in range(len(y))]
    pd.DataFrame(X, index=pd.Index(samples, name="sample_id"),
                 columns=[f"G{j}" for j in range(X.shape[1])]).to_csv(root / "expr.csv")
    pd.DataFrame({"sample_id": samples, "condition": y}).to_csv(root / "labels.tsv", sep="\t", index=False)
    bundles = {}
    for name in ("gradient_boosting", "hist_gradient_boosting"):
        # chunks of 20 samples: explain --jobs 2 really splits the work
        _save(root / name, name, "classification", 3, data=(X, y), extra={"cv": {"n_splits": 2},
                                                                          "explain": {"chunk_size": 20}})
        bundles[name] = root / name
    return root, bundles, X


def test_multiclass_gradient_boosting_shap_is_refused_in_one_line(three_class):
    root, bundles, _ = three_class
    out = root / "gb_explain"
    proc = run_cli("explain", "--model", bundles["gradient_boosting"], "--expression", root / "expr.csv",
                   "--out", out, "--method", "shap", check=False)
    one_line(proc, 2, "gradient_boosting", "3 classes", "hist_gradient_boosting", "--method permutation")
    assert not out.exists()
    # permutation importance needs no SHAP and still runs
    out = root / "gb_permutation"
    run_cli("explain", "--model", bundles["gradient_boosting"], "--expression", root / "expr.csv",
            "--labels", root / "labels.tsv", "--out", out, "--method", "permutation", "--jobs", "1")
    ranking = pd.read_csv(out / "gene_ranking.tsv", sep="\t")
    assert ranking["gene_id"].iloc[0] in ("G0", "G1")


def test_multiclass_hist_gradient_boosting_is_explained_exactly_whatever_the_jobs(three_class):
    import pyarrow.parquet as pq

    from iml_genomics.explain.shap_values import shap_attributions

    root, bundles, X = three_class
    out = root / "hgb_explain"
    run_cli("explain", "--model", bundles["hist_gradient_boosting"], "--expression", root / "expr.csv",
            "--out", out, "--method", "shap", "--jobs", "2")
    summary = json.loads((out / "explain_summary.json").read_text())
    assert summary["shap_method"] == "tree_shap_path_dependent" and summary["shap_exact"] is True
    assert summary["scale"] == "log_odds" and summary["classes_explained"] == ["a", "b", "c"]
    assert summary["max_additivity_error"] < 1e-6
    ranking = pd.read_csv(out / "gene_ranking.tsv", sep="\t")
    assert ranking["gene_id"].iloc[0] == "G0"
    # three chunks on two workers (not forked: HistGradientBoosting predicts with OpenMP) give the bytes of one
    # process
    pipe, manifest = load_bundle(bundles["hist_gradient_boosting"])
    one = shap_attributions(pipe, X, gene_ids=manifest["gene_ids"], classes=manifest["classes"], chunk_size=20,
                            n_jobs=1)
    table = pq.read_table(out / "attributions.parquet").to_pandas()
    assert sorted(table["class"].unique()) == ["a", "b", "c"]
    for k, c in enumerate(manifest["classes"]):
        rows = table[table["class"] == c].set_index("sample_id").loc[[f"S{i:03d}" for i in range(len(X))]]
        # genes are stored as float32, base and output as float64
        assert rows[manifest["gene_ids"]].to_numpy().tobytes() == one.values[:, :, k].astype(np.float32).tobytes()
        assert rows["base_value"].to_numpy().tobytes() == one.base_values[:, k].tobytes()
        assert rows["model_output"].to_numpy().tobytes() == one.model_output[:, k].tobytes()


@pytest.mark.slow
def test_train_hist_gradient_boosting_on_the_demo(tmp_path, demo_paths):
    out = tmp_path / "train"
    run_cli("train", "--config", demo_paths["config"], "--expression", demo_paths["csv.gz"],
            "--labels", demo_paths["labels"], "--out", out, "--model", "hist_gradient_boosting", "--jobs", "2")
    metrics = pd.read_csv(out / "cv_summary.tsv", sep="\t").set_index("metric")
    assert metrics.loc["auroc", "mean"] > 0.75
    assert json.loads((out / "model.json").read_text())["model_name"] == "hist_gradient_boosting"
    load_bundle(out)
