"""Progress and logs (issue 17 item 5): bars on a terminal, timestamped lines in files, nothing with -q.

The CLI runs are real subprocesses: with stderr to a file, under a real pseudo-terminal (``pty``), and with -q.
"""

from __future__ import annotations

import fcntl
import importlib
import logging
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import textwrap

import pytest

from conftest import ROOT, TEST_DATA

from iml_genomics import progress

ISO_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d iml-genomics (INFO|WARNING) ")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A 2-fold demo config and labels whose default positive class is reference-like (a warning)."""
    root = tmp_path_factory.mktemp("progress")
    config = root / "small.yaml"
    config.write_text("seed: 0\ntask: classification\ndata:\n  label_column: condition\n"
                      "model:\n  name: l1_logistic\n  params:\n    C: 0.3\ncv:\n  n_splits: 2\n")
    labels = (TEST_DATA / "demo_labels.tsv").read_text()
    warn_labels = root / "case_control.tsv"
    # sorted order makes 'control' the default class of interest: the reference-like-positive warning
    warn_labels.write_text(labels.replace("tumour", "case").replace("normal", "control"))
    return {"root": root, "config": config, "warn_labels": warn_labels}


def train_args(small, out, labels=None):
    return ["train", "--config", str(small["config"]), "--expression", str(TEST_DATA / "demo_expression.csv.gz"),
            "--labels", str(labels or TEST_DATA / "demo_labels.tsv"), "--jobs", "2", "--out", str(out)]


def run_to_file(args, tmp_path, name="stderr.txt"):
    path = tmp_path / name
    with open(path, "w") as err:
        proc = subprocess.run([sys.executable, "-m", "iml_genomics", *args], cwd=ROOT, stderr=err,
                              stdout=subprocess.PIPE, text=True, timeout=600)
    return proc, path.read_text()


def run_in_pty(argv, columns=100):
    """Run ``argv`` with stdin/stdout/stderr on a real pseudo-terminal of ``columns``; its output and exit code."""
    pid, fd = pty.fork()
    if pid == 0:  # child: the pty is its controlling terminal
        try:
            os.chdir(ROOT)
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    out = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return out.decode("utf-8", "replace"), os.waitstatus_to_exitcode(status)


def test_stderr_to_a_file_gets_timestamped_lines_and_no_carriage_return(small, tmp_path):
    proc, err = run_to_file(train_args(small, tmp_path / "out"), tmp_path)
    assert proc.returncode == 0, err
    assert "\r" not in err
    lines = err.splitlines()
    progress_lines = [line for line in lines if ISO_LINE.match(line)]
    # the phase's closing line: step, user words, count, unit, elapsed time
    assert any(re.search(r" train: fitting CV folds 2/2 folds in \d+\.\d s$", line) for line in progress_lines), err
    # everything but the summary line is a timestamped log line; the summary is last
    assert lines[-1].startswith("train: 400 samples") and all(ISO_LINE.match(line) for line in lines[:-1]), err


def test_quiet_prints_only_warnings(small, tmp_path):
    """-q: no progress, no summary line; a warning is still printed (here the only stderr line)."""
    proc, err = run_to_file(["-q", *train_args(small, tmp_path / "out", small["warn_labels"])], tmp_path)
    assert proc.returncode == 0 and (tmp_path / "out" / "cv_metrics.tsv").is_file()
    lines = err.splitlines()
    assert len(lines) == 1 and "warning" in lines[0] and "'control'" in lines[0], err


def test_terminal_gets_one_bar_per_phase_and_a_clean_summary_line(small, tmp_path):
    out, code = run_in_pty([sys.executable, "-m", "iml_genomics", *train_args(small, tmp_path / "out")])
    assert code == 0, out
    lines = out.replace("\r\n", "\n").split("\n")
    assert lines[-1] == ""
    summary = lines[-2]
    assert summary.startswith("train: 400 samples") and "\r" not in summary, repr(out)
    # the bar: redrawn with \r on one line, finished (100%, count, unit, rate) before the newline
    bars = [line for line in lines if "fitting CV folds" in line]
    assert len(bars) == 1, repr(out)
    final = bars[0].split("\r")[-1]
    assert re.search(r"train: fitting CV folds: 100%\|.*\| 2/2 folds \[\d\d:\d\d<00:00, .* folds/s\]$", final), final
    assert not re.search(r"\d{4}-\d\d-\d\dT", out)  # no log lines on a terminal: the bar says it


def test_a_warning_during_a_bar_gets_its_own_line(tmp_path):
    script = tmp_path / "warn_in_bar.py"
    script.write_text(textwrap.dedent("""
        import logging, sys, time
        from iml_genomics import progress
        from iml_genomics.cli import configure_logging
        configure_logging()
        progress.configure("bar", step="explain")
        with progress.phase("SHAP values", total=4, unit="samples") as p:
            for i in range(4):
                p.update(1)
                if i == 1:
                    logging.getLogger("iml_genomics.x").warning("a warning mid-bar")
                time.sleep(0.05)
        print("summary line", file=sys.stderr)
    """))
    env_path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    out, code = run_in_pty(["/usr/bin/env", f"PYTHONPATH={env_path}", sys.executable, str(script)])
    assert code == 0, out
    lines = out.replace("\r\n", "\n").split("\n")
    warning = [line for line in lines if "a warning mid-bar" in line]
    # tqdm.write clears the bar, prints the line, redraws the bar below it
    assert len(warning) == 1 and re.search(r"(^|\r)\S+ iml-genomics WARNING a warning mid-bar$",
                                           warning[0].split("\r\x1b")[0]), repr(out)
    assert lines[-2] == "summary line"
    assert lines[-3].split("\r")[-1].startswith("explain: SHAP values: 100%")


def test_log_mode_is_sparse(caplog):
    """At most one line per interval while a phase runs, and always its closing line."""
    progress.configure("log", interval=3600)
    try:
        with caplog.at_level(logging.INFO, logger="iml_genomics.progress"):
            with progress.phase("knockoff draws", total=50, unit="draws") as p:
                for _ in range(50):
                    p.update(1)
        sparse = [r.getMessage() for r in caplog.records]
        caplog.clear()
        progress.configure("log", interval=0)
        with caplog.at_level(logging.INFO, logger="iml_genomics.progress"):
            with progress.phase("knockoff draws", total=50, unit="draws") as p:
                for _ in range(50):
                    p.update(1)
        dense = [r.getMessage() for r in caplog.records]
    finally:
        progress.configure("auto")
    assert len(sparse) == 1 and re.fullmatch(r"knockoff draws 50/50 draws in \d+\.\d s", sparse[0]), sparse
    assert len(dense) == 51 and dense[24] == "knockoff draws 25/50 draws", dense[:3]


def test_off_and_nested_phases_show_nothing(caplog):
    with caplog.at_level(logging.INFO, logger="iml_genomics.progress"):
        progress.configure("off")
        try:
            with progress.phase("SHAP values", total=3, unit="samples") as p:
                p.update(3)
        finally:
            progress.configure("log")
        assert caplog.records == []
        try:
            with progress.phase("SHAP values", total=3, unit="samples") as outer:
                with progress.phase("inner loop", total=2, unit="chunks") as inner:
                    inner.update(2)
                outer.update(3)
            with progress.silenced():
                with progress.phase("silenced", total=2, unit="x") as p:
                    p.update(2)
        finally:
            progress.configure("auto")
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and messages[0].startswith("SHAP values 3/3 samples"), messages


def test_worker_processes_stay_silent_and_the_api_default(tmp_path):
    """A process that inherits another's progress (a worker) shows none; the API default off a terminal is log."""
    code = "from iml_genomics import progress; print(progress.mode())"
    env = {k: v for k, v in os.environ.items() if k != progress._OWNER_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    own = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    worker = subprocess.run([sys.executable, "-c", code], env={**env, progress._OWNER_ENV: "1"},
                            capture_output=True, text=True, check=True)
    assert own.stdout.strip() == "log" and worker.stdout.strip() == "off"
    with pytest.raises(ValueError, match="progress mode"):
        progress.configure("loud")


def test_every_labelled_task_function_exists():
    """A renamed task function would silently lose its words: every LABELS key must name a real function."""
    for key in progress.LABELS:
        module, name = key.split(":")
        assert callable(getattr(importlib.import_module(module), name, None)), key


def test_a_jupyter_kernel_gets_a_bar(monkeypatch):
    """From the Python API in a notebook: a bar without any setting (tqdm's widget with ipywidgets, else text)."""
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("ipykernel")
    code = textwrap.dedent("""
        from iml_genomics import progress
        print("mode", progress.mode())
        with progress.phase("SHAP values", total=3, unit="samples") as p:
            for _ in range(3):
                p.update(1)
    """)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.delenv(progress._OWNER_ENV, raising=False)  # the kernel is its own process, not our worker
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    outputs = nb.cells[0].outputs
    text = "".join(o.get("text", "") for o in outputs)
    assert "mode bar" in text, outputs
    widget = any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)
    assert widget or re.search(r"SHAP values: 100%\|.*\| 3/3 samples", text), outputs


def test_an_abandoned_generator_leaves_progress_working(caplog):
    """SHAP chunks come from a generator: dropping it mid-phase (the caller failed) must not silence what follows."""

    def chunks():
        bar, done = progress.tracker("SHAP values", total=3, unit="samples"), False
        try:
            for i in range(3):
                bar.update(1)
                yield i
            done = True
        finally:
            bar.close(done)

    progress.configure("log", interval=3600)
    try:
        with caplog.at_level(logging.INFO, logger="iml_genomics.progress"):
            held = chunks()
            next(held)  # abandoned after one chunk, still referenced (as a traceback would)
            with progress.phase("knockoff draws", total=2, unit="draws") as p:
                p.update(2)
            complete = list(chunks())
    finally:
        progress.configure("auto")
    messages = [r.getMessage() for r in caplog.records]
    assert complete == [0, 1, 2]
    assert [m.split(" in ")[0] for m in messages] == ["knockoff draws 2/2 draws", "SHAP values 3/3 samples"], messages
    del held
