"""Permutation importance: vs sklearn, vs the closed form, tree shortcut exactness, --jobs invariance."""

from __future__ import annotations

import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.inspection import permutation_importance
from sklearn.linear_model import LinearRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from iml_genomics.explain import permutation as perm
from iml_genomics.explain import permutation_importance_fitted, permutation_importance_oof
from iml_genomics.models import cv_splits
from iml_genomics.preprocess import ExpressionTransform


def test_linear_regression_matches_closed_form():
    # For y = X b + e with independent unit-variance genes, permuting gene j adds 2 b_j^2 to the MSE in
    # expectation (sklearn's own check), i.e. an R2 drop of 2 b_j^2 / var(y).
    rng = np.random.default_rng(0)
    n, b = 4000, np.array([1.0, 0.5, 0.0, -0.8])
    X = rng.normal(size=(n, 4))
    y = X @ b + rng.normal(size=n) * 0.3
    model = LinearRegression().fit(X, y)
    imp = permutation_importance_fitted(model, X, y, classes=None, n_repeats=10, random_state=0)
    expected = 2 * model.coef_**2 / y.var()
    np.testing.assert_allclose(imp.mean(axis=1), expected, atol=0.03)


def _forest_case():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(260, 40))
    y = np.where(X[:, 0] - X[:, 1] + 0.3 * rng.normal(size=260) > 0, "case", "ctrl")
    pipe = Pipeline([("transform", ExpressionTransform()), ("scale", StandardScaler()),
                     ("model", RandomForestClassifier(n_estimators=30, max_depth=5, random_state=0))])
    return X, y, pipe


def test_forest_shortcut_is_exact_and_agrees_with_sklearn():
    X, y, pipe = _forest_case()
    pipe.fit(X[:160], y[:160])
    Xt, yt = X[160:], y[160:]
    classes = ["case", "ctrl"]
    ours = permutation_importance_fitted(pipe, Xt, yt, classes=classes, n_repeats=6, random_state=0)
    # re-evaluating only the trees that split on a gene equals re-predicting the whole forest (same permutations)
    est = pipe[-1]
    Z = pipe[:-1].transform(Xt)
    y_idx = perm._encode(yt, classes)
    base = float(perm._score_blocks(perm._predict(est, Z, classes)[None], y_idx, "log_loss")[0])
    genes = np.array([0, 1, 7])
    trees_of = {int(g): [i for i, t in enumerate(est.estimators_) if g in t.tree_.feature] for g in genes}
    fast = perm._importance_batch(est, Z, y_idx, classes, genes, 4, 9, "log_loss", base, ("classifier", trees_of))
    full = perm._importance_batch(est, Z, y_idx, classes, genes, 4, 9, "log_loss", base, None)
    np.testing.assert_allclose(fast, full, rtol=0, atol=1e-12)
    # sklearn's implementation (other permutations): equal within Monte Carlo error
    sk = permutation_importance(pipe, Xt, yt, scoring="neg_log_loss", n_repeats=6, random_state=0)
    se = np.sqrt(ours.var(axis=1, ddof=1) / 6 + sk.importances_std**2 / 6) + 1e-3
    assert np.all(np.abs(ours.mean(axis=1) - sk.importances_mean) <= 4 * se)
    assert set(np.argsort(-ours.mean(axis=1))[:2]) == {0, 1}


def test_oof_jobs_invariance_and_planted_gene_first():
    X, y, pipe = _forest_case()
    ids = [f"G{j:02d}" for j in range(X.shape[1])]
    splits = cv_splits(y, "classification", n_splits=3, n_repeats=1, seed=0)
    kw = dict(splits=splits, classes=["case", "ctrl"], n_repeats=3, random_state=4, gene_ids=ids)
    one = permutation_importance_oof(pipe, X, y, n_jobs=1, **kw)
    two = permutation_importance_oof(pipe, X, y, n_jobs=2, **kw)
    assert one.equals(two)
    assert list(one.columns) == ["gene_id", "permutation_importance", "permutation_importance_sd"]
    top = one.sort_values("permutation_importance", ascending=False)["gene_id"].head(2)
    assert set(top) == {"G00", "G01"}
    # within-fold gene batching over 2 workers gives the same numbers as 1
    pipe.fit(X, y)
    a = permutation_importance_fitted(pipe, X[:80], y[:80], classes=["case", "ctrl"], n_repeats=2, n_jobs=1)
    b = permutation_importance_fitted(pipe, X[:80], y[:80], classes=["case", "ctrl"], n_repeats=2, n_jobs=2)
    assert a.tobytes() == b.tobytes()


def test_auroc_scoring_matches_sklearn_metric():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    pred = rng.uniform(size=(4, 50, 2))
    pred[..., 0] = 1 - pred[..., 1]
    y = rng.integers(0, 2, 50)
    ours = perm._score_blocks(pred, y, "auroc")
    np.testing.assert_allclose(ours, [roc_auc_score(y, pred[b, :, 1]) for b in range(4)], atol=1e-12)
