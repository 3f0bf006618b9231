"""explain method `pdp`: PD slopes follow planted monotone effects, a planted U-shape gives a non-monotone PD
with a random forest, the explained class is the positive class, k larger than the genes is refused."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.ensemble import RandomForestRegressor
from sklearn.inspection import partial_dependence
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from iml_genomics.config import ExplainConfig
from iml_genomics.errors import ConfigError
from iml_genomics.explain.methods import MethodContext, run_methods
from iml_genomics.parallel import Backend


def context(X, y, pipe, *, ranking, task="classification", classes=("normal", "tumour"), positive="tumour",
            **cfg):
    genes = [f"G{i}" for i in range(X.shape[1])]
    if task == "classification":  # the step hands over class names (io.cohort.prepare_target)
        y = np.asarray(classes, dtype=object)[y]
    return MethodContext(
        pipeline=clone(pipe).fit(X, y), refit_pipeline=clone(pipe), X=X, y=y, gene_ids=genes,
        sample_ids=[f"S{i:03d}" for i in range(len(X))], classes=list(classes) if classes else None, task=task,
        positive_class=positive, explain_cfg=ExplainConfig(**cfg), splits=None, random_state=0,
        backend=Backend.local(1), ranking=pd.DataFrame({"gene_id": ranking, "used": True}))


def monotone_cohort(seed=0, n=400):
    """G0 raises the odds of tumour, G1 lowers them, G2 is null."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6)) + 8
    y = (1.5 * (X[:, 0] - 8) - 1.5 * (X[:, 1] - 8) + rng.logistic(size=n) > 0).astype(int)
    return X, y


def logistic():
    return Pipeline([("scale", StandardScaler()), ("model", LogisticRegression())])


def test_pd_slopes_match_planted_directions_and_the_null_gene_is_flat():
    X, y = monotone_cohort()
    ctx = context(X, y, logistic(), ranking=["G0", "G1", "G2", "G3", "G4", "G5"], pdp_top_k=3, pdp_ice_samples=4)
    out = run_methods(["pdp"], ctx)["pdp"]
    table = out.tables["partial_dependence.tsv"]
    assert list(table.columns) == ["gene_id", "class", "curve", "grid_value", "value", "average", "scale",
                                   "explains"]
    assert set(table["explains"]) == {"model"} and set(table["class"]) == {"tumour"}
    assert set(table["scale"]) == {"probability"}
    avg = table[table["curve"] == "average"]
    slope = {g: np.polyfit(s["grid_value"], s["value"], 1)[0] for g, s in avg.groupby("gene_id")}
    rng = {g: np.ptp(s["value"]) for g, s in avg.groupby("gene_id")}
    assert slope["G0"] > 0.1 and slope["G1"] < -0.1
    assert rng["G2"] < 0.2 * min(rng["G0"], rng["G1"])
    shapes = out.summary["shapes"]
    assert shapes["G0"]["tumour"]["shape"] == "increasing" and shapes["G1"]["tumour"]["shape"] == "decreasing"
    # the grid: percentiles 5..95 of the gene's raw expression (the pipeline standardises)
    g0 = avg[avg["gene_id"] == "G0"]["grid_value"].to_numpy()
    assert g0.min() == pytest.approx(np.percentile(X[:, 0], 5))
    assert g0.max() == pytest.approx(np.percentile(X[:, 0], 95))
    # ICE: a seeded sample of 4 curves per gene; their mean over ALL samples is the PD (sklearn's definition)
    ice = table[(table["gene_id"] == "G0") & (table["curve"] != "average")]
    assert ice["curve"].nunique() == 4 and len(ice) == 4 * len(g0)
    ref = partial_dependence(ctx.pipeline, X, [0], kind="average", custom_values={0: g0})["average"][0]
    assert np.allclose(avg[avg["gene_id"] == "G0"]["value"], ref)


def test_explained_class_is_the_positive_class():
    X, y = monotone_cohort()
    kw = dict(ranking=["G0", "G1"], pdp_top_k=1, pdp_ice_samples=0)
    pos = run_methods(["pdp"], context(X, y, logistic(), positive="tumour", **kw))["pdp"].tables
    neg = run_methods(["pdp"], context(X, y, logistic(), positive="normal", **kw))["pdp"].tables
    a, b = pos["partial_dependence.tsv"], neg["partial_dependence.tsv"]
    assert set(b["class"]) == {"normal"}
    assert np.allclose(a["value"] + b["value"], 1.0)  # P(normal) = 1 - P(tumour)


def test_u_shape_gives_a_non_monotone_pd_with_a_random_forest():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 5))
    y = X[:, 0] ** 2 + 0.3 * rng.normal(size=300)
    pipe = Pipeline([("model", RandomForestRegressor(80, min_samples_leaf=5, random_state=0))])
    ctx = context(X, y, pipe, ranking=["G0", "G1", "G2", "G3", "G4"], task="regression", classes=None,
                  positive=None, pdp_top_k=1)
    out = run_methods(["pdp"], ctx)["pdp"]
    avg = out.tables["partial_dependence.tsv"].query("curve == 'average'")
    v, grid = avg["value"].to_numpy(), avg["grid_value"].to_numpy()
    mid = np.argmin(v)
    assert out.summary["shapes"]["G0"][""]["shape"] == "non-monotone"
    assert -0.7 < grid[mid] < 0.7  # the bottom of the U near 0
    assert v[0] - v[mid] > 1.0 and v[-1] - v[mid] > 1.0
    assert set(avg["class"]) == {""} and set(avg["scale"]) == {"prediction"}


def test_k_larger_than_the_genes_is_refused():
    X, y = monotone_cohort(n=60)
    ctx = context(X, y, logistic(), ranking=["G0"], pdp_top_k=7)
    with pytest.raises(ConfigError, match=r"explain.pdp_top_k = 7 is larger than the 6 genes"):
        run_methods(["pdp"], ctx)

