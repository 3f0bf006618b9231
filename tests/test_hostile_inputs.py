"""A corpus of malformed and hostile inputs, each run through the real CLI (issue 14, item 5).

Every case builds one bad input in a fresh directory next to a good cohort
(30 samples x 20 genes), runs one subcommand and checks the contract for bad
input: exit code 2, exactly one non-empty line on stderr (at most ~1,500
characters: user values are shortened), no traceback, and nothing written:
the case's whole directory is byte-identical before and after the run, so no
``--out`` directory, staging directory or stray file appears and no user file
is changed.

Most cases run in-process with click's CliRunner (standalone mode, as the
``iml-genomics`` entry point runs); an exception that escapes the CLI is
turned into its traceback text so it fails the "no traceback" check, and
Python warnings that a real run would print are counted as stderr lines.
A handful of cases run the real ``python -m iml_genomics`` subprocess.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest

N_SAMPLES, N_GENES = 30, 20
FAST = ("--jobs", "1", "--cv-folds", "3")
MAX_LINE = 1500  # a 10,000-character id must not be echoed whole
SILENT_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)


# ---------------------------------------------------------------------------------------------- harness
@dataclass
class Outcome:
    code: int
    stderr: str


def run_inprocess(args) -> Outcome:
    """``iml-genomics ARGS`` in this process (CliRunner, standalone mode, as the entry point)."""
    from click.testing import CliRunner

    from iml_genomics.cli import main

    runner = CliRunner()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = runner.invoke(main, [str(a) for a in args], catch_exceptions=True)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(*result.exc_info))
    for w in caught:  # what the interpreter's default filters would have printed
        if not issubclass(w.category, SILENT_WARNINGS):
            stderr += warnings.formatwarning(w.message, w.category, w.filename, w.lineno)
    return Outcome(result.exit_code, stderr)


def run_subprocess(args, cwd: Path) -> Outcome:
    """The real ``python -m iml_genomics ARGS``, in the repository's copy of the package."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "iml_genomics", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env=env)
    return Outcome(proc.returncode, proc.stderr + ("Traceback (stdout)" if "Traceback" in proc.stdout else ""))


def snapshot(root: Path) -> dict:
    """Every path under ``root`` with its bytes (files), link target (symlinks) or None (directories)."""
    snap = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            snap[rel] = ("link", os.readlink(p))
        elif p.is_file():
            snap[rel] = p.read_bytes()
        else:
            snap[rel] = None
    return snap


def assert_refused(outcome: Outcome, before: dict, root: Path, needles=(), code: int = 2) -> str:
    """Exit ``code``, one short stderr line holding every needle, no traceback, nothing written."""
    assert "Traceback" not in outcome.stderr, outcome.stderr[-3000:]
    lines = [line for line in outcome.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{outcome.stderr[:3000]}"
    line = lines[0]
    assert outcome.code == code, (outcome.code, line[:500])
    assert "error:" in line, line[:500]
    assert len(line) <= MAX_LINE, f"{len(line)} characters: {line[:300]}..."
    for needle in needles:
        assert needle in line, f"{needle!r} not in: {line[:800]}"
    after = snapshot(root)
    assert after == before, (f"files changed: added {sorted(set(after) - set(before))}, removed "
                             f"{sorted(set(before) - set(after))}, modified "
                             f"{sorted(k for k in set(after) & set(before) if after[k] != before[k])}")
    return line


# ----------------------------------------------------------------------------------------- the cohort
@pytest.fixture(scope="module")
def cohort():
    rng = np.random.default_rng(14)
    samples = [f"S{i:02d}" for i in range(N_SAMPLES)]
    genes = [f"G{j:02d}" for j in range(N_GENES)]
    y = np.array(["a", "b"] * (N_SAMPLES // 2))
    X = rng.gamma(2.0, 2.0, size=(N_SAMPLES, N_GENES))
    X[y == "b", 0] += 4.0
    expr = pd.DataFrame(np.round(X, 4), index=pd.Index(samples, name="sample_id"), columns=genes)
    labels = pd.DataFrame({"sample_id": samples, "condition": y, "batch": ["x", "y", "z"] * (N_SAMPLES // 3)})
    return expr, labels


class Workspace:
    """One case's directory: the good cohort plus helpers to write bad variants of it."""

    def __init__(self, root: Path, expr: pd.DataFrame, labels: pd.DataFrame):
        self.root, self.expr, self.labels = root, expr.copy(), labels.copy()
        self.out = root / "out"
        self.expr_path = self.csv(self.expr, "expr.csv")
        self.labels_path = self.table(self.labels, "labels.tsv")
        self.train_dir: Path | None = None

    def path(self, name: str) -> Path:
        return self.root / name

    def write(self, name: str, data) -> Path:
        p = self.root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes):
            p.write_bytes(data)
        else:
            with open(p, "w", encoding="utf-8", newline="") as fh:
                fh.write(data)
        return p

    def csv(self, frame: pd.DataFrame | None = None, name: str = "bad.csv") -> Path:
        frame = self.expr if frame is None else frame
        sep = "\t" if ".tsv" in name or ".txt" in name else ","
        p = self.root / name
        frame.to_csv(p, sep=sep)
        return p

    def table(self, frame: pd.DataFrame, name: str) -> Path:
        sep = "\t" if ".tsv" in name else ","
        p = self.root / name
        frame.to_csv(p, sep=sep, index=False)
        return p

    def parquet(self, frame: pd.DataFrame | None = None, name: str = "bad.parquet") -> Path:
        frame = self.expr if frame is None else frame
        p = self.root / name
        frame.to_parquet(p)
        return p

    def arrow(self, columns: dict, name: str = "bad.parquet") -> Path:
        import pyarrow as pa
        import pyarrow.parquet as pq

        p = self.root / name
        pq.write_table(pa.table(columns), p)
        return p

    def h5ad(self, X=None, name: str = "bad.h5ad", obs: pd.DataFrame | None = None, var_names=None,
             layers: dict | None = None, sparse_x: bool = False) -> Path:
        import anndata as ad
        from scipy import sparse

        X = self.expr.to_numpy() if X is None else X
        if sparse_x:
            X = sparse.csr_matrix(X)
        obs = pd.DataFrame(index=list(self.expr.index)[:X.shape[0]]) if obs is None else obs
        var_names = list(self.expr.columns)[:X.shape[1]] if var_names is None else var_names
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            adata = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=pd.Index(list(var_names), dtype=str)))
            for key, value in (layers or {}).items():
                adata.layers[key] = value
            p = self.root / name
            adata.write_h5ad(p)
        return p

    def train(self, expression=None, labels="default", label_column="condition", extra=(), out=None,
              fast=FAST) -> list:
        args = ["train", "--expression", expression or self.expr_path]
        labels = self.labels_path if labels == "default" else labels
        if labels is not None:
            args += ["--labels", labels]
        if label_column is not None:
            args += ["--label-column", label_column]
        return [*args, "--out", out or self.out, *fast, *extra]

    def select(self, extra=(), expression=None, labels="default") -> list:
        args = self.train(expression=expression, labels=labels, fast=("--jobs", "1"), extra=extra)
        return ["select", *args[1:]]

    def report(self, *, gene_sets=None, gene_map=None, extra=()) -> list:
        args = ["report", "--inputs", self.train_dir, "--out", self.out]
        if gene_sets is not None:
            args += ["--gene-sets", gene_sets]
        if gene_map is not None:
            args += ["--gene-map", gene_map]
        return [*args, *extra]

    def explain(self, model=None, expression=None, labels="default", extra=()) -> list:
        args = ["explain", "--model", model or self.train_dir, "--expression", expression or self.expr_path]
        labels = self.labels_path if labels == "default" else labels
        if labels is not None:
            args += ["--labels", labels]
        return [*args, "--out", self.out, "--jobs", "1", "--method", "shap", *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cohort) -> Path:
    """A real train output directory (model bundle) on the cohort, made once per module."""
    root = tmp_path_factory.mktemp("trained")
    ws = Workspace(root, *cohort)
    outcome = run_inprocess(ws.train(out=root / "train"))
    assert outcome.code == 0, outcome.stderr
    return root


@pytest.fixture
def make_ws(tmp_path, cohort, trained):
    def make(needs_model: bool = False) -> Workspace:
        ws = Workspace(tmp_path, *cohort)
        if needs_model:
            # the bundle's provenance points at the module's cohort files, which stay valid
            ws.train_dir = tmp_path / "model"
            shutil.copytree(trained / "train", ws.train_dir)
        return ws
    return make


@dataclass
class Case:
    id: str
    build: Callable[[Workspace], list]
    needles: tuple = ()
    model: bool = False  # the case needs a trained bundle in the workspace
    marks: tuple = field(default_factory=tuple)

    def param(self):
        return pytest.param(self, id=self.id, marks=self.marks)


def _run_case(case: Case, make_ws, runner=run_inprocess):
    ws = make_ws(case.model)
    args = _materialise(ws, case.build(ws))
    before = snapshot(ws.root)
    outcome = runner(args) if runner is run_inprocess else runner(args, ws.root)
    return assert_refused(outcome, before, ws.root, [n(ws) if callable(n) else n for n in case.needles])


# --------------------------------------------------------------------------------- data builders
def garbage(n: int = 4096, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).bytes(n)


def flip_middle(raw: bytes, n: int = 16) -> bytes:
    """``raw`` with ``n`` bytes in the middle inverted (bit rot, a bad copy)."""
    b = bytearray(raw)
    mid = len(b) // 2
    for i in range(mid, min(mid + n, len(b))):
        b[i] ^= 0xFF
    return bytes(b)


def gz_bytes(text: str) -> bytes:
    return gzip.compress(text.encode(), mtime=0)


def cut(p: Path, frac: float = 0.5) -> Path:
    raw = p.read_bytes()
    p.write_bytes(raw[: int(len(raw) * frac)])
    return p


def corrupt(p: Path) -> Path:
    p.write_bytes(flip_middle(p.read_bytes()))
    return p


def corrupt_at(p: Path, offset: int, n: int = 32) -> Path:
    b = bytearray(p.read_bytes())
    for i in range(offset, offset + n):
        b[i] ^= 0xFF
    p.write_bytes(bytes(b))
    return p


def with_cell(frame: pd.DataFrame, row: str, col: str, value) -> pd.DataFrame:
    frame = frame.astype(object)
    frame.loc[row, col] = value
    return frame


def renamed(frame: pd.DataFrame, *, genes: dict | None = None, samples: dict | None = None) -> pd.DataFrame:
    frame = frame.copy()
    if genes:
        frame.columns = [genes.get(c, c) for c in frame.columns]
    if samples:
        frame.index = pd.Index([samples.get(s, s) for s in frame.index], name=frame.index.name)
    return frame


def text_matrix(ws: Workspace, sep: str = ",") -> str:
    buf = io.StringIO()
    ws.expr.to_csv(buf, sep=sep)
    return buf.getvalue()


HUGE = "G" * 10_000


# ================================================================================ expression files
def _bad_expr(name: str, make, *needles, extra_args=(), **kw) -> Case:
    """A train case whose --expression is ``make(ws)``; the file name is always a needle."""
    def build(ws):
        return ws.train(expression=make(ws), extra=extra_args)
    return Case(name, build, needles=(name,) + needles, **kw)


def _h5ad_string_layer(ws):
    X = ws.expr.to_numpy().astype(str)
    X[3, 4] = "high"
    return ws.h5ad(name="strlayer.h5ad", layers={"counts": X})


def _h5ad_string_x(ws):
    import anndata as ad

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata = ad.AnnData(X=np.zeros((N_SAMPLES, N_GENES)), obs=pd.DataFrame(index=list(ws.expr.index)),
                           var=pd.DataFrame(index=list(ws.expr.columns)))
        adata.layers["labels"] = np.full((N_SAMPLES, N_GENES), "x", dtype=object)
        p = ws.path("strx.h5ad")
        adata.write_h5ad(p)
    return p


def _h5ad_without_x(ws):
    import anndata as ad

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata = ad.AnnData(obs=pd.DataFrame(index=list(ws.expr.index)), var=pd.DataFrame(index=list(ws.expr.columns)))
        adata.layers["counts"] = ws.expr.to_numpy()
        p = ws.path("no_x.h5ad")
        adata.write_h5ad(p)
    return p


EXPRESSION_CASES = [
    # empty / header only
    _bad_expr("empty.tsv", lambda ws: ws.write("empty.tsv", ""), "empty matrix"),
    _bad_expr("blank_lines.csv", lambda ws: ws.write("blank_lines.csv", "\n\n  \n"), "empty matrix"),
    _bad_expr("empty.csv.gz", lambda ws: ws.write("empty.csv.gz", gz_bytes(""))),
    _bad_expr("zero_bytes.csv.gz", lambda ws: ws.write("zero_bytes.csv.gz", b"")),
    _bad_expr("header_only.tsv.gz", lambda ws: ws.write("header_only.tsv.gz", gz_bytes("id\tG1\tG2\n")),
              "empty matrix"),
    _bad_expr("ids_only.csv", lambda ws: ws.write("ids_only.csv", "sample_id\nS00\nS01\n"), "empty matrix"),
    _bad_expr("zero_bytes.parquet", lambda ws: ws.write("zero_bytes.parquet", b"")),
    _bad_expr("no_rows.parquet", lambda ws: ws.parquet(ws.expr.iloc[:0], "no_rows.parquet"), "empty matrix"),
    _bad_expr("id_column_only.parquet", lambda ws: ws.arrow({"sample_id": list(ws.expr.index)}, "id_column_only.parquet"),
              "empty matrix"),
    _bad_expr("zero_bytes.h5ad", lambda ws: ws.write("zero_bytes.h5ad", b"")),
    _bad_expr("no_genes.h5ad", lambda ws: ws.h5ad(np.zeros((N_SAMPLES, 0)), "no_genes.h5ad", var_names=[]),
              "empty matrix"),
    _bad_expr("no_samples.h5ad", lambda ws: ws.h5ad(np.zeros((0, N_GENES)), "no_samples.h5ad",
                                                    obs=pd.DataFrame(index=pd.Index([], dtype=str))), "empty matrix"),
    # duplicated ids
    _bad_expr("dup_gene.tsv", lambda ws: ws.csv(renamed(ws.expr, genes={"G07": "G03"}), "dup_gene.tsv"),
              "duplicate gene id 'G03'"),
    _bad_expr("dup_gene.csv.gz", lambda ws: ws.csv(renamed(ws.expr, genes={"G07": "G03"}), "dup_gene.csv.gz"),
              "duplicate gene id 'G03'"),
    _bad_expr("dup_gene_after_strip.csv", lambda ws: ws.csv(renamed(ws.expr, genes={"G07": " G03 "}),
                                                              "dup_gene_after_strip.csv"), "duplicate gene id 'G03'"),
    _bad_expr("dup_sample.parquet", lambda ws: ws.parquet(renamed(ws.expr, samples={"S09": "S04"}), "dup_sample.parquet"),
              "duplicate sample id 'S04'"),
    _bad_expr("dup_sample.h5ad", lambda ws: ws.h5ad(name="dup_sample.h5ad", obs=pd.DataFrame(
        index=[*list(ws.expr.index)[:-1], "S04"])), "duplicate sample id 'S04'"),
    _bad_expr("dup_gene_rows.tsv", lambda ws: ws.csv(renamed(ws.expr, genes={"G07": "G03"}).T, "dup_gene_rows.tsv"),
              "duplicate gene id 'G03'", extra_args=("--genes-as-rows",)),
    # non-numeric cells
    _bad_expr("text.tsv", lambda ws: ws.csv(with_cell(ws.expr, "S07", "G13", "high"), "text.tsv"),
              "'high'", "sample 'S07'", "gene 'G13'"),
    _bad_expr("decimal_comma.tsv", lambda ws: ws.csv(with_cell(ws.expr, "S02", "G01", "3,25"), "decimal_comma.tsv"),
              "'3,25'"),
    _bad_expr("text.csv.gz", lambda ws: ws.csv(with_cell(ws.expr, "S11", "G05", "n.d."), "text.csv.gz"), "'n.d.'"),
    _bad_expr("bool_column.parquet", lambda ws: ws.arrow({"sample_id": list(ws.expr.index),
                                                          **{g: ws.expr[g].to_numpy() for g in ws.expr.columns[:-1]},
                                                          "G19": [True, False] * (N_SAMPLES // 2)},
                                                         "bool_column.parquet"), "'G19'", "bool"),
    _bad_expr("timestamp_column.parquet", lambda ws: ws.arrow(
        {"sample_id": list(ws.expr.index), **{g: ws.expr[g].to_numpy() for g in ws.expr.columns[:-1]},
         "G19": pd.date_range("2024-01-01", periods=N_SAMPLES, freq="D")}, "timestamp_column.parquet"),
        "'G19'", "timestamp"),
    _bad_expr("mixed_text.parquet", lambda ws: ws.parquet(with_cell(ws.expr, "S03", "G02", "bad").astype(
        {"G02": str}), "mixed_text.parquet"), "'bad'"),
    _bad_expr("strlayer.h5ad", lambda ws: _h5ad_string_layer(ws), "layer 'counts'", extra_args=("--layer", "counts")),
    _bad_expr("strx.h5ad", lambda ws: _h5ad_string_x(ws), "layer 'labels'", extra_args=("--layer", "labels")),
    _bad_expr("no_x.h5ad", lambda ws: _h5ad_without_x(ws), "no X matrix", "--layer"),
    _bad_expr("bool_x.h5ad", lambda ws: ws.h5ad(ws.expr.to_numpy() > 4, "bool_x.h5ad"), "booleans"),
    # NaN / inf
    _bad_expr("nan.parquet", lambda ws: ws.parquet(with_cell(ws.expr, "S05", "G02", np.nan).astype(float),
                                                   "nan.parquet"), "sample 'S05'", "gene 'G02'"),
    _bad_expr("inf.parquet", lambda ws: ws.parquet(with_cell(ws.expr, "S06", "G03", -np.inf).astype(float),
                                                   "inf.parquet"), "sample 'S06'", "gene 'G03'"),
    _bad_expr("nan_dense.h5ad", lambda ws: ws.h5ad(with_cell(ws.expr, "S01", "G01", np.nan).to_numpy(float),
                                                    "nan_dense.h5ad"), "sample 'S01'", "gene 'G01'"),
    _bad_expr("inf_sparse.h5ad", lambda ws: ws.h5ad(with_cell(ws.expr, "S08", "G09", np.inf).to_numpy(float),
                                                     "inf_sparse.h5ad", sparse_x=True), "sample 'S08'", "gene 'G09'"),
    _bad_expr("neg_inf_text.tsv", lambda ws: ws.csv(with_cell(ws.expr, "S12", "G12", "-inf"), "neg_inf_text.tsv"),
              "sample 'S12'", "gene 'G12'"),
    _bad_expr("na_token.csv", lambda ws: ws.csv(with_cell(ws.expr, "S13", "G14", "NA"), "na_token.csv"),
              "sample 'S13'", "gene 'G14'"),
    # ragged rows
    _bad_expr("extra_field.csv", lambda ws: ws.write("extra_field.csv", text_matrix(ws).replace(
        "\nS04,", "\nS04,1.0,", 1)), "same number of fields"),
    _bad_expr("short_row.tsv", lambda ws: ws.write("short_row.tsv", "\n".join(
        line.rsplit("\t", 3)[0] if line.startswith("S04") else line
        for line in text_matrix(ws, "\t").splitlines()) + "\n"), "S04"),
    # binary garbage with the right extension
    _bad_expr("garbage.csv", lambda ws: ws.write("garbage.csv", garbage())),
    _bad_expr("garbage.tsv.gz", lambda ws: ws.write("garbage.tsv.gz", gzip.compress(garbage(), mtime=0))),
    _bad_expr("garbage.csv.gz", lambda ws: ws.write("garbage.csv.gz", garbage())),
    _bad_expr("garbage.parquet", lambda ws: ws.write("garbage.parquet", garbage())),
    _bad_expr("garbage.h5ad", lambda ws: ws.write("garbage.h5ad", garbage())),
    _bad_expr("latin1.csv", lambda ws: ws.write("latin1.csv", text_matrix(ws).replace("G05", "G\xe9").encode("latin-1"))),
    _bad_expr("utf16.tsv", lambda ws: ws.write("utf16.tsv", text_matrix(ws, "\t").encode("utf-16"))),
    # wrong extension
    _bad_expr("parquet_named.csv", lambda ws: ws.parquet(name="parquet_named.csv")),
    _bad_expr("h5ad_named.tsv", lambda ws: ws.h5ad(name="h5ad_named.tsv")),
    _bad_expr("csv_named.parquet", lambda ws: ws.write("csv_named.parquet", text_matrix(ws))),
    _bad_expr("csv_named.h5ad", lambda ws: ws.write("csv_named.h5ad", text_matrix(ws))),
    _bad_expr("plain_named.csv.gz", lambda ws: ws.write("plain_named.csv.gz", text_matrix(ws))),
    _bad_expr("gzip_named.csv", lambda ws: ws.write("gzip_named.csv", gz_bytes(text_matrix(ws)))),
    _bad_expr("matrix.json", lambda ws: ws.write("matrix.json", "{}"), "unknown file format"),
    # truncated / corrupt
    _bad_expr("cut.tsv.gz", lambda ws: cut(ws.csv(name="cut.tsv.gz")), "Re-create"),
    _bad_expr("crc.csv.gz", lambda ws: corrupt(ws.csv(name="crc.csv.gz"))),
    _bad_expr("cut.parquet", lambda ws: cut(ws.parquet(name="cut.parquet"))),
    _bad_expr("flipped.parquet", lambda ws: corrupt(ws.parquet(name="flipped.parquet"))),
    _bad_expr("cut.h5ad", lambda ws: cut(ws.h5ad(name="cut.h5ad"))),
    # HDF5 keeps no checksum of the data, so rot in the values is invisible; rot in the superblock is not
    _bad_expr("flipped.h5ad", lambda ws: corrupt_at(ws.h5ad(name="flipped.h5ad"), 8)),
    # identifiers that break every TSV downstream, and huge ones
    _bad_expr("tab_gene.csv", lambda ws: ws.csv(renamed(ws.expr, genes={"G04": "G\t04"}), "tab_gene.csv"),
              "gene id", "tab"),
    _bad_expr("newline_sample.csv", lambda ws: ws.csv(renamed(ws.expr, samples={"S04": "S\n04"}),
                                                        "newline_sample.csv"), "sample id"),
    _bad_expr("ctrl_gene.parquet", lambda ws: ws.parquet(renamed(ws.expr, genes={"G02": "G\x0702"}),
                                                         "ctrl_gene.parquet"), "gene id", "control"),
    _bad_expr("tab_var.h5ad", lambda ws: ws.h5ad(name="tab_var.h5ad",
                                                  var_names=[*list(ws.expr.columns)[:-1], "G\t19"]), "gene id"),
    _bad_expr("nul_in_sample.csv", lambda ws: ws.write("nul_in_sample.csv", text_matrix(ws).replace(
        "\nS04,", "\nS\x0004,", 1))),
    _bad_expr("empty_gene_id.csv", lambda ws: ws.write("empty_gene_id.csv", text_matrix(ws).replace(
        ",G05,", ",,", 1)), "empty gene id"),
    _bad_expr("huge_dup.tsv", lambda ws: ws.csv(renamed(ws.expr, genes={"G01": HUGE, "G02": HUGE}), "huge_dup.tsv"),
              "duplicate gene id"),
    _bad_expr("huge_text.csv", lambda ws: ws.csv(with_cell(ws.expr, "S01", "G01", "x" * 10_000), "huge_text.csv"),
              "non-numeric"),
    # nothing to learn
    _bad_expr("constant.csv", lambda ws: ws.csv(ws.expr * 0 + 1.5, "constant.csv"), "all 20 genes are constant"),
    _bad_expr("constant_sparse.h5ad", lambda ws: ws.h5ad(np.zeros((N_SAMPLES, N_GENES)), "constant_sparse.h5ad",
                                                          sparse_x=True), "constant"),
    # orientation confusion
    _bad_expr("genes_by_samples.csv", lambda ws: ws.csv(ws.expr.T, "genes_by_samples.csv"), "--genes-as-rows"),
    _bad_expr("h5ad_rows.h5ad", lambda ws: ws.h5ad(name="h5ad_rows.h5ad"), "--genes-as-rows",
              extra_args=("--genes-as-rows",)),
]


@pytest.mark.parametrize("case", [c.param() for c in EXPRESSION_CASES])
def test_expression_file(case, make_ws):
    _run_case(case, make_ws)


# ============================================================================================ labels
def _bad_labels(name: str, make, *needles, extra_args=(), label_column="condition", expression=None,
                **kw) -> Case:
    """A train case whose --labels is ``make(ws)``."""
    def build(ws):
        return ws.train(labels=make(ws), label_column=label_column, extra=extra_args,
                        expression=expression(ws) if expression else None)
    return Case(name, build, needles=needles, **kw)


def _labels_with(ws, name, **changes) -> Path:
    frame = ws.labels.copy()
    for column, (rows, value) in changes.items():
        frame.loc[frame["sample_id"].isin(rows), column] = value
    return ws.table(frame, name)


def _labels_ids(ws, name, mapping) -> Path:
    frame = ws.labels.copy()
    frame["sample_id"] = [mapping.get(s, s) for s in frame["sample_id"]]
    return ws.table(frame, name)


def _two_samples(ws) -> Path:
    return ws.csv(ws.expr.iloc[:2], "two.csv")


NFC, NFD = "S\u00e4m", "Sa\u0308m"  # one name, composed and decomposed: equal on screen, not as strings

LABEL_CASES = [
    _bad_labels("label_column_absent_csv", lambda ws: ws.table(ws.labels, "labels.csv"), "labels.csv",
                "'subtype' not found", "condition", label_column="subtype"),
    _bad_labels("sample_id_column_absent", lambda ws: ws.labels_path, "'barcode' not found", "--sample-id-column",
                extra_args=("--sample-id-column", "barcode")),
    _bad_labels("label_is_the_id_column", lambda ws: ws.labels_path, "'sample_id' not found", label_column="sample_id"),
    _bad_labels("only_id_column", lambda ws: ws.table(ws.labels[["sample_id"]], "ids.tsv"), "ids.tsv", "not found"),
    _bad_labels("one_class_after_strip", lambda ws: _labels_with(ws, "strip.tsv", condition=(
        list(ws.labels["sample_id"][ws.labels["condition"] == "b"]), " a ")), "strip.tsv", "single class ('a')"),
    _bad_labels("one_sample_per_class", lambda ws: ws.table(ws.labels.iloc[:2], "two.tsv"), "two.tsv",
                "fewer than the 3 CV folds", expression=_two_samples),
    _bad_labels("one_sample", lambda ws: ws.table(ws.labels.iloc[:1], "one.tsv"), "one.tsv", "single class",
                expression=lambda ws: ws.csv(ws.expr.iloc[:1], "one.csv")),
    _bad_labels("na_token_labels", lambda ws: _labels_with(ws, "na.tsv", condition=(["S03"], "NA")), "na.tsv",
                "no value", "'S03'"),
    _bad_labels("nan_token_labels", lambda ws: _labels_with(ws, "nan.tsv", condition=(["S08", "S09"], "NaN")),
                "2 sample(s) have no value"),
    _bad_labels("no_shared_ids_drop_unmatched", lambda ws: _labels_ids(ws, "other.tsv", {
        s: f"X{s}" for s in ws.labels["sample_id"]}), "no sample id is shared", extra_args=("--drop-unmatched",)),
    _bad_labels("unicode_normalisation", lambda ws: _labels_ids(ws, "nfd.tsv", {"S05": NFD}), "nfd.tsv",
                "do not match", expression=lambda ws: ws.csv(renamed(ws.expr, samples={"S05": NFC}), "nfc.csv")),
    _bad_labels("dup_sample_csv", lambda ws: _labels_ids(ws, "dup.csv", {"S07": "S06"}), "dup.csv",
                "duplicate sample id 'S06'"),
    _bad_labels("dup_sample_after_strip", lambda ws: _labels_ids(ws, "dupstrip.tsv", {"S07": " S06 "}),
                "duplicate sample id 'S06'"),
    _bad_labels("dup_obs_h5ad", lambda ws: ws.h5ad(name="dupobs.h5ad", obs=pd.DataFrame(
        {"condition": ws.labels["condition"].to_numpy()}, index=[*ws.labels["sample_id"][:-1], "S00"])),
        "dupobs.h5ad", "duplicate sample id 'S00'"),
    _bad_labels("h5ad_labels_without_column", lambda ws: ws.h5ad(name="nolab.h5ad"), "nolab.h5ad", "not found"),
    _bad_labels("empty_labels", lambda ws: ws.write("empty.tsv", ""), "empty.tsv"),
    _bad_labels("header_only_labels", lambda ws: ws.write("header.tsv", "sample_id\tcondition\n"), "header.tsv",
                "not in labels"),
    _bad_labels("garbage_labels", lambda ws: ws.write("garbage.tsv", garbage(seed=3)), "garbage.tsv"),
    _bad_labels("parquet_labels", lambda ws: ws.labels.to_parquet(ws.path("labels.parquet")) or ws.path(
        "labels.parquet"), "labels.parquet", "CSV or TSV"),
    _bad_labels("ragged_labels", lambda ws: ws.write("ragged.csv", "sample_id,condition\nS00,a\nS01,b,extra,more\n"),
                "ragged.csv"),
    _bad_labels("latin1_labels", lambda ws: ws.write("latin1.tsv", "sample_id\tcondition\nS00\t\xe9t\xe9\n".encode(
        "latin-1")), "latin1.tsv"),
    _bad_labels("labels_is_directory", lambda ws: ws.path("labels_dir.tsv").mkdir() or ws.path("labels_dir.tsv"),
                "is a directory"),
    _bad_labels("tab_in_label_id", lambda ws: _labels_ids(ws, "tabid.csv", {"S04": "S\t04"}), "tabid.csv",
                "sample id", "tab"),
    _bad_labels("newline_in_label_id", lambda ws: _labels_ids(ws, "nlid.csv", {"S04": "S0\n4"}), "nlid.csv",
                "newline"),
    _bad_labels("tab_in_class_name", lambda ws: _labels_with(ws, "tabclass.csv", condition=(
        list(ws.labels["sample_id"][ws.labels["condition"] == "b"]), "b\tx")), "tabclass.csv", "'b\\tx'",
        "Rename the class"),
    _bad_labels("csv_named_tsv", lambda ws: ws.write("commas.tsv", "sample_id,condition\nS00,a\nS01,b\n"),
                "commas.tsv", "'condition' not found", "','-separated"),
    _bad_labels("excel_na_labels", lambda ws: _labels_with(ws, "excel.tsv", condition=(["S10", "S11"], "#N/A")),
                "excel.tsv", "2 sample(s) have no value"),
    _bad_labels("covariate_is_the_label", lambda ws: ws.labels_path, "'condition' is also listed in data.covariates",
                extra_args=("--config", "@data:\n  covariates: [batch, condition]\n")),
    _bad_labels("labelled_row_without_id", lambda ws: ws.write("noid.tsv", ws.labels_path.read_text() + "\tb\tx\n"),
                "noid.tsv", "empty sample id"),
    _bad_labels("huge_unknown_ids", lambda ws: _labels_ids(ws, "huge.tsv", {"S01": "S" * 10_000}), "huge.tsv",
                "more characters"),
    _bad_labels("regression_text_labels", lambda ws: ws.labels_path, "must be numeric for regression",
                extra_args=("--config", "@task: regression\n")),
    _bad_labels("covariate_blanks", lambda ws: _labels_with(ws, "blank_cov.tsv", batch=(["S02", "S17"], "")),
                "blank_cov.tsv", "covariate column 'batch'", "2 sample(s)", "'S02'",
                extra_args=("--config", "@data:\n  covariates: [batch]\n")),
    _bad_labels("covariate_absent", lambda ws: ws.labels_path, "covariate column 'site'", "data.covariates",
                extra_args=("--config", "@data:\n  covariates: [site]\n")),
]


def _materialise(ws: Workspace, args: list) -> list:
    """``@TEXT`` after --config becomes a config file holding TEXT."""
    out = list(args)
    for i, a in enumerate(out):
        if isinstance(a, str) and a.startswith("@") and i and out[i - 1] == "--config":
            out[i] = ws.write(f"config_{i}.yaml", a[1:])
    return out


@pytest.mark.parametrize("case", [c.param() for c in LABEL_CASES])
def test_labels(case, make_ws):
    _run_case(case, make_ws)


# =========================================================================================== configs
def _bad_config(name: str, text, *needles, command="train", **kw) -> Case:
    def build(ws):
        cfg = ws.write("config.yaml", text)
        if command == "select":
            return ws.select(extra=("--config", cfg))
        return ws.train(extra=("--config", cfg))
    return Case(name, build, needles=("config.yaml",) + needles, **kw)


def _bomb(levels: int = 5, width: int = 9) -> str:
    """A small "billion laughs": anchors defined inline in one value, 9**5 leaves once expanded."""
    node = "&a0 [" + ", ".join(["x"] * width) + "]"
    for i in range(1, levels):
        node = f"&a{i} [{node}, {', '.join([f'*a{i - 1}'] * (width - 1))}]"
    return f"seed: {node}\n"


CONFIG_CASES = [
    _bad_config("unknown_nested_key", "data:\n  label_colum: condition\n", "'data.label_colum'",
                "Did you mean 'data.label_column'?"),
    _bad_config("seed_text", "seed: abc\n", "'seed'"),
    _bad_config("n_jobs_list", "n_jobs: [1]\n", "'n_jobs'"),
    _bad_config("bool_text", "preprocess:\n  standardize: maybe\n", "'preprocess.standardize'"),
    _bad_config("section_not_mapping", "cv: 5\n", "cv"),
    _bad_config("params_not_mapping", "model:\n  params: [1, 2]\n", "model.params"),
    _bad_config("fdr_above_one", "select:\n  fdr: 1.5\n", "'select.fdr'"),
    _bad_config("fdr_zero", "select:\n  fdr: 0\n", "'select.fdr'"),
    _bad_config("repeats_zero", "cv:\n  n_repeats: 0\n", "'cv.n_repeats'"),
    _bad_config("seed_negative", "seed: -1\n", "'seed'"),
    _bad_config("min_set_size_zero", "report:\n  min_set_size: 0\n", "'report.min_set_size'"),
    _bad_config("tolerance_zero", "explain:\n  additivity_tolerance: 0\n", "'explain.additivity_tolerance'"),
    _bad_config("list_document", "- a\n- b\n"),
    _bad_config("scalar_document", "just a string\n"),
    _bad_config("number_document", "42\n"),
    _bad_config("garbage_config", garbage(512, seed=5)),
    _bad_config("latin1_config", "# r\xe9glages\nseed: 1\n".encode("latin-1")),
    _bad_config("tab_indented", "cv:\n\tn_splits: 3\n", "malformed YAML"),
    _bad_config("huge_model_name", "model:\n  name: " + "m" * 10_000 + "\n", "'model.name'"),
    _bad_config("huge_unknown_key", "? " + "k" * 10_000 + "\n: 1\n", "unknown config key"),
    _bad_config("alias_bomb", _bomb(), "alias"),
    _bad_config("alias_plain", "seed: &s 3\ncv:\n  n_splits: *s\n", "alias"),
    _bad_config("duplicate_key", "seed: 1\nseed: 2\n", "seed"),
    _bad_config("fdr_nan", "select:\n  fdr: .nan\n", "select.fdr"),
    _bad_config("tolerance_inf", "explain:\n  additivity_tolerance: .inf\n", "additivity_tolerance"),
    _bad_config("seed_2_40_train", f"seed: {2 ** 40}\n", "seed"),
    _bad_config("seed_2_70_select", f"seed: {2 ** 70}\n", "seed", command="select"),
]


def _config_dir(ws):
    d = ws.path("conf.yaml")
    d.mkdir()
    return ws.train(extra=("--config", d))


CONFIG_CASES += [
    Case("config_is_a_directory", _config_dir, needles=("conf.yaml", "directory")),
]


@pytest.mark.parametrize("case", [c.param() for c in CONFIG_CASES])
def test_config(case, make_ws):
    _run_case(case, make_ws)


# ======================================================================================= GMT, gene map
def _report_gmt(name: str, make, *needles, extra=(), **kw) -> Case:
    def build(ws):
        return ws.report(gene_sets=make(ws), extra=extra)
    return Case(name, build, needles=needles, model=True, **kw)


def _report_map(name: str, make, *needles, extra=(), **kw) -> Case:
    def build(ws):
        gmt = ws.write("sets.gmt", "SET_A\tna\tG00\tG01\tG02\nSET_B\tna\tG03\tG04\tG05\n")
        return ws.report(gene_sets=gmt, gene_map=make(ws), extra=("--min-set-size", "2", *extra))
    return Case(name, build, needles=needles, model=True, **kw)


def _gz(text: str) -> bytes:
    return gzip.compress(text.encode(), mtime=0)


GOOD_GMT = "".join(f"SET_{k}\tna\t" + "\t".join(f"G{j:02d}" for j in range(k, k + 6)) + "\n" for k in range(8))

GMT_CASES = [
    _report_gmt("empty_gmt", lambda ws: ws.write("empty.gmt", ""), "empty.gmt", "no gene sets"),
    _report_gmt("comments_only_gmt", lambda ws: ws.write("comments.gmt", "# sets\n\n# none\n"), "no gene sets"),
    _report_gmt("one_field_line", lambda ws: ws.write("one.gmt", "SET_A\n"), "one.gmt", "line 1"),
    _report_gmt("no_genes_line", lambda ws: ws.write("nogenes.gmt", GOOD_GMT + "SET_X\tdesc\t\t\n"), "line 9"),
    _report_gmt("space_separated", lambda ws: ws.write("spaces.gmt", "SET_A na G00 G01 G02\n"), "line 1"),
    _report_gmt("duplicate_set_names", lambda ws: ws.write("dup.gmt", GOOD_GMT + GOOD_GMT.splitlines()[2] + "\n"),
                "dup.gmt", "'SET_2' already defined at line 3"),
    _report_gmt("huge_duplicate_name", lambda ws: ws.write("hugedup.gmt", ("S" * 10_000 + "\tna\tG00\n") * 2),
                "hugedup.gmt", "already defined"),
    _report_gmt("control_char_set_name", lambda ws: ws.write("ctrl.gmt", GOOD_GMT + "SET\x1bX\tna\tG00\tG01\n"),
                "ctrl.gmt", "control"),
    _report_gmt("garbage_gmt", lambda ws: ws.write("garbage.gmt", garbage(seed=7)), "garbage.gmt"),
    _report_gmt("not_gzip_gmt_gz", lambda ws: ws.write("plain.gmt.gz", GOOD_GMT), "plain.gmt.gz"),
    _report_gmt("truncated_gmt_gz", lambda ws: ws.write("cut.gmt.gz", _gz(GOOD_GMT * 50)[:300]), "cut.gmt.gz"),
    _report_gmt("corrupt_gmt_gz", lambda ws: ws.write("crc.gmt.gz", flip_middle(_gz(GOOD_GMT * 50))), "crc.gmt.gz"),
    _report_gmt("bom_gmt_duplicate", lambda ws: ws.write("bom.gmt", "\ufeff" + GOOD_GMT + GOOD_GMT.splitlines()[0]
                                                          + "\n"), "bom.gmt", "'SET_0' already defined at line 1"),
    _report_gmt("missing_gmt", lambda ws: ws.path("absent.gmt"), "absent.gmt", "not found"),
    # sets that overlap the genes but are all below --min-set-size (3 and 2 measured genes): an empty gene-set
    # table would read as "no pathway involved", so it is refused like a file sharing no gene (issue 12)
    _report_gmt("all_sets_below_min_size", lambda ws: ws.write("small.gmt", "SET_A\tna\tG00\tG01\n"
                                                               "SET_B\tna\tG02\tG03\tG04\tNOT_MEASURED\n"),
                "small.gmt", "no gene set can be tested", "largest: 3", "--min-set-size",
                extra=("--min-set-size", "5")),
    _report_gmt("no_overlap_with_genes", lambda ws: ws.write("human.gmt", "P53_PATHWAY\tna\tTP53\tMDM2\tCDKN1A\n"
                                                             "DNA_REPAIR\tna\tBRCA1\tBRCA2\tATM\n"),
                "human.gmt", "none of the", "--gene-map"),
]

MAP_CASES = [
    _report_map("empty_map", lambda ws: ws.write("map.tsv", ""), "map.tsv"),
    _report_map("one_column_map", lambda ws: ws.write("map1.tsv", "probe\nG00\nG01\n"), "map1.tsv",
                "id column and a symbol column"),
    _report_map("map_matches_nothing", lambda ws: ws.write("mapx.tsv", "probe\tsymbol\nX1\tTP53\nX2\tMDM2\n"),
                "mapx.tsv", "no column"),
    _report_map("map_id_column_absent", lambda ws: ws.write("mapc.tsv", "probe\tsymbol\nG00\tTP53\n"), "mapc.tsv",
                "'probe_id' not found", extra=("--config", "@report:\n  gene_map_id_column: probe_id\n")),
    _report_map("map_symbol_column_absent", lambda ws: ws.write("maps.tsv", "probe\tsymbol\nG00\tTP53\n"),
                "maps.tsv", "'hgnc' not found", extra=("--config", "@report:\n  gene_map_symbol_column: hgnc\n")),
    _report_map("garbage_map", lambda ws: ws.write("mapg.tsv", garbage(seed=9)), "mapg.tsv"),
    _report_map("map_wrong_format", lambda ws: ws.write("map.xlsx", garbage(seed=11)), "map.xlsx"),
]


def _group_file(name: str, text: str, *needles) -> Case:
    def build(ws):
        groups = ws.write(name, text)
        cfg = ws.write("groups.yaml", f"select:\n  groups: file\n  group_file: {groups}\n")
        return ws.select(extra=("--config", cfg))
    return Case(f"group_file_{name}", build, needles=(name,) + needles)


GROUP_CASES = [
    _group_file("nomatch.tsv", "gene_id\tgroup\nTP53\tg1\nMDM2\tg1\n", "no gene", "G00"),
    _group_file("nocols.tsv", "gene\tcluster\nG00\tg1\n", "'gene_id' and 'group'"),
    _group_file("empty_groups.tsv", "", "empty_groups.tsv"),
]


@pytest.mark.parametrize("case", [c.param() for c in GMT_CASES + MAP_CASES + GROUP_CASES])
def test_gene_sets_maps_groups(case, make_ws):
    _run_case(case, make_ws)


# =========================================================================================== bundles
def _bad_bundle(name: str, edit, *needles, command="explain", **kw) -> Case:
    def build(ws):
        edit(ws)
        if command == "evaluate":
            truth = ws.write("truth.tsv", "gene_id\nG00\n")
            ranking = ws.write("ranking.tsv", "gene_id\trank\n" + "".join(f"G{j:02d}\t{j + 1}\n" for j in range(20)))
            return ["evaluate", "--truth", truth, "--ranking", ranking, "--expression", ws.expr_path, "--labels",
                    ws.labels_path, "--model", ws.train_dir, "--out", ws.out, "--k", "2"]
        return ws.explain()
    return Case(name, build, needles=needles, model=True, **kw)


def _edit_manifest(ws, change):
    p = ws.train_dir / "model.json"
    manifest = json.loads(p.read_text())
    p.write_text(json.dumps(change(manifest)))


def _rm(p: Path):
    p.unlink()


BUNDLE_CASES = [
    _bad_bundle("no_manifest", lambda ws: _rm(ws.train_dir / "model.json"), "not a model bundle"),
    _bad_bundle("no_model_file", lambda ws: _rm(ws.train_dir / "model.skops"), "not a model bundle"),
    _bad_bundle("manifest_bad_json", lambda ws: (ws.train_dir / "model.json").write_text("{'task': "),
                "model.json"),
    _bad_bundle("manifest_binary", lambda ws: (ws.train_dir / "model.json").write_bytes(garbage(256, 2)),
                "model.json"),
    _bad_bundle("model_bytes_changed", lambda ws: (ws.train_dir / "model.skops").write_bytes(garbage(2048, 4)),
                "sha256"),
    _bad_bundle("model_is_garbage_but_signed", lambda ws: (
        (ws.train_dir / "model.skops").write_bytes(garbage(2048, 4)),
        _edit_manifest(ws, lambda m: {**m, "model_sha256": __import__("hashlib").sha256(
            (ws.train_dir / "model.skops").read_bytes()).hexdigest()})), "model.skops"),
    _bad_bundle("genes_differ_from_expression", lambda ws: None, "missing", "Use the same genes"),
    _bad_bundle("model_dir_missing", lambda ws: shutil.rmtree(ws.train_dir), "not a model bundle"),
    _bad_bundle("evaluate_manifest_bad_json", lambda ws: (ws.train_dir / "model.json").write_text("[1, "),
                "model.json", command="evaluate"),
    _bad_bundle("manifest_is_a_list", lambda ws: _edit_manifest(ws, lambda m: [m]), "model.json"),
    _bad_bundle("manifest_without_gene_ids", lambda ws: _edit_manifest(
        ws, lambda m: {k: v for k, v in m.items() if k != "gene_ids"}), "gene_ids"),
]
# the genes case reads a matrix whose genes were renamed
_genes_case = next(c for c in BUNDLE_CASES if c.id == "genes_differ_from_expression")
_genes_case.build = lambda ws: ws.explain(expression=ws.csv(renamed(ws.expr, genes={"G03": "OTHER"}), "other.csv"))


@pytest.mark.parametrize("case", [c.param() for c in BUNDLE_CASES])
def test_bundles(case, make_ws):
    _run_case(case, make_ws)


# ========================================================================================== --out states
def _out_file(ws):
    f = ws.write("result", "my notes\n")
    return ws.train(out=f)


def _out_in_proc(ws):
    return ws.train(out=Path("/proc") / f"iml_corpus_{os.getpid()}" / "out")


def _out_user_dir_named_like_output(ws):
    ws.write("out/cv_metrics.tsv/mine.txt", "keep me\n")
    return ws.train()


def _out_input_named_like_output(ws):
    labels = ws.out / "oof_predictions.tsv"
    ws.out.mkdir()
    shutil.copy(ws.labels_path, labels)
    return ws.train(labels=labels)


def _output_name_is_symlink(ws):
    # out/model.json is a link to a directory of the user's: writing through it would land outside --out
    target = ws.path("elsewhere")
    target.mkdir()
    ws.write("elsewhere/keep.txt", "keep me\n")
    ws.out.mkdir()
    os.symlink(target, ws.out / "model.json")
    return ws.train()


def _select_into_train_dir(ws):
    return ws.select(extra=()) [:-0 or None] if False else [*ws.select()[:ws.select().index("--out")],
                                                           "--out", ws.train_dir, "--jobs", "1"]


OUT_CASES = [
    Case("out_is_a_file", _out_file, needles=("result", "is a file")),
    Case("out_parent_refuses_mkdir", _out_in_proc, needles=("/proc", "iml_corpus_", "Check the path")),
    Case("out_user_dir_named_like_output", _out_user_dir_named_like_output),
    Case("out_input_named_like_output", _out_input_named_like_output),
    Case("output_name_is_symlink_to_dir", _output_name_is_symlink),
    Case("select_out_is_train_dir", _select_into_train_dir, model=True),
]


@pytest.mark.parametrize("case", [c.param() for c in OUT_CASES])
def test_out_states(case, make_ws):
    _run_case(case, make_ws)


def _listing_names_user_file(ws):
    ws.write("out/notes.txt", "my notes\n")
    ws.write("out/.iml-outputs.json", json.dumps(["notes.txt"]))
    return ws.train()


def test_listing_never_deletes_a_user_file(make_ws):
    """A .iml-outputs.json naming a file the tool did not write (no matching sha256) must not delete it."""
    ws = make_ws()
    outcome = run_inprocess(_listing_names_user_file(ws))
    assert outcome.code == 0, outcome.stderr
    assert (ws.out / "notes.txt").read_text() == "my notes\n"


# ================================================================================= real subprocesses
SUBPROCESS_IDS = ["crc.csv.gz", "strlayer.h5ad", "tab_gene.csv", "no_overlap_with_genes"]


@pytest.mark.parametrize("case", [c.param() for c in EXPRESSION_CASES + LABEL_CASES + CONFIG_CASES + GMT_CASES
                                  if c.id in SUBPROCESS_IDS])
def test_real_subprocess(case, make_ws):
    """The same contract through ``python -m iml_genomics`` (real stderr, warnings, exit code)."""
    _run_case(case, make_ws, runner=run_subprocess)


def test_subprocess_ids_exist():
    ids = {c.id for c in EXPRESSION_CASES + LABEL_CASES + CONFIG_CASES + GMT_CASES}
    assert set(SUBPROCESS_IDS) <= ids


def test_corpus_size():
    """Issue 14 asks for at least 100 cases of our own."""
    n = sum(len(c) for c in (EXPRESSION_CASES, LABEL_CASES, CONFIG_CASES, GMT_CASES, MAP_CASES, GROUP_CASES,
                             BUNDLE_CASES, OUT_CASES, OTHER_CASES))
    assert n >= 100, n


# ======================================================================= what must still be accepted
def test_bom_and_covariates_are_accepted(make_ws):
    """A UTF-8 byte-order mark and trailing empty rows (Excel) are not ids; complete covariates pass."""
    ws = make_ws()
    expr = ws.path("bom.csv")
    expr.write_bytes(b"\xef\xbb\xbf" + ws.expr_path.read_bytes())
    labels = ws.path("bom_labels.tsv")
    labels.write_bytes(b"\xef\xbb\xbf" + ws.labels_path.read_bytes() + b"\t\t\n \t\t\n")  # + Excel's empty rows
    cfg = ws.write("cov.yaml", "data:\n  covariates: [batch]\n")
    outcome = run_inprocess(ws.train(expression=expr, labels=labels, extra=(
        "--sample-id-column", "sample_id", "--config", cfg)))
    assert outcome.code == 0, outcome.stderr
    oof = pd.read_csv(ws.out / "oof_predictions.tsv", sep="\t")
    assert sorted(oof["sample_id"]) == sorted(ws.labels["sample_id"])


def test_group_file_matching_some_genes_is_accepted(make_ws):
    """The no-match refusal does not fire when part of the file matches (the others are their own group)."""
    ws = make_ws()
    groups = ws.write("groups.tsv", "gene_id\tgroup\nG00\tg1\nG01\tg1\nTP53\tg2\n")
    cfg = ws.write("groups.yaml", f"select:\n  groups: file\n  group_file: {groups}\n")
    outcome = run_inprocess(ws.select(extra=("--config", cfg)))
    assert outcome.code == 0, outcome.stderr
    table = pd.read_csv(ws.out / "knockoff_selection.tsv", sep="\t")
    assert table.loc[table["gene_id"] == "G00", "group"].iloc[0] == table.loc[table["gene_id"] == "G01", "group"].iloc[0]


# ====================================================================================== the helpers
def test_show_id_escapes_and_elides():
    from iml_genomics.io.ids import show_id as shorten

    assert shorten("TP53") == "TP53"
    assert shorten("G\t1\n\x07") == "G\\t1\\n\\x07"
    long = "A" * 5000 + "MIDDLE" + "Z" * 5000
    out = shorten(long)
    assert len(out) <= 220 and out.startswith("AAA") and out.endswith("ZZZ") and "MIDDLE" not in out
    assert f"[{len(long) - 160} more characters]" in out
    assert shorten("x" * 200) == "x" * 200  # at the limit: unchanged


@pytest.mark.parametrize("ident, word", [("G\t1", "a tab"), ("G\n1", "a newline"), ("G\x001", "a control"),
                                          ("G\u20281", "a control"), ("", "empty")])
def test_check_ids_refuses(ident, word):
    from iml_genomics.errors import InputDataError
    from iml_genomics.io.readers import check_ids

    with pytest.raises(InputDataError, match=word) as err:
        check_ids(["G0", ident], "m.csv", "gene")
    assert "position 2" in str(err.value) and "\n" not in str(err.value).replace("\\n", "")


def test_check_ids_accepts_unicode_and_spaces():
    from iml_genomics.io.readers import check_ids

    check_ids(["\u03b1-actin", "HLA-DRB1*15:01", "gene with spaces", "Säm"], "m.csv", "gene")


# ============================================================== evaluate, report inputs, simulate, run
def _evaluate(ws, *, truth="gene_id\nG00\nG01\n", ranking=None, selection=None, extra=()):
    args = ["evaluate", "--truth", truth if isinstance(truth, Path) else ws.write("truth.tsv", truth)]
    if ranking is not None:
        args += ["--ranking", ranking if isinstance(ranking, Path) else ws.write("ranking.tsv", ranking)]
    if selection is not None:
        args += ["--selection", selection if isinstance(selection, Path) else ws.write("selection.tsv", selection)]
    return [*args, "--out", ws.out, *extra]


RANKING = "gene_id\trank\n" + "".join(f"G{j:02d}\t{j + 1}\n" for j in range(N_GENES))

OTHER_CASES = [
    Case("evaluate_truth_empty", lambda ws: _evaluate(ws, truth="", ranking=RANKING), needles=("truth.tsv",)),
    Case("evaluate_truth_header_only", lambda ws: _evaluate(ws, truth="gene_id\n", ranking=RANKING),
         needles=("truth.tsv", "no genes")),
    Case("evaluate_truth_corrupt_gz", lambda ws: _evaluate(ws, truth=ws.write("truth.tsv.gz", flip_middle(
        _gz("gene_id\n" + "".join(f"G{j:02d}\n" for j in range(2000))))), ranking=RANKING),
        needles=("truth.tsv.gz",)),
    Case("evaluate_ranking_without_gene_id", lambda ws: _evaluate(ws, ranking="gene\trank\nG00\t1\n"),
         needles=("ranking.tsv", "'gene_id'")),
    Case("evaluate_ranking_duplicate_gene", lambda ws: _evaluate(ws, ranking="gene_id\trank\nG00\t1\nG00\t2\n"),
         needles=("G00",)),
    Case("evaluate_ranking_garbage", lambda ws: _evaluate(ws, ranking=ws.write("rank.tsv", garbage(seed=12))),
         needles=("rank.tsv",)),
    Case("evaluate_selection_without_gene_id", lambda ws: _evaluate(ws, selection="gene\tselected\nG00\tTrue\n"),
         needles=("selection.tsv", "'gene_id'")),
    Case("evaluate_nothing_to_score", lambda ws: _evaluate(ws), needles=("nothing to score",)),
    Case("report_inputs_not_a_step_dir", lambda ws: ["report", "--inputs", ws.path("empty_dir").mkdir() or
                                                      ws.path("empty_dir"), "--out", ws.out],
         needles=("empty_dir", "not an output directory")),
    Case("report_cv_metrics_missing_column", lambda ws: (ws.train_dir.joinpath("cv_metrics.tsv").write_text(
        "fold\tauroc\n0\t0.5\n"), ws.report())[1], needles=("cv_metrics.tsv", "'split'"), model=True),
    Case("report_provenance_bad_json", lambda ws: (ws.train_dir.joinpath("provenance.json").write_text(
        "{not json"), ws.report())[1], needles=("provenance.json",), model=True),
    Case("report_provenance_is_a_list", lambda ws: (ws.train_dir.joinpath("provenance.json").write_text(
        "[1, 2]"), ws.report())[1], needles=("provenance.json",), model=True),
    Case("simulate_semi_synthetic_garbage", lambda ws: [
        "simulate", "--family", "semi-synthetic", "--expression", ws.write("real.csv", garbage(seed=13)),
        "--out", ws.out], needles=("real.csv",)),
    Case("simulate_semi_synthetic_tab_id", lambda ws: [
        "simulate", "--family", "semi-synthetic", "--expression", ws.csv(renamed(ws.expr, genes={"G01": "G\t1"}),
                                                                         "tabid.csv"), "--out", ws.out],
        needles=("tabid.csv", "tab")),
    Case("run_without_expression", lambda ws: ["run", ws.write("run.yaml", "seed: 1\n"), "--out", ws.out],
         needles=("run.yaml", "data.expression")),
    Case("run_expression_garbage", lambda ws: ["run", ws.write("run.yaml", (
        f"data:\n  expression: {ws.write('g.csv.gz', garbage(seed=14))}\n  labels: {ws.labels_path}\n"
        f"  label_column: condition\n")), "--out", ws.out], needles=("g.csv.gz",)),
    Case("run_unknown_step", lambda ws: ["run", ws.write("run.yaml", (
        f"data:\n  expression: {ws.expr_path}\n  labels: {ws.labels_path}\n  label_column: condition\n")),
        "--out", ws.out, "--steps", "train,trian"], needles=("trian",)),
]


@pytest.mark.parametrize("case", [c.param() for c in OTHER_CASES])
def test_other_commands(case, make_ws):
    _run_case(case, make_ws)


def test_cli_caps_any_error_line():
    """The net under the core's shortening: over-long words and over-long lines from any message are cut."""
    from iml_genomics.cli import _one_line

    word = _one_line("f.csv: bad id '" + "Q" * 5000 + "'. Rename it.")
    assert len(word) < 400 and word.endswith("Rename it.") and "more characters" in word
    spaced = _one_line("f.yaml: key 'x' got [" + "1, " * 5000 + "]. Fix the value.")
    assert len(spaced) <= 2100 and spaced.startswith("f.yaml: key 'x'") and spaced.endswith("Fix the value.")
    assert _one_line("a\tb\n  c") == "a b c"


def test_out_probe_leaves_nothing(make_ws):
    """The --out writability probe creates and removes its directory: a refused run leaves no trace in --out."""
    ws = make_ws()
    ws.out.mkdir()
    ws.write("out/mine.txt", "mine\n")
    args = ws.train(expression=ws.write("empty.csv", ""))
    before = snapshot(ws.root)
    outcome = run_inprocess(args)
    assert_refused(outcome, before, ws.root, ["empty.csv", "empty matrix"])


def test_h5ad_layer_of_numbers_as_text_still_reads(make_ws):
    """Only non-numeric text is refused: a layer of numbers stored as strings reads as before."""
    from iml_genomics.io import read_expression

    ws = make_ws()
    p = ws.h5ad(name="numtext.h5ad", layers={"counts": ws.expr.to_numpy().astype(str)})
    X, samples, genes, _ = read_expression(p, layer="counts")
    np.testing.assert_array_equal(X, ws.expr.to_numpy())
    assert samples == list(ws.expr.index) and genes == list(ws.expr.columns)
