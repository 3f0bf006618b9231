"""Whole-pipeline runs: `run` with skipping, dry-run estimates, a real Snakemake run, a real Dask cluster."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, TEST_DATA, run_cli

STEP_FILES = {"train": "model.json", "explain": "gene_ranking.tsv", "select": "knockoff_selection.tsv",
              "report": "report.html"}


def _fast_config(tmp_path: Path, **changes) -> Path:
    """configs/demo.yaml with absolute data paths and light settings for the suite."""
    cfg = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    cfg["data"]["expression"] = str(TEST_DATA / "demo_expression.csv.gz")
    cfg["data"]["labels"] = str(TEST_DATA / "demo_labels.tsv")
    cfg["report"]["gene_sets"] = str(TEST_DATA / "demo_pathways.gmt")
    cfg["report"]["n_permutations"] = 100
    cfg["explain"]["permutation_repeats"] = 2
    cfg["select"]["n_draws"] = 2
    cfg["cv"]["n_splits"] = 3
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        cfg[section][key] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _mtimes(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()
            and p.parent != out}


def test_run_skips_up_to_date_steps_and_redoes_changed_ones(tmp_path):
    config = _fast_config(tmp_path)
    out = tmp_path / "run"
    first = run_cli("run", config, "--out", out, "--jobs", "2")
    steps = [s for s in STEP_FILES if (out / s).is_dir()]
    assert {"train", "explain", "report"} <= set(steps)
    for step in steps:
        assert (out / step / STEP_FILES[step]).is_file()
        assert (out / step / "provenance.json").is_file()
    assert "report.html" in first.stderr
    before = _mtimes(out)

    second = run_cli("run", config, "--out", out, "--jobs", "2")
    assert second.stderr.count("up to date, skipped") == len(steps)
    assert _mtimes(out) == before

    # a report-only setting redoes the report and nothing upstream
    config = _fast_config(tmp_path, report__top_k=15)
    third = run_cli("run", config, "--out", out)
    assert "train: up to date" in third.stderr and "explain: up to date" in third.stderr
    after = _mtimes(out)
    assert all(after[k] == v for k, v in before.items() if k.startswith(("train/", "explain/")))
    assert after["report/report.html"] != before["report/report.html"]

    forced = run_cli("run", config, "--out", out, "--force", "--steps", "train")
    assert "skipped" not in forced.stderr


def test_dry_run_estimates_and_memory_limit(tmp_path):
    config = _fast_config(tmp_path)
    out = tmp_path / "dry"
    dry = run_cli("run", config, "--out", out, "--dry-run")
    lines = dry.stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["step", "peak", "memory"]
    assert any(line.startswith("train") and "400 samples x 400 genes" in line for line in lines)
    assert not out.exists(), "a dry run writes nothing"
    refused = run_cli("run", config, "--out", out, "--max-memory", "10M", check=False)
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "over --max-memory 10M" in refused.stderr
    assert not out.exists()


def test_run_reports_a_failing_step_in_one_line(tmp_path):
    config = _fast_config(tmp_path, data__label_column="no_such_column")
    proc = run_cli("run", config, "--out", tmp_path / "bad", check=False)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "no_such_column" in errors[0]
    assert "Traceback" not in proc.stderr


def _snakemake(workdir: Path, *extra: str, wait: bool = True):
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--configfile",
           str(workdir / "cohorts.yaml"), "--cores", "2", "--directory", str(workdir), *extra]
    if wait:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def test_snakemake_run_killed_and_resumed(tmp_path):
    """`snakemake --cores 2` on the demo; killed after train, the rerun does not redo train."""
    pytest.importorskip("snakemake")
    from iml_genomics.cli import SUBCOMMANDS, module_exists

    steps = [s for s in ("train", "explain", "select", "report") if module_exists(SUBCOMMANDS[s])]
    config = _fast_config(tmp_path)
    (tmp_path / "cohorts.yaml").write_text(yaml.safe_dump({
        "results": "results", "steps": steps,
        "cohorts": {"demo": {"config": str(config), "expression": str(TEST_DATA / "demo_expression.csv.gz"),
                             "labels": str(TEST_DATA / "demo_labels.tsv"),
                             "gene_sets": str(TEST_DATA / "demo_pathways.gmt")}}}))
    model = tmp_path / "results" / "demo" / "train" / "model.json"
    logs = tmp_path / "results" / "logs" / "demo"
    proc = _snakemake(tmp_path, wait=False)
    deadline = time.time() + 600

    def next_step_started() -> bool:
        # a downstream log appears only once Snakemake has recorded train as finished
        return any(p.name != "train.log" for p in logs.glob("*.log")) if logs.is_dir() else False

    while not next_step_started() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert model.exists(), "train did not finish"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    train_mtime = model.stat().st_mtime_ns
    assert not (tmp_path / "results" / "demo" / "report" / "report.html").exists()

    _snakemake(tmp_path, "--unlock")
    done = _snakemake(tmp_path, "--rerun-incomplete")
    assert done.returncode == 0, done.stderr[-3000:]
    assert model.stat().st_mtime_ns == train_mtime, "train was redone"
    for step in steps:
        assert (tmp_path / "results" / "demo" / step / STEP_FILES[step]).is_file()
        assert (tmp_path / "results" / "logs" / "demo" / f"{step}.log").is_file()
    again = _snakemake(tmp_path)
    assert "Nothing to be done" in again.stdout + again.stderr


def test_dask_cluster_gives_identical_tables(tmp_path):
    """A real dask.distributed LocalCluster on loopback: same bytes as local joblib."""
    distributed = pytest.importorskip("dask.distributed")
    local = tmp_path / "local"
    remote = tmp_path / "dask"
    common = ["--config", ROOT / "configs" / "demo.yaml", "--expression", TEST_DATA / "demo_expression.csv.gz",
              "--labels", TEST_DATA / "demo_labels.tsv"]
    run_cli("train", *common, "--out", local / "train", "--jobs", "2")
    run_cli("explain", *common, "--model", local / "train", "--out", local / "explain", "--jobs", "2",
            "--method", "shap")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        address = cluster.scheduler_address
        assert address.startswith("tcp://127.0.0.1:")
        run_cli("train", *common, "--out", remote / "train", "--scheduler", address)
        run_cli("explain", *common, "--model", remote / "train", "--out", remote / "explain",
                "--scheduler", address, "--method", "shap")
        # the folds and SHAP chunks really ran as tasks on this cluster
        assert cluster.scheduler.transition_counter > 0
    for rel in ("train/cv_metrics.tsv", "train/oof_predictions.tsv", "train/model.skops",
                "explain/gene_ranking.tsv"):
        assert (local / rel).read_bytes() == (remote / rel).read_bytes(), rel


def test_progress_lines_in_logs_and_quiet(tmp_path):
    """Not a terminal: a few timestamped progress lines; -q: none. Results identical either way."""
    common = ["train", "--config", ROOT / "configs" / "demo.yaml", "--expression",
              TEST_DATA / "demo_expression.csv.gz", "--labels", TEST_DATA / "demo_labels.tsv", "--jobs", "2"]
    loud = run_cli(*common, "--out", tmp_path / "loud")
    assert "INFO train: fitting CV folds 5/5 folds" in loud.stderr
    quiet = run_cli("-q", *common, "--out", tmp_path / "quiet")
    assert "INFO" not in quiet.stderr
    assert (tmp_path / "loud" / "cv_metrics.tsv").read_bytes() == (tmp_path / "quiet" / "cv_metrics.tsv").read_bytes()


def test_quiet_run_stays_quiet_and_bad_scheduler_is_one_line(tmp_path):
    config = _fast_config(tmp_path)
    quiet = run_cli("-q", "run", config, "--out", tmp_path / "q", "--steps", "train")
    assert "INFO" not in quiet.stderr
    bad = run_cli("train", "--config", config, "--expression", TEST_DATA / "demo_expression.csv.gz",
                  "--labels", TEST_DATA / "demo_labels.tsv", "--out", tmp_path / "s",
                  "--scheduler", "tcp://127.0.0.1:9", check=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().count("\n") == 0 and "cannot reach the Dask scheduler" in bad.stderr
    assert not (tmp_path / "s").exists()


def test_rerun_into_same_directory_leaves_no_stale_outputs(tmp_path):
    from iml_genomics.io.writers import staged_output

    out = tmp_path / "out"
    (out).mkdir()
    (out / "notes.txt").write_text("the user's own file")
    with staged_output(out) as stage:
        (stage / "a.tsv").write_text("1")
        (stage / "b.tsv").write_text("2")
    with staged_output(out) as stage:
        (stage / "a.tsv").write_text("3")
    assert sorted(p.name for p in out.iterdir()) == [".iml-lock", ".iml-outputs.json", "a.tsv", "notes.txt"]
    assert (out / "a.tsv").read_text() == "3"
