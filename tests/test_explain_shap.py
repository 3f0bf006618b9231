"""SHAP attributions: agreement with shap and with the linear closed form, additivity, --jobs invariance."""

from __future__ import annotations

import numpy as np
import pytest
import shap
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier, RandomForestRegressor
from sklearn.linear_model import Lasso
from sklearn.linear_model import LogisticRegression as SkLogisticRegression
from sklearn.naive_bayes import GaussianNB
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from iml_genomics.errors import NumericalError
from iml_genomics.explain import shap_attributions
from iml_genomics.preprocess import ExpressionTransform, GeneFilter


def _data(n=160, p=30, seed=0, classes=("a", "b")):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p)) * rng.uniform(0.5, 3, p) + rng.uniform(-2, 2, p)
    eta = 1.5 * (X[:, 2] - X[:, 2].mean()) / X[:, 2].std() - (X[:, 5] - X[:, 5].mean()) / X[:, 5].std()
    if len(classes) == 2:
        y = np.where(eta + rng.normal(size=n) > 0, classes[1], classes[0])
    else:
        y = np.asarray(classes, dtype=object)[np.digitize(eta + rng.normal(size=n) * 0.5, [-0.7, 0.7])]
    return X, y, [f"G{j:03d}" for j in range(p)]


def _pipe(model, top_k=None):
    steps = [("transform", ExpressionTransform("none"))]
    if top_k:
        steps.append(("filter", GeneFilter(top_k_variable=top_k)))
    steps += [("scale", StandardScaler()), ("model", model)]
    return Pipeline(steps)


def test_linear_shap_closed_form_and_shap_linear_explainer():
    X, y, ids = _data()
    pipe = _pipe(SkLogisticRegression(C=0.5, max_iter=2000)).fit(X, y)
    res = shap_attributions(pipe, X, gene_ids=ids, classes=["a", "b"], chunk_size=37)
    assert res.method == "linear_shap" and res.exact and res.scale == "log_odds" and res.approximations == []
    # closed form on the margin scale in the model's (scaled) space: phi_j = b_j (z_j - E z_j), E z = 0
    Z = pipe[:-1].transform(X)
    b = pipe[-1].coef_[0]
    np.testing.assert_allclose(res.values[:, :, 0], Z * b, rtol=0, atol=1e-12)
    # the same in original gene space: (b_j / s_j)(x_j - mean_j) -- invariance to per-gene affine maps
    sc = pipe.named_steps["scale"]
    np.testing.assert_allclose(res.values[:, :, 0], (X - sc.mean_) * (b / sc.scale_), rtol=0, atol=1e-10)
    # independent implementation: shap.LinearExplainer with the training data as background
    ref = shap.LinearExplainer(pipe[-1], shap.maskers.Independent(Z, max_samples=len(Z))).shap_values(Z)
    assert np.max(np.abs(ref - res.values[:, :, 0])) <= 1e-6
    assert res.max_additivity_error <= 1e-10
    np.testing.assert_allclose(res.base_values[:, 0] + res.values[:, :, 0].sum(1), pipe.decision_function(X),
                               atol=1e-10)


def test_linear_shap_without_scaler_uses_background_mean_and_multiclass():
    X, y, ids = _data(classes=("x", "y", "z"))
    pipe = Pipeline([("transform", ExpressionTransform("none")),
                     ("model", SkLogisticRegression(C=0.5, max_iter=3000))]).fit(X, y)
    res = shap_attributions(pipe, X, gene_ids=ids, classes=["x", "y", "z"], background_size=len(X))
    assert res.outputs == ["x", "y", "z"] and res.values.shape == (len(X), 30, 3)
    mean = X.mean(axis=0)
    for k in range(3):
        np.testing.assert_allclose(res.values[:, :, k], (X - mean) * pipe[-1].coef_[k], atol=1e-10)
    ref = shap.LinearExplainer(pipe[-1], shap.maskers.Independent(X, max_samples=len(X))).shap_values(X)
    assert np.max(np.abs(np.asarray(ref) - res.values)) <= 1e-6
    # regression: lasso, raw scale
    yr = X[:, 2] * 0.7 - X[:, 5] + np.random.default_rng(1).normal(size=len(X))
    lasso = _pipe(Lasso(alpha=0.05)).fit(X, yr)
    rr = shap_attributions(lasso, X, gene_ids=ids, classes=None)
    assert rr.outputs == [""] and rr.scale == "raw"
    np.testing.assert_allclose(rr.base_values[:, 0] + rr.values[:, :, 0].sum(1), lasso.predict(X), atol=1e-10)


@pytest.mark.parametrize("mode", ["tree_path_dependent", "interventional"])
def test_tree_shap_matches_shap_on_preprocessed_features_with_filter(mode):
    X, y, ids = _data()
    pipe = _pipe(RandomForestClassifier(n_estimators=40, max_depth=5, random_state=0), top_k=20).fit(X, y)
    res = shap_attributions(pipe, X, gene_ids=ids, classes=["a", "b"], mode=mode, background_size=50,
                            chunk_size=64, random_state=3)
    mask = pipe.named_steps["filter"].support_
    assert res.gene_ids == [g for g, m in zip(ids, mask) if m] and len(res.gene_ids) == 20
    Z = pipe[:-1].transform(X)
    if mode == "interventional":
        bg_rows = np.sort(np.random.default_rng(3).choice(len(X), 50, replace=False))
        explainer = shap.TreeExplainer(pipe[-1], data=Z[bg_rows], feature_perturbation="interventional")
    else:
        explainer = shap.TreeExplainer(pipe[-1])
    ref = explainer.shap_values(Z)[:, :, 1]
    assert np.max(np.abs(ref - res.values[:, :, 0])) <= 1e-6
    assert res.scale == "probability" and res.max_additivity_error <= 1e-6
    np.testing.assert_allclose(res.model_output[:, 0], pipe.predict_proba(X)[:, 1], atol=1e-12)


def test_gradient_boosting_log_odds_and_regression_forest():
    X, y, ids = _data(n=120, p=12)
    gb = _pipe(GradientBoostingClassifier(n_estimators=30, max_depth=2, random_state=0)).fit(X, y)
    res = shap_attributions(gb, X, gene_ids=ids, classes=["a", "b"])
    assert res.scale == "log_odds"
    ref = shap.TreeExplainer(gb[-1]).shap_values(gb[:-1].transform(X))
    assert np.max(np.abs(ref - res.values[:, :, 0])) <= 1e-6
    np.testing.assert_allclose(res.model_output[:, 0], gb.decision_function(X), atol=1e-12)
    yr = X[:, 2] + np.random.default_rng(2).normal(size=len(X))
    rf = _pipe(RandomForestRegressor(n_estimators=20, max_depth=4, random_state=0)).fit(X, yr)
    rr = shap_attributions(rf, X, gene_ids=ids, classes=None)
    assert rr.scale == "raw" and rr.max_additivity_error <= 1e-6
    assert rr.gene_ids[int(np.argmax(np.abs(rr.values[:, :, 0]).mean(0)))] == "G002"  # planted gene first


def test_model_agnostic_is_exact_for_a_linear_function():
    # BayesianRidge is not on the linear route, so it goes through permutation sampling; for a linear function
    # every marginal contribution of gene j is b_j (z_j - mean_bg z_j), so the Monte Carlo estimate is exact.
    from sklearn.linear_model import BayesianRidge

    X, _, ids = _data(n=60, p=7)
    yr = X @ np.linspace(-1, 1, 7) + np.random.default_rng(0).normal(size=60)
    pipe = _pipe(BayesianRidge()).fit(X, yr)
    res = shap_attributions(pipe, X[:6], gene_ids=ids, classes=None, background=X[20:45], agnostic_pairs=1)
    Z = pipe[:-1].transform(X)
    np.testing.assert_allclose(res.values[:, :, 0], (Z[:6] - Z[20:45].mean(0)) * pipe[-1].coef_, atol=1e-9)
    assert not res.exact and res.method == "permutation_shap_approximate"


def test_model_agnostic_is_flagged_approximate_and_additive():
    X, y, ids = _data(n=80, p=8)
    pipe = _pipe(GaussianNB()).fit(X, y)
    res = shap_attributions(pipe, X[:10], gene_ids=ids, classes=["a", "b"], background_size=15, chunk_size=5)
    assert not res.exact and res.method == "permutation_shap_approximate" and res.approximations
    assert res.scale == "probability" and res.max_additivity_error <= 1e-6
    # the planted genes carry the most attribution
    top2 = set(np.asarray(res.gene_ids)[np.argsort(-np.abs(res.values[:, :, 0]).mean(0))[:2]])
    assert top2 == {"G002", "G005"}


def test_jobs_and_chunking_do_not_change_values():
    X, y, ids = _data(n=90, p=15)
    pipe = _pipe(GaussianNB()).fit(X, y)
    kw = dict(gene_ids=ids, classes=["a", "b"], background_size=10, chunk_size=5, random_state=5)
    one = shap_attributions(pipe, X[:12], n_jobs=1, **kw)
    two = shap_attributions(pipe, X[:12], n_jobs=2, **kw)
    assert one.values.tobytes() == two.values.tobytes()
    assert one.base_values.tobytes() == two.base_values.tobytes()


class LogisticRegression(SkLogisticRegression):
    """A (deliberately) inconsistent model: its margin is shifted by 0.5 against its coefficients."""

    def decision_function(self, X):
        return super().decision_function(X) + 0.5


def test_additivity_failure_raises_numerical_error():
    X, y, ids = _data(n=60, p=6)
    pipe = _pipe(LogisticRegression(max_iter=2000)).fit(X, y)
    with pytest.raises(NumericalError, match=r"sum of the SHAP values was .* while the model output was"):
        shap_attributions(pipe, X, gene_ids=ids, classes=["a", "b"], sample_ids=[f"S{i}" for i in range(60)])
