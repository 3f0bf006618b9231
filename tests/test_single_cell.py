"""Single-cell scale (issue 18 item 4): sparse count simulator, stratified cell subsamples in train /
explain / select, determinism across --jobs, and the resource estimate against a measured run."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas.testing as pd_testing
import pytest
import yaml

from conftest import ROOT, one_line, run_cli, run_cli_inprocess

from iml_genomics.single_cell import simulate_single_cell, stratified_subsample


def test_simulator_is_sparse_seeded_and_plants_markers():
    X, labels, truth, pathways, genes = simulate_single_cell(3000, 300, n_types=3, n_markers=5, seed=4)
    again = simulate_single_cell(3000, 300, n_types=3, n_markers=5, seed=4)[0]
    assert (X != again).nnz == 0
    assert (X != simulate_single_cell(3000, 300, n_types=3, n_markers=5, seed=5)[0]).nnz > 0
    zeros = 1 - X.nnz / (3000 * 300)
    assert 0.85 < zeros < 0.95, zeros
    types = labels["cell_type"].to_numpy()
    assert sorted(set(types)) == ["type_1", "type_2", "type_3"] and len(truth) == 15
    dense = X.toarray()
    # each type's markers: mean count in that type / elsewhere near fold_change = 4 (10^3 cells per side)
    for k in range(3):
        markers = dense[:, k * 5:(k + 1) * 5]
        ratio = markers[types == f"type_{k + 1}"].mean() / markers[types != f"type_{k + 1}"].mean()
        assert 3.0 < ratio < 5.3, (k, ratio)
    # and a non-marker gene has no such difference
    rest = dense[:, 15:]
    ratio = rest[types == "type_1"].mean() / rest[types != "type_1"].mean()
    assert 0.9 < ratio < 1.1
    assert pathways["MARKERS_TYPE_2"] == genes[5:10]


def test_stratified_subsample_keeps_shares_seed_and_minimum():
    labels = np.array(["a"] * 900 + ["b"] * 90 + ["c"] * 10)
    idx = stratified_subsample(labels, 100, seed=1)
    assert idx.size == 100 and np.all(np.diff(idx) > 0)
    counts = {c: int((labels[idx] == c).sum()) for c in "abc"}
    assert counts == {"a": 90, "b": 9, "c": 1}
    assert np.array_equal(idx, stratified_subsample(labels, 100, seed=1))
    assert not np.array_equal(idx, stratified_subsample(labels, 100, seed=2))
    # a class smaller than its share still keeps min_per_class rows (CV folds need them)
    small = stratified_subsample(labels, 100, seed=1, min_per_class=5)
    assert int((labels[small] == "c").sum()) == 5
    assert stratified_subsample(labels, 1000, seed=1) is None
    reg = stratified_subsample(np.arange(50.0), 20, seed=0, classification=False)
    assert reg.size == 20 and len(set(reg)) == 20


@pytest.fixture(scope="module")
def tiny_sparse(tmp_path_factory):
    """1,200 cells x 120 genes of sparse counts, through `simulate` (the CLI)."""
    d = tmp_path_factory.mktemp("sc")
    run_cli_inprocess("simulate", "--family", "single-cell", "--n-samples", "1200", "--n-genes", "120",
                      "--n-classes", "3",
                      "--n-signal", "5", "--out", d / "data", "--prefix", "sc")
    cfg = yaml.safe_load((ROOT / "configs" / "single_cell.yaml").read_text())
    cfg["data"]["expression"] = str(d / "data" / "sc_expression.h5ad")
    cfg["report"]["gene_sets"] = str(d / "data" / "sc_pathways.gmt")
    cfg["report"]["n_permutations"] = 100
    cfg["model"]["params"] = {"n_estimators": 20, "max_depth": 4}
    cfg["cv"]["max_samples"] = 500
    cfg["explain"].update(max_samples=150, samples=["C001200"], interaction_top_k=5, interaction_max_samples=10)
    cfg["select"]["max_samples"] = 400
    cfg["report"]["max_samples"] = 600
    path = d / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return d, path


def _estimates(config, out, jobs):
    """(peak memory bytes over the steps, total seconds) of `run --dry-run`."""
    from iml_genomics.pipeline import parse_memory

    dry = run_cli_inprocess("run", config, "--out", out, "--dry-run", "--jobs", jobs).stdout
    rows = [line.split() for line in dry.splitlines()[1:]]
    return max(parse_memory(" ".join(r[1:3])) for r in rows), sum(float(r[3].rstrip("s")) for r in rows)


def _measure(config, out, jobs, *extra):
    pytest.importorskip("psutil")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_single_cell import measure

    got = measure([sys.executable, "-m", "iml_genomics", "run", str(config), "--out", str(out), "--jobs", jobs,
                   *map(str, extra)])
    assert got["exit_code"] == 0, got["stderr_tail"]
    return got


def test_subsampled_run_is_the_same_bytes_with_any_jobs_and_its_memory_within_2x_of_the_estimate(tiny_sparse):
    d, config = tiny_sparse
    est_peak, est_seconds = _estimates(config, d / "run1", "1")
    got = _measure(config, d / "run1", "1", "--write-h5ad", d / "run1.h5ad")
    run_cli_inprocess("run", config, "--out", d / "run2", "--jobs", "2", "--steps", "train,explain,select")
    files = ["train/cv_metrics.tsv", "train/oof_predictions.tsv", "train/model.skops", "explain/gene_ranking.tsv",
             "explain/attributions.parquet", "select/knockoff_selection.tsv"]
    for name in files:
        assert (d / "run1" / name).read_bytes() == (d / "run2" / name).read_bytes(), name
    train = json.loads((d / "run1" / "train" / "provenance.json").read_text())["cohort"]
    assert train["subsample"] == {"n_samples_total": 1200, "n_samples_used": 500, "max_samples": 500,
                                  "stratified_by": "cell_type"}
    oof = (d / "run1" / "train" / "oof_predictions.tsv").read_text().splitlines()
    assert len(oof) == 501
    explain = json.loads((d / "run1" / "explain" / "provenance.json").read_text())["cohort"]
    # explain.samples is kept on top of the 150 drawn cells
    assert explain["subsample"]["n_samples_used"] in (150, 151) and explain["n_samples"] == \
        explain["subsample"]["n_samples_used"]
    assert "C001200" in (d / "run1" / "explain" / "local_explanations.tsv").read_text()
    select = json.loads((d / "run1" / "select" / "provenance.json").read_text())["cohort"]
    assert select["subsample"]["n_samples_used"] == 400
    # --write-h5ad: the explained subsample's SHAP values are kept in uns (obsm would need a row per cell)
    import anndata as ad
    import pandas as pd

    import iml_genomics as ig

    attached = ad.read_h5ad(d / "run1.h5ad")
    assert "shap" not in attached.obsm
    pd_testing.assert_frame_equal(ig.get.attributions_df(attached).reset_index(drop=True),
                                  pd.read_parquet(d / "run1" / "explain" / "attributions.parquet"))
    report = json.loads((d / "run1" / "report" / "report_summary.json").read_text())
    assert report["subsample"]["n_samples_used"] in (600, 601)
    # the cheap proxy of the 100,000-cell calibration (docs/benchmarks.md): the tiny run's peak tree RSS
    # within 2x of the estimate
    assert est_peak / 2 <= got["peak_tree_rss_bytes"] <= est_peak * 2, (est_peak, got)
    # its time is not asserted here: a timed unit test fails on a machine faster or busier than the one the
    # estimator was calibrated on (a quiet CI machine ran this in 6.9 s against an estimate of 22 s); the time
    # estimate is checked by benchmarks/bench_single_cell.py --dry-run-too and the -m slow test below


def test_bad_single_cell_inputs_are_one_line(tiny_sparse, tmp_path):
    d, config = tiny_sparse
    cfg = yaml.safe_load(config.read_text())
    cfg["cv"]["max_samples"] = 1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    one_line(run_cli_inprocess("run", bad, "--out", tmp_path / "o", check=False), 2, "cv.max_samples")
    assert not (tmp_path / "o").exists()
    proc = run_cli_inprocess("simulate", "--family", "single-cell", "--n-genes", "20", "--n-classes", "5",
                             "--n-signal", "5",
                             "--out", tmp_path / "s", check=False)
    one_line(proc, 2, "--n-genes")
    assert not (tmp_path / "s").exists()


@pytest.mark.slow
def test_twenty_thousand_cells_through_run_within_2x_of_the_estimate(tmp_path):
    """configs/single_cell.yaml on 20,000 simulated cells x 2,000 genes: time and tree RSS vs --dry-run."""
    run_cli("simulate", "--family", "single-cell", "--n-samples", "20000", "--n-genes", "2000",
            "--out", tmp_path / "sc20k", "--prefix", "sc")
    cfg = yaml.safe_load((ROOT / "configs" / "single_cell.yaml").read_text())
    cfg["data"]["expression"] = str(tmp_path / "sc20k" / "sc_expression.h5ad")
    cfg["report"]["gene_sets"] = str(tmp_path / "sc20k" / "sc_pathways.gmt")
    config = tmp_path / "sc.yaml"
    config.write_text(yaml.safe_dump(cfg))
    est_peak, est_seconds = _estimates(config, tmp_path / "run", "2")
    got = _measure(config, tmp_path / "run", "2")
    assert est_peak / 2 <= got["peak_tree_rss_bytes"] <= est_peak * 2, (est_peak, got)
    assert est_seconds / 2 <= got["wall_seconds"] <= est_seconds * 2, (est_seconds, got)
    selected = (tmp_path / "run" / "select" / "knockoff_selection.tsv").read_text()
    assert "G00001" in selected


def test_univariate_effects_in_gene_blocks_equal_the_dense_result(monkeypatch):
    """The report's per-gene tests on a sparse matrix, densified a few genes at a time, are the same numbers."""
    import anndata as ad
    from scipy import sparse

    import iml_genomics.report.tables as tables

    import pandas as pd

    X, labels, _, _, genes = simulate_single_cell(900, 60, n_types=3, n_markers=4, seed=2)
    var = pd.DataFrame(index=pd.Index(genes))
    sparse_cohort = ad.AnnData(X=sparse.csr_matrix(X, dtype=np.float64), obs=labels, var=var)
    dense_cohort = ad.AnnData(X=X.toarray().astype(np.float64), obs=labels, var=var)
    monkeypatch.setattr(tables, "_BLOCK_VALUES", 900 * 7)  # blocks of 7 genes, the last one shorter
    for kw in ({"count_data": True, "cpm": True}, {"count_data": False}):
        blocked = tables.univariate_effects(sparse_cohort, label_column="cell_type", task="classification", **kw)
        whole = tables.univariate_effects(dense_cohort, label_column="cell_type", task="classification", **kw)
        pd_testing.assert_frame_equal(blocked, whole, check_exact=True)
    assert blocked.loc["G00001", "higher_in"] == "type_1"


def test_estimate_reads_the_stored_values_of_a_sparse_h5ad(tiny_sparse):
    import anndata as ad

    from conftest import TEST_DATA
    from iml_genomics.config import load_config
    from iml_genomics.pipeline import estimate_resources, peek_nnz

    d, config = tiny_sparse
    path = d / "data" / "sc_expression.h5ad"
    assert peek_nnz(path) == ad.read_h5ad(path).X.nnz
    assert peek_nnz(TEST_DATA / "demo_expression.h5ad") is None  # dense X
    assert peek_nnz(TEST_DATA / "demo_expression.csv.gz") is None
    cfg = load_config(ROOT / "configs" / "single_cell.yaml")
    sparse_est = estimate_resources(cfg, 100_000, 2_000, n_jobs=2, nnz=20_000_000)
    dense_est = estimate_resources(cfg, 100_000, 2_000, n_jobs=2)
    assert all(s.peak_memory_bytes < d_.peak_memory_bytes for s, d_ in zip(sparse_est, dense_est))
    # without report.max_samples the report's tests and null run on every cell, from blocks of the matrix: more
    # memory than on the subsample, but not the dense copies of the whole matrix (measured 1.9 GiB, issue 18)
    sub = estimate_resources(cfg, 100_000, 2_000, n_jobs=2, nnz=20_000_000)[3]
    cfg.report.max_samples = None
    full = estimate_resources(cfg, 100_000, 2_000, n_jobs=2, nnz=20_000_000)[3]
    assert sub.peak_memory_bytes < full.peak_memory_bytes < 2.5 * 2**30 and full.seconds > 2 * sub.seconds
