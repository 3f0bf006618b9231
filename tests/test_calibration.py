"""A small seeded calibration study: knockoffs keep the FDR, marginal tests and rankings do not."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import calibration as cal  # noqa: E402

Q = 0.1
HAVE_SELECT = importlib.util.find_spec("iml_genomics.select") is not None and \
    hasattr(importlib.import_module("iml_genomics.select"), "knockoff_select")


@pytest.fixture(scope="module")
def study():
    methods = ["marginal_bh", "lasso_path_top_k"] + (["knockoff_lasso"] if HAVE_SELECT else [])
    summary, raw, notes = cal.run_study(families=["gaussian", "pathway", "semi-synthetic"], methods=methods,
                                        replicates=4, q=Q, preset="small", seed=7, n_jobs=2)
    return summary.set_index(["family", "method"]), raw, notes


def test_table_shape_and_columns(study):
    summary, raw, notes = study
    assert notes == []
    assert (raw["error"] == "").all(), raw.loc[raw["error"] != "", "error"].tolist()
    assert list(summary.reset_index().columns) == [
        "family", "method", "error_claim", "n_replicates", "n_failed", "mean_fdp", "se_fdp", "mean_power",
        "se_power", "mean_n_selected", "stability_jaccard", "seconds_per_replicate", "fdr_verdict"]
    assert (summary["n_replicates"] == 4).all()
    # rankings are cut at k = number of true genes, so FDP = 1 - power exactly
    top = summary.xs("lasso_path_top_k", level="method")
    np.testing.assert_allclose(top["mean_fdp"], 1 - top["mean_power"])
    assert (top["fdr_verdict"] == "no error control (top-k)").all()


def test_marginal_bh_fails_conditional_truth_on_correlated_genes(study):
    summary, _, _ = study
    # block-mates of a planted gene are marginally associated but conditionally null
    row = summary.loc[("gaussian", "marginal_bh")]
    assert row["mean_fdp"] > 3 * Q
    assert row["fdr_verdict"].startswith("EXCEEDS")
    assert row["mean_power"] > 0.9


def test_planted_genes_are_found(study):
    summary, _, _ = study
    assert summary.loc[("gaussian", "lasso_path_top_k"), "mean_power"] > 0.6
    assert summary.loc[("pathway", "marginal_bh"), "mean_power"] > 0.9


@pytest.mark.skipif(not HAVE_SELECT, reason="iml_genomics.select.knockoff_select not available")
def test_knockoffs_keep_fdr_within_monte_carlo_error(study):
    summary, raw, _ = study
    for family in ("gaussian", "pathway", "semi-synthetic"):
        row = summary.loc[(family, "knockoff_lasso")]
        # 4 replicates only: a loose bound (the full study is in docs/benchmarks/calibration.md)
        assert row["mean_fdp"] <= Q + 3 * max(row["se_fdp"], 0.05), (family, row["mean_fdp"])
    assert summary.loc[("gaussian", "knockoff_lasso"), "mean_power"] > 0.3


def test_same_seed_same_results_for_any_jobs():
    kwargs = dict(families=["gaussian"], methods=["marginal_bh", "lasso_path_top_k"], replicates=2, q=Q,
                  preset="small", seed=3)
    _, raw1, _ = cal.run_study(n_jobs=1, **kwargs)
    _, raw2, _ = cal.run_study(n_jobs=2, **kwargs)
    cols = ["family", "method", "replicate", "seed", "fdp", "power", "selected"]
    assert raw1[cols].equals(raw2[cols])
