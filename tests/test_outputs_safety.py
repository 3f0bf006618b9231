"""Outputs never destroy what iml-genomics did not write (issue 14, item 3; disk full, item 4).

Every case runs the real CLI in a subprocess and checks: the exit code, exactly
one line on stderr, no traceback, and that every file of the user's (and every
input) is byte-identical afterwards.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, one_line

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
TRAIN_FILES = {"cv_metrics.tsv", "cv_summary.tsv", "oof_predictions.tsv", "model.skops", "model.json",
               "train_summary.json", "provenance.json"}


def cli(*args, cwd: Path = ROOT, preexec_fn=None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "iml_genomics", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=ENV, preexec_fn=preexec_fn)



def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every entry under ``root``: file bytes, link targets, directory markers."""
    out: dict[str, bytes | str] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "link->" + os.readlink(p)
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = p.read_bytes()
    return out


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> dict[str, Path]:
    """60 samples x 12 genes, two classes, gene G00 shifted: trains in about a second."""
    rng = np.random.default_rng(3)
    root = tmp_path_factory.mktemp("cohort")
    y = np.repeat(["a", "b"], 30)
    X = rng.normal(size=(60, 12))
    X[y == "b", 0] += 1.5
    ids = [f"S{i:02d}" for i in range(60)]
    pd.DataFrame(X, index=pd.Index(ids, name="sample_id"), columns=[f"G{j:02d}" for j in range(12)]).to_csv(
        root / "expr.csv")
    pd.DataFrame({"sample_id": ids, "condition": y}).to_csv(root / "labels.tsv", sep="\t", index=False)
    return {"expr": root / "expr.csv", "labels": root / "labels.tsv"}


def train(cohort, out, *extra, labels=None):
    return cli("train", "--expression", cohort["expr"], "--labels", labels or cohort["labels"],
               "--label-column", "condition", "--cv-folds", "3", "--jobs", "1", "--out", out, *extra)


@pytest.fixture(scope="module")
def trained(cohort, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained") / "train"
    proc = train(cohort, out)
    assert proc.returncode == 0, proc.stderr
    return out


def copy_of(directory: Path, tmp_path: Path, name: str = "copy") -> Path:
    dest = tmp_path / name
    shutil.copytree(directory, dest, symlinks=True)
    return dest


# ---------------------------------------------------------------------------
# Collisions: a user's directory, an input, another step's directory, links
# ---------------------------------------------------------------------------


def test_user_directory_named_like_an_output_is_refused(cohort, tmp_path):
    out = tmp_path / "out"
    (out / "cv_metrics.tsv").mkdir(parents=True)
    (out / "cv_metrics.tsv" / "thesis.txt").write_text("years of work")
    before = snapshot(out)
    proc = train(cohort, out)
    one_line(proc, 2, str(out / "cv_metrics.tsv"), "is a directory")
    assert snapshot(out) == before


def test_input_named_like_an_output_is_refused(cohort, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    labels = out / "oof_predictions.tsv"  # the user keeps the labels where train writes a table
    shutil.copy(cohort["labels"], labels)
    before = snapshot(out)
    proc = train(cohort, out, labels=labels)
    one_line(proc, 2, str(labels), "is also an input")
    assert snapshot(out) == before


def test_input_hard_link_named_like_an_output_is_refused(cohort, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    os.link(cohort["labels"], out / "cv_metrics.tsv")  # same file under another name
    before = snapshot(out)
    proc = train(cohort, out)
    one_line(proc, 2, "is also an input")
    assert snapshot(out) == before


def test_select_into_a_train_directory_keeps_the_model(trained, cohort, tmp_path):
    train_dir = copy_of(trained, tmp_path, "train")
    before = snapshot(train_dir)
    proc = cli("select", "--expression", cohort["expr"], "--labels", cohort["labels"], "--label-column",
               "condition", "--out", train_dir)
    one_line(proc, 2, "holds the outputs of 'iml-genomics train'")
    assert snapshot(train_dir) == before


def test_select_into_a_train_directory_without_listing_is_refused(trained, cohort, tmp_path):
    """A train directory made by an older version (no listing): its provenance.json is not ours to replace."""
    train_dir = copy_of(trained, tmp_path, "train")
    (train_dir / ".iml-outputs.json").unlink()
    before = snapshot(train_dir)
    proc = cli("select", "--expression", cohort["expr"], "--labels", cohort["labels"], "--label-column",
               "condition", "--out", train_dir)
    one_line(proc, 2, str(train_dir / "provenance.json"), "not written by")
    assert snapshot(train_dir) == before


def test_a_users_file_with_an_output_name_is_not_replaced(cohort, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.json").write_text('{"mine": true}\n')
    before = snapshot(out)
    one_line(train(cohort, out), 2, str(out / "model.json"), "not written by 'iml-genomics train'")
    assert snapshot(out) == before


def test_edited_output_is_not_replaced_but_own_outputs_are(trained, cohort, tmp_path):
    out = copy_of(trained, tmp_path, "train")
    (out / "notes.txt").write_text("mine")
    assert train(cohort, out, "--seed", "1").returncode == 0  # our own files: replaced
    assert (out / "notes.txt").read_text() == "mine"
    (out / "cv_metrics.tsv").write_text("edited by hand\n")
    before = snapshot(out)
    one_line(train(cohort, out, "--seed", "2"), 2, "changed since")
    assert snapshot(out) == before


@pytest.mark.parametrize("target", ["dir", "file"])
def test_output_name_that_is_a_symlink_is_refused(cohort, tmp_path, target):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("keep")
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.skops").symlink_to(elsewhere if target == "dir" else elsewhere / "keep.txt")
    before, outside = snapshot(out), snapshot(elsewhere)
    one_line(train(cohort, out), 2, str(out / "model.skops"), "symbolic link")
    assert snapshot(out) == before and snapshot(elsewhere) == outside


def test_run_refuses_a_symlinked_step_directory(tmp_path):
    from test_interrupts import fast_config

    config = fast_config(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious.txt").write_text("x")
    out = tmp_path / "run"
    out.mkdir()
    (out / "train").symlink_to(elsewhere, target_is_directory=True)
    before = snapshot(elsewhere)
    one_line(cli("run", config, "--out", out), 2, str(out / "train"), "symbolic link")
    assert snapshot(elsewhere) == before
    assert sorted(p.name for p in out.iterdir()) == ["train"]


def test_step_into_a_run_directory_is_refused(tmp_path, cohort):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".iml-outputs.json").write_text(json.dumps(
        {"format": 2, "step": "run", "complete": True, "files": {}}))
    before = snapshot(out)
    one_line(train(cohort, out), 2, "holds the outputs of 'iml-genomics run'")
    assert snapshot(out) == before


# ---------------------------------------------------------------------------
# The listing is not trusted: sha256 per file; corrupt listings delete nothing
# ---------------------------------------------------------------------------


def _listing(out: Path) -> dict:
    return json.loads((out / ".iml-outputs.json").read_text())


def test_forged_listing_does_not_delete_users_files(trained, cohort, tmp_path):
    out = copy_of(trained, tmp_path, "train")
    (out / "data.csv").write_text("the user's data\n")
    listing = _listing(out)
    listing["files"]["data.csv"] = {"sha256": "0" * 64, "size": 16}  # names the file, wrong checksum
    (out / ".iml-outputs.json").write_text(json.dumps(listing))
    assert train(cohort, out, "--seed", "1").returncode == 0
    assert (out / "data.csv").read_text() == "the user's data\n"


def test_stale_output_with_matching_checksum_is_removed(trained, cohort, tmp_path):
    """The other side of the check: a file we wrote and the new run does not write goes."""
    from iml_genomics.io.writers import file_sha256

    out = copy_of(trained, tmp_path, "train")
    (out / "old_table.tsv").write_text("written by an earlier version\n")
    listing = _listing(out)
    listing["files"]["old_table.tsv"] = {"sha256": file_sha256(out / "old_table.tsv"), "size": 30}
    (out / ".iml-outputs.json").write_text(json.dumps(listing))
    assert train(cohort, out, "--seed", "1").returncode == 0
    assert not (out / "old_table.tsv").exists()
    assert set(_listing(out)["files"]) == TRAIN_FILES


# a file outside --out named with its true checksum through '..': the whole listing is distrusted
_TRAVERSAL = json.dumps({"format": 2, "step": "train", "complete": True, "files": {
    "../outside.txt": {"sha256": hashlib.sha256(b"outside").hexdigest(), "size": 7}}}).encode()


@pytest.mark.parametrize("content", [b"\x00\xff garbage", b"[\"notes.txt\", \"../outside.txt\"]", _TRAVERSAL],
                         ids=["garbage", "old_format", "traversal"])
def test_corrupt_listing_is_ignored_and_deletes_nothing(cohort, tmp_path, content):
    root = tmp_path / "root"
    out = root / "out"
    out.mkdir(parents=True)
    (root / "outside.txt").write_text("outside")
    (out / "notes.txt").write_text("mine")
    (out / ".iml-outputs.json").write_bytes(content)
    proc = train(cohort, out)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "ignoring" in proc.stderr and ".iml-outputs.json" in proc.stderr
    assert (out / "notes.txt").read_text() == "mine" and (root / "outside.txt").read_text() == "outside"
    assert set(_listing(out)["files"]) == TRAIN_FILES


def test_corrupt_listing_next_to_outputs_refuses_instead_of_replacing(trained, cohort, tmp_path):
    out = copy_of(trained, tmp_path, "train")
    (out / ".iml-outputs.json").write_text("{truncated")
    before = snapshot(out)
    one_line(train(cohort, out), 2, "not written by")  # the warning goes only to the log level below
    assert snapshot(out) == before


def test_listing_that_is_a_directory_is_refused(cohort, tmp_path):
    out = tmp_path / "out"
    (out / ".iml-outputs.json").mkdir(parents=True)
    (out / ".iml-outputs.json" / "x").write_text("x")
    before = snapshot(out)
    proc = cli("-q", "train", "--expression", cohort["expr"], "--labels", cohort["labels"], "--label-column",
               "condition", "--cv-folds", "3", "--out", out)
    one_line(proc, 2, ".iml-outputs.json", "is a directory")
    assert snapshot(out) == before


# ---------------------------------------------------------------------------
# Leftovers of killed runs; interrupted commits; the lock
# ---------------------------------------------------------------------------


def test_leftover_staging_is_removed_but_lookalike_links_are_not(trained, cohort, tmp_path):
    out = copy_of(trained, tmp_path, "train")
    stage = out / ".iml-staging-k1ll3d"
    stage.mkdir()
    (stage / "attributions.parquet").write_bytes(b"PAR1 truncated")
    (out / ".iml-tmp-model.json.x9").write_text("{")
    users = tmp_path / "users"
    users.mkdir()
    (users / "keep.txt").write_text("keep")
    (out / ".iml-staging-link").symlink_to(users, target_is_directory=True)
    assert train(cohort, out, "--seed", "1").returncode == 0
    assert not stage.exists() and not (out / ".iml-tmp-model.json.x9").exists()
    assert (out / ".iml-staging-link").is_symlink() and (users / "keep.txt").read_text() == "keep"


def test_interrupted_commit_is_refused_as_input(trained, cohort, tmp_path):
    model = copy_of(trained, tmp_path, "train")
    listing = _listing(model)
    listing["complete"] = False
    (model / ".iml-outputs.json").write_text(json.dumps(listing))
    proc = cli("explain", "--model", model, "--expression", cohort["expr"], "--labels", cohort["labels"],
               "--out", tmp_path / "explain")
    one_line(proc, 2, str(model), "interrupted 'iml-genomics train'")
    assert not (tmp_path / "explain").exists()
    # and the next train into it repairs it
    assert train(cohort, model).returncode == 0
    assert _listing(model)["complete"] is True


def test_busy_output_directory_fails_at_once_and_touches_nothing(trained, cohort, tmp_path):
    out = copy_of(trained, tmp_path, "train")
    stage = out / ".iml-staging-live"  # a live writer's staging: must survive
    stage.mkdir()
    (stage / "model.json").write_text("{")
    before = snapshot(out)
    fd = os.open(out / ".iml-lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        started = time.perf_counter()
        proc = train(cohort, out, "--seed", "5")
        seconds = time.perf_counter() - started
    finally:
        os.close(fd)
    one_line(proc, 75, "another iml-genomics process", str(out))
    assert seconds < 30, seconds  # no waiting for the lock (interpreter start-up only)
    assert snapshot(out) == before


# ---------------------------------------------------------------------------
# Disk full and file size limits: one line, exit 3, nothing partial
# ---------------------------------------------------------------------------


def _fsize_limit(limit: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_file_size_limit_is_one_line_and_leaves_the_old_outputs(trained, cohort, tmp_path):
    out = copy_of(trained, tmp_path, "train")
    before = snapshot(out)
    # model.json is several KiB: EFBIG (SIGXFSZ is ignored) while the staging files are written
    proc = cli("-q", "train", "--expression", cohort["expr"], "--labels", cohort["labels"], "--label-column",
               "condition", "--cv-folds", "3", "--seed", "3", "--out", out, preexec_fn=_fsize_limit(2048))
    one_line(proc, 3, str(out), "file size limit")
    assert snapshot(out) == before


def test_file_size_limit_into_a_new_directory_leaves_nothing(cohort, tmp_path):
    out = tmp_path / "new" / "out"
    proc = cli("-q", "train", "--expression", cohort["expr"], "--labels", cohort["labels"], "--label-column",
               "condition", "--cv-folds", "3", "--out", out, preexec_fn=_fsize_limit(2048))
    one_line(proc, 3, "file size limit")
    assert not (tmp_path / "new").exists()


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1 MiB tmpfs (needs root); skipped where mounting is not allowed."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_disk_full_is_one_line_exit_3_and_nothing_partial(trained, cohort, small_tmpfs):
    out = small_tmpfs / "train"
    shutil.copytree(trained, out)
    before = snapshot(out)
    # leave ~8 KiB free: the new outputs (about 30 KiB) cannot be staged
    free = os.statvfs(small_tmpfs).f_bavail * os.statvfs(small_tmpfs).f_frsize
    with open(small_tmpfs / "filler", "wb") as fh:
        fh.write(b"\0" * max(free - 8192, 0))
    proc = cli("-q", "train", "--expression", cohort["expr"], "--labels", cohort["labels"], "--label-column",
               "condition", "--cv-folds", "3", "--seed", "4", "--out", out)
    one_line(proc, 3, str(out), "No space left on device")
    assert snapshot(out) == before
    assert not [p for p in out.iterdir() if p.name.startswith((".iml-staging-", ".iml-tmp-"))]


# ---------------------------------------------------------------------------
# run_state.json: corrupt or hostile, never a traceback, never trusted
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"\x89PNG\r\n garbage", b'{"train": "x", "explain": {"fingerprint": 5}}'])
def test_corrupt_run_state_is_ignored_with_a_warning(tmp_path, content):
    from test_interrupts import fast_config

    config = fast_config(tmp_path)
    out = tmp_path / "run"
    out.mkdir()
    (out / "run_state.json").write_bytes(content)
    # not ours (no listing): refused in one line, the file kept
    one_line(cli("run", config, "--out", out, "--steps", "train"), 2, "run_state.json", "not written by")
    assert (out / "run_state.json").read_bytes() == content
    # ours but corrupted after the fact (listing names it with this checksum): ignored, warned, redone
    from iml_genomics.io.writers import file_sha256

    (out / ".iml-outputs.json").write_text(json.dumps({"format": 2, "step": "run", "complete": True, "files": {
        "run_state.json": {"sha256": file_sha256(out / "run_state.json"), "size": len(content)}}}))
    proc = cli("run", config, "--out", out, "--steps", "train")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "run_state.json: unreadable or malformed; ignored" in proc.stderr
    assert set(json.loads((out / "run_state.json").read_text())) == {"train"}


def test_run_state_that_is_a_directory_is_refused(tmp_path):
    from test_interrupts import fast_config

    config = fast_config(tmp_path)
    out = tmp_path / "run"
    (out / "run_state.json").mkdir(parents=True)
    one_line(cli("run", config, "--out", out, "--steps", "train"), 2, "run_state.json", "is a directory")
    assert sorted(p.name for p in out.rglob("*")) == ["run_state.json"]  # refused before the lock file


@pytest.mark.parametrize("state", ["listing_is_link", "lock_is_link", "lock_is_dir", "listing_is_dir"])
def test_hostile_bookkeeping_files_are_refused_in_one_line(tmp_path, state):
    """Our own bookkeeping names, planted as links or directories, are never followed or replaced."""
    (tmp_path / "user.txt").write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    name = ".iml-outputs.json" if state.startswith("listing") else ".iml-lock"
    if state.endswith("link"):
        (out / name).symlink_to(tmp_path / "user.txt")
    else:
        (out / name).mkdir()
    before = snapshot(tmp_path)
    proc = cli("simulate", "--family", "gaussian", "--n-samples", "20", "--n-genes", "10", "--out", out)
    one_line(proc, 2, str(out / name))
    assert snapshot(tmp_path) == before
