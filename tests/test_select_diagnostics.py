"""The neighbour exchangeability check fails where knockoffs are wrong and passes where they are right;
`select --strict` refuses; groups: sample-correlation clusters, user names kept, counted once in the report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from iml_genomics.select import knockoff_select
from iml_genomics.select.covariance import fit_covariance
from iml_genomics.select.diagnostics import exchangeability_check, nearest_neighbours
from iml_genomics.select.groups import cluster_genes
from iml_genomics.simulate import ar1_correlated_normal, block_correlated_normal

ROOT = Path(__file__).resolve().parents[1]


def ar1(n: int, p: int, rho: float, seed: int) -> np.ndarray:
    """AR(1) genes: corr(X_j, X_k) = rho^|j - k| (each gene's neighbours correlate at rho)."""
    return ar1_correlated_normal(n, p, rho=rho, rng=np.random.default_rng(seed))


def blocks(n: int, n_blocks: int, size: int, rho: float, seed: int) -> np.ndarray:
    """Equicorrelated blocks (within-block correlation rho, independent blocks)."""
    return block_correlated_normal(n, n_blocks * size, block_size=size, rho=rho, rng=np.random.default_rng(seed))


def factor_data(n: int, p: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, k)) @ (rng.standard_normal((p, k)) * 0.6).T + rng.standard_normal((n, p))


# -- the check ------------------------------------------------------------------------------------------------------

def test_nearest_neighbours_in_chunks_equal_the_full_correlation_matrix():
    X = blocks(80, 12, 5, 0.5, 0) + 0.3 * ar1(80, 60, 0.7, 1)
    Z = (X - X.mean(0)) / X.std(0)
    genes = np.array([0, 3, 17, 29, 44, 59])
    got = nearest_neighbours(Z, genes, 4, chunk_size=4)  # chunks of 4 cut the query list in two
    C = np.abs(Z.T @ Z)
    np.fill_diagonal(C, -1)
    for row, g in zip(got, genes):
        assert list(row) == list(np.argsort(-C[g], kind="stable")[:4])


def test_fails_on_the_factor_model_with_local_correlation(seed=0):
    """Issue 11's case: AR(1) rho = 0.8, p = 3,000, n = 300 under the factor model (FDR 0.22 there).

    The old random-pair swap check passes these; the neighbour check must not.
    """
    X = ar1(300, 3000, 0.8, seed)
    res = exchangeability_check(X, covariance="factor", s_method="mvr", random_state=seed)
    assert res["mode"] == "heldout" and res["n_train"] == 225 and res["n_eval"] == 75
    assert res["n_pairs"] == 1000 * 5
    assert not res["passed"]
    assert res["fraction_exceeding"] > 0.5
    assert res["rmse_corr_xx_vs_xkx"] > 5 * res["noise_rmse"]
    worst = res["worst_pairs"][0]
    # the knockoff of a gene has lost its neighbour's correlation
    assert abs(worst["corr_x_x"]) > 0.6
    assert max(abs(worst["corr_x_x"] - worst["corr_xk_x"]), abs(worst["corr_x_x"] - worst["corr_xk_xk"])) > 0.5
    assert len(res["worst_pairs"]) == 10 and {"gene_j", "gene_k", "corr_x_x", "corr_xk_x", "corr_xk_xk",
                                                "z"} == set(worst)


def test_passes_on_correct_dense_models(seed=0):
    """Dense Ledoit-Wolf where its shrinkage is small: AR(1) rho = 0.8 and a block design.

    (At n = 300, p = 200 on this AR(1) design knockoff+ gave mean FDP 0.107 +- 0.024 over 20 replicates at
    q = 0.1, and the check passes; the equicorrelated S keeps this test fast, the slow test uses MVR.)"""
    for X in (ar1(600, 300, 0.8, seed), blocks(600, 30, 10, 0.6, seed)):
        res = exchangeability_check(X, covariance="ledoit_wolf", s_method="equicorrelated", random_state=seed)
        assert res["mode"] == "heldout" and res["covariance_model"] == "ledoit_wolf"
        assert res["passed"], res
        assert res["fraction_exceeding"] < 0.02


def test_passes_on_the_factor_model_where_the_genes_are_low_rank():
    X = factor_data(300, 3000, 3, 0)
    res = exchangeability_check(X, covariance="factor", s_method="mvr", random_state=0)
    assert res["factor_rank"] == 3
    assert res["passed"], res


def test_passes_on_a_covariance_kind_that_keeps_local_correlation():
    """Issue 11 asks for it: the same design that fails the factor model passes a model built for local structure
    (the ``factor_blocks`` kind, built in parallel; skipped until this tree has it)."""
    X = ar1(300, 3000, 0.8, 0)
    try:
        fit_covariance(X[:, :50], method="factor_blocks")
    except (ValueError, TypeError) as exc:
        pytest.skip(f"no factor_blocks covariance kind in this tree ({exc})")
    res = exchangeability_check(X, covariance="factor_blocks", s_method="mvr", random_state=0)
    assert res["passed"], {k: v for k, v in res.items() if k != "worst_pairs"}


def test_flags_ledoit_wolf_when_its_shrinkage_erases_the_neighbours():
    """n = 300, p = 1,000, AR(1) rho = 0.8: Ledoit-Wolf shrinks by ~0.55 and models corr(X_j, X_j+1) as 0.36.

    Knockoff+ there gave mean FDP ~0.2 at q = 0.1 (docs/select.md), so the check must fail.
    """
    X = ar1(300, 1000, 0.8, 0)
    assert fit_covariance(X, method="ledoit_wolf").shrinkage > 0.4
    res = exchangeability_check(X, covariance="ledoit_wolf", s_method="equicorrelated", random_state=0)
    assert not res["passed"] and res["fraction_exceeding"] > 0.3


def test_in_sample_mode_below_60_samples():
    ok = exchangeability_check(ar1(50, 20, 0.8, 0), covariance="ledoit_wolf", random_state=0)
    assert ok["mode"] == "in_sample" and ok["n_train"] == ok["n_eval"] == 50
    assert ok["z_threshold"] == 2.0  # tighter than held out: the model has seen these samples' noise
    assert ok["passed"], ok
    bad = exchangeability_check(ar1(50, 300, 0.8, 0), covariance="factor", factor_rank=1, random_state=0)
    assert bad["mode"] == "in_sample" and not bad["passed"] and bad["fraction_exceeding"] > 0.5


def test_too_few_samples_is_skipped_not_passed():
    res = exchangeability_check(np.random.default_rng(0).standard_normal((8, 30)), covariance="ledoit_wolf")
    assert "skipped" in res and "passed" not in res


def test_knockoff_select_reports_it_next_to_the_old_swap_check():
    X = blocks(200, 10, 5, 0.5, 0)
    y = X[:, 0] + X[:, 10] + np.random.default_rng(0).standard_normal(200)
    res = knockoff_select(X, y, [f"g{j}" for j in range(50)], task="regression", random_state=0)
    diag = res.summary["diagnostics"]
    assert set(diag["swap_check"]) >= {"rmse_corr_xx_vs_x_xk", "rmse_corr_xx_vs_xk_xk", "noise_rmse", "passed"}
    ex = diag["exchangeability"]
    assert ex["passed"] and ex["n_pairs"] == 50 * 5 and ex["worst_pairs"][0]["gene_j"].startswith("g")


@pytest.mark.slow
def test_pass_and_fail_rates_over_replicates():
    """20 seeded replicates each: the correct models pass every time, the factor model at rho = 0.8 never does."""
    passed_ok = [exchangeability_check(X, covariance="ledoit_wolf", random_state=s)["passed"]
                 for s in range(20) for X in (ar1(600, 300, 0.8, 100 + s), blocks(600, 30, 10, 0.6, 100 + s))]
    passed_bad = [exchangeability_check(ar1(300, 3000, 0.8, 200 + s), covariance="factor",
                                        random_state=s)["passed"] for s in range(20)]
    assert all(passed_ok) and not any(passed_bad)


# -- groups ---------------------------------------------------------------------------------------------------------

def test_clusters_use_the_sample_correlation():
    """50 real blocks of 10 genes (within-block corr 0.6), n = 200: Ledoit-Wolf shrinks the within-block
    correlation below the 0.5 cut, so clustering the model correlation (the old behaviour) splits the blocks;
    clustering the sample correlation, as docs/config.md says, recovers exactly the 50 blocks."""
    X = blocks(200, 50, 10, 0.6, 3)
    truth = np.repeat(np.arange(50), 10)
    old = cluster_genes(fit_covariance(X, method="ledoit_wolf").dense(), 0.5)
    assert old.max() + 1 > 100  # the old behaviour: many more clusters than blocks
    y = X[:, 0] + X[:, 100] + np.random.default_rng(0).standard_normal(200)
    res = knockoff_select(X, y, [f"g{j:03d}" for j in range(500)], task="regression", groups="clusters",
                          cluster_correlation=0.5, random_state=0, check_swap=False)
    assert res.summary["n_groups"] == 50
    t = res.table.set_index("gene_id").loc[[f"g{j:03d}" for j in range(500)]]
    assert pd.crosstab(t["group"], truth).gt(0).sum(axis=1).eq(1).all()  # every cluster is inside one block


def test_user_group_names_are_kept():
    X = blocks(150, 6, 5, 0.5, 0)
    y = X[:, 0] + np.random.default_rng(1).standard_normal(150)
    names = [f"module_{'ABCDE'[j // 6]}" if j < 24 else None for j in range(30)]  # 6 genes alone
    res = knockoff_select(X, y, [f"g{j:02d}" for j in range(30)], task="regression", groups=names,
                          random_state=0, check_swap=False)
    t = res.table.set_index("gene_id")
    assert res.summary["n_groups"] == 4 + 6
    assert t.loc["g00", "group"] == "module_A" and t.loc["g23", "group"] == "module_D"
    assert (t.loc[[f"g{j}" for j in range(24, 30)], "group"] == "").all()


# -- the real CLI ---------------------------------------------------------------------------------------------------

def _write_cohort(tmp_path: Path, X: np.ndarray, seed: int = 0) -> tuple[Path, Path]:
    genes = [f"G{j:04d}" for j in range(X.shape[1])]
    samples = [f"S{i:04d}" for i in range(X.shape[0])]
    y = X[:, 5] + X[:, 40] + np.random.default_rng(seed).standard_normal(X.shape[0])
    expr, labels = tmp_path / "expr.tsv", tmp_path / "labels.tsv"
    pd.DataFrame(X, index=pd.Index(samples, name="sample_id"), columns=genes).to_csv(expr, sep="\t")
    pd.DataFrame({"sample_id": samples, "outcome": y}).to_csv(labels, sep="\t", index=False)
    return expr, labels


def _select(tmp_path: Path, expr: Path, labels: Path, out: Path, config: dict, *args: str):
    import yaml

    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    return subprocess.run([sys.executable, "-m", "iml_genomics", "select", "--config", str(cfg), "--expression",
                           str(expr), "--labels", str(labels), "--label-column", "outcome", "--out", str(out),
                           "--jobs", "1", *args], cwd=ROOT, capture_output=True, text=True)


def test_cli_warns_and_strict_refuses(tmp_path):
    """A rank-2 factor model on AR(1) rho = 0.8 genes: a warning line without --strict; exit 3, nothing written,
    one line with it, whether asked for by the flag or by the config key select.strict."""
    expr, labels = _write_cohort(tmp_path, ar1(150, 120, 0.8, 0))
    config = {"seed": 0, "task": "regression", "select": {"covariance": "factor", "factor_rank": 2}}
    out = tmp_path / "lenient"
    proc = _select(tmp_path, expr, labels, out, config)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "exchangeability" in warnings[0]
    summary = json.loads((out / "select_summary.json").read_text())
    assert summary["diagnostics"]["exchangeability"]["passed"] is False

    for args, cfg in ((("--strict",), config), ((), {**config, "select": {**config["select"], "strict": True}})):
        out = tmp_path / f"strict{len(args)}"
        proc = _select(tmp_path, expr, labels, out, cfg, *args)
        assert proc.returncode == 3, proc.stderr
        # one error line; the timestamped progress lines of the finished draws before it are not errors
        errors = [line for line in proc.stderr.strip().splitlines() if " iml-genomics INFO " not in line]
        assert len(errors) == 1 and "Traceback" not in proc.stderr
        assert "exchangeability" in proc.stderr and "--strict" in proc.stderr
        assert not out.exists()


def test_cli_strict_config_key_passes_a_correct_model_and_keeps_group_file_names(tmp_path):
    expr, labels = _write_cohort(tmp_path, blocks(200, 12, 5, 0.5, 1))
    group_file = tmp_path / "groups.tsv"
    pd.DataFrame({"gene_id": [f"G{j:04d}" for j in range(50)],
                  "group": [f"pathway {j // 10}" for j in range(50)]}).to_csv(group_file, sep="\t", index=False)
    config = {"seed": 0, "task": "regression",
              "select": {"groups": "file", "group_file": str(group_file), "strict": True, "fdr": 0.5}}
    out = tmp_path / "out"
    proc = _select(tmp_path, expr, labels, out, config)
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr
    t = pd.read_csv(out / "knockoff_selection.tsv", sep="\t", keep_default_na=False).set_index("gene_id")
    assert t.loc["G0000", "group"] == "pathway 0" and t.loc["G0049", "group"] == "pathway 4"
    assert (t.loc[[f"G{j:04d}" for j in range(50, 60)], "group"] == "NA").all()  # not in the file: alone
    summary = json.loads((out / "select_summary.json").read_text())
    assert summary["n_groups"] == 5 + 10 and summary["diagnostics"]["exchangeability"]["passed"]
    selected_groups = sorted(set(t.loc[t["selected"].astype(str) == "True", "group"]))
    assert selected_groups == ["pathway 0", "pathway 2", "pathway 4"]  # 30 genes, 3 discoveries

    # the report over this selection counts the 3 selected groups, not 30 genes
    gmt = tmp_path / "sets.gmt"
    gmt.write_text("P0_AND_MORE\tx\t" + "\t".join([f"G{j:04d}" for j in range(10)] + ["G0050", "G0051"]) + "\n"
                   "SINGLES\tx\t" + "\t".join(f"G{j:04d}" for j in range(50, 60)) + "\n")
    report = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "iml_genomics", "report", "--inputs", str(out), "--gene-sets",
                           str(gmt), "--min-set-size", "5", "--permutations", "20", "--out", str(report)],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    gsum = json.loads((report / "report_summary.json").read_text())["gene_sets"]
    assert gsum["ora_unit"] == "group" and gsum["n_query_units"] == 3 and gsum["n_background_units"] == 15
    sets = pd.read_csv(report / "gene_sets.tsv", sep="\t").set_index("gene_set")
    assert sets.loc["P0_AND_MORE", "n_query"] == 3 and sets.loc["P0_AND_MORE", "n_overlap"] == 1
    assert sets.loc["SINGLES", "n_overlap"] == 0
    assert "counted in groups: 3 selected of 15" in (report / "report.html").read_text()


# -- the report counts a selected group once -----------------------------------------------------------------------

def test_report_counts_a_selected_group_once():
    from iml_genomics.genesets import GeneSetCollection
    from iml_genomics.report.inputs import ReportInputs
    from iml_genomics.report.tables import analyse_gene_sets

    genes = [f"GENE{j:03d}" for j in range(200)]
    # 20 groups of 10 genes; one selected group whose 10 members all sit in SET_A
    ko = pd.DataFrame({"gene_id": genes, "w": 0.0, "selected": [j < 10 for j in range(200)],
                       "selection_frequency": 0.0, "e_value": 0.0, "rank": np.arange(1, 201),
                       "group": [f"module_{j // 10}" for j in range(200)], "tested": True})
    sets = {"SET_A": genes[:10] + genes[100:110], "SET_B": genes[50:70]}
    collection = GeneSetCollection(sets=sets, descriptions={k: "" for k in sets}, source="test.gmt")
    inputs = ReportInputs(knockoffs=ko)
    res = analyse_gene_sets(inputs, collection, gene_map=None, univariate=None, min_size=5, max_size=500,
                            top_k=50, n_permutations=10, ranking_metric="knockoff_w", q_threshold=0.1,
                            random_state=0, gene_ids=genes)
    row = res.table.set_index("gene_set").loc["SET_A"]
    # one selected unit of 20 (not 10 genes of 200): p = P(X >= 1) with N = 20, K = 2, n = 1 = 0.1
    assert res.summary["ora_unit"] == "group" and res.summary["n_query_units"] == 1
    assert row["n_query"] == 1 and row["n_overlap"] == 1
    assert row["p_value"] == pytest.approx(0.1)
    assert row["overlap_genes"] == ";".join(genes[:10])
    # counted gene by gene the same selection looks like 10 discoveries with p ~ 1e-13
    from scipy.stats import hypergeom

    assert hypergeom.sf(9, 200, 20, 10) < 1e-10


def test_swap_check_leaves_out_pairs_with_a_gene_constant_on_the_held_out_samples():
    """Single-cell-like genes (non-zero in two cells) gave NaN RMSEs and a silent 'passed: False'."""
    from iml_genomics.select.filter import swap_check

    rng = np.random.default_rng(3)
    n, p = 120, 40
    X = rng.normal(size=(n, p))
    X[:, :10] = 0.0
    X[:2, :10] = 1.0  # ten genes expressed in two samples only: constant on most held-out splits
    result = swap_check(X, covariance="ledoit_wolf", factor_rank=None, s_method="equicorrelated",
                        random_state=0, n_pairs=500)
    assert np.isfinite([result["rmse_corr_xx_vs_x_xk"], result["rmse_corr_xx_vs_xk_xk"],
                        result["noise_rmse"]]).all()
    assert result["n_pairs_undefined"] > 0 and result["n_pairs"] + result["n_pairs_undefined"] == 500
    assert result["passed"] is True  # independent genes under a well-specified model
