"""Single-cell robustness (issue 18 item 4, sc18): every model and task on a sparse .h5ad, dense copies only of
subsamples, a warning when the cohort is too big for its config, and select without the full dense matrix."""

from __future__ import annotations

import tracemalloc

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import sparse

from conftest import ROOT, one_line, run_cli

from iml_genomics.config import config_from_dict
from iml_genomics.errors import ConfigError, ResourceError
from iml_genomics.single_cell import simulate_single_cell
from iml_genomics.sparse_input import dense_reason, densify_for, drop_constant_genes, resource_warning


def _cohort(n_cells=600, n_genes=60, seed=0, n_types=3, n_markers=5):
    X, labels, *_ = simulate_single_cell(n_cells, n_genes, n_types=n_types, n_markers=n_markers, seed=seed)
    adata = ad.AnnData(X=X.tocsr().astype(np.float64), obs=labels.copy(),
                       var=pd.DataFrame(index=[f"G{i:05d}" for i in range(n_genes)]))
    adata.obs_names, adata.obs.index.name = list(labels.index), "sample_id"
    return adata


def _cfg(model, params, *, positive=None, standardize=True, transform="log1p", **sections):
    raw = {"seed": 0, "n_jobs": 1, "task": "classification",
           "data": {"label_column": "cell_type", "positive_class": positive},
           "preprocess": {"transform": transform, "standardize": standardize},
           "model": {"name": model, "params": params}, "cv": {"n_splits": 3},
           "explain": {"method": "shap", "top_k": 5, "interaction_max_samples": 5}}
    if positive is None:
        del raw["data"]["positive_class"]
    for key, value in sections.items():
        raw.setdefault(key, {}).update(value)
    return config_from_dict(raw)


@pytest.fixture(scope="module")
def sparse_h5ad(tmp_path_factory):
    """800 cells x 60 genes of sparse counts, 3 cell types, through `simulate` (the CLI)."""
    d = tmp_path_factory.mktemp("scm")
    run_cli("simulate", "--family", "single-cell", "--n-samples", "800", "--n-genes", "60", "--n-classes", "3",
            "--n-signal", "5", "--out", d / "data", "--prefix", "sc")
    return d, d / "data" / "sc_expression.h5ad"


def _write_cfg(path, expression, **changes):
    cfg = {"seed": 0, "n_jobs": 1, "task": "classification",
           "data": {"expression": str(expression), "label_column": "cell_type"},
           "preprocess": {"transform": "log1p", "standardize": True},
           "model": {"name": "hist_gradient_boosting", "params": {"max_iter": 5}},
           "cv": {"n_splits": 3, "max_samples": 500},
           "explain": {"method": "shap", "top_k": 5, "max_samples": 100, "interaction_max_samples": 5},
           "select": {"max_samples": 300}}
    for key, value in changes.items():
        cfg.setdefault(key, {}).update(value)
    path.write_text(yaml.safe_dump(cfg))
    return path


# --- 1. models that need dense input, and bundles fitted dense, on a sparse matrix ---------------------------


def test_hist_gradient_boosting_trains_and_explains_on_a_sparse_h5ad_and_the_demo_is_not_warned(sparse_h5ad, tmp_path):
    # before sc18: TypeError "Sparse data was passed for X, but dense data is required" with a traceback
    d, h5ad = sparse_h5ad
    config = _write_cfg(tmp_path / "hgb.yaml", h5ad)
    proc = run_cli("run", config, "--out", tmp_path / "o", "--steps", "train,explain", check=False)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "warning: step" not in proc.stderr
    assert "the run is estimated" not in proc.stderr  # item 2: silent on a config that fits
    ranking = pd.read_csv(tmp_path / "o" / "explain" / "gene_ranking.tsv", sep="\t")
    # 3 cell types of 5 markers each: the top 5 of the ranking are markers (genes 0..14)
    top = ranking.sort_values("rank")["gene_id"].head(5)
    assert all(int(g[-5:]) < 15 for g in top), list(top)


def test_dense_trained_model_explains_a_sparse_cohort_as_its_dense_copy():
    # a bundle whose StandardScaler centres (trained on a dense matrix) used to fail on sparse rows with
    # "Cannot center sparse matrices"; now the explained rows are densified and give the same SHAP values
    from iml_genomics.steps import explain, train

    adata = _cohort()
    dense = adata.copy()
    dense.X = adata.X.toarray()
    cfg = _cfg("l1_logistic", {"C": 0.5})
    model = train(dense, cfg)
    assert dense_reason(model.model) is not None  # centring scaler: the case under test
    on_sparse = explain(adata, cfg, model=model)
    on_dense = explain(dense, cfg, model=model)
    # the bundle's attributions are the same numbers; the refits (stability columns) are built for the input
    # they get, and on sparse input the scaler does not centre, so only those may differ
    pd.testing.assert_frame_equal(on_sparse.attribution_table(), on_dense.attribution_table())
    cols = ["gene_id", "mean_abs_shap", "mean_shap"]
    pd.testing.assert_frame_equal(on_sparse.ranking[cols], on_dense.ranking[cols])


def test_sparse_training_scales_without_centring_and_hgb_is_dense_only():
    from iml_genomics.models import build_pipeline

    cfg = _cfg("random_forest", {"n_estimators": 5})
    # scaling without centring keeps the zeros zero: the CSR matrix is not densified by the scaler
    assert dense_reason(build_pipeline(cfg, "classification", sparse_input=True, n_classes=2)) is None
    assert "centres" in dense_reason(build_pipeline(cfg, "classification", sparse_input=False, n_classes=2))
    hgb = build_pipeline(_cfg("hist_gradient_boosting", {}), "classification", sparse_input=True, n_classes=2)
    assert "HistGradientBoostingClassifier" in dense_reason(hgb)


def test_dense_copy_too_big_for_memory_is_refused_in_one_line_naming_the_key():
    X = sparse.random(1000, 500, density=0.05, format="csr", random_state=0)
    from iml_genomics.models import build_pipeline

    hgb = build_pipeline(_cfg("hist_gradient_boosting", {}), "classification", sparse_input=True, n_classes=2)
    need = 8 * 1000 * 500
    with pytest.raises(ResourceError) as err:
        densify_for(X, hgb, key="cv.max_samples", source="cells.h5ad", available=need)  # > half of it
    text = str(err.value)
    assert "\n" not in text and "cv.max_samples" in text and "cells.h5ad" in text and "3.8 MiB" in text
    out = densify_for(X, hgb, key="cv.max_samples", available=4 * need)
    assert isinstance(out, np.ndarray) and np.array_equal(out, X.toarray())
    rf = build_pipeline(_cfg("random_forest", {}), "classification", sparse_input=True, n_classes=2)
    assert densify_for(X, rf, key="cv.max_samples", available=1) is X  # sparse-capable: never copied


def test_multiclass_gradient_boosting_with_shap_is_refused_before_training(sparse_h5ad, tmp_path):
    d, h5ad = sparse_h5ad
    config = _write_cfg(tmp_path / "gb.yaml", h5ad, model={"name": "gradient_boosting", "params": {"n_estimators": 5}})
    proc = run_cli("run", config, "--out", tmp_path / "o", check=False)
    lines = [x for x in proc.stderr.splitlines() if x.strip() and " INFO " not in x]  # run's progress log
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
    assert all(k in lines[0] for k in ("explain.method", "model.name", "permutation")), lines[0]
    assert not (tmp_path / "o" / "train").exists()  # refused before any training
    # (the same model explained by permutation runs: the slow sweep below)


# --- 2. a cohort too big for its config ---------------------------------------------------------------------


def test_resource_warning_fires_without_subsamples_and_is_silent_with_single_cell_yaml():
    from iml_genomics.config import load_config
    from iml_genomics.pipeline import estimate_resources

    cfg = load_config(ROOT / "configs" / "single_cell.yaml")
    steps = ["train", "explain", "select", "report"]
    n, p, nnz = 100_000, 2_000, int(0.1 * 100_000 * 2_000)
    est = estimate_resources(cfg, n, p, n_jobs=2, nnz=nnz)
    assert resource_warning(est, steps=steps, available=24 * 2**30) is None
    # the same cohort with no max_samples key and an MLP explained by model-agnostic SHAP: hours, and select's
    # dense [X, X~] of 10^5 cells does not fit in 8 GiB
    raw = yaml.safe_load((ROOT / "configs" / "single_cell.yaml").read_text())
    for section in ("cv", "explain", "select", "report"):
        raw[section].pop("max_samples", None)
    raw["model"] = {"name": "mlp", "params": {}}
    big = estimate_resources(config_from_dict(raw), n, p, n_jobs=2, nnz=nnz)
    line = resource_warning(big, steps=steps, available=8 * 2**30)
    assert line is not None and "\n" not in line
    for needle in ("cv.max_samples", "explain.max_samples", "select.max_samples", "report.max_samples",
                   "configs/single_cell.yaml", "available", " h ("):
        assert needle in line, (needle, line)
    # the time alone is enough (a machine with plenty of memory)
    assert "memory" not in resource_warning(big, steps=["explain"], available=2**50)


def test_run_warns_at_the_start_on_a_cohort_too_big_for_its_config(tmp_path):
    # 2,000 cells x 2,000 genes and an MLP whose model-agnostic SHAP explains every cell: estimated > 4 h.
    # The positive class is absent, so the run stops at its first check after the warning (nothing trains).
    run_cli("simulate", "--family", "single-cell", "--n-samples", "2000", "--n-genes", "2000", "--out",
            tmp_path / "data", "--prefix", "sc")
    config = _write_cfg(tmp_path / "big.yaml", tmp_path / "data" / "sc_expression.h5ad",
                        data={"positive_class": "no_such_type"}, model={"name": "mlp", "params": {}},
                        cv={"max_samples": None}, explain={"max_samples": None})
    proc = run_cli("run", config, "--out", tmp_path / "o", check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip() and " INFO " not in line]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(lines) == 2 and "warning" in lines[0] and "explain.max_samples" in lines[0], lines
    assert "no_such_type" in lines[1]


# --- 3. select on sparse input ------------------------------------------------------------------------------


def test_select_on_sparse_never_allocates_the_full_dense_matrix():
    from iml_genomics.steps import select

    def peak_bytes(adata, cfg):
        tracemalloc.start()  # numpy reports its buffers to tracemalloc
        try:
            result = select(adata, cfg)
            return tracemalloc.get_traced_memory()[1], result
        finally:
            tracemalloc.stop()

    sub = _cfg("random_forest", {}, standardize=False, select={"max_samples": 300, "fdr": 0.2})
    select(_cohort(n_cells=400, n_genes=150), sub)  # imports and caches first: they are not the matrix
    adata = _cohort(n_cells=16_000, n_genes=150)
    full_dense = 8 * adata.n_obs * adata.n_vars  # 19.2 MB
    peak, result = peak_bytes(adata, sub)
    assert peak < full_dense / 2, (peak, full_dense)
    assert result.cohort["subsample"]["n_samples_used"] == 300
    # the measure sees a densified cohort: select without select.max_samples holds the dense matrix (on fewer
    # cells, to keep the test short)
    small = _cohort(n_cells=3000, n_genes=150)
    whole, _ = peak_bytes(small, _cfg("random_forest", {}, standardize=False, select={"fdr": 0.2}))
    assert whole > 8 * small.n_obs * small.n_vars, whole


def test_select_on_sparse_leaves_genes_without_counts_untested_and_dense_still_refuses():
    from iml_genomics.steps import select

    adata = _cohort(n_cells=600, n_genes=60)
    X = adata.X.tolil()
    X[:, 40] = 0  # a gene with no count in any cell: common in sparse data
    adata.X = X.tocsr()
    cfg = _cfg("random_forest", {}, standardize=False, select={"fdr": 0.2})
    result = select(adata, cfg)
    row = result.selection.set_index("gene_id").loc["G00040"]
    assert not row["tested"] and not row["selected"] and np.isnan(row["w"])
    assert any("G00040" in w and "not tested" in w for w in result.warnings), result.warnings
    assert result.selection["tested"].sum() == 59
    # a dense (bulk) cohort keeps its contract: a constant gene is refused, naming it
    dense = adata.copy()
    dense.X = adata.X.toarray()
    with pytest.raises(Exception, match="G00040"):
        select(dense, cfg)


def test_drop_constant_genes_keeps_the_varying_columns():
    X = np.array([[1.0, 0.0, 2.0], [3.0, 0.0, 2.0], [5.0, 0.0, 2.0]])
    Xk, kept, dropped = drop_constant_genes(X, ["a", "b", "c"])
    assert kept == ["a"] and dropped == ["b", "c"] and np.array_equal(Xk, X[:, :1])
    same = np.arange(6.0).reshape(3, 2)
    assert drop_constant_genes(same, ["a", "b"])[0] is same


# --- the wide sweep (slow): every model x task x options on a sparse cohort ----------------------------------

MODELS = {"l1_logistic": {"C": 0.5}, "elasticnet_logistic": {}, "random_forest": {"n_estimators": 10, "max_depth": 4},
          "extra_trees": {"n_estimators": 10, "max_depth": 4}, "gradient_boosting": {"n_estimators": 5, "max_depth": 2},
          "hist_gradient_boosting": {"max_iter": 5}, "linear_svm": {}, "decision_tree": {"max_depth": 3},
          "mlp": {"hidden_layer_sizes": [8], "max_iter": 30}}


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("standardize,transform", [(True, "log1p"), (False, "none")])
def test_every_model_task_and_preprocessing_runs_or_refuses_in_one_line(sparse_h5ad, tmp_path, model, binary,
                                                                        standardize, transform):
    d, h5ad = sparse_h5ad
    method = "permutation" if model == "mlp" else "all"
    config = _write_cfg(tmp_path / "c.yaml", h5ad, model={"name": model, "params": MODELS[model]},
                        data={"positive_class": "type_1"} if binary else {},
                        preprocess={"standardize": standardize, "transform": transform},
                        explain={"method": method, "max_samples": 60})
    proc = run_cli("run", config, "--out", tmp_path / "o", "--steps", "train,explain,select", check=False)
    assert "Traceback" not in proc.stderr, proc.stderr
    if model == "gradient_boosting" and not binary:
        lines = [x for x in proc.stderr.splitlines() if x.strip() and " INFO " not in x]
        assert proc.returncode == 2 and len(lines) == 1 and "explain.method" in lines[0], proc.stderr
    else:
        assert proc.returncode == 0, proc.stderr


def test_a_tuned_hist_gradient_boosting_is_seen_as_dense_only():
    from sklearn.model_selection import GridSearchCV

    from iml_genomics.models import build_pipeline

    hgb = build_pipeline(_cfg("hist_gradient_boosting", {}), "classification", sparse_input=True, n_classes=2)
    assert "HistGradientBoosting" in dense_reason(GridSearchCV(hgb, {"model__max_iter": [5, 10]}))
    rf = build_pipeline(_cfg("random_forest", {}), "classification", sparse_input=True, n_classes=2)
    assert dense_reason(GridSearchCV(rf, {"model__max_depth": [2, 3]})) is None


def test_evaluate_prediction_gaps_with_hist_gradient_boosting_on_sparse_input():
    from iml_genomics.steps.evaluate import prediction_gap_table

    adata = _cohort(n_cells=300, n_genes=30)
    cfg = _cfg("hist_gradient_boosting", {"max_iter": 5})
    ranking = pd.DataFrame({"gene_id": list(adata.var_names), "rank": np.arange(1, 31)})
    table = prediction_gap_table(adata, cfg, {"shap": ranking}, (5,), 1)
    assert len(table) and set(table["source"]) == {"shap"}


def test_select_statistic_model_is_refused_before_training_exactly_for_models_without_importances(sparse_h5ad,
                                                                                                  tmp_path):
    import warnings

    from iml_genomics.models import MODEL_REGISTRY, build_estimator
    from iml_genomics.sparse_input import check_model_statistic

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, 4)), np.repeat([0, 1, 2], 20)
    for name in MODEL_REGISTRY:  # the static check agrees with what a fitted model has
        est = build_estimator(name, "classification", seed=0, params={}, n_classes=3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est.fit(X, y)
        has = hasattr(est, "coef_") or hasattr(est, "feature_importances_")
        cfg = config_from_dict({"model": {"name": name}, "select": {"statistic": "model"}})
        if has:
            check_model_statistic(cfg, source="c.yaml")
        else:
            with pytest.raises(ConfigError, match="select.statistic"):
                check_model_statistic(cfg, source="c.yaml")
    d, h5ad = sparse_h5ad
    config = _write_cfg(tmp_path / "m.yaml", h5ad, select={"statistic": "model"})
    one_line(run_cli("run", config, "--out", tmp_path / "o", check=False), 2, "select.statistic", "lasso")
    assert not (tmp_path / "o").exists()
