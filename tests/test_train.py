"""`train`: leakage-free CV, determinism, formats, bundles, the real Golub cohort."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics

from conftest import TEST_DATA, run_cli_inprocess
from iml_genomics.config import config_from_dict
from iml_genomics.models import build_pipeline, cross_validate, load_bundle
from iml_genomics.preprocess import GeneFilter, used_gene_mask

TABLES = ("cv_metrics.tsv", "cv_summary.tsv", "oof_predictions.tsv")


def cv_mean(out, metric, stat="mean"):
    """``stat`` of ``metric`` from a train directory's cv_summary.tsv."""
    return pd.read_csv(out / "cv_summary.tsv", sep="\t").set_index("metric").loc[metric, stat]


def test_demo_outputs_and_columns(demo_train_dir):
    files = {p.name for p in demo_train_dir.iterdir() if not p.name.startswith(".")}
    assert files == {"cv_metrics.tsv", "cv_summary.tsv", "oof_predictions.tsv", "model.skops", "model.json",
                     "provenance.json", "train_summary.json"}
    cv = pd.read_csv(demo_train_dir / "cv_metrics.tsv", sep="\t")
    assert list(cv.columns) == ["split", "repeat", "fold", "n_train", "n_test", "balanced_accuracy", "auroc",
                                "average_precision", "log_loss", "explains"]
    assert list(cv["split"]) == ["r1_f1", "r1_f2", "r1_f3", "r1_f4", "r1_f5"]
    folds = cv
    assert folds["n_test"].sum() == 400
    summary = pd.read_csv(demo_train_dir / "cv_summary.tsv", sep="\t")
    assert list(summary.columns) == ["metric", "mean", "sd", "n_folds", "explains"]
    assert list(summary["metric"]) == ["balanced_accuracy", "auroc", "average_precision", "log_loss"]
    assert (summary["n_folds"] == 5).all()
    assert cv_mean(demo_train_dir, "auroc") == pytest.approx(folds["auroc"].mean())
    assert cv_mean(demo_train_dir, "auroc", "sd") == pytest.approx(folds["auroc"].std(ddof=1))
    # planted signal is learnable: well above chance out of fold
    assert cv_mean(demo_train_dir, "auroc") > 0.7
    oof = pd.read_csv(demo_train_dir / "oof_predictions.tsv", sep="\t")
    assert list(oof.columns) == ["sample_id", "repeat", "fold", "y_true", "y_pred", "prob_normal", "prob_tumour", "explains"]
    assert oof["sample_id"].is_unique and len(oof) == 400
    np.testing.assert_allclose(oof[["prob_normal", "prob_tumour"]].sum(axis=1), 1.0)
    # out-of-fold AUROC recomputed from the predictions matches the per-fold table's inputs
    labels = pd.read_csv(TEST_DATA / "demo_labels.tsv", sep="\t", index_col=0)["condition"]
    assert (oof.set_index("sample_id")["y_true"] == labels.loc[oof["sample_id"]]).all()
    prov = json.loads((demo_train_dir / "provenance.json").read_text())
    assert {"command_line", "config", "versions", "inputs", "seed", "n_jobs", "wall_time_seconds"} <= set(prov)
    assert len(prov["inputs"]["expression"]["sha256"]) == 64


def test_bundle_round_trip_predicts_like_cv_refit(demo_train_dir):
    pipeline, manifest = load_bundle(demo_train_dir)
    assert manifest["task"] == "classification" and manifest["classes"] == ["normal", "tumour"]
    assert manifest["positive_class"] == "tumour"
    X = pd.read_csv(TEST_DATA / "demo_expression.csv.gz", index_col=0)
    assert manifest["gene_ids"] == list(X.columns)
    proba = pipeline.predict_proba(X.to_numpy())
    assert proba.shape == (400, 2)
    assert np.isfinite(proba).all()


@pytest.mark.parametrize("fmt", ["parquet", "h5ad"])
def test_same_metrics_for_every_format(tmp_path, demo_paths, demo_train_dir, fmt):
    out = tmp_path / fmt
    run_cli_inprocess("train", "--config", demo_paths["config"], "--expression", demo_paths[fmt],
                      "--labels", demo_paths["labels"], "--out", out, "--jobs", "1")
    for table in TABLES:
        assert (out / table).read_bytes() == (demo_train_dir / table).read_bytes(), table


def test_jobs_do_not_change_bytes(tmp_path, demo_paths, demo_train_dir):
    """--jobs 1 and --jobs 2 write byte-identical tables (the fixture used --jobs 2)."""
    out = tmp_path / "jobs1"
    run_cli_inprocess("train", "--config", demo_paths["config"], "--expression", demo_paths["csv.gz"],
                      "--labels", demo_paths["labels"], "--out", out, "--jobs", "1")
    for table in (*TABLES, "model.json"):
        assert (out / table).read_bytes() == (demo_train_dir / table).read_bytes(), table


def test_random_forest_jobs_identical_and_repeated_cv(tmp_path, demo_paths):
    import yaml

    cfg = yaml.safe_load(demo_paths["config"].read_text())
    cfg["model"] = {"name": "random_forest", "params": {"n_estimators": 60}}
    config = tmp_path / "rf.yaml"
    config.write_text(yaml.safe_dump(cfg))
    outs = []
    for jobs in ("1", "2"):
        out = tmp_path / f"rf{jobs}"
        run_cli_inprocess("train", "--config", config, "--expression", demo_paths["csv.gz"],
                          "--labels", demo_paths["labels"], "--out", out, "--jobs", jobs, "--cv-folds", "3",
                          "--cv-repeats", "2")
        outs.append(out)
    for table in TABLES:
        assert (outs[0] / table).read_bytes() == (outs[1] / table).read_bytes()
    cv = pd.read_csv(outs[0] / "cv_metrics.tsv", sep="\t")
    assert len(cv) == 3 * 2
    oof = pd.read_csv(outs[0] / "oof_predictions.tsv", sep="\t")
    assert len(oof) == 400 * 2 and set(oof["repeat"]) == {1, 2}


def _noise_cohort(seed: int, n: int = 60, p: int = 2000):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p))
    y = np.array(["a", "b"] * (n // 2), dtype=object)
    rng.shuffle(y)
    return X, y


def test_preprocessing_is_fit_on_training_folds_only():
    """Each fold's filter and scaler saw exactly its training rows, never the test rows."""
    X, y = _noise_cohort(1, n=50, p=300)
    X[:, :40] *= np.linspace(0.5, 3, 40)  # give variances structure so the filter has choices
    cfg = config_from_dict({"preprocess": {"top_k_variable": 30}, "model": {"name": "l1_logistic"}})
    result = cross_validate(build_pipeline(cfg, "classification"), X, y, sample_ids=[f"s{i}" for i in range(50)],
                            classes=["a", "b"], task="classification", n_splits=5, seed=0)
    full_support = GeneFilter(top_k_variable=30).fit(X).support_
    differs = 0
    for model, (_, _, train_idx, test_idx) in zip(result.models, result.splits):
        fold_support = GeneFilter(top_k_variable=30).fit(X[train_idx]).support_
        np.testing.assert_array_equal(model.named_steps["filter"].support_, fold_support)
        np.testing.assert_allclose(model.named_steps["scale"].mean_, X[train_idx][:, fold_support].mean(axis=0))
        differs += not np.array_equal(fold_support, full_support)
        assert used_gene_mask(model, 300).sum() == 30
    assert differs > 0, "the test data must make fold and full-data filters differ"


def _leaky_cv_auroc(X, y, k: int, seed: int) -> float:
    """Supervised top-k gene selection on ALL samples, then CV: the classic leak."""
    from scipy import stats
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    t = stats.ttest_ind(X[y == "a"], X[y == "b"]).statistic
    top = np.argsort(-np.abs(t))[:k]
    proba = cross_val_predict(LogisticRegression(C=1.0), X[:, top], y, cv=StratifiedKFold(5, shuffle=True,
                              random_state=seed), method="predict_proba")[:, 1]
    return metrics.roc_auc_score(y == "b", proba)


def test_no_leakage_on_pure_noise():
    """On labels independent of X, our CV sits at chance while a leaky filter looks predictive.

    The leaky baseline proves the harness can see leakage; our pipeline
    (with a top-k filter and scaling inside the folds) must not.
    """
    ours, leaky = [], []
    for seed in range(4):
        X, y = _noise_cohort(seed)
        cfg = config_from_dict({"preprocess": {"top_k_variable": 50},
                                "model": {"name": "l1_logistic", "params": {"C": 1.0}}})
        res = cross_validate(build_pipeline(cfg, "classification"), X, y, sample_ids=[str(i) for i in range(60)],
                             classes=["a", "b"], task="classification", n_splits=5, seed=seed)
        ours.append(res.summary.set_index("metric").loc["auroc", "mean"])
        leaky.append(_leaky_cv_auroc(X, y, k=50, seed=seed))
    # chance is 0.5; the sd of a 60-sample AUROC is ~0.075, of the mean of 4 ~0.04
    assert abs(np.mean(ours) - 0.5) < 0.12, ours
    assert np.mean(leaky) > 0.8, leaky


def test_regression_task(tmp_path):
    from iml_genomics.simulate import simulate_gaussian, write_cohort

    cohort = simulate_gaussian(80, 60, n_signal=4, effect_size=1.0, outcome="continuous", seed=3)
    paths = write_cohort(cohort, tmp_path / "data", "reg", formats=("tsv",))
    out = tmp_path / "out"
    run_cli_inprocess("train", "--expression", paths["tsv"], "--labels", tmp_path / "data" / "reg_labels.tsv",
                      "--label-column", "condition", "--model", "lasso", "--out", out)
    cv = pd.read_csv(out / "cv_metrics.tsv", sep="\t").set_index("split")
    assert list(cv.columns[-4:]) == ["r2", "rmse", "mae", "explains"]
    assert cv_mean(out, "r2") > 0.5
    assert json.loads((out / "model.json").read_text())["task"] == "regression"


def test_multiclass_task(tmp_path):
    from iml_genomics.simulate import simulate_gaussian, write_cohort

    cohort = simulate_gaussian(150, 40, n_signal=6, effect_size=3.0, outcome="multiclass", n_classes=3, seed=4)
    paths = write_cohort(cohort, tmp_path / "data", "mc", formats=("csv",))
    out = tmp_path / "out"
    run_cli_inprocess("train", "--expression", paths["csv"], "--labels", tmp_path / "data" / "mc_labels.tsv",
                      "--label-column", "condition", "--model", "l1_logistic", "--out", out, "--cv-folds", "3")
    assert cv_mean(out, "auroc") > 0.6
    oof = pd.read_csv(out / "oof_predictions.tsv", sep="\t")
    assert {"prob_class_1", "prob_class_2", "prob_class_3"} <= set(oof.columns)


@pytest.mark.parametrize("model", ["elasticnet_logistic", "extra_trees", "gradient_boosting", "linear_svm",
                                   "decision_tree"])
def test_every_registry_model_trains(model):
    from iml_genomics.simulate import simulate_gaussian

    cohort = simulate_gaussian(60, 30, n_signal=3, effect_size=2.0, seed=5)
    cfg = config_from_dict({"model": {"name": model}})
    y = cohort.labels["condition"].to_numpy(dtype=object)
    res = cross_validate(build_pipeline(cfg, "classification"), cohort.expression.to_numpy(), y,
                         sample_ids=list(cohort.expression.index), classes=["normal", "tumour"],
                         task="classification", n_splits=3, seed=0)
    assert res.summary.set_index("metric").loc["auroc", "mean"] > 0.6


def test_golub_auroc(tmp_path):
    """Real data: ALL vs AML is well separated (Golub 1999); CV AUROC with its sd."""
    out = tmp_path / "golub"
    run_cli_inprocess("train", "--config", TEST_DATA.parent / "configs" / "golub.yaml",
                      "--expression", TEST_DATA / "golub_expression.tsv.gz", "--labels", TEST_DATA / "golub_labels.tsv",
                      "--out", out, "--jobs", "2")
    assert cv_mean(out, "auroc") > 0.9
    assert 0 <= cv_mean(out, "auroc", "sd") < 0.2


def test_sparse_h5ad_layer_with_count_transform(tmp_path):
    """Single-cell style input: sparse counts in a layer, log1p_cpm inside the folds."""
    import anndata as ad
    from scipy import sparse

    rng = np.random.default_rng(11)
    n, p = 160, 120
    y = np.where(np.arange(n) % 2 == 0, "a", "b")
    rate = rng.gamma(2.0, 2.0, size=p)
    lam = np.tile(rate, (n, 1))
    lam[y == "b", :6] *= 4.0  # six marker genes up in class b
    counts = rng.poisson(lam * rng.uniform(0.5, 1.5, size=(n, 1))).astype(np.float64)
    obs = pd.DataFrame({"group": y}, index=[f"c{i:03d}" for i in range(n)])
    var = pd.DataFrame(index=[f"g{j:03d}" for j in range(p)])
    # X is a decoy (all zero): the model must read the 'counts' layer
    adata = ad.AnnData(X=sparse.csr_matrix((n, p)), obs=obs, var=var,
                       layers={"counts": sparse.csr_matrix(counts)})
    path = tmp_path / "cells.h5ad"
    adata.write_h5ad(path)
    dense = tmp_path / "cells_dense.csv"
    pd.DataFrame(counts, index=obs.index, columns=var.index).rename_axis("cell").to_csv(dense)
    labels = tmp_path / "labels.tsv"
    obs.rename_axis("cell").to_csv(labels, sep="\t")
    config = tmp_path / "c.yaml"
    config.write_text("preprocess: {transform: log1p_cpm, min_expression: 0.5, min_expression_fraction: 0.2}\n"
                      "model: {name: l1_logistic, params: {C: 0.5}}\n")
    out_sparse, out_dense = tmp_path / "sparse", tmp_path / "dense"
    run_cli_inprocess("train", "--config", config, "--expression", path, "--layer", "counts", "--label-column", "group",
                      "--out", out_sparse)
    run_cli_inprocess("train", "--config", config, "--expression", dense, "--labels", labels, "--label-column", "group",
                      "--out", out_dense)
    auroc_sparse = cv_mean(out_sparse, "auroc")
    auroc_dense = cv_mean(out_dense, "auroc")
    assert auroc_sparse > 0.9
    # sparse input is scaled without centring (centring would densify it); the fits agree closely
    assert abs(auroc_sparse - auroc_dense) < 0.03
    pipeline, _ = load_bundle(out_sparse)
    assert type(pipeline.named_steps["scale"]).__name__ == "StandardScaler"
    assert pipeline.named_steps["scale"].with_mean is False
