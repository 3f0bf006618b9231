"""The whole pipeline's bookkeeping: step outputs, fingerprints and resource estimates.

`run` executes train -> explain -> select -> report; a step is skipped when
its declared outputs are all present and its fingerprint (resolved config,
sha256 of its input files, fingerprints of the steps it reads) is the one
recorded by the run that made them.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from iml_genomics.errors import ConfigError, InputDataError

STEPS = ("train", "explain", "select", "report")
# Steps `run` adds when the config asks for them: compare (model.candidates set), before report.
EXTRA_STEPS = ("compare",)

# Files a step always writes; a step whose directory lacks one is incomplete.
STEP_OUTPUTS = {
    "train": ("cv_metrics.tsv", "cv_summary.tsv", "oof_predictions.tsv", "model.skops", "model.json",
              "provenance.json"),
    "explain": ("gene_ranking.tsv", "attributions.parquet", "explain_summary.json", "provenance.json"),
    "select": ("knockoff_selection.tsv", "select_summary.json", "provenance.json"),
    "report": ("biomarkers.tsv", "report.html", "provenance.json"),
    "compare": ("model_comparison.tsv", "model_agreement.tsv", "robust_genes.tsv", "compare_summary.json",
                "provenance.json"),
}
# Files each subcommand may write into --out, checked before any work is done (the
# commit checks the names actually written again). simulate's names depend on --prefix.
OUTPUT_NAMES = {
    "train": ("cv_metrics.tsv", "cv_summary.tsv", "oof_predictions.tsv", "model.skops", "model.json",
              "train_summary.json", "provenance.json"),
    "explain": ("attributions.parquet", "gene_ranking.tsv", "local_explanations.tsv", "interactions.tsv",
                "explain_summary.json", "provenance.json", "audit.tsv",
                # explain.methods (docs/explain.md)
                "surrogate.tsv", "surrogate_rules.txt", "model_rules.txt", "partial_dependence.tsv",
                "attribution_map.tsv", "lime.tsv", "anchors.tsv", "examples.tsv", "prototypes.tsv",
                "integrated_gradients.tsv", "integrated_gradients_local.tsv", "conditional_importance.tsv"),
    "select": ("knockoff_selection.tsv", "select_summary.json", "provenance.json"),
    "report": ("biomarkers.tsv", "biomarkers_columns.tsv", "gene_sets.tsv", "group_attributions.parquet",
               "report.html", "report_summary.json", "summary.txt", "provenance.json"),
    "evaluate": ("selection_metrics.tsv", "ranking_metrics.tsv", "precision_at_k.tsv", "stability.tsv",
                 "stability_pairs.tsv", "prediction_gaps.tsv", "provenance.json"),
    "simulate": ("provenance.json",),
    "run": ("run_state.json", "provenance.json"),
    "compare": ("model_comparison.tsv", "model_agreement.tsv", "robust_genes.tsv", "model_gene_rankings.tsv",
                "model_tuning.tsv", "cv_folds.tsv", "compare_summary.json", "provenance.json"),
}

UPSTREAM = {"train": (), "explain": ("train",), "select": (), "report": ("train", "explain", "select"), "compare": ()}

# Config sections that change each step's results (n_jobs and the scheduler never do).
STEP_SECTIONS = {
    "train": ("seed", "task", "data", "preprocess", "model", "cv", "output"),
    "explain": ("seed", "task", "data", "preprocess", "model", "cv", "explain", "output"),
    "select": ("seed", "task", "data", "preprocess", "model", "select"),
    "report": ("seed", "report", "output"),
    "compare": ("seed", "task", "data", "preprocess", "model", "cv", "explain"),
}


def _sha256_file(path: str | Path) -> str:
    from iml_genomics.io.writers import file_sha256

    return file_sha256(path)


def step_fingerprint(step: str, config: dict, input_files: list[str | Path], upstream: dict[str, str], *,
                     known_sha256: dict[str, str] | None = None) -> str:
    """sha256 over what determines a step's outputs.

    Parameters
    ----------
    step : str
    config : dict
        Resolved configuration (``Config.to_dict()``); only the sections the
        step reads are hashed, so changing ``report.top_k`` does not redo ``train``.
    input_files : list of path
        Files the step reads (hashed by content, not by name or time).
    upstream : dict
        Fingerprints of the steps whose outputs this step reads.
    known_sha256 : mapping of str to str, optional
        Resolved path -> sha256 of files already hashed (each input is hashed once per run).
    """
    import os
    from iml_genomics import __version__

    payload = {
        "step": step,
        "iml_genomics_version": __version__,  # a new release may compute differently
        "config": {k: config.get(k) for k in STEP_SECTIONS[step]},
        "inputs": sorted((known_sha256 or {}).get(os.path.realpath(p)) or _sha256_file(p)
                         for p in input_files if p is not None and Path(p).is_file()),
        "upstream": upstream,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


# per-sample files output.granularity: aggregate never writes (io/step_outputs.py)
PER_SAMPLE_OUTPUTS = frozenset({"oof_predictions.tsv", "attributions.parquet", "local_explanations.tsv"})


def outputs_complete(step: str, directory: str | Path, granularity: str = "full") -> bool:
    """Whether ``directory`` holds every file ``step`` always writes, as that step's last complete commit.

    Besides the names, the directory's listing must say the commit finished,
    name ``step`` as its writer and match every file's sha256, so a directory
    that a kill left mixing two runs, or a file edited since, is redone.
    """
    from iml_genomics.io.writers import verify_step_dir

    directory = Path(directory)
    names = [n for n in STEP_OUTPUTS[step] if granularity == "full" or n not in PER_SAMPLE_OUTPUTS]
    return all((directory / name).is_file() for name in names) and verify_step_dir(directory, step)


def read_run_state(path: str | Path) -> dict:
    """The step fingerprints recorded by earlier runs ({} when none), and the ``h5ad`` record of ``--write-h5ad``.

    An unreadable or malformed file is ignored with a warning (every step is
    then judged out of date and redone); it is never trusted and never a crash.
    """
    import logging

    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return {}
    try:
        data = json.loads(path.read_bytes()) if path.is_file() and path.stat().st_size < (16 << 20) else None
    except (OSError, ValueError):
        data = None
    if isinstance(data, dict):
        state = {step: entry for step, entry in data.items() if step in (*STEPS, *EXTRA_STEPS) and isinstance(entry, dict)
                 and isinstance(entry.get("fingerprint"), str)}
        h5ad = data.get("h5ad")  # the file `run --write-h5ad` wrote (path, sha256): only that one is replaced
        if isinstance(h5ad, dict) and all(isinstance(h5ad.get(k), str) for k in ("path", "sha256")):
            state["h5ad"] = {"path": h5ad["path"], "sha256": h5ad["sha256"]}
        if len(state) == len(data):
            return state
    logging.getLogger("iml_genomics.run").warning(
        "%s: unreadable or malformed; ignored, so every step is checked and redone as needed.", path)
    return state if isinstance(data, dict) else {}


# ---------------------------------------------------------------------------
# Resource estimates (--dry-run, --max-memory)
# ---------------------------------------------------------------------------

_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_memory(text: str) -> int:
    """'8G', '512M', '6GiB', '1.5 GB' -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(?:I?B)?\s*", str(text).upper())
    if not match:
        raise ConfigError(f"--max-memory: cannot read {text!r}; write a size such as 8G or 512M.")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def peek_shape(path: str | Path, *, genes_as_rows: bool = False) -> tuple[int, int]:
    """(n_samples, n_genes) of a matrix file without loading its values."""
    import zlib

    from iml_genomics.errors import InputDataError
    from iml_genomics.io.readers import check_readable, detect_format, open_text

    path = check_readable(path, "expression")
    fmt = detect_format(path)
    try:
        if fmt in ("csv", "tsv"):
            with open_text(path) as fh:
                header = fh.readline()
                rows = sum(1 for line in fh if line.strip())
            cols = len(header.rstrip("\r\n").split("," if fmt == "csv" else "\t")) - 1
        elif fmt == "parquet":
            import pyarrow.parquet as pq

            meta = pq.ParquetFile(path).metadata
            rows, cols = meta.num_rows, meta.num_columns - 1
        else:
            import h5py

            with h5py.File(path, "r") as f:
                x = f["X"]
                shape = x.attrs["shape"] if "shape" in x.attrs else x.shape
                rows, cols = int(shape[0]), int(shape[1])
            genes_as_rows = False
    except (OSError, EOFError, UnicodeDecodeError, zlib.error, ValueError, KeyError) as exc:
        # gzip.BadGzipFile is an OSError, a corrupt deflate stream raises zlib.error; the full reader gives the
        # detailed message, this one only has to refuse in one line before the estimate
        raise InputDataError(f"{path}: cannot read the matrix's shape ({type(exc).__name__}). Is the file complete "
                             f"and in the format its name says?") from None
    return (cols, rows) if genes_as_rows else (rows, cols)


@dataclass
class StepEstimate:
    """Estimated peak memory (main process plus its workers) and wall time of one step."""

    step: str
    peak_memory_bytes: int
    work: str
    seconds: float = 0.0


def peek_nnz(path: str | Path) -> int | None:
    """Stored values of a sparse ``.h5ad`` X (None for a dense matrix or another format), without reading them."""
    if _format_or_none(path) != "h5ad":
        return None
    try:
        import h5py

        with h5py.File(path, "r") as f:
            x = f["X"]
            return int(x["data"].shape[0]) if isinstance(x, h5py.Group) and "data" in x else None
    except (OSError, KeyError, ValueError):
        return None


def _format_or_none(path) -> str | None:
    """The matrix format its name says, or None where the reader would refuse it (it does, in its own words)."""
    from iml_genomics.errors import IMLGenomicsError
    from iml_genomics.io.readers import detect_format

    try:
        return detect_format(path)
    except (IMLGenomicsError, ValueError):
        return None


# Calibration of the estimates (docs/benchmarks.md, "Single-cell scale"): measured with
# benchmarks/bench_single_cell.py on 20,000 and 100,000 simulated cells x 2,000 genes, 2 cores shared with other
# jobs (load ~10). Memory is the resident set of the main process plus its joblib workers; time is wall time.
_BASE = 300 * 1024**2            # interpreter, numpy, sklearn, shap, anndata in the main process
_WORKER = 250 * 1024**2          # one loky worker with the same imports
_SECONDS_STEP = 2.5              # a step's fixed cost: imports, provenance, hashing and writing its outputs
_SECONDS_RUN = 4.0               # run's own: interpreter, config, reading the labels
_SECONDS_PER_VALUE_READ = 2e-7   # reading + hashing one stored value of the matrix (12 bytes as CSR float64)
_TREE_FIT = 3.8e-8               # s per (tree x cell x depth x sqrt(genes)) of a forest fit; depth <= log2(cells)
_LINEAR_FIT = 4e-8               # s per (cell x gene) of one linear fit (its regularisation path included)
_SHAP_TREE = 1.5e-7              # s per (tree x cell x 2^depth) of Tree SHAP, path-dependent
_INTERACTION = 7e-9              # s per (tree x gene^2 x cell) of Tree SHAP interaction values
_SELECT = 1.5e-6                 # s per (cell x 2 genes) of the knockoff statistic, covariance included
_UNIVARIATE = 4e-7               # s per (cell x gene) of the report's per-gene tests and 1,000 permutations
_AGNOSTIC = 1.9e-8               # s per (evaluated row x gene) of a small MLP's forward pass in permutation SHAP
_REPORT_FIXED = 8.0              # the report's gene-set tests, figures and page


def estimate_resources(cfg, n_samples: int, n_genes: int, *, n_jobs: int, nnz: int | None = None) -> list[StepEstimate]:
    """Peak memory and wall time per step, from the cohort's shape and the config.

    Parameters
    ----------
    cfg : iml_genomics.config.Config
    n_samples, n_genes : int
        The matrix's shape (:func:`peek_shape`).
    n_jobs : int
    nnz : int, optional
        Stored values of a sparse matrix (:func:`peek_nnz`); None = dense.

    Returns
    -------
    list of StepEstimate
        train, explain, select, report. Calibrated on measured runs (the constants above); meant to be within
        a factor of 2 of what a run takes, to refuse a run that cannot fit before hours are spent.
    """
    import math

    from iml_genomics.parallel import effective_n_jobs
    from iml_genomics.select.covariance import DENSE_MAX_GENES

    n, p = n_samples, n_genes
    workers = max(1, effective_n_jobs(n_jobs))
    density = min(1.0, nnz / max(1, n * p)) if nnz is not None else 1.0

    def matrix(rows: int, cols: int = p, dense: bool = nnz is None) -> float:
        """Bytes of rows x cols as the steps hold it: float64 dense, or CSR (8 + 4 bytes per stored value)."""
        return 8.0 * rows * cols if dense else 12.0 * density * rows * cols + 8.0 * rows

    cohort = matrix(n)
    read_seconds = _SECONDS_PER_VALUE_READ * (nnz if nnz is not None else n * p)
    pool = _WORKER * workers if workers > 1 else 0
    p_model = min(p, cfg.preprocess.top_k_variable or p)
    tree_model = cfg.model.name in ("random_forest", "extra_trees", "gradient_boosting", "hist_gradient_boosting",
                                    "decision_tree")
    params = cfg.model.params
    trees = int(params.get("n_estimators", 100)) if cfg.model.name not in ("decision_tree",) else 1
    if cfg.model.name == "hist_gradient_boosting":
        trees = int(params.get("max_iter", 100))
    depth = int(params.get("max_depth") or 16)

    # train: the subsample (cv.max_samples), copied to every worker; dense models hold dense copies
    n_t = min(n, cfg.cv.max_samples or n)
    dense_model = nnz is None or cfg.model.name in ("gradient_boosting", "hist_gradient_boosting", "mlp") or \
        (cfg.preprocess.standardize and not tree_model and nnz is None)
    x_t = matrix(n_t, p_model, dense=dense_model)
    n_fits = cfg.cv.n_splits * cfg.cv.n_repeats + 1
    train_mem = _BASE + 2 * cohort + pool + max(1, min(workers, n_fits)) * 3 * x_t
    if tree_model:
        fit = _TREE_FIT * trees * n_t * min(depth, math.log2(max(2, n_t))) * math.sqrt(p_model)
    else:
        fit = _LINEAR_FIT * n_t * p_model * (1 if nnz is None else max(density, 0.05) * 4)
    train_s = fit * n_fits / min(workers, n_fits) + read_seconds
    train_work = f"{n_t} samples x {p} genes (model sees {p_model}); {n_fits} fits" + (f" x {trees} trees" if tree_model else "")
    if n_t < n:
        train_work += f" (a stratified subsample of {n} samples)"

    # explain: SHAP on the subsample (explain.max_samples), interaction values in chunks of <= 512 MiB per worker
    ec = cfg.explain
    n_e = min(n, ec.max_samples or n)
    chunk = min(ec.chunk_size, n_e)
    n_refits = ec.n_bootstraps if ec.stability == "bootstrap" else cfg.cv.n_splits * cfg.cv.n_repeats
    n_out = 2
    explain_mem = _BASE + 2 * cohort + pool + 3 * matrix(n_e, p_model, dense=True) \
        + workers * 8 * chunk * p_model * n_out * 4
    shap_s = n_e * (_SHAP_TREE * trees * 2 ** min(depth, 12) if tree_model else 2e-5 * p_model)
    if cfg.model.name == "mlp" and ec.method != "permutation":
        # model-agnostic permutation SHAP: 5 antithetic pairs x 2 (genes + 1) coalitions x background rows per
        # explained cell, each a forward pass costing ~genes (measured: 346 s at 200 cells x 300 genes, sc18)
        shap_s = n_e * 10 * (p_model + 1) * min(ec.background_size, n_e) * p_model * _AGNOSTIC
    refit_s = n_refits * (fit * n_e / max(1, n_t) if tree_model else _LINEAR_FIT * n_e * p_model)
    perm_s = 0.0 if ec.method == "shap" else ec.permutation_repeats * p_model * n_e * 2e-7 * max(1, trees / 10)
    inter_s = 0.0
    if tree_model:
        per_sample = (p_model + 1) ** 2 * n_out * 8
        per_chunk = min(ec.interaction_max_samples, n_e, max(1, (512 * 2**20) // per_sample))
        explain_mem += min(workers, -(-min(n_e, ec.interaction_max_samples) // per_chunk)) * 2.5 * per_sample * per_chunk
        inter_s = _INTERACTION * trees * p_model**2 * min(n_e, ec.interaction_max_samples)
    explain_s = (shap_s + refit_s + perm_s + inter_s) / workers + read_seconds
    explain_work = (f"SHAP {n_e} samples x {p_model} genes in chunks of {chunk}; {n_refits} refits; "
                    f"permutation {ec.permutation_repeats} repeats x {p_model} genes")

    # select: the subsample (select.max_samples) made dense, its knockoffs, [X, X~], the covariance model
    sc = cfg.select
    n_s = min(n, sc.max_samples or n)
    x_s = 8.0 * n_s * p
    k = sc.factor_rank or min(50, n_s)
    dense = sc.covariance == "ledoit_wolf" or (sc.covariance == "auto" and p <= DENSE_MAX_GENES)
    dense_cov = 8 * p * p * 3 if dense else 0
    draws_in_parallel = min(workers, sc.n_draws)
    select_mem = _BASE + 2 * cohort + pool + 2 * x_s + dense_cov + 8 * p * k * 4 + draws_in_parallel * 4 * x_s
    select_s = _SELECT * n_s * 2 * p * sc.n_draws / draws_in_parallel + read_seconds
    select_work = f"{sc.n_draws} knockoff draw(s) of {n_s} x {p}; statistic {sc.statistic} on {n_s} x {2 * p}"

    # report: per-gene tests over every sample, a block of genes dense at a time (report/tables.py)
    # report: per-gene tests and the gene-set label-permutation null on every sample (or report.max_samples):
    # the null holds the values, their residuals, centred values and squares dense, and the permutations
    n_r = min(n, cfg.report.max_samples or n)
    n_perm = cfg.report.n_permutations
    report_mem = _BASE + 2 * cohort + 4 * 8.0 * n_r * p + 8.0 * n_perm * n_r + 8 * p * 200
    report_s = _REPORT_FIXED + _UNIVARIATE * n_r * p * max(1.0, n_perm / 1000) + read_seconds
    report_work = f"{p} genes; rank test with {cfg.report.n_permutations} permutations"
    startup = _SECONDS_STEP
    return [StepEstimate("train", int(train_mem), train_work, round(train_s + startup + _SECONDS_RUN, 1)),
            StepEstimate("explain", int(explain_mem), explain_work, round(explain_s + startup, 1)),
            StepEstimate("select", int(select_mem), select_work, round(select_s + startup, 1)),
            StepEstimate("report", int(report_mem), report_work, round(report_s + startup, 1))]


def resolve_input(path: str | None, role: str, config_path: str | Path) -> Path | None:
    """A data path from the config, checked to exist."""
    if path is None:
        return None
    p = Path(path)
    if not p.exists():
        raise InputDataError(f"{config_path}: data.{role} '{path}' not found (paths are relative to the working "
                             f"directory {Path.cwd()}). Fix the path in the config.")
    return p
