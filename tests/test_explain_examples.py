"""explain.methods examples: neighbours share a planted cluster, prototypes are the brute-force medoids,
bad k refused, runs without samples or labels degrade as documented."""

from __future__ import annotations

import numpy as np
import pytest
from local_method_helpers import make_context, pipeline

from iml_genomics.errors import ConfigError
from iml_genomics.explain import examples


@pytest.fixture(scope="module")
def clusters():
    """Three well separated clusters (= classes) on genes g0..g3, six noise genes; a multinomial logistic model."""
    rng = np.random.default_rng(0)
    centres = np.zeros((3, 10))
    centres[0, :2], centres[1, 2:4], centres[2, [0, 2]] = 4.0, 4.0, -4.0
    cls = np.repeat([0, 1, 2], [40, 50, 30])
    X = centres[cls] + rng.normal(size=(120, 10))
    classes = ["c0", "c1", "c2"]
    y = np.asarray(classes, dtype=object)[cls]
    pipe = pipeline("l1_logistic", X, y, params={"C": 1.0}, n_classes=3)
    return X, y, classes, pipe


def test_neighbours_share_the_planted_cluster(clusters):
    X, y, classes, pipe = clusters
    samples = ["s0", "s45", "s100"]
    out = examples.run(make_context(pipe, X, classes=classes, y=y, samples=samples, examples_k=6))
    t = out.tables["examples.tsv"]
    assert dict(zip(t["space"], t["explains"])) == {"attribution": "model", "expression": "data"}
    for sid in samples:
        own = y[int(sid[1:])]
        part = t[(t["sample_id"] == sid) & (t["space"] == "expression")]
        assert part["neighbour_rank"].tolist() == list(range(1, 7))
        assert sid not in set(part["neighbour_id"]) and part["distance"].is_monotonic_increasing
        assert (part["neighbour_label"] == own).all() and (part["neighbour_prediction"] == own).all()
    # attribution space: the SHAP values of one output (here class c0's), so with three classes it separates
    # c0 from the rest; two planted clusters that the model tells apart must be separated there
    rng = np.random.default_rng(2)
    cls = np.repeat([0, 1], 60)
    Xb = rng.normal(size=(120, 8))
    Xb[:, :4] += 5.0 * cls[:, None]
    yb = np.where(cls == 1, "b", "a")
    rf = pipeline("random_forest", Xb, yb, params={"n_estimators": 50, "max_depth": 3}, n_classes=2)
    out = examples.run(make_context(rf, Xb, classes=["a", "b"], y=yb, samples=["s5", "s70"], examples_k=8))
    t = out.tables["examples.tsv"]
    for sid in ("s5", "s70"):
        for space in ("attribution", "expression"):
            part = t[(t["sample_id"] == sid) & (t["space"] == space)]
            assert len(part) == 8 and (part["neighbour_label"] == yb[int(sid[1:])]).all(), (sid, space)


def test_nearest_matches_brute_force_and_excludes_the_sample():
    rng = np.random.default_rng(1)
    space = rng.normal(size=(50, 4))
    space[7] = space[3]  # an exact duplicate: distance 0, first by cohort order
    idx, dist = examples.nearest(space, 3, 5)
    full = np.sqrt(((space[:, None] - space[None]) ** 2).sum(-1))[3]
    full[3] = np.inf
    assert idx[0] == 7 and dist[0] == 0.0
    assert idx.tolist() == np.argsort(full, kind="stable")[:5].tolist()
    np.testing.assert_allclose(dist, np.sort(full)[:5])


def test_prototypes_are_brute_force_medoids(clusters):
    X, y, classes, pipe = clusters
    ctx = make_context(pipe, X, classes=classes, y=y)
    out = examples.run(ctx)
    assert "examples.tsv" not in out.tables and len(out.warnings) == 1  # no samples: prototypes only
    protos = out.tables["prototypes.tsv"]
    assert len(protos) == 6
    spaces = {"attribution": ctx.attributions, "expression": examples.standardized(X)}
    for _, row in protos.iterrows():
        members = np.flatnonzero(y == row["class"])
        pts = spaces[row["space"]][members]
        full = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1)).sum(axis=1)
        best = members[np.argmin(full)]
        assert row["sample_id"] == f"s{best}" and y[best] == row["class"]
        assert row["mean_distance"] == pytest.approx(full.min() / (len(members) - 1), rel=1e-12)
        assert row["n_class"] == len(members)
    # the medoid is computed in row blocks: blocks of 3 rows give the brute-force answer
    pts = spaces["expression"][y == "c1"]
    sums = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1)).sum(axis=1)
    old = examples._BLOCK_CELLS
    try:
        examples._BLOCK_CELLS = 3 * len(pts)
        i, mean_d = examples.medoid(pts)
    finally:
        examples._BLOCK_CELLS = old
    assert i == int(np.argmin(sums)) and mean_d == pytest.approx(sums.min() / (len(pts) - 1), rel=1e-12)
    # two copies of the most central point: equal sums, the first copy wins
    dup = np.vstack([pts[:5], pts[i], pts[5:]])
    assert examples.medoid(dup)[0] == min(i, 5)


def test_bad_k_is_refused_and_regression_has_no_prototypes(clusters):
    X, y, classes, pipe = clusters
    with pytest.raises(ConfigError, match=r"explain.examples_k \(120\) is larger than the 119 other samples"):
        examples.run(make_context(pipe, X, classes=classes, y=y, samples=["s1"], examples_k=120))
    reg = pipeline("lasso", X, X[:, 0] + X[:, 2], task="regression")
    out = examples.run(make_context(reg, X, classes=None, y=X[:, 0] + X[:, 2], samples=["s1"], task="regression"))
    assert "prototypes.tsv" not in out.tables and out.summary["prototypes"].startswith("skipped")
    t = out.tables["examples.tsv"]
    assert len(t) == 10 and t["neighbour_label"].dtype.kind == "f"


def test_without_shap_or_labels_the_method_degrades_as_documented(clusters):
    X, y, classes, pipe = clusters
    ctx = make_context(pipe, X, classes=classes, y=None, samples=["s2"], examples_k=3)
    ctx.attributions = None  # as after explain --method permutation
    out = examples.run(ctx)
    t = out.tables["examples.tsv"]
    assert set(t["space"]) == {"expression"} and t["neighbour_label"].isna().all()
    assert (t["neighbour_prediction"] == "c0").all()  # s2 is in cluster c0, so are its neighbours
    assert "prototypes.tsv" not in out.tables and out.summary["attribution_space"].startswith("skipped")
    assert len(out.warnings) == 1 and "no SHAP values" in out.warnings[0]
