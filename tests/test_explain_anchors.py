"""explain.methods anchors: a planted threshold is found, the reported precision matches an independent
Monte-Carlo estimate, a sample near the boundary gets a weaker anchor, the bound is Clopper-Pearson's."""

from __future__ import annotations

import numpy as np
import pytest
from local_method_helpers import make_context, pipeline
from scipy.stats import binomtest

from iml_genomics.errors import ConfigError
from iml_genomics.explain import anchors
from iml_genomics.explain.perturb import predicted_classes

CLASSES = ["a", "b"]


@pytest.fixture(scope="module")
def stump():
    """A model that is a threshold on gene g3 at ~0.5 (a depth-1 tree fitted to y = [g3 > 0.5])."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 8))
    y = np.where(X[:, 3] > 0.5, "b", "a")
    X[0, 3], X[1, 3], X[2, 3] = 2.0, 0.55, -1.0  # far inside class b / just past the threshold / class a
    return X, y, pipeline("decision_tree", X, y, params={"max_depth": 1}, n_classes=2)


def test_planted_threshold_is_the_anchor(stump):
    X, y, pipe = stump
    ctx = make_context(pipe, X, classes=CLASSES, y=y, samples=["s0", "s2"], ranking=["g0", "g1", "g3", "g2"])
    out = anchors.run(ctx)
    t = out.tables["anchors.tsv"].set_index("sample_id")
    far = t.loc["s0"]
    assert far["predicted_class"] == "b" and far["precision_reached"]
    assert far["rule"].startswith("g3 > ") and far["n_predicates"] == 1
    assert far["precision"] >= 0.95 and far["precision_ci_low"] >= 0.95 * 0.98
    # coverage is the cohort fraction satisfying the rule (upper quartile boundary of g3)
    q75 = np.quantile(X[:, 3], 0.75)
    assert far["coverage"] == pytest.approx(np.mean(X[:, 3] > q75))
    assert out.summary["samples"]["s0"]["rule"] == far["rule"]
    # a class-a sample is anchored on the same gene, the other side
    assert "g3 <= " in t.loc["s2", "rule"] and t.loc["s2", "predicted_class"] == "a"


def test_sample_near_the_boundary_gets_a_weaker_anchor(stump):
    X, y, pipe = stump
    ctx = make_context(pipe, X, classes=CLASSES, y=y, samples=["s0", "s1"], ranking=["g0", "g1", "g3", "g2"])
    t = anchors.run(ctx).tables["anchors.tsv"].set_index("sample_id")
    far, near = t.loc["s0"], t.loc["s1"]
    assert near["predicted_class"] == far["predicted_class"] == "b"
    # g3 = 0.55 sits in the bin (median, q75]: no quantile predicate keeps it above 0.5 alone
    assert (near["coverage"] < far["coverage"] or near["n_predicates"] > far["n_predicates"]
            or near["precision"] < far["precision"])
    assert near["precision"] < 0.95 and not near["precision_reached"]


def _independent_precision(pipe, X, row, cols, rule, n, rng):
    """Precision of ``rule`` by rejection sampling: a random cohort sample, each rule gene replaced by a value
    drawn from the gene's cohort values until one satisfies its predicate. A different route to the
    distribution anchors.py samples (it draws directly among the values satisfying the predicate)."""
    full = X[rng.integers(0, len(X), size=n)].copy()
    for j in sorted({p[0] for p in rule}):
        preds = [p for p in rule if p[0] == j]
        values = []
        while len(values) < n:
            v = X[rng.integers(0, len(X), size=4 * n), cols[j]]
            values.extend(v[anchors._Anchor.holds([(0, t, up) for _, t, up in preds], v[:, None])].tolist())
        full[:, cols[j]] = values[:n]
    target = predicted_classes(pipe, X[row][None, :], CLASSES)[0]
    return float(np.mean(predicted_classes(pipe, full, CLASSES) == target))


def test_precision_matches_an_independent_monte_carlo_estimate():
    # a logistic model on three genes: anchors whose precision is neither 0 nor 1
    rng = np.random.default_rng(3)
    X = rng.normal(size=(500, 6))
    eta = 2.0 * X[:, 0] - 1.5 * X[:, 1] + 1.0 * X[:, 2]
    y = np.where(rng.random(500) < 1 / (1 + np.exp(-eta)), "b", "a")
    pipe = pipeline("l1_logistic", X, y, params={"C": 1.0}, n_classes=2)
    cohort = X[:, [0, 1, 2, 3]]
    bounds = anchors._boundaries(cohort, 4)
    checked = 0
    for row in (2, 7, 11):
        res = anchors.anchor_sample(pipe, X, row, np.array([0, 1, 2, 3]), cohort, CLASSES, bounds, threshold=0.9,
                                    beam_width=2, max_predicates=2, n_samples=2000, seed=[0, row])
        mc = _independent_precision(pipe, X, row, [0, 1, 2, 3], res["rule"], 4000, np.random.default_rng(100 + row))
        # two independent binomial estimates of one proportion: within 4 standard errors
        p = (res["precision"] + mc) / 2
        se = np.sqrt(p * (1 - p) * (1 / 2000 + 1 / 4000)) + 1e-3
        assert abs(res["precision"] - mc) < 4 * se, (row, res, mc)
        checked += 0 < mc < 1
    assert checked >= 1  # at least one rule had a precision strictly between 0 and 1


def test_lower_bound_is_clopper_pearson_and_regression_is_refused(stump):
    for hits, n in ((480, 500), (500, 500), (3, 20)):
        ref = binomtest(hits, n).proportion_ci(confidence_level=0.90, method="exact").low  # one side: 95%
        assert float(anchors.precision_lower_bound(hits, n)) == pytest.approx(ref, rel=1e-9)
    assert float(anchors.precision_lower_bound(0, 50)) == 0.0
    X, y, pipe = stump
    reg = pipeline("lasso", X, X[:, 3], task="regression")
    ctx = make_context(reg, X, classes=None, samples=["s0"], task="regression")
    with pytest.raises(ConfigError, match="anchors explain a predicted class"):
        anchors.run(ctx)
    out = anchors.run(make_context(pipe, X, classes=CLASSES, y=y))
    assert out.tables == {} and "skipped" in out.summary and len(out.warnings) == 1
