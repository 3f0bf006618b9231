"""A real SLURM: the Snakemake profile (configs/slurm) and the dask-jobqueue recipe against slurmctld/slurmd.

The tests marked ``slurm`` start a single-node cluster with ``scripts/local-slurm.sh`` (root, the Debian
packages slurm-wlm and munge) and are deselected by default: ``python -m pytest -m slurm tests/test_slurm.py``
(7-10 minutes on 2 cores; docs/pipeline.md#on-a-cluster). Without slurmctld they skip with one line.
The first tests (no marker) check the granted-memory refusal on environment variables alone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, TEST_DATA, one_line, run_cli

sys.path.insert(0, str(ROOT / "benchmarks"))
from compare_outputs import compare_trees  # noqa: E402

SCRIPT = ROOT / "scripts" / "local-slurm.sh"
STATE = Path(os.environ.get("IML_SLURM_STATE", "/tmp/iml-slurm"))
DEMO = ["--config", str(ROOT / "configs" / "demo.yaml"), "--expression", str(TEST_DATA / "demo_expression.csv.gz"),
        "--labels", str(TEST_DATA / "demo_labels.tsv")]


# ---------------------------------------------------------------------------------------------------------
# The granted-memory check, without a cluster (SLURM's variables are all a step sees of its grant)
# ---------------------------------------------------------------------------------------------------------

def test_granted_memory_is_read_from_slurms_variables():
    from iml_genomics.cluster import granted_memory_bytes

    assert granted_memory_bytes({}) is None  # not in a SLURM job
    assert granted_memory_bytes({"SLURM_MEM_PER_NODE": "100"}) is None  # no job id: not inside an allocation
    assert granted_memory_bytes({"SLURM_JOB_ID": "7", "SLURM_MEM_PER_NODE": "300"}) == 300 * 1024**2
    assert granted_memory_bytes({"SLURM_JOB_ID": "7", "SLURM_MEM_PER_CPU": "100",
                                 "SLURM_CPUS_ON_NODE": "4"}) == 400 * 1024**2
    assert granted_memory_bytes({"SLURM_JOB_ID": "7", "SLURM_MEM_PER_NODE": "lots"}) is None


def _slurm_env(mem_mb: int, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return {**env, "SLURM_JOB_ID": "4242", "SLURM_MEM_PER_NODE": str(mem_mb), **extra}


def test_a_step_granted_less_than_its_estimate_refuses_in_one_line(tmp_path):
    out = tmp_path / "select"
    proc = subprocess.run([sys.executable, "-m", "iml_genomics", "select", *DEMO, "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, env=_slurm_env(200), timeout=120)
    line = one_line(proc, 2, "SLURM job 4242 was granted 200.0 MiB", "needs about", "IML_GENOMICS_IGNORE_SLURM_MEM")
    assert "demo_expression.csv.gz" in line
    assert not out.exists(), "nothing is written"


def test_the_check_passes_a_large_enough_grant_and_can_be_switched_off():
    from iml_genomics.cluster import check_granted_memory, step_estimate_bytes
    from iml_genomics.config import load_config
    from iml_genomics.errors import ResourceError

    cfg = load_config(ROOT / "configs" / "demo.yaml")
    expression = TEST_DATA / "demo_expression.csv.gz"
    need_mb = -(-step_estimate_bytes(cfg, expression, "train") // 1024**2)
    with pytest.raises(ResourceError, match=f"at least {need_mb} MB"):
        check_granted_memory(cfg, expression, "train", {"SLURM_JOB_ID": "1", "SLURM_MEM_PER_NODE": str(need_mb - 1)})
    check_granted_memory(cfg, expression, "train", {"SLURM_JOB_ID": "1", "SLURM_MEM_PER_NODE": str(need_mb)})
    check_granted_memory(cfg, expression, "train", {"SLURM_JOB_ID": "1", "SLURM_MEM_PER_NODE": "10",
                                                   "IML_GENOMICS_IGNORE_SLURM_MEM": "1"})


def test_rule_memory_is_the_estimate_times_the_attempt():
    from iml_genomics.cluster import rule_mem_mb, step_estimate_bytes
    from iml_genomics.config import load_config

    cohort = {"config": str(ROOT / "configs" / "demo.yaml"), "expression": str(TEST_DATA / "demo_expression.csv.gz")}
    cfg = load_config(cohort["config"])
    cfg.override("n_jobs", 2)
    need_mb = -(-step_estimate_bytes(cfg, cohort["expression"], "select") // 1024**2)
    assert rule_mem_mb(cohort, "select", threads=2, attempt=1) == need_mb
    assert rule_mem_mb(cohort, "select", threads=2, attempt=2) == 2 * need_mb
    assert rule_mem_mb(cohort, "select", threads=2, attempt=1, first_share=0.9) == int(need_mb * 0.9)


# ---------------------------------------------------------------------------------------------------------
# A real single-node SLURM
# ---------------------------------------------------------------------------------------------------------

def _status() -> bool:
    return subprocess.run([str(SCRIPT), "status"], capture_output=True, text=True).returncode == 0


@pytest.fixture(scope="module")
def slurm():
    """The cluster of scripts/local-slurm.sh: started here (and stopped after) unless already running."""
    missing = [b for b in ("slurmctld", "slurmd", "munged", "sbatch") if shutil.which(b) is None]
    if missing:
        pytest.skip(f"no SLURM here ({', '.join(missing)} missing): apt-get install slurm-wlm munge, as root")
    if os.geteuid() != 0:
        pytest.skip("a local SLURM needs root (daemons, /etc/slurm/slurm.conf)")
    already = _status()
    if not already:
        started = subprocess.run([str(SCRIPT), "start"], capture_output=True, text=True, timeout=180)
        assert started.returncode == 0, started.stderr
    env = {**os.environ, "SLURM_CONF": str(STATE / "slurm.conf"), "PYTHONPATH": str(ROOT)}
    yield env
    if not already:
        subprocess.run([str(SCRIPT), "stop"], capture_output=True, text=True, timeout=120)


def _cohorts(workdir: Path) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "cohorts.yaml"
    path.write_text(yaml.safe_dump({
        "results": "results", "steps": ["train", "explain", "select", "report"],
        "cohorts": {"demo": {"config": str(ROOT / "configs" / "demo.yaml"),
                             "expression": str(TEST_DATA / "demo_expression.csv.gz"),
                             "labels": str(TEST_DATA / "demo_labels.tsv"),
                             "gene_sets": str(TEST_DATA / "demo_pathways.gmt")}}}))
    return path


TARGET = "results/demo/report/report.html"


def _snakemake(workdir: Path, env: dict, *extra: str, profile: bool = True, wait: bool = True):
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--configfile", str(_cohorts(workdir)),
           "--directory", str(workdir)]
    if profile:
        # as docs/pipeline.md says for a cluster without slurmdbd; the first status check after 5 s, not 40 s
        cmd += ["--profile", str(ROOT / "configs" / "slurm"), "--slurm-status-command", "squeue",
                "--slurm-init-seconds-before-status-checks", "5"]
    cmd += list(extra)
    if wait:
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)
    log = open(workdir / "snakemake.out", "w")  # a file, not a pipe nobody reads while it runs
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)


_SUBMITTED = re.compile(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: .*/rule_(\w+)/")


def _submitted(text: str) -> list[tuple[str, str]]:
    """(rule, SLURM job id) of every job Snakemake submitted, from its own output."""
    return [(rule, jobid) for jobid, rule in _SUBMITTED.findall(text)]


def _jobcomp() -> dict[str, str]:
    """SLURM's own record of every finished job (jobcomp/filetxt, the accounting of a cluster without slurmdbd)."""
    log = STATE / "jobcomp.log"
    text = log.read_text() if log.exists() else ""
    return dict(re.findall(r"JobId=(\d+) .*?JobState=(\w+)", text))


def _wait_for(condition, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def _active_jobs(env) -> list[str]:
    out = subprocess.run(["squeue", "--noheader", "--format=%i", "--states=PENDING,RUNNING,COMPLETING"],
                         capture_output=True, text=True, env=env).stdout
    return out.split()


@pytest.mark.slurm
def test_profile_runs_every_rule_as_a_slurm_job_and_resumes_after_scancel(tmp_path, slurm):
    """Snakemake --profile configs/slurm on the demo: real jobs, resumable, the bytes of a local run."""
    local = tmp_path / "local"
    done_local = _snakemake(local, slurm, "--cores", "2", TARGET, profile=False)
    assert done_local.returncode == 0, done_local.stderr[-3000:]

    work = tmp_path / "slurm"
    model = work / "results" / "demo" / "train" / "model.json"
    explain_log = work / "results" / "logs" / "demo" / "explain.log"
    first = _snakemake(work, slurm, TARGET, wait=False)
    # explain's log appears when its job runs (the rule's shell opens it inside the SLURM job)
    _wait_for(lambda: explain_log.exists() or first.poll() is not None, 600, "the explain job to start")
    assert first.poll() is None, (work / "snakemake.out").read_text()[-3000:]
    assert model.exists(), "train finished before explain started"
    running = _active_jobs(slurm)
    assert running, "explain runs as a SLURM job"
    # the login session dies (Snakemake killed) and the running job is cancelled under it
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    first_out = (work / "snakemake.out").read_text()
    subprocess.run(["scancel", *running], check=True, env=slurm)
    _wait_for(lambda: not _active_jobs(slurm), 120, "the cancelled jobs to leave the queue")
    train_mtime = model.stat().st_mtime_ns
    assert not (work / "results" / "demo" / "explain" / "gene_ranking.tsv").exists()

    assert _snakemake(work, slurm, "--unlock").returncode == 0
    second = _snakemake(work, slurm, TARGET)  # the profile sets rerun-incomplete
    assert second.returncode == 0, second.stderr[-3000:]
    assert model.stat().st_mtime_ns == train_mtime, "train was redone"

    before, after = _submitted(first_out), _submitted(second.stdout + second.stderr)
    assert "train" in dict(before), before
    assert "train" not in {r for r, _ in after}, "the resumed run submitted train again"
    # a cohort with gene sets is reported by the rule that declares gene_sets.tsv (Snakefile)
    assert {r for r, _ in before + after} == {"train", "explain", "select", "report_gene_sets"}
    # every rule was a real SLURM job, and SLURM's job completion log says so
    states = _jobcomp()
    assert states[dict(before)["train"]] == "COMPLETED"
    assert {r: states.get(j) for r, j in after} == {r: "COMPLETED" for r, _ in after}
    assert {states.get(j) for j in running} == {"CANCELLED"}

    problems = compare_trees(local / "results" / "demo", work / "results" / "demo", ignore_command_line=True)
    assert not problems, problems


@pytest.mark.slurm
def test_a_job_granted_too_little_memory_says_so_and_the_retry_succeeds(tmp_path, slurm):
    """select's first attempt asks for 90% of its estimate: refused in the job, retried with 2 x that (180%)."""
    work = tmp_path / "mem"
    done = _snakemake(work, slurm, "results/demo/select/knockoff_selection.tsv",
                      "--config", "mem_first_share={'select': 0.9}")
    text = done.stdout + done.stderr
    assert done.returncode == 0, text[-3000:]
    jobs = _submitted(text)
    assert [r for r, _ in jobs] == ["select", "select"], jobs
    # the profile's show-failed-logs prints the failed attempt's log: the step's one line
    assert re.search(r"needs about [\d.]+ MiB .* but SLURM job " + jobs[0][1] + r" was granted", text), text[-3000:]
    states = _jobcomp()
    assert states[jobs[0][1]] == "FAILED" and states[jobs[1][1]] == "COMPLETED"
    assert (work / "results" / "demo" / "select" / "knockoff_selection.tsv").is_file()


@pytest.mark.slurm
def test_a_rule_larger_than_the_node_is_an_error_not_a_pending_job(tmp_path, slurm):
    cpus = int(subprocess.run(["sinfo", "--noheader", "--format=%c"], capture_output=True, text=True,
                              env=slurm).stdout.split()[0])
    too_many = _snakemake(tmp_path / "threads", slurm, "results/demo/select/knockoff_selection.tsv",
                          "--set-threads", f"select={cpus + 1}")
    assert too_many.returncode != 0
    assert f"rule select: {cpus + 1} threads, but the largest node of SLURM's default partition has {cpus} CPUs" \
        in too_many.stdout + too_many.stderr
    too_big = _snakemake(tmp_path / "mem", slurm, "results/demo/select/knockoff_selection.tsv",
                         "--config", "mem_first_share={'select': 1000}")
    assert too_big.returncode != 0
    assert "but the largest node of SLURM's default partition has" in too_big.stdout + too_big.stderr
    assert not _submitted(too_many.stdout + too_many.stderr + too_big.stdout + too_big.stderr), "nothing submitted"


def _tables(out: Path) -> dict[str, bytes]:
    """Every output file but the provenance and the listing (which record the scheduler and timings)."""
    return {p.name: p.read_bytes() for p in out.iterdir()
            if p.is_file() and p.name not in {"provenance.json", ".iml-outputs.json", ".iml-lock"}}


@pytest.mark.slurm
def test_dask_jobqueue_slurm_cluster_runs_the_steps_tasks_in_slurm_jobs(tmp_path, slurm):
    """The docs' recipe: SLURMCluster on this cluster, train/explain/select --scheduler, local bytes."""
    pytest.importorskip("dask_jobqueue")
    from dask.distributed import Client, SchedulerPlugin
    from dask_jobqueue import SLURMCluster

    class Finished(SchedulerPlugin):
        def __init__(self):
            self.workers = []

        def transition(self, key, start, finish, *args, **kwargs):
            if finish == "memory" and kwargs.get("worker"):
                self.workers.append(kwargs["worker"])

    os.environ["SLURM_CONF"] = slurm["SLURM_CONF"]  # sbatch, run by SLURMCluster in this process
    local, dask = tmp_path / "local", tmp_path / "dask"
    for step in ("train", "explain", "select"):
        extra = ["--model", str(local / "train")] if step == "explain" else []
        run_cli("-q", step, *DEMO, *extra, "--out", local / step, "--jobs", "2")
    with SLURMCluster(cores=1, processes=1, memory="2GB", walltime="00:30:00", interface="lo",
                      log_directory=str(tmp_path / "worker-logs"), local_directory=str(tmp_path / "worker-tmp"),
                      scheduler_options={"dashboard_address": None}) as cluster, Client(cluster) as client:
        recorder = Finished()
        cluster.scheduler.add_plugin(recorder)
        cluster.scale(jobs=2)
        client.wait_for_workers(2, timeout=300)
        job_of = client.run(lambda: os.environ.get("SLURM_JOB_ID"))
        assert all(job_of.values()), job_of
        for step in ("train", "explain", "select"):
            extra = ["--model", str(dask / "train")] if step == "explain" else []
            before = len(recorder.workers)
            run_cli("-q", step, *DEMO, *extra, "--out", dask / step, "--jobs", "2",
                    "--scheduler", cluster.scheduler_address)
            ran = recorder.workers[before:]
            assert ran, f"{step} sent no task to the SLURM workers"
            assert set(ran) <= set(job_of), f"{step}: a task finished outside the SLURM jobs"
            assert _tables(dask / step) == _tables(local / step), f"{step}: bytes differ from the local run"
            recorded = json.loads((dask / step / "provenance.json").read_text())
            assert recorded["config"]["parallel"]["scheduler"] == cluster.scheduler_address
