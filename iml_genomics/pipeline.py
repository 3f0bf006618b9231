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
    path = Path(path)
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


# Calibration of the estimates (docs/benchmarks.md, "Single-cell scale"): memory measured with
# benchmarks/bench_single_cell.py on 20,000 and 100,000 simulated cells x 2,000 genes; times refitted on runs of
# 100,000 cells (several subsample sizes, forests of depth 8 and unbounded, L1 logistic), 3,000 cells and dense
# bulk cohorts on the same 2-core machine with nothing else running (the first fit, at a load of ~10, gave
# times 4-6x too long there), and single-thread CPU times of the fits and Tree SHAP phases. Memory is the
# resident set of the main process plus its joblib workers; time is wall time, scaled by machine_slowdown().
_BASE = 300 * 1024**2            # interpreter, numpy, sklearn, shap, anndata in the main process
_WORKER = 250 * 1024**2          # one loky worker with the same imports
_SECONDS_STEP = 0.8              # a step's fixed cost: imports, provenance, hashing and writing its outputs
_SECONDS_RUN = 3.0               # run's own: interpreter, config, reading the labels
_SECONDS_PER_VALUE_READ = 3e-8   # reading + hashing one stored value of the matrix (12 bytes as CSR float64)
_TREE_FIT = 1e-9                 # s per (tree x cell x level x candidate gene) of a tree fit (see _tree_shape)
_TREE_FIT_DENSE = 3e-8           # the same, times the matrix's share of non-zero values
_LINEAR_FIT = 6e-8               # s per (cell x gene) of one linear fit (its regularisation path included)
_SHAP_KERNEL_LOAD = 1.5          # loading the compiled Tree SHAP kernels from numba's cache
_SHAP_NODE = 3e-8                # s per (row x tree x node) of exact Tree SHAP, times (1 + depth / 16)
_LINEAR_SHAP = 2e-9              # s per (row x gene) of linear SHAP or one linear prediction
_PREDICT_NODE = 5e-8             # s per (row x tree x level) of a tree prediction (permutation importance)
_INTERACTION_GENE = 2.5e-8       # s per (sample x tree x split gene x gene) of shap's interaction values
_INTERACTION_PATH = 2e-9         # s per (sample x tree x split gene x leaf x depth^2) of the same
_SELECT = 3e-7                   # s per (cell x 2 genes) of the knockoff statistic, covariance included
_UNIVARIATE = 1.4e-7             # s per (cell x gene) of the report's per-gene tests and 1,000 permutations
_AGNOSTIC = 1.3e-8               # s per (evaluated row x gene) of a small MLP's forward pass in permutation SHAP
_REPORT_FIXED = 2.0              # the report's gene-set tests, figures and page


def _tree_shape(cfg, n_fit: int) -> tuple[int, int, float] | None:
    """(trees, depth, leaves per tree) the configured tree model will grow on ``n_fit`` samples; None if not trees.

    Read from the registry's own defaults merged with ``model.params`` (a random forest has 300 trees, a
    gradient boosting depth 3); leaves and depth as measured (below). Unbounded trees are unbalanced: their
    deepest path is about 4 log2(leaves).
    """
    import math

    from iml_genomics.models import MODEL_REGISTRY

    spec = MODEL_REGISTRY.get(cfg.model.name)
    if spec is None or spec.kind != "tree":
        return None
    try:
        params = spec[1 if cfg.task == "regression" else 0](0, dict(cfg.model.params)).get_params()
    except (TypeError, ValueError):
        params = dict(cfg.model.params)
    trees = int(params.get("n_estimators") or params.get("max_iter") or 1)
    min_leaf = params.get("min_samples_leaf") or 1
    min_leaf = max(1.0, min_leaf * n_fit if isinstance(min_leaf, float) else float(min_leaf))
    max_depth = params.get("max_depth")
    # measured (single-cell forests of depth 8, 12 and unbounded, min_samples_leaf 1 to 20; a bulk forest of
    # 1,000 samples): a depth cap stops branches long before 2^depth leaves; an unbounded tree stops when its
    # leaves are pure or at min_samples_leaf
    if max_depth:
        leaves = min(2.0 ** max_depth, 3.0 * (n_fit / min_leaf) ** 0.5)
    else:
        leaves = min(n_fit / (2.5 * min_leaf), 0.5 * n_fit ** 0.8)
    if params.get("max_leaf_nodes"):
        leaves = min(leaves, float(params["max_leaf_nodes"]))
    leaves = max(2.0, leaves)
    depth = 4.0 * math.log2(leaves) if not max_depth else float(max_depth)
    depth = max(1.0, min(depth, 4.0 * math.log2(leaves)))
    return trees, int(round(depth)), leaves


#: Median seconds of :func:`machine_slowdown`'s probe on the machine the time constants above were fitted on,
#: with nothing else running (2 cores, 24 GiB; measured with the constants, docs/benchmarks.md).
_PROBE_REFERENCE_SECONDS = 0.032


def _probe_once(X, y, A, v) -> float:
    """One timed pass of single-threaded work of the kinds the steps do: a tree fit, BLAS, a sort."""
    import time

    import numpy as np
    from sklearn.tree import DecisionTreeClassifier
    from threadpoolctl import threadpool_limits

    start = time.perf_counter()
    DecisionTreeClassifier(max_depth=8, random_state=0).fit(X, y)
    with threadpool_limits(1):
        B = A
        for _ in range(3):
            B = np.tanh(A @ B)
    np.sort(v)
    return time.perf_counter() - start


def machine_slowdown(repeats: int = 5) -> float:
    """How many times slower than the calibration machine this machine runs single-threaded work now.

    The time constants of :func:`estimate_resources` were fitted on one machine with nothing else running; the
    same work takes several times longer on a slower or a busy machine (fitted at a load of about 10, the first
    constants came out 5x the quiet times). ``run --dry-run`` therefore times a short probe (about 0.03 s per
    repeat on the calibration machine; the median of ``repeats``) and scales its time estimates by the ratio.
    Clipped to [0.25, 20] so that one odd probe cannot make an estimate absurd.
    """
    import numpy as np

    rng = np.random.default_rng(0)
    X = rng.standard_normal((2000, 20))
    y = (X[:, 0] + X[:, 1] * X[:, 2] + rng.standard_normal(2000) > 0).astype(int)
    A = rng.standard_normal((200, 200)) / 15.0
    v = rng.standard_normal(100_000)
    _probe_once(X, y, A, v)  # first call pays imports and page faults
    times = sorted(_probe_once(X, y, A, v) for _ in range(max(1, repeats)))
    return float(min(20.0, max(0.25, times[len(times) // 2] / _PROBE_REFERENCE_SECONDS)))


def estimate_resources(cfg, n_samples: int, n_genes: int, *, n_jobs: int, nnz: int | None = None,
                       slowdown: float = 1.0) -> list[StepEstimate]:
    """Peak memory and wall time per step, from the cohort's shape and the config.

    Parameters
    ----------
    cfg : iml_genomics.config.Config
    n_samples, n_genes : int
        The matrix's shape (:func:`peek_shape`).
    n_jobs : int
    nnz : int, optional
        Stored values of a sparse matrix (:func:`peek_nnz`); None = dense.
    slowdown : float, default 1.0
        Multiplies every time: :func:`machine_slowdown` for this machine now (``run --dry-run``), 1.0 for the
        calibration machine with nothing else running.

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
    n_t = min(n, cfg.cv.max_samples or n)
    shape = _tree_shape(cfg, n_t)
    tree_model = shape is not None
    trees, depth, leaves = shape if tree_model else (0, 0, 0)

    # train: the subsample (cv.max_samples), copied to every worker; dense models hold dense copies
    dense_model = nnz is None or cfg.model.name in ("gradient_boosting", "hist_gradient_boosting", "mlp") or \
        (cfg.preprocess.standardize and not tree_model and nnz is None)
    x_t = matrix(n_t, p_model, dense=dense_model)
    n_fits = cfg.cv.n_splits * cfg.cv.n_repeats + 1
    train_mem = _BASE + 2 * cohort + pool + max(1, min(workers, n_fits)) * 3 * x_t
    if tree_model:
        # CART's cost: every sample is sorted once per level it passes, on sqrt(p) candidate genes per split
        # (forests) or all of them (boosting, single trees)
        candidates = math.sqrt(p_model) if cfg.model.name in ("random_forest", "extra_trees") else p_model
        if cfg.model.name == "hist_gradient_boosting":
            candidates = p_model / 8.0  # binned histograms: a pass over the values per tree, not a sort
        # sorting continuous values costs more than the few distinct values of sparse counts (measured: 4e-9 s
        # per unit on 10% dense counts, ~3e-8 on dense Gaussian bulk values)
        fit = (_TREE_FIT + _TREE_FIT_DENSE * density) * trees * n_t * min(depth, 1.0 + math.log2(max(2, leaves))) \
            * candidates
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
    # exact Tree SHAP (explain/fast_treeshap.py): every node of every tree per row, O(depth) per node; linear
    # SHAP is one product per (row, gene)
    nodes = 2 * leaves - 1
    do_shap = ec.method in ("shap", "all")
    shap_s = n_e * (_SHAP_NODE * trees * nodes * (1 + depth / 16) if tree_model else _LINEAR_SHAP * p_model)
    shap_s *= do_shap
    if cfg.model.name == "mlp" and ec.method != "permutation":
        # model-agnostic permutation SHAP: 5 antithetic pairs x 2 (genes + 1) coalitions x background rows per
        # explained cell, each a forward pass costing ~genes (measured on the quiet calibration machine: explain
        # 336 s for 200 of 3,000 sparse cells x 500 genes)
        shap_s = n_e * 10 * (p_model + 1) * min(ec.background_size, n_e) * p_model * _AGNOSTIC
    refit_s = n_refits * (fit * n_e / max(1, n_t) if tree_model else _LINEAR_FIT * n_e * p_model)
    # permutation importance (explain/permutation.py): only genes the model uses, one prediction of the held-out
    # rows per (gene, repeat); a forest re-evaluates only the trees that split on the gene
    if tree_model:
        used = min(p_model, trees * leaves)
        trees_per_gene = trees * min(1.0, leaves / p_model) + 1 if cfg.model.name in ("random_forest", "extra_trees") \
            else trees
        predict = _PREDICT_NODE * (depth + 1) * trees_per_gene
    else:
        used = min(p_model, 100) if cfg.model.name in ("l1_logistic", "lasso") else p_model
        predict = _LINEAR_SHAP * p_model
    perm_s = 0.0 if ec.method == "shap" else ec.permutation_repeats * used * n_e * predict
    inter_s = 0.0
    if tree_model and do_shap:
        per_sample = (p_model + 1) ** 2 * n_out * 8
        per_chunk = min(ec.interaction_max_samples, n_e, max(1, (512 * 2**20) // per_sample))
        explain_mem += min(workers, -(-min(n_e, ec.interaction_max_samples) // per_chunk)) * 2.5 * per_sample * per_chunk
        # shap's interaction values: per sample and tree, one conditioned Tree SHAP pass per gene the tree splits
        # on (about one per leaf), each O(leaves x depth^2) plus a pass over a genes-long vector (measured on
        # forests of depth 8 to 65, 500 to 5,000 genes, sparse and dense)
        split_genes = min(p_model, leaves)
        inter_s = min(n_e, ec.interaction_max_samples) * trees * split_genes * (
            _INTERACTION_GENE * p_model + _INTERACTION_PATH * leaves * depth ** 2)
    explain_s = (shap_s + refit_s + perm_s + inter_s) / workers + read_seconds
    if tree_model and do_shap:
        explain_s += _SHAP_KERNEL_LOAD
    explain_work = (f"SHAP {n_e} samples x {p_model} genes in chunks of {chunk}; {n_refits} refits; "
                    f"permutation {ec.permutation_repeats} repeats x {p_model} genes")

    # select: the subsample (select.max_samples) made dense, its knockoffs, [X, X~], the covariance model
    sc = cfg.select
    n_s = min(n, sc.max_samples or n)
    if sc.pseudobulk_by is not None:
        # pseudobulk (select.pseudobulk_by): the labels are not read here, so the profiles are counted as at most
        # n / min_cells and at most 1,000 (500 donors x 2 classes); the sparse sum itself is one pass over X
        n_s = min(n, max(2, n // sc.pseudobulk_min_cells), 1000)
    x_s = 8.0 * n_s * p
    k = sc.factor_rank or min(50, n_s)
    dense = sc.covariance == "ledoit_wolf" or (sc.covariance == "auto" and p <= DENSE_MAX_GENES)
    dense_cov = 8 * p * p * 3 if dense else 0
    draws_in_parallel = min(workers, sc.n_draws)
    select_mem = _BASE + 2 * cohort + pool + 2 * x_s + dense_cov + 8 * p * k * 4 + draws_in_parallel * 4 * x_s
    select_s = _SELECT * n_s * 2 * p * sc.n_draws / draws_in_parallel + read_seconds
    if sc.method == "dcrt":
        select_s *= 1.5  # the distilled CRT's per-gene residual fits: 1.4x knockoffs at p = 20,000 (docs/benchmarks.md)
    select_work = f"{sc.n_draws} knockoff draw(s) of {n_s} x {p}; statistic {sc.statistic} on {n_s} x {2 * p}"

    # report: per-gene tests and the gene-set label-permutation null on every sample (or report.max_samples),
    # both from blocks of about 2^24 values densified one at a time (report/tables.py, report/geneset_blocks.py):
    # a block and its transforms and casts (about 7 blocks' worth, measured: 0.9 GB above the cohort at
    # 100,000 x 2,000), a block of 200 permutations (int32 indices, 1-byte labels, the 0/1 float design) and
    # the block's permuted statistics and p-values
    n_r = min(n, cfg.report.max_samples or n)
    n_perm = cfg.report.n_permutations
    from iml_genomics.report.geneset_blocks import BLOCK_VALUES

    report_mem = (_BASE + 2 * cohort + 7 * 8.0 * min(n_r * p, BLOCK_VALUES) + 13.0 * 200 * n_r
                  + 4 * 8 * p * 200)
    report_s = _REPORT_FIXED + _UNIVARIATE * n_r * p * max(1.0, n_perm / 1000) + read_seconds
    report_work = f"{p} genes; rank test with {cfg.report.n_permutations} permutations"
    startup = _SECONDS_STEP
    return [StepEstimate("train", int(train_mem), train_work, round(slowdown * (train_s + startup + _SECONDS_RUN), 1)),
            StepEstimate("explain", int(explain_mem), explain_work, round(slowdown * (explain_s + startup), 1)),
            StepEstimate("select", int(select_mem), select_work, round(slowdown * (select_s + startup), 1)),
            StepEstimate("report", int(report_mem), report_work, round(slowdown * (report_s + startup), 1))]


def resolve_input(path: str | None, role: str, config_path: str | Path) -> Path | None:
    """A data path from the config, checked to exist."""
    if path is None:
        return None
    p = Path(path)
    if not p.exists():
        raise InputDataError(f"{config_path}: data.{role} '{path}' not found (paths are relative to the working "
                             f"directory {Path.cwd()}). Fix the path in the config.")
    return p
