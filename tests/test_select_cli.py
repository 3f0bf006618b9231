"""The real `iml-genomics select` command on the bundled demo data."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEMO = ["--config", str(ROOT / "configs/demo.yaml"), "--expression", str(ROOT / "test_data/demo_expression.csv.gz"),
        "--labels", str(ROOT / "test_data/demo_labels.tsv"), "--label-column", "condition"]


def _run(args, out):
    return subprocess.run([sys.executable, "-m", "iml_genomics", "select", *DEMO, "--out", str(out), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("select")
    procs = {jobs: subprocess.Popen([sys.executable, "-m", "iml_genomics", "select", *DEMO, "--out",
                                     str(base / f"jobs{jobs}"), "--fdr", "0.3", "--draws", "2", "--jobs", str(jobs)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
             for jobs in (1, 2)}  # both at once: the fixture's wall time is one run, not two
    for proc in procs.values():
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    return {jobs: base / f"jobs{jobs}" for jobs in procs}


def test_outputs_and_contract(runs):
    out = runs[1]
    assert {p.name for p in out.iterdir() if not p.name.startswith(".")} == {"knockoff_selection.tsv", "select_summary.json", "provenance.json"}
    table = pd.read_csv(out / "knockoff_selection.tsv", sep="\t", keep_default_na=False)
    assert list(table.columns) == ["gene_id", "w", "selected", "selection_frequency", "e_value", "rank", "group",
                                   "tested", "p_value", "q_value"]
    assert (table["p_value"] == "NA").all() and (table["q_value"] == "NA").all()  # dCRT columns, NA for knockoffs
    assert len(table) == 400 and list(table["rank"]) == list(range(1, 401)) and table["tested"].all()
    summary = json.loads((out / "select_summary.json").read_text())
    assert {"target_fdr", "offset", "threshold", "n_selected", "covariance_model", "factor_rank", "s_method",
            "statistic", "n_draws", "aggregation", "diagnostics", "notes"} <= set(summary)
    assert set(summary["diagnostics"]) == {"mean_abs_corr_x_xk", "min_eig_2sigma_minus_s", "swap_check",
                                           "exchangeability", "fraction_negative_w"}
    assert summary["diagnostics"]["exchangeability"]["passed"] is True
    assert summary["method"] == "knockoffs"
    assert summary["target_fdr"] == 0.3 and summary["n_draws"] == 2 and summary["aggregation"] == "ebh"
    assert summary["n_selected"] == int(table["selected"].sum())
    truth = set(pd.read_csv(ROOT / "test_data/demo_truth.tsv", sep="\t")["gene_id"])
    # planted genes rank near the top of the W / e-value ordering
    top = set(table["gene_id"].head(20))
    assert len(top & truth) >= 5
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["step"] == "select"


def test_jobs_1_and_2_byte_identical(runs):
    for name in ("knockoff_selection.tsv", "select_summary.json"):
        assert (runs[1] / name).read_bytes() == (runs[2] / name).read_bytes(), name


def test_missing_group_file_is_one_line_error(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    raw = yaml.safe_load((ROOT / "configs/demo.yaml").read_text())
    raw["select"]["groups"] = "file"
    cfg.write_text(yaml.safe_dump(raw))
    proc = subprocess.run([sys.executable, "-m", "iml_genomics", "select", "--config", str(cfg), *DEMO[2:],
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 2
    assert "select.group_file" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_genes_removed_by_preprocessing_are_listed_as_not_tested(tmp_path):
    cfg = yaml.safe_load((ROOT / "configs/demo.yaml").read_text())
    cfg["preprocess"]["top_k_variable"] = 300
    cfg_path = tmp_path / "top300.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    args = [a if a != str(ROOT / "configs/demo.yaml") else str(cfg_path) for a in DEMO]
    proc = subprocess.run([sys.executable, "-m", "iml_genomics", "select", *args, "--out", str(out), "--jobs", "1"],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(out / "knockoff_selection.tsv", sep="\t")
    assert len(table) == 400 and table["gene_id"].is_unique and list(table["rank"]) == list(range(1, 401))
    tested, untested = table[table["tested"]], table[~table["tested"]]
    assert len(tested) == 300 and list(tested.index) == list(range(300))  # tested genes come first
    assert untested["w"].isna().all() and untested["e_value"].isna().all() and not untested["selected"].any()
    assert list(untested["gene_id"]) == sorted(untested["gene_id"])
    summary = json.loads((out / "select_summary.json").read_text())
    assert summary["n_genes_tested"] == 300 and summary["n_genes_not_tested"] == 100


def test_sparse_h5ad_input(tmp_path):
    """A sparse .h5ad runs through select's default preprocessing (standardisation centres)."""
    import anndata as ad
    from scipy import sparse

    from iml_genomics.simulate import simulate_gaussian

    cohort = simulate_gaussian(120, 60, n_signal=12, effect_size=1.5, rho=0.2, seed=3)
    X = cohort.expression.to_numpy()
    X[np.abs(X) < 0.5] = 0.0
    adata = ad.AnnData(X=sparse.csr_matrix(X), obs=cohort.labels.astype(str),
                       var=pd.DataFrame(index=cohort.expression.columns))
    path = tmp_path / "sparse.h5ad"
    adata.write_h5ad(path)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "iml_genomics", "select", "--expression", str(path),
                           "--label-column", "condition", "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(out / "knockoff_selection.tsv", sep="\t")
    assert len(table) == 60 and table["gene_id"].is_unique
