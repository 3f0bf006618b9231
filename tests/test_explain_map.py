"""explain method `map`: classes that separate in SHAP space separate on the 2-D map, a null cohort does not;
seeded subsample; skipped without SHAP; umap asked for but not installed is refused."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from iml_genomics.config import ExplainConfig
from iml_genomics.errors import ConfigError
from iml_genomics.explain.attribution_map import umap_available
from iml_genomics.explain.methods import MethodContext, run_methods
from iml_genomics.parallel import Backend


def linear_shap_context(effect: float, *, seed=0, n=200, p=20, **cfg):
    """A logistic model and its exact linear SHAP values b_j (z_j - mean z_j) as the step would hand them over."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p))
    lp = effect * (X[:, 0] + X[:, 1])
    y = (lp + rng.logistic(size=n) > 0).astype(int) if effect else rng.permutation(np.arange(n) % 2)
    y = np.asarray(["normal", "tumour"], dtype=object)[y]  # class names, as the step hands them over
    pipe = Pipeline([("scale", StandardScaler()), ("model", LogisticRegression())])
    fitted = clone(pipe).fit(X, y)
    Z = fitted[:-1].transform(X)
    genes = [f"G{i}" for i in range(p)]
    return MethodContext(
        pipeline=fitted, refit_pipeline=clone(pipe), X=X, y=y, gene_ids=genes,
        sample_ids=[f"S{i:03d}" for i in range(n)], classes=["normal", "tumour"], task="classification",
        positive_class="tumour", explain_cfg=ExplainConfig(**{"map_method": "tsne", **cfg}), splits=None,
        random_state=0, backend=Backend.local(1), ranking=pd.DataFrame({"gene_id": genes, "used": True}),
        shap_genes=genes, attributions=(Z - Z.mean(axis=0)) * fitted[-1].coef_[0])


def knn_accuracy(table: pd.DataFrame) -> float:
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    return float(cross_val_score(KNeighborsClassifier(10), table[["x", "y"]].to_numpy(), table["label"],
                                 cv=cv).mean())


def test_separated_classes_separate_on_the_map_and_a_null_cohort_does_not():
    out = run_methods(["map"], linear_shap_context(4.0))["map"]
    table = out.tables["attribution_map.tsv"]
    assert list(table.columns) == ["sample_id", "x", "y", "label", "prediction", "method", "explains"]
    assert set(table["method"]) == {"tsne"} and set(table["explains"]) == {"model"} and len(table) == 200
    assert set(table["label"]) == {"normal", "tumour"} and set(table["prediction"]) <= {"normal", "tumour"}
    assert out.summary["method"] == "tsne" and out.summary["attributions_of"] == "tumour"
    assert knn_accuracy(table) > 0.8

    null = run_methods(["map"], linear_shap_context(0.0))["map"].tables["attribution_map.tsv"]
    assert 0.3 < knn_accuracy(null) < 0.65


def test_subsample_is_seeded_and_coordinates_are_reproducible():
    ctx = linear_shap_context(2.0, n=120, map_max_samples=50)
    a = run_methods(["map"], ctx)["map"]
    b = run_methods(["map"], ctx)["map"]
    pd.testing.assert_frame_equal(a.tables["attribution_map.tsv"], b.tables["attribution_map.tsv"], check_exact=True)
    assert len(a.tables["attribution_map.tsv"]) == 50 and a.summary["subsampled"] is True


def test_skipped_without_shap_values_and_unlabelled_cohort_has_na_labels():
    ctx = linear_shap_context(2.0, n=40)
    ctx.attributions = None
    out = run_methods(["map"], ctx)["map"]
    assert not out.tables and "needs SHAP" in out.summary["skipped"] and len(out.warnings) == 1
    ctx = linear_shap_context(2.0, n=40)
    ctx.y = None
    table = run_methods(["map"], ctx)["map"].tables["attribution_map.tsv"]
    assert table["label"].isna().all() and table["prediction"].notna().all()


@pytest.mark.skipif(umap_available(), reason="umap-learn is installed here")
def test_umap_asked_for_without_umap_learn_is_refused():
    with pytest.raises(ConfigError, match="explain.map_method is 'umap' but umap-learn is not installed"):
        run_methods(["map"], linear_shap_context(2.0, n=40, map_method="umap"))


@pytest.mark.slow
def test_umap_route_separates_and_is_reproducible():
    """Where umap-learn is installed (pip install 'iml-genomics[umap]'); numba compiles UMAP on first use (~1-2 min).

    Measured here with umap-learn 0.5.12: 10-NN accuracy 0.885 (separated) and 0.545 (null), same coordinates twice.
    """
    pytest.importorskip("umap")
    ctx = linear_shap_context(4.0, map_method="auto")
    a, b = (run_methods(["map"], ctx)["map"] for _ in range(2))
    table = a.tables["attribution_map.tsv"]
    assert a.summary["method"] == "umap" and set(table["method"]) == {"umap"}
    pd.testing.assert_frame_equal(table, b.tables["attribution_map.tsv"], check_exact=True)
    assert knn_accuracy(table) > 0.8
    null = run_methods(["map"], linear_shap_context(0.0, map_method="umap"))["map"].tables["attribution_map.tsv"]
    assert 0.3 < knn_accuracy(null) < 0.65
