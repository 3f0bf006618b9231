"""`compare`: several models on the same folds, nested CV without leakage, the comparison tables, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import CONFIGS, TEST_DATA, one_line, run_cli_inprocess
from iml_genomics.compare import candidate_pipeline, compare_models, surrogate_fidelity
from iml_genomics.config import config_from_dict
from iml_genomics.models import cv_splits
from iml_genomics.parallel import Backend

TABLES = ("model_comparison.tsv", "model_agreement.tsv", "robust_genes.tsv", "model_gene_rankings.tsv",
          "model_tuning.tsv", "cv_folds.tsv", "compare_summary.json")


def _interaction_cohort(seed: int, n: int = 500, p: int = 12):
    """G0, G1: strong marginal (linear) effects; G2 x G3: a sign interaction no linear model can express."""
    import anndata as ad

    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p))
    eta = 2 * X[:, 0] + 2 * X[:, 1] + 5 * np.sign(X[:, 2] * X[:, 3])
    y = np.where(rng.random(n) < 1 / (1 + np.exp(-eta)), "case", "control")
    return ad.AnnData(X, obs=pd.DataFrame({"y": y}, index=[f"S{i}" for i in range(n)]),
                      var=pd.DataFrame(index=[f"G{j}" for j in range(p)]))


@pytest.fixture(scope="module")
def interaction_result():
    from iml_genomics.steps import compare

    cfg = config_from_dict({"data": {"label_column": "y"}, "explain": {"top_k": 5},
                            "model": {"candidates": ["l1_logistic", "gradient_boosting"]}})
    return compare(_interaction_cohort(0), cfg, n_jobs=1)


def test_tree_model_beats_linear_on_an_interaction(interaction_result):
    table = interaction_result.comparison
    assert list(table["model"]) == ["gradient_boosting", "l1_logistic"]
    assert list(table["rank"]) == [1, 2]
    gb, lin = table.set_index("model").loc["gradient_boosting"], table.set_index("model").loc["l1_logistic"]
    # the interaction carries most of the signal: the tree model is far ahead, by more than both sds
    assert gb["auroc_mean"] - lin["auroc_mean"] > gb["auroc_sd"] + lin["auroc_sd"]
    # the tree model relies on the interacting pair, the linear one cannot
    assert {"G2", "G3"} <= set(gb["top_genes"].split(","))
    assert gb["importance"] == lin["importance"] == "mean_abs_shap_held_out"
    assert bool(lin["tuned"]) and not bool(gb["tuned"])
    for col in ("auroc_mean", "auroc_sd", "balanced_accuracy_mean", "log_loss_sd", "n_genes_used",
                "jaccard_top_k_mean", "kendall_tau_mean", "surrogate_fidelity", "explains"):
        assert col in table.columns
    summary = interaction_result.summary
    assert summary["best_model"] == "gradient_boosting" and summary["best_within_one_sd_of_runner_up"] is False
    assert "gradient_boosting has the best cross-validated auroc" in summary["text"]


def test_robust_genes_include_the_planted_marginal_genes(interaction_result):
    robust = interaction_result.robust_genes
    in_all = set(robust.loc[robust["in_all_models"], "gene_id"])
    assert {"G0", "G1"} <= in_all
    assert (robust.loc[robust["in_all_models"], "n_models"] == 2).all()
    assert set(interaction_result.summary["robust_genes_all_models"]) == in_all
    assert "G0" in interaction_result.summary["text"] and "top 5 of every model" in interaction_result.summary["text"]
    agreement = interaction_result.agreement
    assert list(agreement[["model_a", "model_b"]].iloc[0]) == ["l1_logistic", "gradient_boosting"]
    shared = agreement["n_shared"].iloc[0]
    assert shared >= 2 and agreement["top_k_jaccard"].iloc[0] == pytest.approx(shared / agreement["n_union"].iloc[0])


def test_every_model_is_scored_on_the_same_folds(interaction_result):
    folds = interaction_result.folds
    expected = cv_splits(interaction_result.oof["l1_logistic"]["y_true"].to_numpy(), "classification",
                         n_splits=5, n_repeats=1, seed=0)
    for _, fold, _, te in expected:
        assert set(folds.loc[folds["fold"] == fold, "sample_id"]) == {f"S{i}" for i in te}
    keys = [oof[["sample_id", "repeat", "fold"]].reset_index(drop=True) for oof in interaction_result.oof.values()]
    assert len(keys) == 2
    pd.testing.assert_frame_equal(keys[0], keys[1])
    pd.testing.assert_frame_equal(keys[0], folds)


def _nested_and_naive_auroc(n_reps: int, *, n: int = 40, p: int = 200):
    """Per replicate of a pure-noise cohort (p >> n): the nested-CV AUROC of tuned l1_logistic, and the AUROC of
    "tune C on all rows by CV on the outer folds, report that CV score" (the selection bias nested CV removes)."""
    from sklearn.model_selection import GridSearchCV

    nested, naive = [], []
    for rep in range(n_reps):
        rng = np.random.default_rng(100 + rep)
        X, y = rng.normal(size=(n, p)), np.array(["a", "b"] * (n // 2))
        cfg = config_from_dict({"seed": rep, "explain": {"top_k": 5}, "model": {
            "tuning": {"l1_logistic": {"C": [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0]}, "decision_tree": {}}}})
        res = compare_models(X, y, cfg, candidates=["l1_logistic", "decision_tree"], task="classification",
                             classes=["a", "b"], sample_ids=[f"s{i}" for i in range(n)],
                             gene_ids=[f"g{j}" for j in range(p)], backend=Backend.local(1))
        nested.append(res.comparison.set_index("model").loc["l1_logistic", "auroc_mean"])
        tuned, _ = candidate_pipeline("l1_logistic", cfg, "classification", n_classes=2)
        outer = [(tr, te) for _, _, tr, te in cv_splits(y, "classification", n_splits=5, n_repeats=1, seed=rep)]
        naive.append(GridSearchCV(tuned[-1].estimator, tuned[-1].param_grid, cv=outer, scoring="roc_auc")
                     .fit(X, y).best_score_)
    return np.asarray(nested), np.asarray(naive)


def test_nested_cv_is_leakage_free_on_noise():
    """Pure noise, p >> n: nested-CV AUROC stays at chance; tuning on all rows scores above it."""
    nested, naive = _nested_and_naive_auroc(6)
    se = nested.std(ddof=1) / np.sqrt(len(nested))
    assert abs(nested.mean() - 0.5) < max(3 * se, 0.05), nested
    assert naive.mean() - nested.mean() > 0.04, (naive, nested)
    assert (naive >= nested).sum() >= 5, (naive, nested)


@pytest.mark.slow
def test_nested_cv_is_leakage_free_on_noise_many_replicates():
    """30 replicates: the nested AUROC's 99% CI holds 0.5; tuning on all rows is higher (paired Wilcoxon)."""
    from scipy import stats

    nested, naive = _nested_and_naive_auroc(30)
    lo, hi = stats.t.interval(0.99, len(nested) - 1, loc=nested.mean(), scale=stats.sem(nested))
    assert lo < 0.5 < hi, (lo, hi)
    assert stats.wilcoxon(naive, nested, alternative="greater").pvalue < 0.001


def test_surrogate_fidelity_separates_simple_from_random_predictions():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(300, 10))
    splits = cv_splits(np.zeros(300), "regression", n_splits=5, n_repeats=1, seed=0)
    simple = np.where(X[:, 0] > 0.3, "b", "a")  # a depth-1 rule: a depth-3 tree reproduces it
    assert surrogate_fidelity(X, simple, splits, "classification", seed=0) > 0.97
    noise = rng.choice(["a", "b"], size=300)  # unrelated to X: a tree can only guess
    assert abs(surrogate_fidelity(X, noise, splits, "classification", seed=0) - 0.5) < 0.1
    smooth = X[:, 1] * 2.0
    assert surrogate_fidelity(X, smooth, splits, "regression", seed=0) > 0.8
    assert surrogate_fidelity(X, rng.normal(size=300), splits, "regression", seed=0) < 0.1


def _demo_config(tmp_path):
    cfg = yaml.safe_load((CONFIGS / "demo.yaml").read_text())
    cfg["model"] = {"name": "l1_logistic", "candidates": ["l1_logistic", "decision_tree"]}
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _demo_args(config):
    return ("compare", "--config", config, "--expression", TEST_DATA / "demo_expression.csv.gz",
            "--labels", TEST_DATA / "demo_labels.tsv")


@pytest.fixture(scope="module")
def demo_compare_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    out = tmp / "jobs2"
    run_cli_inprocess(*_demo_args(_demo_config(tmp)), "--out", out, "--jobs", "2")
    return out


def test_cli_end_to_end_on_the_demo(demo_compare_dir):
    files = {p.name for p in demo_compare_dir.iterdir() if not p.name.startswith(".")}
    assert files == {*TABLES, "provenance.json"}
    table = pd.read_csv(demo_compare_dir / "model_comparison.tsv", sep="\t")
    assert set(table["model"]) == {"l1_logistic", "decision_tree"}
    assert table["auroc_mean"].is_monotonic_decreasing
    # the planted signal is linear: the sparse linear model ranks first and uses few genes
    assert table["model"].iloc[0] == "l1_logistic"
    row = table.set_index("model").loc["l1_logistic"]
    assert row["n_genes_used"] < 200 and row["auroc_mean"] > 0.85
    tuning = pd.read_csv(demo_compare_dir / "model_tuning.tsv", sep="\t")
    assert set(tuning["model"]) == {"l1_logistic", "decision_tree"}
    assert list(tuning.loc[tuning["model"] == "l1_logistic", "split"]) == [f"r1_f{i}" for i in range(1, 6)] + ["final"]
    assert tuning["params"].str.match(r"^(C|max_depth)=").all()
    truth = set(pd.read_csv(TEST_DATA / "demo_truth.tsv", sep="\t")["gene_id"])
    robust = pd.read_csv(demo_compare_dir / "robust_genes.tsv", sep="\t")
    in_all = robust.loc[robust["in_all_models"], "gene_id"]
    assert len(in_all) and set(in_all) <= truth
    summary = json.loads((demo_compare_dir / "compare_summary.json").read_text())
    assert summary["ranking"] == list(table["model"]) and summary["explains"] == "model"
    prov = json.loads((demo_compare_dir / "provenance.json").read_text())
    assert prov["config"]["model"]["candidates"] == ["l1_logistic", "decision_tree"]


def test_report_has_a_model_comparison_section(tmp_path, demo_compare_dir):
    out = tmp_path / "report"
    run_cli_inprocess("report", "--inputs", demo_compare_dir, "--out", out)
    html = (out / "report.html").read_text()
    assert "Model comparison" in html
    summary = json.loads((demo_compare_dir / "compare_summary.json").read_text())
    assert summary["text"].split(";")[0].split("(")[0].strip() in html
    assert summary["robust_genes_all_models"][0] in html
    block = json.loads((out / "report_summary.json").read_text())["model_comparison"]
    assert block["best_model"] == summary["best_model"] and block["text"] == summary["text"]


@pytest.mark.parametrize("args, needles", [
    (("--models", "l1_logistic,rf"), ("model.candidates", "'rf'", "random_forest, extra_trees")),
    (("--models", "l1_logistic"), ("--models", "at least two")),
    (("--models", "l1_logistic,l1_logistic"), ("model.candidates", "twice")),
])
def test_bad_candidates_one_line_nothing_written(tmp_path, args, needles):
    out = tmp_path / "out"
    proc = run_cli_inprocess(*_demo_args(_demo_config(tmp_path)), "--out", out, *args, check=False)
    one_line(proc, 2, *needles)
    assert not out.exists()


def test_bad_config_candidates_and_tuning(tmp_path):
    out = tmp_path / "out"
    for model, needles in [
        ({"candidates": ["l1_logistic"]}, ("model.candidates", "at least two")),
        ({"candidates": []}, ("model.candidates", "is empty")),
        ({"candidates": ["l1_logistic", "decision_tree"], "tuning": {"decision_tree": {"max_dept": [2, 3]}}},
         ("model.tuning.decision_tree", "max_dept", "max_depth")),
        ({"candidates": ["l1_logistic", "decision_tree"], "tuning": {"l1_logistic": {"C": [1.0, "big"]}}},
         ("model.tuning.l1_logistic.C", "rejects")),
    ]:
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump({"data": {"label_column": "condition"}, "model": model}))
        proc = run_cli_inprocess(*_demo_args(path), "--out", out, check=False)
        one_line(proc, 2, *needles)
        assert not out.exists()


def test_run_with_candidates_and_jobs_1_writes_the_bytes_of_compare_with_jobs_2(tmp_path, demo_compare_dir):
    """`run --jobs 1` with model.candidates adds OUT/compare, byte-identical to `compare --jobs 2` (same seed, same
    bytes whatever --jobs, whichever command), then skips it when up to date."""
    config = _demo_config(tmp_path)
    out = tmp_path / "run"
    proc = run_cli_inprocess("run", config, "--steps", "train", "--out", out, "--jobs", "1")
    assert "compare: 400 samples x 400 genes, 2 models on the same folds" in proc.stderr
    for name in TABLES:
        assert (out / "compare" / name).read_bytes() == (demo_compare_dir / name).read_bytes(), name
    state = json.loads((out / "run_state.json").read_text())
    assert {"train", "compare"} <= set(state)
    again = run_cli_inprocess("run", config, "--steps", "train", "--out", out, "--jobs", "1")
    assert "compare: up to date, skipped" in again.stderr and "compare: 400 samples" not in again.stderr


def test_tl_compare_writes_uns_and_get_reads_it_back(tmp_path, interaction_result):
    import anndata as ad

    import iml_genomics as ig

    adata = _interaction_cohort(0)
    result = ig.tl.compare(adata, candidates=["l1_logistic", "gradient_boosting"], label_column="y",
                           config={"explain": {"top_k": 5}}, n_jobs=1)
    pd.testing.assert_frame_equal(result.comparison, interaction_result.comparison)
    path = tmp_path / "cohort.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    pd.testing.assert_frame_equal(ig.get.compare_df(back), interaction_result.comparison)
    pd.testing.assert_frame_equal(ig.get.compare_df(back, "robust_genes"), interaction_result.robust_genes)
    assert ig.get.summary(back, "compare")["best_model"] == "gradient_boosting"


@pytest.mark.parametrize("runner_up, sd, warned", [(0.78, 0.05, True), (0.70, 0.01, False)])
def test_report_words_warn_only_when_the_runner_up_is_within_one_sd(runner_up, sd, warned):
    from iml_genomics.report.compare_section import comparison_words

    table = pd.DataFrame({"rank": [1, 2], "model": ["random_forest", "l1_logistic"], "auroc_mean": [0.80, runner_up],
                          "auroc_sd": [sd, 0.02], "top_k": [10, 10]})
    robust = pd.DataFrame({"gene_id": ["TP53", "MYC"], "n_models": [2, 1], "in_all_models": [True, False]})
    text = comparison_words(table, robust, {"primary_metric": "auroc", "n_splits": 5, "n_repeats": 1, "top_k": 10})
    assert text.startswith(f"random_forest has the best cross-validated auroc (0.800 +/- {sd:.3f} sd")
    assert f"the runner-up l1_logistic is {0.80 - runner_up:.3f} lower" in text
    assert ("within one sd" in text) is warned
    assert "1 gene(s) are in the top 10 of every model, robust to the choice of model: TP53." in text
    none = comparison_words(table, robust.assign(in_all_models=False), {"primary_metric": "auroc", "top_k": 10})
    assert "No gene is in the top 10 of every model" in none


def test_a_class_too_small_for_the_inner_folds_is_refused():
    import anndata as ad

    from iml_genomics.errors import InputDataError
    from iml_genomics.steps import compare

    rng = np.random.default_rng(0)
    y = np.array(["rare"] * 4 + ["common"] * 30)
    adata = ad.AnnData(rng.normal(size=(34, 8)), obs=pd.DataFrame({"y": y}, index=[f"S{i}" for i in range(34)]))
    cfg = config_from_dict({"data": {"label_column": "y"}, "cv": {"n_splits": 4}, "model": {"inner_folds": 4}})
    with pytest.raises(InputDataError, match="class 'rare' has 3 samples in an outer training fold.*inner_folds = 4"):
        compare(adata, cfg, candidates=["l1_logistic", "decision_tree"], n_jobs=1)
    # nothing tuned: no inner CV, nothing to refuse
    untuned = config_from_dict({"data": {"label_column": "y"}, "cv": {"n_splits": 4}, "model": {
        "inner_folds": 4, "tuning": {"l1_logistic": {}, "decision_tree": {}}}})
    assert len(compare(adata, untuned, candidates=["l1_logistic", "decision_tree"], n_jobs=1).comparison) == 2


def test_models_without_coef_or_feature_importances_can_be_compared():
    """hist_gradient_boosting (no feature_importances_) and mlp (coefs_) used to fail after all the CV work."""
    from iml_genomics.steps import compare

    cfg = config_from_dict({"data": {"label_column": "y"}, "explain": {"top_k": 5}, "cv": {"n_splits": 3},
                            "model": {"candidates": ["hist_gradient_boosting", "mlp"],
                                      "tuning": {"hist_gradient_boosting": {"max_iter": [20]},
                                                 "mlp": {"alpha": [1e-3]}}}})
    result = compare(_interaction_cohort(1, n=150, p=6), cfg, n_jobs=1)
    table = result.comparison.set_index("model")
    assert set(table.index) == {"hist_gradient_boosting", "mlp"}
    # the planted genes are among those the final models use
    assert table.loc["hist_gradient_boosting", "n_genes_used"] >= 4
    assert table.loc["mlp", "n_genes_used"] == 6
