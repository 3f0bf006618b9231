"""`run` as a plain function over the steps (issue 13, item 4).

`run` reads the cohort once, hashes each input file once, hands the fitted model to explain in memory, and
reads the cohort not at all when every step is up to date. The reads and hashes are counted from the debug
lines `load_cohort PATH` and `sha256 PATH` (`--verbose`), the same lines a user sees, so nothing is patched.
A skipped train with a re-run explain reads the model back from disk and writes the bytes the `explain`
subcommand writes from that model.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, TEST_DATA

sys.path.insert(0, str(ROOT / "benchmarks"))
import compare_outputs as compare  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def fast_config(directory: Path, name: str = "config.yaml", **explain) -> Path:
    """configs/demo.yaml with absolute data paths and light settings (every step still runs)."""
    cfg = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    cfg["data"]["expression"] = str(TEST_DATA / "demo_expression.csv.gz")
    cfg["data"]["labels"] = str(TEST_DATA / "demo_labels.tsv")
    cfg["report"]["gene_sets"] = str(TEST_DATA / "demo_pathways.gmt")
    cfg["report"]["n_permutations"] = 50
    cfg["explain"]["permutation_repeats"] = 1
    cfg["explain"].update(explain)
    cfg["cv"]["n_splits"] = 3
    cfg["n_jobs"] = 1
    path = directory / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_verbose(config: Path, out: Path, *more: str) -> str:
    """`iml-genomics run --verbose`; its stderr (the debug lines included)."""
    proc = subprocess.run([sys.executable, "-m", "iml_genomics", "run", str(config), "--out", str(out),
                           "--verbose", *more], cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stderr


def counts(stderr: str, what: str) -> Counter:
    """Resolved path -> how many `what PATH` debug lines name it."""
    found = re.findall(rf"DEBUG {what} (\S+)$", stderr, flags=re.M)
    return Counter(os.path.realpath(p) for p in found)


def inputs_of(config: Path) -> list[str]:
    return [os.path.realpath(p) for p in (config, TEST_DATA / "demo_expression.csv.gz",
                                          TEST_DATA / "demo_labels.tsv", TEST_DATA / "demo_pathways.gmt")]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("runfn")
    config = fast_config(base)
    out = base / "out"
    return config, out, run_verbose(config, out)


def test_a_full_run_reads_the_cohort_once_and_hashes_each_input_once(first_run):
    config, out, err = first_run
    assert sum(counts(err, "load_cohort").values()) == 1, err
    hashed = counts(err, "sha256")
    for path in inputs_of(config):
        assert hashed[path] == 1, (path, hashed)
    assert re.search(r"^run: train, explain, select, report complete in ", err, flags=re.M), err
    for step in ("train", "explain", "select", "report"):
        assert re.search(rf"^{step}: .*; wrote {re.escape(str(out / step))}$", err, flags=re.M), (step, err)


def test_an_up_to_date_run_does_not_read_the_cohort(first_run):
    config, out, _ = first_run
    err = run_verbose(config, out)
    for step in ("train", "explain", "select", "report"):
        assert f"{step}: up to date, skipped" in err, err
    assert sum(counts(err, "load_cohort").values()) == 0, err
    hashed = counts(err, "sha256")
    for path in inputs_of(config):
        assert hashed[path] == 1, (path, hashed)


def test_skipped_train_and_rerun_explain_write_what_the_subcommand_writes(first_run, tmp_path):
    config, out, _ = first_run
    run_dir = tmp_path / "run"
    shutil.copytree(out, run_dir)
    changed = fast_config(tmp_path, "changed.yaml", top_k=7)  # an explain key: train and select stay
    err = run_verbose(changed, run_dir)
    assert "train: up to date, skipped" in err and "select: up to date, skipped" in err, err
    assert "explain: running" in err and "report: running" in err, err
    assert sum(counts(err, "load_cohort").values()) == 1, err
    # the explain subcommand on the same (skipped) model, into a copy with the same layout
    by_steps = tmp_path / "by_steps"
    shutil.copytree(run_dir / "train", by_steps / "train")
    proc = subprocess.run([sys.executable, "-m", "iml_genomics", "explain", "--config", str(changed),
                           "--expression", str(TEST_DATA / "demo_expression.csv.gz"),
                           "--labels", str(TEST_DATA / "demo_labels.tsv"), "--model", str(by_steps / "train"),
                           "--out", str(by_steps / "explain")], cwd=ROOT, capture_output=True, text=True, env=ENV,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert compare.compare_trees(run_dir / "explain", by_steps / "explain", ignore_command_line=True,
                                 roots=(run_dir, by_steps)) == []
    # and the top_k change reached it (the comparison is not between two copies of the old directory)
    assert compare.compare_trees(out / "explain", run_dir / "explain", ignore_command_line=True,
                                 roots=(out, run_dir)) != []


def test_an_error_inside_a_step_names_that_step(tmp_path):
    """The one-line error says `iml-genomics train:` as the subcommand would, not `iml-genomics run:`."""
    config = fast_config(tmp_path)
    cfg = yaml.safe_load(config.read_text())
    cfg["data"]["label_column"] = "no_such_column"
    config.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "iml_genomics", "run", str(config), "--out", str(tmp_path / "o")],
                          cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=600)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert lines[-1].startswith("iml-genomics train: error: ") and "no_such_column" in lines[-1], lines
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "o" / "train").exists()


def test_run_pipeline_returns_the_cohort_and_results(first_run, tmp_path):
    """The plain function: the loaded cohort and each step's result come back (for --write-h5ad)."""
    from iml_genomics.config import load_config
    from iml_genomics.steps.run import run_pipeline

    config, out, _ = first_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    lines = []
    result = run_pipeline(load_config(config), out=copy, config_path=str(config), steps=["select", "report"],
                          force=True, echo=lines.append, warn=lines.extend)
    assert result.ran == ["select", "report"] and result.skipped == []
    assert set(result.results) == {"select", "report"}
    assert result.adata is not None and result.adata.n_obs == 400
    assert result.results["select"].selection.shape[0] == result.adata.n_vars
    assert [line.split(":")[0] for line in lines] == ["select", "report"]
    # report used select from memory and the other two directories from disk: the tables are the first run's
    # bytes (the page differs only in the paths and command lines the copied directories record)
    for name in ("biomarkers.tsv", "gene_sets.tsv", "report_summary.json", "group_attributions.parquet"):
        assert (out / "report" / name).read_bytes() == (copy / "report" / name).read_bytes(), name
