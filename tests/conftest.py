"""Shared fixtures: paths to the bundled data and a runner for the real CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEST_DATA = ROOT / "test_data"
CONFIGS = ROOT / "configs"


def run_cli(*args: str, cwd: Path | None = None, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python -m iml_genomics ARGS`` in a real subprocess."""
    proc = subprocess.run([sys.executable, "-m", "iml_genomics", *map(str, args)], cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"iml-genomics {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


_SILENT_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)


def run_cli_inprocess(*args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """``iml-genomics ARGS`` in this process: click's CliRunner in standalone mode, as the entry point runs.

    Same exit code and stderr as :func:`run_cli` without a new interpreter and its 2-3 s of imports (most of
    a refused command's cost). So that :func:`one_line` holds a run to the same rules: an exception escaping
    the CLI is turned into its traceback text, and every warning a real run would print (the interpreter's
    default filters) is appended to stderr as its own line. While it runs, ``sys.argv`` is the entry point's
    (provenance records it) and the working directory is ``cwd`` or ``ROOT`` (as for ``run_cli``); afterwards
    the directory, the signal handlers (the CLI installs its own for SIGINT/SIGTERM) and the package logger
    are put back. Keep :func:`run_cli` where the process itself is under test (start-up, signals, memory).
    """
    import contextlib
    import logging
    import signal
    import traceback
    import warnings

    from click.testing import CliRunner

    from iml_genomics.cli import main

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    # the CLI points the package logger at this run's stderr: give later tests the logger they had
    logger = logging.getLogger("iml_genomics")
    log_state = (logger.handlers[:], logger.level, logger.propagate)
    argv = sys.argv
    # provenance.json records sys.argv: the entry point's, not pytest's
    sys.argv = ["iml-genomics", *map(str, args)]
    try:
        with contextlib.chdir(cwd or ROOT), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)
    finally:
        sys.argv = argv
        logger.handlers[:], logger.level, logger.propagate = log_state
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(*result.exc_info))
    for w in caught:
        if not issubclass(w.category, _SILENT_WARNINGS):
            stderr += warnings.formatwarning(w.message, w.category, w.filename, w.lineno)
    proc = subprocess.CompletedProcess(["iml-genomics", *map(str, args)], result.exit_code, result.stdout, stderr)
    if check and proc.returncode != 0:
        raise AssertionError(f"iml-genomics {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def one_line(proc: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    """``code``, exactly one stderr line holding every needle, no traceback; returns the line."""
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{proc.stderr}"
    assert proc.returncode == code, (proc.returncode, lines[0])
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in: {lines[0]}"
    return lines[0]


@pytest.fixture(scope="session")
def demo_paths() -> dict[str, Path]:
    return {
        "csv.gz": TEST_DATA / "demo_expression.csv.gz",
        "parquet": TEST_DATA / "demo_expression.parquet",
        "h5ad": TEST_DATA / "demo_expression.h5ad",
        "labels": TEST_DATA / "demo_labels.tsv",
        "truth": TEST_DATA / "demo_truth.tsv",
        "gmt": TEST_DATA / "demo_pathways.gmt",
        "config": CONFIGS / "demo.yaml",
    }


@pytest.fixture(scope="session")
def demo_train_dir(tmp_path_factory, demo_paths) -> Path:
    """The demo cohort trained once per session with configs/demo.yaml."""
    out = tmp_path_factory.mktemp("demo_train") / "train"
    run_cli_inprocess("train", "--config", demo_paths["config"], "--expression", demo_paths["csv.gz"],
                      "--labels", demo_paths["labels"], "--out", out, "--jobs", "2")
    return out

