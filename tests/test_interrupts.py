"""Interrupted and concurrent runs (issue 14, item 4): SIGKILL, SIGTERM, SIGINT, two runs at once.

A killed `run` leaves only whole files in --out, never a step directory that
mixes two runs' files unmarked, and a rerun gives the bytes of an uninterrupted
run. SIGTERM/SIGINT remove staging and exit 143/130 with one line. A second
`run` into a locked --out fails at once.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import ROOT, TEST_DATA

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
STEPS = ("train", "explain", "select", "report")
# Files whose bytes legitimately differ between runs (wall times, timestamps).
VOLATILE = {"provenance.json", "run_state.json"}


def fast_config(tmp_path: Path, name: str = "config.yaml", **changes) -> Path:
    """configs/demo.yaml with absolute data paths and the lightest settings that still run every step."""
    cfg = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    cfg["data"]["expression"] = str(TEST_DATA / "demo_expression.csv.gz")
    cfg["data"]["labels"] = str(TEST_DATA / "demo_labels.tsv")
    cfg["report"]["gene_sets"] = str(TEST_DATA / "demo_pathways.gmt")
    cfg["report"]["n_permutations"] = 50
    cfg["explain"]["permutation_repeats"] = 1
    cfg["select"]["n_draws"] = 1
    cfg["cv"]["n_splits"] = 3
    cfg["n_jobs"] = 1
    cfg.update(changes)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def start_run(config: Path, cwd: Path, out: str = "results", *, quiet: bool = False,
              steps: str | None = None) -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    flags = ["-q"] if quiet else []
    more = ["--steps", steps] if steps else []
    return subprocess.Popen([sys.executable, "-m", "iml_genomics", *flags, "run", str(config), "--out", out, *more],
                            cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def visible_files(root: Path) -> dict[str, Path]:
    """Files whose path has no hidden component (staging, temporaries, listing and lock are hidden)."""
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)}


def assert_parses(path: Path) -> None:
    """Each output type opens with the library that reads it."""
    if path.suffix == ".tsv":
        pd.read_csv(path, sep="\t")
    elif path.suffix == ".json":
        json.loads(path.read_text())
    elif path.suffix == ".parquet":
        pq.read_table(path)
    elif path.suffix == ".skops":
        assert zipfile.ZipFile(path).testzip() is None
    elif path.suffix == ".html":
        assert path.read_text().rstrip().endswith("</html>"), path
    else:
        raise AssertionError(f"unexpected output {path}")


def assert_no_step_mixes_runs(out: Path) -> None:
    """Each step directory is one complete commit, or is marked incomplete and refused by readers."""
    from iml_genomics.errors import InputDataError
    from iml_genomics.io.writers import check_step_dir, read_listing, verify_step_dir

    for step in STEPS:
        d = out / step
        if not d.is_dir():
            continue
        listing, problem = read_listing(d)
        assert problem is None, (d, problem)
        if listing is None:
            assert not visible_files(d), f"{d}: files without a listing"
        elif listing["complete"]:
            assert verify_step_dir(d, step), f"{d}: listing says complete but files differ"
            assert set(visible_files(d)) == set(listing["files"]), d
        else:
            with pytest.raises(InputDataError, match="interrupted"):
                check_step_dir(d)


# report.html shows each step's start time and wall time: blanked before comparing
_TIMES = re.compile(rb"(<th>(?:started \(UTC\)|wall time \(s\))</th><td>)[^<]*|generated \S+ by")


def assert_same_outputs(a: Path, b: Path) -> None:
    fa, fb = visible_files(a), visible_files(b)
    assert set(fa) == set(fb)
    for rel in fa:
        if Path(rel).name in VOLATILE:
            continue
        ba, bb = fa[rel].read_bytes(), fb[rel].read_bytes()
        if rel.endswith(".html"):
            ba, bb = _TIMES.sub(rb"\1", ba), _TIMES.sub(rb"\1", bb)
            assert ba.count(b"wall time (s)") >= 3  # the blanking found the provenance rows
        assert ba == bb, rel


_PROGRESS = re.compile(r"^(\d{4}-\d\d-\d\dT)?\d\d:\d\d:\d\d iml-genomics INFO ")


def one_line(stderr: str) -> str:
    """The one error line; timestamped INFO progress lines (absent with -q) are not errors."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip() and not _PROGRESS.match(line)]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run (seed 0), and how long it took."""
    root = tmp_path_factory.mktemp("reference")
    config = fast_config(root)
    started = time.perf_counter()
    proc = start_run(config, root / "ref")
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return {"config": config, "out": root / "ref" / "results", "seconds": time.perf_counter() - started}


def _kill_and_rerun(reference, tmp_path, n_kills: int, seed: int) -> None:
    # two configs with different seeds, alternated, so a directory mixing runs would show
    configs = [fast_config(tmp_path, "seed1.yaml", seed=1), reference["config"]]
    cwd = tmp_path / "ref"  # same relative --out as the reference, so command lines match
    out = cwd / "results"
    rng = np.random.default_rng(seed)
    moments = rng.uniform(0.5, max(reference["seconds"], 2.0), size=n_kills)
    for i, moment in enumerate(moments):
        proc = start_run(configs[i % 2], cwd)
        try:
            proc.wait(timeout=moment)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
        proc.communicate()
        if out.is_dir():
            for path in visible_files(out).values():
                assert_parses(path)
            assert_no_step_mixes_runs(out)
    final = start_run(reference["config"], cwd)
    _, err = final.communicate(timeout=600)
    assert final.returncode == 0, err
    assert not [p for p in out.rglob(".iml-staging-*")] and not [p for p in out.rglob(".iml-tmp-*")]
    assert_no_step_mixes_runs(out)
    assert_same_outputs(reference["out"], out)


def test_sigkill_at_random_moments_then_rerun_is_byte_identical(reference, tmp_path):
    _kill_and_rerun(reference, tmp_path, n_kills=3, seed=20261130)


@pytest.mark.slow
def test_many_sigkills_then_rerun_is_byte_identical(reference, tmp_path):
    _kill_and_rerun(reference, tmp_path, n_kills=12, seed=7)


def _wait_for(predicate, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def _locked(path: Path) -> bool:
    """Whether another process holds the flock on ``path``."""
    if not path.is_file():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


@pytest.mark.parametrize("sig, code, name", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "SIGINT")])
def test_signal_removes_staging_and_exits_with_one_line(reference, tmp_path, sig, code, name):
    cwd = tmp_path / "w"
    out = cwd / "results"
    proc = start_run(reference["config"], cwd, quiet=True)
    # the train step holds its directory's lock while it works
    _wait_for(lambda: _locked(out / "train" / ".iml-lock") or proc.poll() is not None)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    line = one_line(err)
    assert proc.returncode == code, err
    assert f"interrupted ({name})" in line and "no outputs were written" in line, line
    assert not list(cwd.rglob(".iml-staging-*")) and not list(cwd.rglob(".iml-tmp-*"))
    # the run had written nothing yet: no directory is left behind
    assert not (out / "train").exists()


def test_sigterm_during_a_later_step_keeps_the_finished_ones(reference, tmp_path):
    """SIGTERM during explain (which streams attributions.parquet into staging): train is kept and reused."""
    cwd = tmp_path / "w"
    out = cwd / "results"
    # not -q: the command line is recorded in provenance and shown in report.html
    proc = start_run(reference["config"], cwd, steps="train,explain")
    _wait_for(lambda: _locked(out / "explain" / ".iml-lock") or proc.poll() is not None)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[-1] == "iml-genomics explain: interrupted (SIGTERM); no outputs were written to results/explain."
    assert sum("interrupted" in line or "error" in line for line in lines) == 1, err
    assert not list(cwd.rglob(".iml-staging-*")) and not (out / "explain").exists()
    assert_no_step_mixes_runs(out)
    rerun = start_run(reference["config"], cwd, steps="train,explain")
    _, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0 and "train: up to date, skipped" in err, err
    for step in ("train", "explain"):
        assert_same_outputs(reference["out"] / step, out / step)


def test_second_concurrent_run_fails_at_once(reference, tmp_path):
    cwd = tmp_path / "w"
    out = cwd / "results"
    first = start_run(reference["config"], cwd, steps="train")
    _wait_for(lambda: _locked(out / ".iml-lock") or first.poll() is not None)
    first.send_signal(signal.SIGSTOP)  # hold it inside its lock while the others try
    try:
        started = time.perf_counter()
        second = subprocess.run([sys.executable, "-m", "iml_genomics", "run", str(reference["config"]), "--out",
                                 "results"], cwd=cwd, capture_output=True, text=True, env=ENV, timeout=120)
        seconds = time.perf_counter() - started
        # a single step into one of the run's step directories is refused too
        step = subprocess.run([sys.executable, "-m", "iml_genomics", "select", "--config", str(reference["config"]),
                               "--expression", str(TEST_DATA / "demo_expression.csv.gz"), "--labels",
                               str(TEST_DATA / "demo_labels.tsv"), "--out", "results/select"], cwd=cwd,
                              capture_output=True, text=True, env=ENV, timeout=120)
    finally:
        first.send_signal(signal.SIGCONT)
    line = one_line(second.stderr)
    assert second.returncode == 75 and "another iml-genomics process" in line, line
    assert seconds < 30, seconds  # interpreter start-up, no waiting for the first run
    assert step.returncode == 75 and "a `run` into results" in one_line(step.stderr)
    assert not (out / "select").exists()
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    assert_no_step_mixes_runs(out)
    assert_same_outputs(reference["out"] / "train", out / "train")


_SIGNAL_DURING_SWITCH = r"""
import os, signal, sys
from pathlib import Path
from iml_genomics.cli import install_signal_handlers
from iml_genomics.errors import Interrupted
from iml_genomics.io import writers

install_signal_handlers()
out = Path(sys.argv[1])
real_replace, sent = os.replace, []

def replace_then_signal(src, dst):
    # SIGTERM arrives in the middle of the switch, after the first file is in place
    real_replace(src, dst)
    if not sent and Path(src).parent.name.startswith(writers.STAGING_PREFIX):
        sent.append(1)
        os.kill(os.getpid(), signal.SIGTERM)

os.replace = replace_then_signal
try:
    with writers.staged_output(out) as stage:
        for name in ("a.tsv", "b.tsv", "c.tsv"):
            (stage / name).write_text(name)
except Interrupted as exc:
    print(exc.signum, exc.detail)
"""


def test_signal_during_the_switch_is_held_until_it_is_complete(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", _SIGNAL_DURING_SWITCH, str(out)], capture_output=True, text=True,
                          env={**ENV, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"{int(signal.SIGTERM)} its outputs were written completely to {out}"
    listing = json.loads((out / ".iml-outputs.json").read_text())
    assert listing["complete"] is True and set(listing["files"]) == {"a.tsv", "b.tsv", "c.tsv"}
    assert not list(out.glob(".iml-staging-*"))


_KILL_BETWEEN_MOVES = r"""
import os, signal, sys
from pathlib import Path
from iml_genomics.io import writers

real_replace, moved = os.replace, []

def replace_then_die(src, dst):
    real_replace(src, dst)
    # a move out of staging into the step directory (not a write inside staging)
    if Path(src).parent.name.startswith(writers.STAGING_PREFIX) \
            and not Path(dst).parent.name.startswith(writers.STAGING_PREFIX):
        moved.append(dst)
        if len(moved) == 2:  # two of the step's files are new, the others still the old run's
            os.kill(os.getpid(), signal.SIGKILL)

os.replace = replace_then_die
from iml_genomics.cli import main
main(sys.argv[1:], prog_name="iml-genomics")
"""


def test_sigkill_between_the_moves_is_marked_refused_and_repaired(reference, tmp_path):
    """The red team's case: a kill between per-file moves. The directory is marked, readers refuse it,
    `run` redoes it, and the repaired directory equals a clean one."""
    cwd = tmp_path / "w"
    config0, config1 = reference["config"], fast_config(tmp_path, "seed1.yaml", seed=1)
    common = ["--expression", str(TEST_DATA / "demo_expression.csv.gz"), "--labels", str(TEST_DATA / "demo_labels.tsv")]
    first = start_run(config0, cwd, steps="train", quiet=True)
    assert first.wait(timeout=600) == 0, first.stderr.read()
    out = cwd / "results"
    killed = subprocess.run([sys.executable, "-c", _KILL_BETWEEN_MOVES, "-q", "train", "--config", str(config1),
                             *common, "--out", "results/train"], cwd=cwd, capture_output=True, text=True,
                            env={**ENV, "PYTHONPATH": str(ROOT)}, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    from iml_genomics.io.writers import read_listing, verify_step_dir

    listing, _ = read_listing(out / "train")
    assert listing["complete"] is False and not verify_step_dir(out / "train", "train")
    for path in visible_files(out).values():
        assert_parses(path)
    explain = subprocess.run([sys.executable, "-m", "iml_genomics", "explain", "--model", "results/train", *common,
                              "--out", "results/explain_by_hand"], cwd=cwd, capture_output=True, text=True, env=ENV,
                             timeout=300)
    assert explain.returncode == 2 and "interrupted 'iml-genomics train'" in one_line(explain.stderr)
    assert not (out / "explain_by_hand").exists()
    # run's up-to-date check sees the mixed directory and redoes train
    rerun = start_run(config0, cwd, steps="train")
    _, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0 and "train: up to date" not in err, err
    assert_no_step_mixes_runs(out)
    assert_same_outputs(reference["out"] / "train", out / "train")
