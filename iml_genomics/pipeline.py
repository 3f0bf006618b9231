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
              "provenance.json"),
    "explain": ("attributions.parquet", "gene_ranking.tsv", "local_explanations.tsv", "interactions.tsv",
                "explain_summary.json", "provenance.json", "audit.tsv"),
    "select": ("knockoff_selection.tsv", "select_summary.json", "provenance.json"),
    "report": ("biomarkers.tsv", "gene_sets.tsv", "group_attributions.parquet", "report.html",
               "report_summary.json", "provenance.json"),
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
    """Estimated peak memory and work of one step."""

    step: str
    peak_memory_bytes: int
    work: str


def estimate_resources(cfg, n_samples: int, n_genes: int, *, n_jobs: int) -> list[StepEstimate]:
    """Rough peak memory and work per step, from the cohort's shape and the config.

    The estimates are deliberately conservative (upper bounds of the dense
    float64 copies each step holds); they exist to refuse a run that cannot
    fit before hours are spent, not to predict to the megabyte.
    """
    from iml_genomics.parallel import effective_n_jobs

    n, p = n_samples, n_genes
    workers = effective_n_jobs(n_jobs)
    matrix = 8 * n * p
    base = 300 * 1024**2  # interpreter, numpy, sklearn, shap
    p_model = min(p, cfg.preprocess.top_k_variable or p)
    n_fits = cfg.cv.n_splits * cfg.cv.n_repeats + 1
    trees = cfg.model.params.get("n_estimators", 300) if "forest" in cfg.model.name or "trees" in cfg.model.name else 0
    train = base + 3 * matrix + workers * 2 * 8 * n * p_model
    train_work = f"{n} samples x {p} genes (model sees {p_model}); {n_fits} fits" + (f" x {trees} trees" if trees else "")
    chunk = min(cfg.explain.chunk_size, n)
    n_refits = cfg.explain.n_bootstraps if cfg.explain.stability == "bootstrap" else cfg.cv.n_splits * cfg.cv.n_repeats
    explain = base + 3 * matrix + workers * (8 * chunk * p_model * 4) + 4 * n * p_model
    explain_work = (f"SHAP {n} samples x {p_model} genes in chunks of {chunk}; {n_refits} refits; "
                    f"permutation {cfg.explain.permutation_repeats} repeats x {p_model} genes")
    # select: X, its knockoffs and [X, X~] (dense), the factor model U (p x k), per parallel draw
    k = cfg.select.factor_rank or min(50, n)
    from iml_genomics.select.covariance import DENSE_MAX_GENES

    dense = cfg.select.covariance == "ledoit_wolf" or (cfg.select.covariance == "auto" and p <= DENSE_MAX_GENES)
    dense_cov = 8 * p * p * 3 if dense else 0
    draws_in_parallel = min(workers, cfg.select.n_draws)
    select = base + 2 * matrix + dense_cov + 8 * p * k * 4 + draws_in_parallel * 4 * matrix
    select_work = f"{cfg.select.n_draws} knockoff draw(s) of {n} x {p}; statistic {cfg.select.statistic} on {n} x {2 * p}"
    report = base + 2 * matrix + 8 * p * 200
    report_work = f"{p} genes; rank test with {cfg.report.n_permutations} permutations"
    return [StepEstimate("train", train, train_work), StepEstimate("explain", explain, explain_work),
            StepEstimate("select", select, select_work), StepEstimate("report", report, report_work)]


def resolve_input(path: str | None, role: str, config_path: str | Path) -> Path | None:
    """A data path from the config, checked to exist."""
    if path is None:
        return None
    p = Path(path)
    if not p.exists():
        raise InputDataError(f"{config_path}: data.{role} '{path}' not found (paths are relative to the working "
                             f"directory {Path.cwd()}). Fix the path in the config.")
    return p
