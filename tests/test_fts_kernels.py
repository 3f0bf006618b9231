"""The single-output Tree SHAP kernels specialised on the quadrature node count, and the binary complement."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import shap
from sklearn.ensemble import ExtraTreesClassifier, GradientBoostingClassifier, RandomForestClassifier
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

from iml_genomics.explain import _fts_kernels
from iml_genomics.explain._fts_codegen import K_SPECIALISED, kernel_source
from iml_genomics.explain.fast_treeshap import FastTreeExplainer
from iml_genomics.explain.shap_values import shap_attributions

TOL = 1e-10


def _shap(model, X):
    ref = np.asarray(shap.TreeExplainer(model).shap_values(X, check_additivity=False), dtype=np.float64)
    return ref[:, :, None] if ref.ndim == 2 else ref


def _binary(n, p, seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p))
    y = np.where(X[:, 0] + X[:, 1] * X[:, 2] + rng.normal(size=n) > 0, "b", "a")
    return X, y


def test_generated_kernels_are_current():
    # the kernels module is generated: an edit of the template that is not regenerated would silently not run
    path = Path(_fts_kernels.__file__)
    assert path.read_text() == kernel_source(), "run: PYTHONPATH=. python scripts/regen_fts_kernels.py"
    for k in K_SPECIALISED:
        assert callable(getattr(_fts_kernels, f"_rows_k{k}"))


def test_binary_class_probabilities_are_computed_once_and_negated():
    X, y = _binary(300, 8, seed=1)
    for model in (RandomForestClassifier(6, max_depth=6, random_state=0), ExtraTreesClassifier(5, random_state=0),
                  DecisionTreeClassifier(max_depth=7, random_state=0)):
        model.fit(X, y)
        ex = FastTreeExplainer(model)
        assert ex._complement, type(model).__name__
        got = ex.shap_values(X[:50])
        assert np.max(np.abs(got - _shap(model, X[:50]))) <= TOL
        assert np.array_equal(got[:, :, 0], -got[:, :, 1])
        # interventional: the same game identity
        exi = FastTreeExplainer(model, data=X[:20], feature_perturbation="interventional")
        assert exi._complement and exi.shares_background
        vi = exi.shap_values(X[:10])
        np.testing.assert_allclose(exi.expected_value + vi.sum(axis=1), exi.predict_raw(X[:10]), rtol=0, atol=1e-10)


def test_complement_is_not_used_where_the_outputs_do_not_add_up_to_a_constant():
    # two columns of a three-class forest: their probabilities vary in sum from leaf to leaf, so class 0 is not
    # minus class 1 and both must be computed; the values must still equal shap's columns
    rng = np.random.default_rng(2)
    X = rng.normal(size=(300, 6))
    y = np.asarray(["x", "y", "z"], dtype=object)[np.digitize(X[:, 0] + 0.5 * rng.normal(size=300), [-0.5, 0.5])]
    model = RandomForestClassifier(5, max_depth=5, random_state=0).fit(X, y)
    ex = FastTreeExplainer(model, output_columns=[0, 1])
    assert not ex._complement
    got = ex.shap_values(X[:40])
    ref = _shap(model, X[:40])[:, :, :2]
    assert np.max(np.abs(got - ref)) <= TOL
    assert np.max(np.abs(got[:, :, 0] + got[:, :, 1])) > 1e-3  # the negation would have been wrong here


def test_deep_trees_run_the_kernel_with_a_runtime_node_count():
    # a tree of depth > 24 needs more than 12 quadrature nodes: the generic single-output kernel, equal to shap
    rng = np.random.default_rng(3)
    X = rng.normal(size=(3000, 10))
    model = DecisionTreeRegressor(random_state=0).fit(X, rng.normal(size=3000))
    ex = FastTreeExplainer(model)
    assert int(ex.kt.max()) > max(K_SPECIALISED)
    assert ex._k_groups()[-1][0] is _fts_kernels._rows_kany
    assert np.max(np.abs(ex.shap_values(X[:30]) - _shap(model, X[:30]))) <= TOL


def test_single_output_kernels_do_not_depend_on_threads_or_chunks():
    # trees of several depths (several quadrature node counts, one kernel call per group of trees)
    X, y = _binary(400, 10, seed=4)
    forest = RandomForestClassifier(12, min_samples_leaf=2, random_state=0).fit(X, y)
    gb = GradientBoostingClassifier(n_estimators=8, max_depth=4, random_state=0).fit(X, y)
    for model, cols in ((forest, None), (forest, [1]), (gb, None)):
        assert np.unique(FastTreeExplainer(model).kt).size > 1 or model is gb
        one = FastTreeExplainer(model, n_threads=1, output_columns=cols).shap_values(X)
        two = FastTreeExplainer(model, n_threads=2, output_columns=cols).shap_values(X)
        assert one.tobytes() == two.tobytes()
    ids = [f"G{j}" for j in range(X.shape[1])]
    r1 = shap_attributions(forest, X, gene_ids=ids, classes=["a", "b"], chunk_size=400, n_jobs=1)
    r2 = shap_attributions(forest, X, gene_ids=ids, classes=["a", "b"], chunk_size=37, n_jobs=2)
    assert r1.values.tobytes() == r2.values.tobytes()
    assert np.max(np.abs(r1.values[:, :, 0] - _shap(forest, X)[:, :, 1])) <= TOL


def test_background_summary_is_built_for_a_single_cell_shaped_forest():
    # leaves with many distinct background masks, about 12 per background row and depth level as in the
    # single-cell config (forest of depth 8 grown on 20,000 cells): the summary (1.9x faster than shap's
    # interventional there, see fast_treeshap._SUMMARY_CHECKS_PER_VISIT) is built, and equals the pair walk
    from iml_genomics.explain import fast_treeshap as F
    from iml_genomics.simulate import simulate_gaussian

    c = simulate_gaussian(8000, 200, n_signal=20, effect_size=0.5, seed=0)
    X = c.expression.to_numpy(dtype=np.float64)
    y = c.labels["condition"].astype(str).to_numpy(dtype=object)
    model = RandomForestClassifier(3, max_depth=8, min_samples_leaf=5, random_state=0).fit(X, y)
    ex = FastTreeExplainer(model, data=X[:100], feature_perturbation="interventional", output_columns=[1])
    assert ex.shares_background, ex.summary_note
    per_level = (ex._bg["masks"].size + ex._a["left"].size) / (100 * ex.tree_depths.sum())
    assert 8 < per_level < F._SUMMARY_CHECKS_PER_VISIT  # refused by the earlier budget of 8
    got = ex.shap_values(X[-5:])
    ex._bg = None  # the pair walk, one background row at a time
    assert np.max(np.abs(got - ex.shap_values(X[-5:]))) <= 1e-12
