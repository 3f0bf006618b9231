"""Pseudobulk for select (issue 18 item 4): select.pseudobulk_by / pseudobulk_min_cells / pseudobulk_aggregate,
and the donors of `simulate --family single-cell --n-donors`."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import sparse

from conftest import one_line, run_cli

from iml_genomics.config import config_from_dict as load_config
from iml_genomics.errors import ConfigError, InputDataError
from iml_genomics.pseudobulk import first_non_count, group_sums, log_cpm, pseudobulk_cohort
from iml_genomics.single_cell import simulate_single_cell, write_single_cell


def _cfg(**select):
    return load_config({"seed": 0, "task": "classification",
                        "data": {"label_column": "cell_type", "positive_class": "type_1"},
                        "preprocess": {"transform": "log1p"}, "select": {"fdr": 0.1, **select}})


def _cells(n_cells=600, n_genes=40, n_donors=8, seed=0):
    X, labels, *_, gene_ids = simulate_single_cell(n_cells, n_genes, n_types=2, n_markers=5, n_donors=n_donors,
                                                    seed=seed)
    return ad.AnnData(X=X, obs=labels.copy(), var=pd.DataFrame(index=pd.Index(gene_ids, name="gene_id")))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """6,000 cells x 300 genes of 3 cell types (20 markers each) from 40 donors, written as the CLI reads it."""
    d = tmp_path_factory.mktemp("pb")
    written = write_single_cell(d, "sc", seed=1, n_cells=6000, n_genes=300, n_types=3, n_markers=20, n_donors=40)
    cfg = {"seed": 0, "task": "classification",
           "data": {"expression": written["h5ad"], "labels": written["labels"], "label_column": "cell_type",
                    "positive_class": "type_1"},
           "preprocess": {"transform": "log1p"},
           "select": {"fdr": 0.1, "pseudobulk_by": "donor"},
           "report": {"gene_sets": written["pathways"], "min_set_size": 5, "n_permutations": 100}}
    path = d / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return d, written, cfg, path


def test_group_sums_equal_a_dense_brute_force():
    rng = np.random.default_rng(3)
    X = sparse.random(500, 30, density=0.1, format="csr", random_state=4, dtype=np.float32)
    X.data = np.round(X.data * 20)
    codes = rng.integers(-1, 7, size=500)  # -1: a cell of no kept group
    dense = X.toarray().astype(np.float64)
    brute = np.array([dense[codes == g].sum(axis=0) for g in range(7)])
    np.testing.assert_array_equal(group_sums(X, codes, 7), brute)
    np.testing.assert_array_equal(group_sums(dense, codes, 7), brute)  # dense input alike
    np.testing.assert_allclose(np.expm1(log_cpm(brute)).sum(axis=1), 1e6)


def test_profiles_are_log_cpm_of_summed_raw_counts_and_small_groups_are_dropped():
    adata = _cells()
    # donor D001's type_1 cells shrink to 3: that group falls below pseudobulk_min_cells and is dropped
    d1 = np.flatnonzero((adata.obs["donor"] == "D001").to_numpy() & (adata.obs["cell_type"] == "type_1").to_numpy())
    adata = adata[np.setdiff1d(np.arange(adata.n_obs), d1[3:])].copy()
    pb, record = pseudobulk_cohort(adata, _cfg(pseudobulk_by="donor", pseudobulk_min_cells=10),
                                   task="classification", source="labels.tsv", expression="x.h5ad")
    dropped = [g for g in record["groups"] if not g["kept"]]
    assert [(g["group"], g["n_cells"]) for g in dropped] == [("D001|type_1", 3)]
    assert record["n_groups_dropped"] == 1 and record["n_groups_kept"] == pb.n_obs == 15
    assert record["n_cells_used"] == adata.n_obs - 3
    assert "D001|type_1" not in pb.obs_names and "D001|type_2" in pb.obs_names
    # the transform is log1p, but the profile sums the raw counts (not their logs), then log1p CPM
    dense = adata.X.toarray().astype(np.float64)
    for name in ("D002|type_1", "D005|type_2"):
        donor, cls = name.split("|")
        cells = ((adata.obs["donor"] == donor) & (adata.obs["cell_type"] == cls)).to_numpy()
        expected = np.log1p(1e6 * dense[cells].sum(axis=0) / dense[cells].sum())
        np.testing.assert_allclose(pb[name].X.ravel(), expected, rtol=1e-12)
        assert pb.obs.loc[name, "cell_type"] == cls and pb.obs.loc[name, "n_cells"] == cells.sum()


def test_regression_groups_by_donor_with_the_mean_response_and_mean_aggregate_averages():
    adata = _cells(n_donors=12)
    y = np.random.default_rng(0).normal(size=adata.n_obs)
    adata.obs["score"] = y
    cfg = load_config({"data": {"label_column": "score"}, "task": "regression",
                       "select": {"pseudobulk_by": "donor", "pseudobulk_aggregate": "mean"}})
    adata.X = adata.X.astype(np.float64) * 0.5  # non-integer: allowed with aggregate mean
    pb, record = pseudobulk_cohort(adata, cfg, task="regression", source="l", expression="x")
    assert record["grouped_by"] == ["donor"] and pb.n_obs == 12
    for donor in ("D001", "D012"):
        cells = (adata.obs["donor"] == donor).to_numpy()
        assert pb.obs.loc[donor, "score"] == pytest.approx(y[cells].mean())
        np.testing.assert_allclose(pb[donor].X.ravel(), adata.X[cells].toarray().mean(axis=0))


def test_non_counts_varying_covariates_and_too_few_groups_are_refused():
    adata = _cells()
    cfg = _cfg(pseudobulk_by="donor")
    logged = adata.copy()
    logged.X = logged.X.log1p()
    with pytest.raises(InputDataError, match="not a count.*pseudobulk_aggregate: mean"):
        pseudobulk_cohort(logged, cfg, task="classification", source="l", expression="x")
    negative = np.zeros((4, 3))
    negative[2, 1] = -1.0
    assert first_non_count(negative) == (2, 1, -1.0)
    assert first_non_count(sparse.csr_matrix(negative)) == (2, 1, -1.0)
    assert first_non_count(np.ones((3, 3))) is None
    # a covariate constant within each donor is carried; one that varies within a group is refused
    adata.obs["sex"] = np.where(adata.obs["donor"].isin(["D001", "D002", "D003"]), "f", "m")
    adata.obs["depth"] = np.arange(adata.n_obs) % 2
    carried = load_config({"data": {"label_column": "cell_type", "covariates": ["sex"]},
                           "select": {"pseudobulk_by": "donor"}})
    pb, _ = pseudobulk_cohort(adata, carried, task="classification", source="l", expression="x")
    assert pb.obs.loc["D001|type_1", "sex"] == "f" and pb.obs.loc["D004|type_2", "sex"] == "m"
    varies = load_config({"data": {"label_column": "cell_type", "covariates": ["depth"]},
                          "select": {"pseudobulk_by": "donor"}})
    with pytest.raises(InputDataError, match="covariate 'depth'.*varies within the pseudobulk group 'D001'"):
        pseudobulk_cohort(adata, varies, task="classification", source="l", expression="x")
    # 8 donors x 2 classes; min_cells above most groups leaves fewer than 5 per class
    with pytest.raises(InputDataError, match="select.pseudobulk_min_cells = 45.*at least 5 per class"):
        pseudobulk_cohort(adata, _cfg(pseudobulk_by="donor", pseudobulk_min_cells=45), task="classification",
                          source="l", expression="x")
    with pytest.raises(InputDataError, match=r"column 'patient' \(select.pseudobulk_by\) not found"):
        pseudobulk_cohort(adata, _cfg(pseudobulk_by="patient"), task="classification", source="l", expression="x")
    with pytest.raises(ConfigError, match="select.pseudobulk_by and select.max_samples"):
        _cfg(pseudobulk_by="donor", max_samples=100)


def test_simulator_donors_leave_the_cohort_without_donors_unchanged():
    X0, labels0, *_ = simulate_single_cell(300, 30, n_types=2, n_markers=3, seed=5)
    X1, labels1, *_ = simulate_single_cell(300, 30, n_types=2, n_markers=3, n_donors=0, seed=5)
    assert (X0 != X1).nnz == 0 and list(labels0.columns) == ["cell_type"]
    X2, labels2, *_ = simulate_single_cell(300, 30, n_types=2, n_markers=3, n_donors=4, seed=5)
    assert labels2["cell_type"].equals(labels0["cell_type"]) and sorted(labels2["donor"].unique()) == \
        ["D001", "D002", "D003", "D004"]
    assert (X2 != X0).nnz > 0  # the donor effect changes the counts


def test_select_on_pseudobulk_finds_markers_and_the_report_runs(cohort, tmp_path):
    d, written, cfg, path = cohort
    run_cli("run", path, "--out", tmp_path / "r", "--steps", "select,report", "--jobs", "1")
    sel = pd.read_csv(tmp_path / "r" / "select" / "knockoff_selection.tsv", sep="\t")
    truth = set(pd.read_csv(written["truth"], sep="\t")["gene_id"])  # any type's marker differs type_1 / rest
    picked = set(sel.loc[sel["selected"], "gene_id"])
    assert len(picked) >= 8 and len(picked - truth) <= 1, picked
    assert {"gene_id", "w", "selected", "rank", "tested"} <= set(sel.columns) and len(sel) == 300
    summary = json.loads((tmp_path / "r" / "select" / "select_summary.json").read_text())
    pb = summary["pseudobulk"]
    assert pb["column"] == "donor" and pb["n_groups_kept"] == 80 and pb["n_cells_used"] == 6000
    prov = json.loads((tmp_path / "r" / "select" / "provenance.json").read_text())
    assert prov["cohort"]["pseudobulk"]["n_groups_kept"] == 80 and prov["cohort"]["n_samples"] == 80
    assert (tmp_path / "r" / "report" / "report.html").stat().st_size > 0


def test_cli_refusals_are_one_line_naming_the_key(cohort, tmp_path):
    d, written, cfg, _ = cohort
    bad = {**cfg, "select": {**cfg["select"], "pseudobulk_by": "patient"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(bad))
    one_line(run_cli("select", "--config", tmp_path / "c.yaml", "--expression", written["h5ad"], "--labels",
                     written["labels"], "--out", tmp_path / "o", check=False), 2, "select.pseudobulk_by", "patient")
    assert not (tmp_path / "o").exists()
    both = {**cfg, "select": {**cfg["select"], "max_samples": 500}}
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(both))
    one_line(run_cli("select", "--config", tmp_path / "b.yaml", "--expression", written["h5ad"], "--labels",
                     written["labels"], "--out", tmp_path / "o", check=False), 2, "select.max_samples")
    assert not (tmp_path / "o").exists()


def _null_fdp(seed: int, q: float) -> tuple[float, int]:
    """(FDP, number selected) of select on pseudobulk where a donor-level condition shifts 10 genes and leaves 190 null."""
    from iml_genomics.steps.select import select

    X, labels, *_, gene_ids = simulate_single_cell(4000, 200, n_types=2, n_markers=5, n_donors=40, donor_sd=0.3,
                                                    seed=seed)
    rng = np.random.default_rng([seed, 7])
    case = rng.permutation(np.repeat([0, 1], 20))  # donor-level condition, independent of the cell types
    labels["condition"] = np.where(case[labels["donor"].str[1:].astype(int) - 1] == 1, "case", "control")
    # the condition raises 10 genes (after the cell-type markers) by 1.8x in case donors' cells
    dense = X.toarray()  # test data of 4,000 x 200: dense is fine here
    case_rows = labels["condition"].to_numpy() == "case"
    dense[np.ix_(case_rows, np.arange(10, 20))] = np.round(dense[np.ix_(case_rows, np.arange(10, 20))] * 1.8)
    X = sparse.csr_matrix(dense)
    adata = ad.AnnData(X=X, obs=labels.copy(), var=pd.DataFrame(index=pd.Index(gene_ids, name="gene_id")))
    cfg = load_config({"seed": seed, "task": "classification", "n_jobs": 1,
                       "data": {"label_column": "condition", "positive_class": "case"},
                       "preprocess": {"transform": "log1p"},
                       "select": {"fdr": q, "pseudobulk_by": "donor"}})
    res = select(adata, cfg)
    picked = set(res.selection.loc[res.selection["selected"], "gene_id"])
    false = picked - set(gene_ids[10:20])
    return len(false) / max(1, len(picked)), len(picked)


@pytest.mark.slow
def test_fdr_holds_on_pseudobulk_for_the_null_genes():
    q = 0.2
    fdps, sizes = zip(*(_null_fdp(seed, q) for seed in range(40)))
    mean, se = float(np.mean(fdps)), float(np.std(fdps) / np.sqrt(len(fdps)))
    assert mean <= q + 2 * se, (mean, se, sizes)
    assert np.mean(sizes) > 2  # the 10 condition genes are found: the test has power, it is not vacuous
