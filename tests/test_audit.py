"""Sensitive-attribute audit (data.sensitive -> audit.tsv; issue 16, item 3).

Seeded simulations: sex shifts a block of genes the model uses -> the attribute is predictable from the
model's top genes and a large share of mean |SHAP| lands on sex-associated genes; a null attribute (drawn
independently of everything) -> chance predictability and almost no share; a site where the outcome is
mostly noise -> its out-of-fold AUROC is visibly worse, with an interval that excludes the other site's value.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import anndata as ad

from conftest import TEST_DATA, one_line, run_cli_inprocess
from iml_genomics.config import config_from_dict


def cohort(seed: int, n: int = 400, p: int = 80):
    rng = np.random.default_rng(seed)
    sex = rng.integers(0, 2, n)
    site = rng.integers(0, 2, n)
    null = rng.integers(0, 3, n)
    X = rng.normal(size=(n, p))
    X[:, :10] += 1.5 * sex[:, None]            # sex drives genes 0..9
    eta = 2.0 * (X[:, :4].sum(1) - 6.0 * sex + 3.0) + 2.0 * X[:, 40:44].sum(1)  # the model needs genes 0..3
    eta = np.where(site == 1, 0.1 * eta, eta)   # site 'hard': the outcome is mostly noise there
    y = eta + rng.logistic(size=n) > 0
    obs = pd.DataFrame({"y": np.where(y, "case", "ctrl"), "sex": np.where(sex, "F", "M"),
                        "null": np.array(["a", "b", "c"])[null], "site": np.where(site, "hard", "easy")},
                       index=[f"s{i}" for i in range(n)])
    return ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(p)]))


def _audit(adata, seed, *, hand_over=True):
    from iml_genomics.steps import explain, train

    cfg = config_from_dict({"data": {"label_column": "y", "sensitive": ["sex", "null", "site"]},
                            "model": {"name": "l1_logistic"}, "explain": {"method": "shap", "top_k": 10},
                            "n_jobs": 1, "seed": seed})
    trained = train(adata, cfg)
    model = trained if hand_over else (trained.model, trained.manifest)
    return explain(adata, cfg, model=model).audit


def _value(audit, attribute, quantity, metric, group="all"):
    row = audit[(audit["attribute"] == attribute) & (audit["quantity"] == quantity) & (audit["metric"] == metric)
                & (audit["group"] == group)]
    assert len(row) == 1, (attribute, quantity, metric, group)
    return row.iloc[0]


@pytest.fixture(scope="module")
def audits():
    return [_audit(cohort(seed), seed) for seed in range(2)]


def test_attribute_driving_used_genes_is_flagged(audits):
    for audit in audits:
        assert set(audit["explains"]) == {"model", "data"}
        pred = _value(audit, "sex", "predictability", "balanced_accuracy")
        assert pred["value"] > 0.8 and pred["chance"] == 0.5 and pred["explains"] == "data"
        share = _value(audit, "sex", "attribution_share", "mean_abs_shap_share")
        assert share["value"] > 0.15 and share["n_genes"] >= 8 and share["explains"] == "model"


def test_null_attribute_is_at_chance_with_little_share(audits):
    for audit in audits:
        pred = _value(audit, "null", "predictability", "balanced_accuracy")
        assert abs(pred["value"] - 1 / 3) < 0.1, pred["value"]
        share = _value(audit, "null", "attribution_share", "mean_abs_shap_share")
        assert share["value"] < 0.05 and share["n_genes"] <= 2


def test_worse_group_is_visible_in_per_group_performance(audits):
    for audit in audits:
        easy = _value(audit, "site", "performance", "auroc", "easy")
        hard = _value(audit, "site", "performance", "auroc", "hard")
        assert easy["value"] > 0.75 and hard["ci_high"] < easy["value"], (easy["value"], hard["ci_high"])
        assert easy["n"] + hard["n"] == 400 and hard["ci_low"] < hard["value"] < hard["ci_high"]
        groups = audit[(audit["attribute"] == "null") & (audit["quantity"] == "performance")]
        assert sorted(groups["group"]) == ["a", "b", "c"] and groups["n"].sum() == 400


def test_audit_without_train_predictions_recomputes_the_same_folds():
    adata = cohort(5, n=200, p=40)
    handed = _audit(adata, 5)
    recomputed = _audit(adata, 5, hand_over=False)
    pd.testing.assert_frame_equal(handed, recomputed)


def test_cli_audit_file_report_section_and_bad_column(tmp_path, demo_train_dir):
    labels = pd.read_csv(TEST_DATA / "demo_labels.tsv", sep="\t", dtype=str)
    labels["sex"] = np.where(np.arange(len(labels)) % 2, "F", "M")
    labels.to_csv(tmp_path / "labels.tsv", sep="\t", index=False)
    (tmp_path / "c.yaml").write_text("data:\n  label_column: condition\n  sensitive: [sex]\nexplain: {method: shap}\n")
    args = ["explain", "--config", tmp_path / "c.yaml", "--model", demo_train_dir, "--expression",
            TEST_DATA / "demo_expression.csv.gz", "--jobs", "1"]
    run_cli_inprocess(*args, "--labels", tmp_path / "labels.tsv", "--out", tmp_path / "explain")
    audit = pd.read_csv(tmp_path / "explain" / "audit.tsv", sep="\t")
    assert set(audit["quantity"]) == {"performance", "predictability", "attribution_share"}
    assert set(audit["group"]) == {"F", "M", "all"} and set(audit["explains"]) <= {"model", "data"}
    run_cli_inprocess("report", "--inputs", demo_train_dir, tmp_path / "explain", "--out", tmp_path / "report")
    html = (tmp_path / "report" / "report.html").read_text()
    assert "Sensitive-attribute audit" in html and "Benjamini-Hochberg" in html
    # absent and blank attribute columns: one line, exit 2, nothing written
    labels.drop(columns="sex").to_csv(tmp_path / "nosex.tsv", sep="\t", index=False)
    one_line(run_cli_inprocess(*args, "--labels", tmp_path / "nosex.tsv", "--out", tmp_path / "o1", check=False), 2,
             "'sex'", "data.sensitive")
    labels.assign(sex=[""] + list(labels["sex"][1:])).to_csv(tmp_path / "blank.tsv", sep="\t", index=False)
    one_line(run_cli_inprocess(*args, "--labels", tmp_path / "blank.tsv", "--out", tmp_path / "o2", check=False), 2,
             "'sex'", "data.sensitive", "S0001")
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
