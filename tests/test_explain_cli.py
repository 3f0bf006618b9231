"""`iml-genomics explain` end to end: exact file set and columns, --jobs invariance, planted genes, no labels."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from iml_genomics.cli import main
from iml_genomics.explain import INTERACTION_COLUMNS, LOCAL_COLUMNS, RANKING_COLUMNS
from iml_genomics.simulate import simulate_gaussian, write_cohort

FILES = {"attributions.parquet", "gene_ranking.tsv", "local_explanations.tsv", "interactions.tsv",
         "explain_summary.json", "provenance.json"}
CONFIG = """\
seed: 0
task: classification
data:
  label_column: condition
preprocess:
  top_k_variable: 36
model:
  name: random_forest
  params: {n_estimators: 40, max_depth: 4}
cv:
  n_splits: 3
explain:
  method: all
  top_k: 5
  permutation_repeats: 2
  interaction_top_k: 4
  interaction_max_samples: 20
  chunk_size: 25
  local_top_n: 3
"""


def _invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def rf_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain_cli")
    cohort = simulate_gaussian(90, 40, n_signal=2, effect_size=3.0, rho=0.0, seed=1)
    paths = write_cohort(cohort, root, "sim", formats=("tsv",))
    (root / "cfg.yaml").write_text(CONFIG)
    del paths
    _invoke("train", "--config", root / "cfg.yaml", "--expression", root / "sim_expression.tsv",
            "--labels", root / "sim_labels.tsv", "--out", root / "train", "--jobs", "1")
    return root, cohort


def test_explain_outputs_are_complete_and_independent_of_jobs(rf_bundle):
    root, cohort = rf_bundle
    common = ["explain", "--model", root / "train", "--expression", root / "sim_expression.tsv",
              "--labels", root / "sim_labels.tsv", "--samples", "S0003,S0001"]
    _invoke(*common, "--out", root / "j1", "--jobs", "1")
    _invoke(*common, "--out", root / "j2", "--jobs", "2")
    assert {p.name for p in (root / "j1").iterdir() if not p.name.startswith(".")} == FILES
    for name in FILES - {"provenance.json"}:
        assert (root / "j1" / name).read_bytes() == (root / "j2" / name).read_bytes(), name

    ranking = pd.read_csv(root / "j1" / "gene_ranking.tsv", sep="\t")
    assert list(ranking.columns) == [*RANKING_COLUMNS, "explains"] and len(ranking) == 40
    assert ranking["rank"].tolist() == list(range(1, 41))
    # the two planted genes rank first
    assert set(ranking["gene_id"].head(2)) == set(cohort.true_genes)
    used = ranking[ranking["used"]]
    assert len(used) == 36 and ranking["used"].head(36).all()  # unused genes after all used genes
    assert ranking.loc[~ranking["used"], "mean_abs_shap"].isna().all()
    assert (used["mean_abs_shap"].diff().dropna() <= 0).all()
    assert ranking["method"].eq("tree_shap_path_dependent").all() and ranking["scale"].eq("probability").all()
    assert used["top_k_frequency"].between(0, 1).all() and (used["rank_low"] <= used["rank_high"]).all()
    assert used["permutation_importance"].notna().all()

    summary = json.loads((root / "j1" / "explain_summary.json").read_text())
    for key in ("max_additivity_error", "additivity_tolerance", "fold_agreement", "approximations", "shap_method",
                "scale", "n_samples_explained", "n_genes_used", "top_k"):
        assert key in summary, key
    assert summary["max_additivity_error"] < 1e-6 and summary["n_genes_used"] == 36
    assert summary["n_samples_explained"] == 90 and summary["fold_agreement"]["n_refits"] == 3
    assert 0 <= summary["fold_agreement"]["jaccard_top_k_mean"] <= 1

    table = pq.read_table(root / "j1" / "attributions.parquet")
    assert table.column_names[:4] == ["sample_id", "class", "base_value", "model_output"]
    used_ids = set(used["gene_id"])
    assert table.num_rows == 90
    assert table.column_names[4:] == [g for g in cohort.expression.columns if g in used_ids]
    assert all(str(table.schema.field(g).type) == "float" for g in table.column_names[4:])
    frame = table.to_pandas()
    assert frame["sample_id"].tolist() == [f"S{i:04d}" for i in range(1, 91)] and frame["class"].eq("tumour").all()
    recon = frame["base_value"] + frame[table.column_names[4:]].astype(np.float64).sum(axis=1)
    assert np.max(np.abs(recon - frame["model_output"])) < 1e-5  # float32 storage

    local = pd.read_csv(root / "j1" / "local_explanations.tsv", sep="\t")
    assert list(local.columns) == [*LOCAL_COLUMNS, "explains"] and list(dict.fromkeys(local["sample_id"])) == ["S0001", "S0003"]
    assert set(local["direction"]) <= {"up", "down"} and (local.groupby(["sample_id", "direction"]).size() <= 3).all()
    row = local.iloc[0]
    assert row["expression_value"] == pytest.approx(cohort.expression.loc[row["sample_id"], row["gene_id"]], rel=1e-5)
    inter = pd.read_csv(root / "j1" / "interactions.tsv", sep="\t")
    assert list(inter.columns) == [*INTERACTION_COLUMNS, "explains"] and len(inter) == 6  # 4 choose 2


def test_explain_without_labels_is_shap_only(rf_bundle):
    root, _ = rf_bundle
    _invoke("explain", "--model", root / "train", "--expression", root / "sim_expression.tsv",
            "--out", root / "nolab", "--method", "shap", "--jobs", "1")
    summary = json.loads((root / "nolab" / "explain_summary.json").read_text())
    assert summary["labels_used"] is False and "no labels" in summary["notes"][0]
    ranking = pd.read_csv(root / "nolab" / "gene_ranking.tsv", sep="\t")
    assert ranking["top_k_frequency"].isna().all() and ranking["permutation_importance"].isna().all()
    assert ranking["mean_abs_shap"].notna().sum() == 36


def test_permutation_without_labels_fails_with_one_line(rf_bundle):
    root, _ = rf_bundle
    result = CliRunner().invoke(main, ["explain", "--model", str(root / "train"), "--expression",
                                       str(root / "sim_expression.tsv"), "--out", str(root / "bad"),
                                       "--method", "permutation"])
    assert result.exit_code == 2 and "needs labels" in result.output
    assert not (root / "bad").exists()


# Known ALL/AML genes of Golub et al. 1999 (../shared/data/README.md), as Hu6800 probes (test_data/golub_probes.tsv)
GOLUB_KNOWN = {"M27891_at": "CST3", "X95735_at": "zyxin", "M23197_at": "CD33", "M27783_s_at": "ELA2",
               "M84526_at": "CFD", "U50136_rna1_at": "LTC4S", "Y12670_at": "LEPR", "U22376_cds2_s_at": "MYB",
               "M31523_at": "TCF3", "M92287_at": "CCND3", "M31303_rna1_at": "STMN1"}


@pytest.mark.slow
def test_golub_known_genes_rank_near_the_top(tmp_path):
    from conftest import CONFIGS, TEST_DATA

    expr, labels = TEST_DATA / "golub_expression.tsv.gz", TEST_DATA / "golub_labels.tsv"
    _invoke("train", "--config", CONFIGS / "golub.yaml", "--expression", expr, "--labels", labels,
            "--out", tmp_path / "train", "--jobs", "2")
    _invoke("explain", "--model", tmp_path / "train", "--expression", expr, "--labels", labels,
            "--out", tmp_path / "explain", "--jobs", "2")
    ranking = pd.read_csv(tmp_path / "explain" / "gene_ranking.tsv", sep="\t").set_index("gene_id")
    top20 = set(ranking.index[:20])
    assert len(top20 & set(GOLUB_KNOWN)) >= 5
    assert ranking.loc["M27891_at", "rank"] <= 3 and ranking.loc["M27891_at", "top_k_frequency"] >= 0.9  # CST3
