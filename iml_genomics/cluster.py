"""Running under a batch scheduler (SLURM): what a job was granted, and what a rule should ask for.

Two uses:

* Inside a SLURM job, a step compares the memory SLURM granted it (``SLURM_MEM_PER_NODE`` or
  ``SLURM_MEM_PER_CPU`` x ``SLURM_CPUS_ON_NODE``) with its own estimate (``pipeline.estimate_resources``,
  the numbers ``run --dry-run`` prints) and refuses at once, in one line, when the grant is smaller,
  instead of being killed part-way (where the cluster enforces memory) or swapping a shared node
  (where it does not). Snakemake's retry then asks for more (``mem_mb`` grows with ``attempt``).
  ``IML_GENOMICS_IGNORE_SLURM_MEM=1`` runs anyway (the estimate is an upper bound).
* The Snakefile's ``resources:`` ask for that same estimate (:func:`rule_mem_mb`), and refuse, with a
  clear error, a rule whose threads or memory exceed the largest node of the partition (``sinfo``),
  which SLURM would otherwise leave PENDING for ever.

No click here (core); the CLI calls :func:`check_granted_memory`.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess

from iml_genomics.errors import ResourceError

IGNORE_ENV = "IML_GENOMICS_IGNORE_SLURM_MEM"
MiB = 1024**2


def granted_memory_bytes(environ=None) -> int | None:
    """Memory SLURM granted this job, in bytes, or None outside a SLURM allocation.

    ``SLURM_MEM_PER_NODE`` (``--mem``) and ``SLURM_MEM_PER_CPU`` (``--mem-per-cpu``, times the CPUs
    on this node) are in megabytes (SLURM's MB are MiB).
    """
    env = os.environ if environ is None else environ
    if "SLURM_JOB_ID" not in env:
        return None
    try:
        if env.get("SLURM_MEM_PER_NODE"):
            return int(env["SLURM_MEM_PER_NODE"]) * MiB
        if env.get("SLURM_MEM_PER_CPU"):
            cpus = int(env.get("SLURM_CPUS_ON_NODE") or env.get("SLURM_CPUS_PER_TASK") or 1)
            return int(env["SLURM_MEM_PER_CPU"]) * cpus * MiB
    except ValueError:
        return None  # a variable SLURM did not write: no grant to check against
    # Snakemake's in-job step (snakemake-executor-plugin-slurm-jobstep) runs the rule under `srun` with every
    # SLURM_* variable but the job id removed: ask the controller what the job was given.
    return _job_memory_from_scontrol(env["SLURM_JOB_ID"])


_UNIT_MB = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024**2}


def _job_memory_from_scontrol(job_id: str) -> int | None:
    """The job's memory from ``scontrol show job`` (its TRES ``mem=``), in bytes; None if unknown."""
    import re

    if shutil.which("scontrol") is None or not str(job_id).isdigit():
        return None
    try:
        out = subprocess.run(["scontrol", "--oneliner", "show", "job", str(job_id)], capture_output=True, text=True,
                             timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"\bTRES=\S*?\bmem=([0-9.]+)([KMGT])", out)
    if not match:
        return None
    return int(float(match.group(1)) * _UNIT_MB[match.group(2)] * MiB)


def step_estimate(cfg, expression, step: str):
    """The ``run --dry-run`` estimate (a ``pipeline.StepEstimate``) of ``step`` for this config and matrix, read
    from its header (shape, and the stored values of a sparse ``.h5ad``); None for an unknown step."""
    from iml_genomics import pipeline as pl

    n_samples, n_genes = pl.peek_shape(expression, genes_as_rows=cfg.data.orientation == "genes_x_samples")
    for e in pl.estimate_resources(cfg, n_samples, n_genes, n_jobs=cfg.n_jobs, nnz=pl.peek_nnz(expression)):
        if e.step == step:
            return e
    return None


def step_estimate_bytes(cfg, expression, step: str) -> int | None:
    """The ``run --dry-run`` peak-memory estimate of ``step`` for this config and matrix (header only)."""
    estimate = step_estimate(cfg, expression, step)
    return estimate.peak_memory_bytes if estimate is not None else None
    return None


def check_granted_memory(cfg, expression, step: str, environ=None) -> None:
    """Refuse to start ``step`` in a SLURM job granted less memory than the step's estimate.

    Raises
    ------
    ResourceError
        Inside a SLURM job (``SLURM_JOB_ID`` set) whose grant is below the estimate, unless
        ``IML_GENOMICS_IGNORE_SLURM_MEM=1``. Exit code 2, one line naming both numbers.
    """
    env = os.environ if environ is None else environ
    granted = granted_memory_bytes(env)
    if granted is None or env.get(IGNORE_ENV) == "1":
        return
    need = step_estimate_bytes(cfg, expression, step)
    if need is not None and need > granted:
        from iml_genomics.pipeline import format_bytes

        raise ResourceError(
            f"needs about {format_bytes(need)} (the `run --dry-run` estimate for {expression}) but SLURM "
            f"job {env['SLURM_JOB_ID']} was granted {format_bytes(granted)}; ask for at least "
            f"{-(-need // MiB)} MB (mem_mb / sbatch --mem), or set {IGNORE_ENV}=1 to run anyway.")


@functools.lru_cache(maxsize=8)
def slurm_node_limits(partition: str | None = None) -> tuple[int, int] | None:
    """(CPUs, memory in MB) of the largest node of ``partition`` (SLURM's default one if None).

    None when ``sinfo`` is not installed or does not answer (no SLURM here: nothing to check).
    """
    if shutil.which("sinfo") is None:
        return None
    cmd = ["sinfo", "--noheader", "--format=%c %m"] + (["--partition", partition] if partition else [])
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    rows = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit() and parts[1].rstrip("+").isdigit():
            rows.append((int(parts[0]), int(parts[1].rstrip("+"))))
    if not rows:
        return None
    return max(r[0] for r in rows), max(r[1] for r in rows)


def rule_mem_mb(cohort: dict, step: str, *, threads: int, attempt: int, first_share: float = 1.0,
                partition: str | None = None, check_node: bool = False) -> int:
    """``mem_mb`` for a Snakemake rule: the step's dry-run estimate x ``attempt`` (x ``first_share``).

    ``cohort`` is the Snakefile's cohort entry (``config``, ``expression``). Attempt 1 asks for
    ``first_share`` x the estimate (1.0 unless a test or a user wants to start lower), attempt k for
    k x that; never less than 256 MB. With ``check_node``, a rule whose threads or memory exceed the
    largest node of the partition raises ``ResourceError`` with the numbers, since SLURM would keep such
    a job PENDING without an error.
    """
    from iml_genomics.config import load_config

    cfg = load_config(cohort["config"])
    cfg.n_jobs = threads  # the rule passes --jobs {threads}; the estimate counts workers
    need = step_estimate_bytes(cfg, cohort["expression"], step) or 256 * MiB
    mem_mb = max(256, int(-(-need // MiB) * first_share * attempt))
    if check_node:
        node = slurm_node_limits(partition)
        if node is not None:
            cpus, node_mb = node
            where = f"partition {partition}" if partition else "SLURM's default partition"
            if threads > cpus:
                raise ResourceError(f"rule {step}: {threads} threads, but the largest node of {where} has {cpus} "
                                    f"CPUs (sinfo); lower set-threads for {step} in the profile.")
            if mem_mb > node_mb:
                raise ResourceError(f"rule {step} (attempt {attempt}): needs {mem_mb} MB, but the largest node of "
                                    f"{where} has {node_mb} MB (sinfo); lower preprocess.top_k_variable or "
                                    f"select.n_draws in {cohort['config']}, or use a partition with larger nodes.")
    return mem_mb


#: Margin of a rule's runtime over its time estimate: the estimate is meant within 2x on the calibration machine,
#: and a cluster node may be slower or shared.
RUNTIME_MARGIN = 4.0


def rule_runtime(cohort: dict, step: str, *, threads: int, attempt: int, floor_minutes: int) -> int:
    """``runtime`` (minutes) for a Snakemake rule: ``RUNTIME_MARGIN`` x the step's dry-run time estimate, at least
    ``floor_minutes``, times ``attempt`` (a job killed at its time limit is retried with more)."""
    from iml_genomics.config import load_config

    cfg = load_config(cohort["config"])
    cfg.n_jobs = threads
    estimate = step_estimate(cfg, cohort["expression"], step)
    minutes = -(-RUNTIME_MARGIN * (estimate.seconds if estimate is not None else 0.0) // 60)
    return int(max(floor_minutes, minutes) * attempt)

