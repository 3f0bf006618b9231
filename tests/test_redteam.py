"""Red-team cases for issue 14 that the first hardening pass missed.

Each runs the real CLI in a subprocess and checks the exit code, exactly one
stderr line, no traceback, and that the user's files are untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, one_line

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
SIMULATE = ("simulate", "--family", "gaussian", "--n-samples", "20", "--n-genes", "10", "--out")


def cli(*args, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "iml_genomics", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=ENV)



def test_stale_listing_entry_under_a_linked_directory_is_not_followed(tmp_path):
    """A listing naming 'sub/data.txt', with sub -> a user directory elsewhere, must not delete
    the user's file even when its sha256 matches (the listing is the attacker's to write)."""
    out, victim = tmp_path / "out", tmp_path / "victim"
    victim.mkdir()
    (victim / "data.txt").write_bytes(b"precious\n")
    one_line(cli(*SIMULATE, out), 0)
    (out / "sub").symlink_to(victim, target_is_directory=True)
    listing = json.loads((out / ".iml-outputs.json").read_text())
    listing["files"]["sub/data.txt"] = {"sha256": hashlib.sha256(b"precious\n").hexdigest(), "size": 9}
    (out / ".iml-outputs.json").write_text(json.dumps(listing))
    one_line(cli(*SIMULATE, out), 0)
    assert (victim / "data.txt").read_bytes() == b"precious\n"


def test_explain_refuses_a_model_dir_that_train_is_rewriting(tmp_path, demo_train_dir, demo_paths):
    """explain read a train directory while a `train` switched in a new model: it used the old model
    and recorded the new model's sha256 in provenance.json (exit 0). Now it waits for nobody and
    refuses at once (exit 75, one line, nothing written) while the directory's lock is held."""
    import fcntl
    import shutil

    model = tmp_path / "train"
    shutil.copytree(demo_train_dir, model)
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    fd = os.open(model / ".iml-lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a live `train --out model` holds
        out = tmp_path / "explain"
        proc = cli("explain", "--model", model, "--expression", demo_paths["csv.gz"], "--labels",
                   demo_paths["labels"], "--out", out, "--method", "shap", "--jobs", "1")
        one_line(proc, 75, str(model), "wait for it to finish")
        assert not out.exists()
    finally:
        os.close(fd)
    assert {p.name: p.read_bytes() for p in model.iterdir()} == before


def test_rerun_of_an_up_to_date_step_removes_leftover_staging(tmp_path, demo_paths):
    """`run` again over an up-to-date train step crashed with a NameError traceback (remove_leftovers
    not imported). It must skip the step, remove a killed run's staging, and leave train/ as it was."""
    out = tmp_path / "run"
    args = ("run", demo_paths["config"], "--out", out, "--steps", "train", "--jobs", "1", "--quiet")
    assert cli(*args).returncode == 0
    before = {p.name: p.read_bytes() for p in (out / "train").iterdir() if p.is_file()}
    leftover = out / "train" / ".iml-staging-killed"
    leftover.mkdir()
    (leftover / "cv_metrics.tsv").write_text("truncated")
    proc = cli(*args)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert not leftover.exists()
    after = {p.name: p.read_bytes() for p in (out / "train").iterdir() if p.is_file()}
    assert after == before


@pytest.mark.parametrize("name", ["model.skops", "model.json"])
def test_a_model_file_claiming_100_gib_is_refused_by_name(tmp_path, demo_train_dir, demo_paths, name):
    """A sparse 100 GiB model.skops or model.json (free to make) was read whole: 'out of memory; reduce
    the genes', exit 3, not naming the file. It is refused by size, in one line naming it, before any read."""
    import shutil

    model = tmp_path / "train"
    shutil.copytree(demo_train_dir, model)
    with open(model / name, "r+b") as fh:
        fh.truncate(100 * 2**30)
    out = tmp_path / "explain"
    proc = cli("explain", "--model", model, "--expression", demo_paths["csv.gz"], "--labels", demo_paths["labels"],
               "--out", out, "--method", "shap", "--jobs", "1")
    one_line(proc, 2, str(model / name), "larger than any")
    assert not out.exists()


def test_run_refuses_a_colliding_name_in_a_later_step_before_running_anything(tmp_path, demo_paths):
    """A user directory named like explain's output under OUT/explain was refused only after train had
    run and logged: several stderr lines, train/ written. Now `run` checks every step directory first."""
    out = tmp_path / "run"
    mine = out / "explain" / "gene_ranking.tsv"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("mine")
    proc = cli("run", demo_paths["config"], "--out", out, "--steps", "train,explain", "--jobs", "1")
    one_line(proc, 2, str(mine), "did not write")
    assert sorted(p.name for p in out.iterdir()) == ["explain"]
    assert (mine / "notes.txt").read_text() == "mine"


def _h5ad(path: Path, edit) -> Path:
    """A 20 x 10 sparse .h5ad with ``edit(h5py_file)`` applied to its stored arrays."""
    import anndata as ad
    import h5py
    import numpy as np
    import pandas as pd
    from scipy import sparse

    obs = pd.DataFrame(index=[f"S{i:04d}" for i in range(1, 21)])
    var = pd.DataFrame(index=[f"G{j:05d}" for j in range(10)])
    ad.AnnData(X=sparse.csr_matrix(np.eye(20, 10, dtype=np.float32) + 1), obs=obs, var=var).write_h5ad(path)
    with h5py.File(path, "r+") as fh:
        edit(fh)
    return path


def _replace(fh, name, values=None, **create):
    del fh[name]
    if values is not None:
        fh[name] = values
    else:
        return fh.create_dataset(name, **create)


H5AD_CASES = {
    # an index past the gene count: scipy indexed with it unchecked and the process died (SIGSEGV)
    "index_out_of_range": (lambda fh: _replace(fh, "X/indices", np.r_[10**9, fh["X/indices"][1:]].astype(np.int64)),
                           "malformed"),
    # indptr claims 2**40 values: a traceback from scipy
    "indptr_past_data": (lambda fh: _replace(fh, "X/indptr", np.r_[np.arange(20), 2**40].astype(np.int64)),
                         "indptr runs"),
    # data declared 2**28 values (unwritten chunks cost nothing): 2 GiB read, then a traceback
    "data_longer_than_indices": (lambda fh: _replace(fh, "X/data", shape=(2**28,), dtype="f8", chunks=(2**20,)),
                                 "inconsistent lengths"),
    # a dense X declared 20 x 2**27 (20 GiB): anndata read it all (51 s, 21 GB) before comparing with var
    "dense_declared_huge": (lambda fh: _dense(fh, (20, 2**27)), "declared 20 x 134217728"),
}


def _dense(fh, shape):
    d = _replace(fh, "X", shape=shape, dtype="f8", chunks=(20, 2**16))
    d.attrs["encoding-type"], d.attrs["encoding-version"] = "array", "0.2.0"




@pytest.mark.parametrize("case", sorted(H5AD_CASES))
def test_h5ad_with_inconsistent_stored_arrays_is_one_line(tmp_path, demo_paths, case):
    edit, needle = H5AD_CASES[case]
    expr = _h5ad(tmp_path / f"{case}.h5ad", edit)
    out = tmp_path / "out"
    proc = cli("train", "--config", demo_paths["config"], "--expression", expr, "--labels", demo_paths["labels"],
               "--drop-unmatched", "--out", out, "--jobs", "1")
    one_line(proc, 2, str(expr), needle)
    assert not out.exists()


def test_a_gmt_of_one_endless_line_is_refused_without_reading_it(tmp_path, demo_train_dir):
    """A sparse 30 GiB GMT (NUL bytes, no newline) was read as one line: 12 GB of memory after 60 s."""
    gmt = tmp_path / "sets.gmt"
    with open(gmt, "wb") as fh:
        fh.truncate(30 * 2**30)
    out = tmp_path / "report"
    proc = cli("report", "--inputs", demo_train_dir, "--gene-sets", gmt, "--out", out, timeout=60)
    one_line(proc, 2, str(gmt), "line 1 is longer than")
    assert not out.exists()


@pytest.mark.parametrize("role", ["expression", "labels"])
def test_a_table_of_one_endless_line_is_refused_without_reading_it(tmp_path, demo_paths, role):
    """A sparse 30 GiB labels or expression file (NULs, no newline) was parsed as one line: 8.7 GB of
    memory after 60 s and still reading."""
    endless = tmp_path / ("expr.csv" if role == "expression" else "labels.tsv")
    with open(endless, "wb") as fh:
        fh.truncate(30 * 2**30)
    files = {"expression": demo_paths["csv.gz"], "labels": demo_paths["labels"], role: endless}
    out = tmp_path / "out"
    proc = cli("train", "--config", demo_paths["config"], "--expression", files["expression"], "--labels",
               files["labels"], "--out", out, "--jobs", "1", timeout=60)
    one_line(proc, 2, str(endless), "first line")
    assert not out.exists()


PANDAS_METADATA = {
    "index_not_in_file": json.dumps({"index_columns": ["nope"], "columns": []}).encode(),
    "not_json": b"{not json",
    "a_list": b"[1, 2]",
}


@pytest.mark.parametrize("case", sorted(PANDAS_METADATA))
def test_parquet_with_garbled_pandas_metadata_is_one_line(tmp_path, demo_paths, case):
    """The 'pandas' schema metadata of a Parquet file is trusted text: an index column it names that
    the file lacks (KeyError) or metadata that is not JSON (JSONDecodeError) gave a traceback."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"sample_id": ["S0001", "S0002", "S0003"], "G1": [1.0, 2.0, 3.0], "G2": [1.0, 2.0, 4.0]})
    expr = tmp_path / "expr.parquet"
    pq.write_table(table.replace_schema_metadata({b"pandas": PANDAS_METADATA[case]}), expr)
    out = tmp_path / "out"
    proc = cli("train", "--config", demo_paths["config"], "--expression", expr, "--labels", demo_paths["labels"],
               "--drop-unmatched", "--out", out, "--jobs", "1")
    assert "Traceback" not in proc.stderr, proc.stderr
    if case != "a_list":  # a list is ignored like absent metadata; the demo labels then fail on their own
        one_line(proc, 2, str(expr), "'pandas' metadata")
    assert proc.returncode == 2 and not out.exists()
