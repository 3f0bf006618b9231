"""Every bad-input case of `iml-genomics train` fails cleanly; the good layouts agree.

Each error case runs the real command in a subprocess and checks the
contract of issue 2: exit code 2, exactly one non-empty line on stderr that
names the file and the row/column/key and says what to do, no traceback, and
no output directory left behind. The positive cases (genes as rows, gzipped
and plain CSV/TSV, labels from an .h5ad obs column, --drop-unmatched) must
give a ``cv_metrics.tsv`` byte-identical to the plain CSV cohort trained
in-process with the same settings. Model bundles
are tested at the function level (tampered bytes, untrusted types, round trip).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

N_SAMPLES, N_GENES = 30, 20
PREFIX = "iml-genomics train: error: "
# Small, fast, deterministic runs: one worker, three folds.
FAST = ("--jobs", "1", "--cv-folds", "3")


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def run_train(*args, cwd: Path) -> subprocess.CompletedProcess:
    """Run the real ``python -m iml_genomics train ARGS`` in ``cwd``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "iml_genomics", "train", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300, env=env)


def assert_clean_error(proc: subprocess.CompletedProcess, out: Path, *needles: str) -> str:
    """Exit 2, one stderr line containing every needle, no traceback, no output."""
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{proc.stderr}"
    line = lines[0]
    assert proc.returncode == 2, (proc.returncode, line)
    assert line.startswith(PREFIX), line
    for needle in needles:
        assert needle in line, f"{needle!r} not in: {line}"
    assert not out.exists(), f"{out} was created: {sorted(p.name for p in out.rglob('*'))}"
    return line


@pytest.fixture(scope="module")
def cohort() -> tuple[pd.DataFrame, pd.DataFrame]:
    """30 samples x 20 genes, two balanced classes, gene G00 shifted in class 'b'."""
    rng = np.random.default_rng(7)
    samples = [f"S{i:02d}" for i in range(N_SAMPLES)]
    genes = [f"G{j:02d}" for j in range(N_GENES)]
    y = np.array(["a", "b"] * (N_SAMPLES // 2))
    X = rng.gamma(2.0, 2.0, size=(N_SAMPLES, N_GENES))  # non-negative, count-like
    X[y == "b", 0] += 4.0
    expr = pd.DataFrame(np.round(X, 4), index=pd.Index(samples, name="sample_id"), columns=genes)
    labels = pd.DataFrame({"sample_id": samples, "condition": y, "batch": ["x"] * N_SAMPLES})
    return expr, labels


@pytest.fixture
def data(tmp_path, cohort):
    """Write the good cohort into this test's directory; return paths and frames."""
    expr, labels = cohort
    expr.to_csv(tmp_path / "expr.csv")
    labels.to_csv(tmp_path / "labels.tsv", sep="\t", index=False)
    return {"dir": tmp_path, "expr": expr.copy(), "labels": labels.copy(),
            "expr_path": tmp_path / "expr.csv", "labels_path": tmp_path / "labels.tsv",
            "out": tmp_path / "out"}


def train_args(d, *, expression=None, labels="default", label_column="condition", extra=(), fast=FAST, out=None):
    """Arguments for a train run on the test's cohort (overridable pieces)."""
    args = ["--expression", expression or d["expr_path"]]
    labels = d["labels_path"] if labels == "default" else labels
    if labels is not None:
        args += ["--labels", labels]
    if label_column is not None:
        args += ["--label-column", label_column]
    return [*args, "--out", out or d["out"], *fast, *extra]


def write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def write_config(d, text: str, name: str = "config.yaml") -> Path:
    return write_text(d["dir"] / name, text)


def write_h5ad(path: Path, X, obs: pd.DataFrame, var_names) -> Path:
    import warnings

    import anndata as ad

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names warn on construction; that is the point here
        adata = ad.AnnData(X=np.asarray(X, dtype=np.float64), obs=obs,
                           var=pd.DataFrame(index=pd.Index(list(var_names), dtype=str)))
        adata.write_h5ad(path)
    return path


# ---------------------------------------------------------------------------
# Files: missing, unreadable, unknown format, empty
# ---------------------------------------------------------------------------


def test_missing_expression_file(data):
    proc = run_train(*train_args(data, expression=data["dir"] / "nope.csv"), cwd=data["dir"])
    assert_clean_error(proc, data["out"], "nope.csv", "not found", "Check the path")


def test_missing_labels_file(data):
    proc = run_train(*train_args(data, labels=data["dir"] / "nolabels.tsv"), cwd=data["dir"])
    assert_clean_error(proc, data["out"], "nolabels.tsv", "not found", "Check the path")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="running as root: chmod 000 does not block reads (the directory case covers it)")
def test_unreadable_expression_file_chmod(data):
    path = data["expr_path"]
    path.chmod(0)
    try:
        proc = run_train(*train_args(data), cwd=data["dir"])
    finally:
        path.chmod(0o644)
    assert_clean_error(proc, data["out"], "expr.csv", "cannot read", "Permission denied", "chmod")


def test_unreadable_expression_path_is_directory(data):
    bad = data["dir"] / "matrix.csv"
    bad.mkdir()
    proc = run_train(*train_args(data, expression=bad), cwd=data["dir"])
    assert_clean_error(proc, data["out"], "matrix.csv", "is a directory, not a file", "Give the path")


def test_unknown_format(data):
    bad = write_text(data["dir"] / "expr.xlsx", "whatever")
    proc = run_train(*train_args(data, expression=bad), cwd=data["dir"])
    assert_clean_error(proc, data["out"], "expr.xlsx", "unknown file format", ".parquet", "Use one of")


@pytest.mark.parametrize(("content", "advice"), [("", "Check the file and its delimiter"),
                                                  ("sample_id,G00,G01\n", "one row per sample")],
                         ids=["zero_bytes", "header_only"])
def test_empty_matrix(data, content, advice):
    bad = write_text(data["dir"] / "empty.csv", content)
    proc = run_train(*train_args(data, expression=bad), cwd=data["dir"])
    assert_clean_error(proc, data["out"], "empty.csv", "empty matrix", advice)


def test_out_under_a_file_fails_before_work(data):
    blocker = write_text(data["dir"] / "results", "not a directory")
    proc = run_train(*train_args(data, out=blocker / "train"), cwd=data["dir"])
    assert_clean_error(proc, blocker / "train", "'--out'", "is a file", "Choose another path")
    assert blocker.read_text() == "not a directory"


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc (a directory nobody can write in)")
def test_out_refused_by_the_system_is_one_line(data):
    # /proc passes the early check even for root but refuses mkdir: the OSError raised
    # while writing outputs must still end as one error line, exit 2, no traceback.
    out = Path("/proc") / f"iml_genomics_test_{os.getpid()}"
    proc = run_train(*train_args(data, out=out), cwd=data["dir"])
    assert "Traceback" not in proc.stderr and proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(PREFIX) and str(out) in last and "Check the path" in last, last
    # anything before it is progress logging, never an error or warning
    assert all(" iml-genomics INFO " in line for line in proc.stderr.strip().splitlines()[:-1]), proc.stderr


# ---------------------------------------------------------------------------
# Identifiers: duplicate genes (CSV, Parquet, h5ad) and samples (matrix, labels)
# ---------------------------------------------------------------------------


def test_duplicate_gene_ids_csv(data):
    # pandas would rename the second G03 to 'G03.1'; the reader must see the header as written.
    expr = data["expr"]
    cols = list(expr.columns)
    cols[7] = "G03"
    expr.columns = cols
    bad = data["dir"] / "dup.csv"
    expr.to_csv(bad)
    proc = run_train(*train_args(data, expression=bad), cwd=data["dir"])
    assert_clean_error(proc, data["out"], "dup.csv", "duplicate gene id 'G03'", "unique")


def test_duplicate_gene_ids_parquet(data):
    import pyarrow as pa
    import pyarrow.parquet as pq

    expr = data["expr"]
    names = ["sample_id", *expr.columns[:-1], "G05"]
    arrays = [pa.array(list(expr.index)), *(pa.array(expr[c].to_numpy()) for c in expr.columns)]
    bad = data["dir"] / "dup.parquet"
    pq.write_table(pa.Table.from_arrays(arrays, names=names), bad)
    proc = run_train(*train_args(data, expression=bad), cwd=data["dir"])
    assert_clean_error(proc, data["out"], "dup.parquet", "duplicate gene id 'G05'", "unique")


def test_duplicate_gene_ids_h5ad(data):
    expr = data["expr"]
    genes = list(expr.columns)
    genes[-1] = "G02"
    bad = write_h5ad(data["dir"] / "dup.h5ad", expr.to_numpy(), pd.DataFrame(index=list(expr.index)), genes)
    proc = run_train(*train_args(data, expression=bad), cwd=data["dir"])
    assert_clean_error(proc, data["out"], "dup.h5ad", "duplicate gene id 'G02'", "unique")


def test_duplicate_sample_ids_matrix(data):
    expr = data["expr"]
    expr.index = [*expr.index[:-1], "S04"]
    bad = data["dir"] / "dup_samples.csv"
    expr.to_csv(bad)
    proc = run_train(*train_args(data, expression=bad), cwd=data["dir"])
    assert_clean_error(proc, data["out"], "dup_samples.csv", "duplicate sample id 'S04'", "unique")


def test_duplicate_sample_ids_labels(data):
    labels = data["labels"]
    labels.loc[len(labels)] = ["S11", "a", "x"]
    bad = data["dir"] / "dup_labels.tsv"
    labels.to_csv(bad, sep="\t", index=False)
    proc = run_train(*train_args(data, labels=bad), cwd=data["dir"])
    assert_clean_error(proc, data["out"], "dup_labels.tsv", "duplicate sample id 'S11'", "sample_id", "once")


# ---------------------------------------------------------------------------
# Values: non-numeric, NaN/inf, negative under count transforms
# ---------------------------------------------------------------------------


def test_non_numeric_cell(data):
    expr = data["expr"].astype(object)
    expr.loc["S07", "G13"] = "high"
    bad = data["dir"] / "text.csv"
    expr.to_csv(bad)
    proc = run_train(*train_args(data, expression=bad), cwd=data["dir"])
    assert_clean_error(proc, data["out"], "text.csv", "'high'", "sample 'S07'", "gene 'G13'", "must be numbers")


def test_non_numeric_cell_parquet(data):
    expr = data["expr"].astype(object)
    expr["G09"] = expr["G09"].astype(str)
    expr.loc["S21", "G09"] = "n/d"
    bad = data["dir"] / "text.parquet"
    expr.to_parquet(bad)
    proc = run_train(*train_args(data, expression=bad), cwd=data["dir"])
    assert_clean_error(proc, data["out"], "text.parquet", "'n/d'", "sample 'S21'", "gene 'G09'", "must be numbers")


def test_nan_values_count_and_first_location(data):
    expr = data["expr"]
    expr.loc["S05", "G02"] = np.nan
    expr.loc["S20", "G11"] = np.nan
    bad = data["dir"] / "nan.csv"
    expr.to_csv(bad)  # NaN is written as an empty cell
    proc = run_train(*train_args(data, expression=bad), cwd=data["dir"])
    assert_clean_error(proc, data["out"], "nan.csv", "2 missing (NaN) or infinite", "sample 'S05'", "gene 'G02'",
                       "Impute or remove")


def test_infinite_values_tsv_gz(data):
    expr = data["expr"]
    expr.loc["S09", "G17"] = np.inf
    bad = data["dir"] / "inf.tsv.gz"
    expr.to_csv(bad, sep="\t")
    proc = run_train(*train_args(data, expression=bad), cwd=data["dir"])
    assert_clean_error(proc, data["out"], "inf.tsv.gz", "1 missing (NaN) or infinite", "sample 'S09'", "gene 'G17'")


def test_truncated_gzip(data):
    bad = data["dir"] / "cut.csv.gz"
    data["expr"].to_csv(bad)
    raw = bad.read_bytes()
    bad.write_bytes(raw[: len(raw) // 2])
    proc = run_train(*train_args(data, expression=bad), cwd=data["dir"])
    assert_clean_error(proc, data["out"], "cut.csv.gz", "ends early", "Re-create")


@pytest.mark.parametrize("transform", ["log1p", "log1p_cpm"])
def test_negative_values_with_count_transform(data, transform):
    expr = data["expr"]
    expr.loc["S03", "G06"] = -1.5
    expr.loc["S28", "G00"] = -0.1
    bad = data["dir"] / "neg.csv"
    expr.to_csv(bad)
    cfg = write_config(data, f"preprocess:\n  transform: {transform}\n")
    proc = run_train(*train_args(data, expression=bad, extra=("--config", cfg)), cwd=data["dir"])
    assert_clean_error(proc, data["out"], "neg.csv", "2 negative value(s)", f"'{transform}'", "sample 'S03'",
                       "gene 'G06'", "transform: none")


# ---------------------------------------------------------------------------
# Labels: column absent, unmatched samples, missing values, classes
# ---------------------------------------------------------------------------


def test_label_column_absent_lists_available(data):
    proc = run_train(*train_args(data, label_column="subtype"), cwd=data["dir"])
    assert_clean_error(proc, data["out"], "labels.tsv", "'subtype' not found", "condition", "batch",
                       "--label-column")


def test_samples_in_labels_not_in_matrix(data):
    labels = data["labels"]
    for extra in ("X1", "X2", "X3"):
        labels.loc[len(labels)] = [extra, "a", "x"]
    bad = data["dir"] / "more_labels.tsv"
    labels.to_csv(bad, sep="\t", index=False)
    proc = run_train(*train_args(data, labels=bad), cwd=data["dir"])
    assert_clean_error(proc, data["out"], "more_labels.tsv", "3 sample(s) in labels not in the matrix",
                       "'X1', 'X2', 'X3'", "--drop-unmatched")


def test_samples_in_matrix_not_in_labels(data):
    labels = data["labels"].iloc[:-7]  # S23..S29 unlabelled
    bad = data["dir"] / "fewer_labels.tsv"
    labels.to_csv(bad, sep="\t", index=False)
    proc = run_train(*train_args(data, labels=bad), cwd=data["dir"])
    line = assert_clean_error(proc, data["out"], "fewer_labels.tsv", "7 sample(s) in the matrix not in labels",
                              "'S23'", "--drop-unmatched")
    assert "..." in line  # only the first few ids are listed
    assert "'S29'" not in line


def test_drop_unmatched_proceeds_csv_gz(data, reference_metrics):
    # labels lack S28, S29 and have an unknown X1; the matrix is a gzipped CSV
    labels = data["labels"]
    labels = pd.concat([labels.iloc[:-2], pd.DataFrame({"sample_id": ["X1"], "condition": ["a"], "batch": ["x"]})])
    path = data["dir"] / "partial.tsv"
    labels.to_csv(path, sep="\t", index=False)
    expr_gz = data["dir"] / "expr.csv.gz"
    data["expr"].to_csv(expr_gz)
    proc = run_train(*train_args(data, expression=expr_gz, labels=path, extra=("--drop-unmatched",)),
                     cwd=data["dir"])
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    oof = pd.read_csv(data["out"] / "oof_predictions.tsv", sep="\t")
    assert sorted(oof["sample_id"]) == [f"S{i:02d}" for i in range(N_SAMPLES - 2)]
    assert (data["out"] / "cv_metrics.tsv").read_bytes() == reference_metrics(N_SAMPLES - 2)


def test_missing_label_values(data):
    labels = data["labels"]
    labels.loc[labels["sample_id"].isin(["S04", "S17"]), "condition"] = ""
    bad = data["dir"] / "holes.tsv"
    labels.to_csv(bad, sep="\t", index=False)
    proc = run_train(*train_args(data, labels=bad), cwd=data["dir"])
    assert_clean_error(proc, data["out"], "holes.tsv", "2 sample(s) have no value", "'condition'", "'S04'",
                       "Fill them in")


def test_single_class(data):
    labels = data["labels"]
    labels["condition"] = "a"
    bad = data["dir"] / "one_class.tsv"
    labels.to_csv(bad, sep="\t", index=False)
    proc = run_train(*train_args(data, labels=bad), cwd=data["dir"])
    assert_clean_error(proc, data["out"], "one_class.tsv", "'condition'", "single class ('a')", "at least two",
                       "Check that --label-column")


def test_class_smaller_than_folds(data):
    labels = data["labels"]
    labels.loc[labels["sample_id"].isin(["S00", "S02"]), "condition"] = "rare"
    bad = data["dir"] / "rare.tsv"
    labels.to_csv(bad, sep="\t", index=False)
    proc = run_train(*train_args(data, labels=bad), cwd=data["dir"])  # 3 folds
    assert_clean_error(proc, data["out"], "rare.tsv", "class 'rare'", "2 sample(s)", "3 CV folds", "cv.n_splits")


# ---------------------------------------------------------------------------
# Config: YAML syntax, unknown key, wrong type, out of range, model.params
# ---------------------------------------------------------------------------


def test_malformed_yaml_line_number(data):
    cfg = write_config(data, "seed: 1\npreprocess:\n  transform: none\n  standardize: [true\ncv:\n  n_splits: 3\n")
    proc = run_train(*train_args(data, extra=("--config", cfg)), cwd=data["dir"])
    # the parser trips on line 5; the unclosed '[' it names is on line 4
    assert_clean_error(proc, data["out"], "config.yaml", "malformed YAML at line 5", "at line 4)", "Fix the YAML")


def test_unknown_config_key_suggests_nearest(data):
    cfg = write_config(data, "preprocess:\n  transfrom: log1p\n")
    proc = run_train(*train_args(data, extra=("--config", cfg)), cwd=data["dir"])
    assert_clean_error(proc, data["out"], "config.yaml", "unknown config key 'preprocess.transfrom'",
                       "Did you mean 'preprocess.transform'?")


def test_unknown_top_level_section(data):
    cfg = write_config(data, "modle:\n  name: random_forest\n")
    proc = run_train(*train_args(data, extra=("--config", cfg)), cwd=data["dir"])
    assert_clean_error(proc, data["out"], "config.yaml", "'modle'", "'model'")


def test_config_value_wrong_type(data):
    cfg = write_config(data, "cv:\n  n_splits: five\n")
    proc = run_train(*train_args(data, extra=("--config", cfg), fast=("--jobs", "1")), cwd=data["dir"])
    assert_clean_error(proc, data["out"], "config.yaml", "'cv.n_splits'", "must be an integer", "'five'")


def test_config_value_out_of_range(data):
    cfg = write_config(data, "cv:\n  n_splits: 1\n")
    proc = run_train(*train_args(data, extra=("--config", cfg), fast=("--jobs", "1")), cwd=data["dir"])
    assert_clean_error(proc, data["out"], "config.yaml", "'cv.n_splits'", "must be >= 2", "got 1")


def test_config_choice_suggests_nearest(data):
    cfg = write_config(data, "preprocess:\n  transform: log1p_cmp\n")
    proc = run_train(*train_args(data, extra=("--config", cfg)), cwd=data["dir"])
    assert_clean_error(proc, data["out"], "config.yaml", "'preprocess.transform'", "did you mean 'log1p_cpm'")


def test_cli_override_out_of_range(data):
    proc = run_train(*train_args(data, fast=("--jobs", "1", "--cv-folds", "1")), cwd=data["dir"])
    assert_clean_error(proc, data["out"], "option --cv-folds", "'cv.n_splits'", "must be >= 2")


def test_cli_option_wrong_type_is_one_line(data):
    proc = run_train(*train_args(data, fast=("--cv-folds", "three")), cwd=data["dir"])
    assert_clean_error(proc, data["out"], "'--cv-folds'", "'three' is not a valid integer", "--help")


@pytest.mark.parametrize(("yaml_text", "needles"), [
    ("model:\n  name: l1_logistic\n  params:\n    Cc: 0.5\n", ("'Cc'", "did you mean 'C'?")),
    # a value scikit-learn would reject only inside fit (a traceback from the CV loop before)
    ("model:\n  name: random_forest\n  params:\n    n_estimators: -4\n", ("'n_estimators'", "Got -4")),
], ids=["unknown_key", "bad_value"])
def test_model_params_checked_before_reading(data, yaml_text, needles):
    cfg = write_config(data, yaml_text)
    proc = run_train(*train_args(data, extra=("--config", cfg)), cwd=data["dir"])
    assert_clean_error(proc, data["out"], "config.yaml", "model.params", *needles, "Fix model.params")


def test_config_file_missing(data):
    proc = run_train(*train_args(data, extra=("--config", data["dir"] / "absent.yaml")), cwd=data["dir"])
    assert_clean_error(proc, data["out"], "absent.yaml", "config file not found", "--config")


# ---------------------------------------------------------------------------
# .h5ad labels from obs
# ---------------------------------------------------------------------------


@pytest.fixture
def h5ad_cohort(data):
    expr, labels = data["expr"], data["labels"].set_index("sample_id")
    obs = labels.loc[expr.index].copy()
    obs.index = obs.index.astype(str)
    return write_h5ad(data["dir"] / "cohort.h5ad", expr.to_numpy(), obs, expr.columns)


def test_h5ad_obs_column_absent(data, h5ad_cohort):
    proc = run_train(*train_args(data, expression=h5ad_cohort, labels=None, label_column="subtype"),
                     cwd=data["dir"])
    assert_clean_error(proc, data["out"], "cohort.h5ad", "'subtype' not found in obs", "condition", "batch",
                       "--label-column")


# ---------------------------------------------------------------------------
# Positive layouts: all give the same cv_metrics.tsv as the plain CSV
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference_metrics(tmp_path_factory, cohort):
    """cv_metrics.tsv bytes of the plain CSV (samples as rows) for a subset of samples.

    Computed in-process (load_cohort + train_model + write_tsv, the settings of
    the CLI runs here), once per subset and worker; byte equality with a CLI
    run then also checks CLI == library.
    """
    from iml_genomics.config import config_from_dict
    from iml_genomics.io import load_cohort, write_tsv
    from iml_genomics.training import train_model

    cache = {}

    def compute(n_samples: int = N_SAMPLES) -> bytes:
        if n_samples not in cache:
            d = tmp_path_factory.mktemp("reference")
            cohort[0].iloc[:n_samples].to_csv(d / "expr.csv")
            cohort[1].iloc[:n_samples].to_csv(d / "labels.tsv", sep="\t", index=False)
            cfg = config_from_dict({"n_jobs": 1, "data": {"label_column": "condition"}, "cv": {"n_splits": 3}})
            adata = load_cohort(d / "expr.csv", labels=d / "labels.tsv", label_column="condition")
            write_tsv(train_model(adata, cfg).cv.metrics, d / "cv_metrics.tsv")
            cache[n_samples] = (d / "cv_metrics.tsv").read_bytes()
        return cache[n_samples]

    return compute


def _write_layout(data, layout: str) -> tuple[Path, list[str]]:
    expr = data["expr"]
    d = data["dir"]
    if layout == "genes_as_rows_tsv_gz":
        path = d / "expr_t.tsv.gz"
        expr.T.rename_axis("gene_id").to_csv(path, sep="\t")
        return path, ["--genes-as-rows"]
    if layout == "tsv_r_style":
        # Plain TSV as R's write.table makes it: no corner cell, the header is one field short.
        path = d / "expr_r.tsv"
        with open(path, "w") as fh:
            fh.write("\t".join(expr.columns) + "\n")
            for sid, row in expr.iterrows():
                fh.write("\t".join([sid, *map(repr, row.tolist())]) + "\n")
        return path, []
    raise AssertionError(layout)


@pytest.mark.parametrize("layout", ["genes_as_rows_tsv_gz", "tsv_r_style"])
def test_layouts_give_same_metrics(data, reference_metrics, layout):
    path, extra = _write_layout(data, layout)
    proc = run_train(*train_args(data, expression=path, extra=extra), cwd=data["dir"])
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert {p.name for p in data["out"].iterdir() if not p.name.startswith(".")} == {"cv_metrics.tsv", "cv_summary.tsv", "oof_predictions.tsv", "model.skops",
                                                       "model.json", "provenance.json"}
    assert (data["out"] / "cv_metrics.tsv").read_bytes() == reference_metrics()


def test_h5ad_obs_labels_give_same_metrics(data, h5ad_cohort, reference_metrics):
    proc = run_train(*train_args(data, expression=h5ad_cohort, labels=None), cwd=data["dir"])
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert (data["out"] / "cv_metrics.tsv").read_bytes() == reference_metrics()


# ---------------------------------------------------------------------------
# Model bundles: tampered bytes, untrusted types, round trip (function level)
# ---------------------------------------------------------------------------


@pytest.fixture
def bundle(tmp_path, cohort):
    from iml_genomics.config import config_from_dict
    from iml_genomics.models import build_pipeline, save_bundle

    expr, labels = cohort
    cfg = config_from_dict({"model": {"name": "l1_logistic", "params": {"C": 0.5}}})
    pipeline = build_pipeline(cfg, "classification").fit(expr.to_numpy(), labels["condition"].to_numpy())
    directory = tmp_path / "bundle"
    directory.mkdir()
    save_bundle(directory, pipeline, {"task": "classification", "classes": ["a", "b"],
                                      "gene_ids": list(expr.columns), "config": cfg.to_dict()})
    return directory, pipeline, expr.to_numpy()


def test_bundle_round_trip_predicts_identically(bundle):
    from iml_genomics.models import load_bundle

    directory, pipeline, X = bundle
    loaded, manifest = load_bundle(directory)
    assert manifest["classes"] == ["a", "b"] and len(manifest["gene_ids"]) == N_GENES
    np.testing.assert_array_equal(loaded.predict_proba(X), pipeline.predict_proba(X))
    np.testing.assert_array_equal(loaded.predict(X), pipeline.predict(X))


def test_bundle_tampered_bytes_refused(bundle):
    from iml_genomics.errors import BundleError
    from iml_genomics.models import load_bundle

    directory = bundle[0]
    model = directory / "model.skops"
    raw = bytearray(model.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    model.write_bytes(bytes(raw))
    with pytest.raises(BundleError) as err:
        load_bundle(directory)
    msg = str(err.value)
    assert str(model) in msg and "sha256" in msg and "\n" not in msg


def _replace_model(directory: Path, pipeline) -> None:
    """Write ``pipeline`` as the bundle's model and re-sign the manifest (an attacker's edit)."""
    import skops.io as sio

    from iml_genomics.io.writers import file_sha256

    model = directory / "model.skops"
    model.write_bytes(sio.dumps(pipeline))
    manifest = json.loads((directory / "model.json").read_text())
    manifest["model_sha256"] = file_sha256(model)
    (directory / "model.json").write_text(json.dumps(manifest))


def test_bundle_untrusted_function_refused(bundle):
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    from iml_genomics.errors import BundleError
    from iml_genomics.models import load_bundle

    directory, pipeline, _ = bundle
    evil = Pipeline([("run", FunctionTransformer(func=os.system)), *pipeline.steps])
    _replace_model(directory, evil)
    with pytest.raises(BundleError) as err:
        load_bundle(directory)
    msg = str(err.value)
    assert str(directory / "model.skops") in msg and "system" in msg and "refusing" in msg


def test_bundle_untrusted_class_refused(bundle):
    from collections import Counter

    from iml_genomics.errors import BundleError
    from iml_genomics.models import load_bundle

    directory, pipeline, _ = bundle
    pipeline.steps[-1][1].smuggled_ = Counter(a=1)  # a non-sklearn class inside a trusted estimator
    _replace_model(directory, pipeline)
    with pytest.raises(BundleError) as err:
        load_bundle(directory)
    assert "collections.Counter" in str(err.value)


def test_bundle_missing_manifest(bundle):
    from iml_genomics.errors import BundleError
    from iml_genomics.models import load_bundle

    directory = bundle[0]
    (directory / "model.json").unlink()
    with pytest.raises(BundleError, match="not a model bundle"):
        load_bundle(directory)
