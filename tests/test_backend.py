"""The parallel Backend: an explicit object, and --scheduler that really sends every step's work to Dask.

The cluster tests start a real dask.distributed LocalCluster on loopback (threads in this process, TCP
between it and the CLI subprocess) and count, from the scheduler's side, the tasks that finished on its
worker while one subcommand ran.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections import Counter

import pytest
import yaml

from conftest import ROOT, TEST_DATA, one_line, run_cli
from iml_genomics import parallel
from iml_genomics.errors import ConfigError
from iml_genomics.parallel import Backend, resolve_backend

UNREACHABLE = "tcp://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused


# ---------------------------------------------------------------------------------------------- the object


def test_backend_is_a_frozen_object_and_there_is_no_module_scheduler():
    backend = Backend.local(2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        backend.scheduler = "tcp://somewhere:8786"
    assert not hasattr(parallel, "_SCHEDULER") and not hasattr(parallel, "set_scheduler")
    assert not hasattr(parallel, "parallel_map")  # one interface: the Backend's methods


def test_a_given_backend_decides_over_n_jobs():
    assert resolve_backend(Backend.local(3), n_jobs=1).workers == 3
    assert resolve_backend(None, n_jobs=2) == Backend.local(2)
    assert Backend.local(None).workers == 1 and Backend.local(-1).workers == (os.cpu_count() or 1)
    assert Backend.local(2).sklearn_n_jobs == 2
    with pytest.raises(TypeError, match="Backend"):
        resolve_backend(4)


def _wait_for_partner(barrier, i):
    barrier.wait()  # returns only when another task is running at the same time
    return i * i


def test_thread_map_runs_tasks_at_the_same_time_and_keeps_their_order():
    barrier = threading.Barrier(2, timeout=20)
    assert Backend.local(2).thread_map(_wait_for_partner, [(barrier, i) for i in range(4)]) == [0, 1, 4, 9]
    # one worker runs the tasks one after the other: the barrier cannot be passed (the check can fail)
    lonely = threading.Barrier(2, timeout=0.5)
    with pytest.raises(threading.BrokenBarrierError):
        Backend.local(2).thread_map(_wait_for_partner, [(lonely, i) for i in range(4)], max_threads=1)


def _pid_and_square(i):
    return os.getpid(), i * i


def test_map_keeps_task_order_and_runs_in_other_processes():
    out = Backend.local(2).map(_pid_and_square, [(i,) for i in range(6)])
    assert [v for _, v in out] == [i * i for i in range(6)]
    assert os.getpid() not in {pid for pid, _ in out}
    assert {pid for pid, _ in Backend.local(1).map(_pid_and_square, [(i,) for i in range(3)])} == {os.getpid()}


def test_connect_to_nothing_is_one_line_config_error_at_once():
    pytest.importorskip("dask.distributed")
    started = time.monotonic()
    with pytest.raises(ConfigError) as err:
        Backend.connect(UNREACHABLE, 2)
    assert time.monotonic() - started < 10
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="cannot reach"):
        Backend.connect("not an address")


# ---------------------------------------------------------------------------------------------- the cluster


@pytest.fixture(scope="module")
def small_config(tmp_path_factory):
    """The demo config on its 100 most variable genes with 3 folds, so each subcommand takes seconds."""
    cfg = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    cfg["data"] = {"label_column": "condition"}
    cfg["preprocess"]["top_k_variable"] = 100
    cfg["cv"]["n_splits"] = 3
    path = tmp_path_factory.mktemp("backend") / "small.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def cohort(small_config):
    return ["--config", small_config, "--expression", TEST_DATA / "demo_expression.csv.gz",
            "--labels", TEST_DATA / "demo_labels.tsv"]


@pytest.fixture(scope="module")
def local_train(tmp_path_factory, cohort):
    """The model, trained without a scheduler (the explain test must not depend on train's tasks)."""
    out = tmp_path_factory.mktemp("local") / "train"
    run_cli("-q", "train", *cohort, "--out", out, "--jobs", "1")
    return out


class _FinishedTasks:
    """A scheduler plugin: the key and worker of every task that reached the memory state."""

    def __init__(self):
        self.finished = []

    def transition(self, key, start, finish, *args, **kwargs):
        if finish == "memory":
            self.finished.append((str(key), kwargs.get("worker")))

    def functions(self, since: int = 0) -> Counter:
        # joblib's dask backend names its tasks batch_of_<function>_<n>_calls-<token>
        return Counter(k.split("-")[0].removeprefix("batch_of_").rsplit("_", 2)[0]
                       for k, _ in self.finished[since:])


@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("dask.distributed")
    from distributed.diagnostics.plugin import SchedulerPlugin

    class Recorder(_FinishedTasks, SchedulerPlugin):
        pass

    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp://",
                                  host="127.0.0.1", dashboard_address=None) as cl:
        recorder = Recorder()
        cl.scheduler.add_plugin(recorder)
        cl.recorder = recorder
        yield cl


def _same_files(a, b, *, except_=("provenance.json",)):
    names = sorted(p.name for p in a.iterdir() if p.is_file() and p.name not in except_ and not p.name.startswith("."))
    assert names and names == sorted(p.name for p in b.iterdir()
                                     if p.is_file() and p.name not in except_ and not p.name.startswith("."))
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def _recorded(out):
    import json

    record = json.loads((out / "provenance.json").read_text())
    return record["config"]["parallel"]["scheduler"], record["config"]["n_jobs"]


def test_explain_alone_sends_its_work_to_the_scheduler(tmp_path, cluster, cohort, local_train):
    address = cluster.scheduler_address
    worker_addresses = set(cluster.scheduler.workers)
    before = len(cluster.recorder.finished)
    run_cli("-q", "explain", *cohort, "--model", local_train, "--out", tmp_path / "dask", "--scheduler", address)
    done = cluster.recorder.functions(before)
    # SHAP chunks, and the fold refits (SHAP + permutation of each fold), finished on the cluster's worker
    assert done["_explain_chunk"] >= 1 and done["_refit_task"] == 3, done
    assert {w for _, w in cluster.recorder.finished[before:]} <= worker_addresses
    assert _recorded(tmp_path / "dask")[0] == address
    # same seed -> same bytes on the cluster and on 2 local (forked) workers
    run_cli("-q", "explain", *cohort, "--model", local_train, "--out", tmp_path / "local", "--jobs", "2")
    _same_files(tmp_path / "local", tmp_path / "dask")
    assert _recorded(tmp_path / "local") == (None, 2)  # no scheduler used, none recorded


@pytest.mark.slow
def test_explain_on_one_worker_gives_the_cluster_bytes(tmp_path, cluster, cohort, local_train):
    run_cli("-q", "explain", *cohort, "--model", local_train, "--out", tmp_path / "dask",
            "--scheduler", cluster.scheduler_address)
    run_cli("-q", "explain", *cohort, "--model", local_train, "--out", tmp_path / "one", "--jobs", "1")
    _same_files(tmp_path / "one", tmp_path / "dask")


@pytest.fixture(scope="module")
def dask_train(tmp_path_factory, cluster, cohort):
    """The same model trained with --scheduler, and the functions of the tasks that train ran on the cluster."""
    out = tmp_path_factory.mktemp("dask") / "train"
    before = len(cluster.recorder.finished)
    run_cli("-q", "train", *cohort, "--out", out, "--scheduler", cluster.scheduler_address)
    return out, cluster.recorder.functions(before)


def test_train_and_select_send_their_work_to_the_scheduler(tmp_path, cluster, cohort, local_train, dask_train):
    address = cluster.scheduler_address
    train_dir, done = dask_train
    assert done["_fit_fold"] == 3, done
    # model.json too: where train ran is not part of the bundle
    _same_files(local_train, train_dir)
    assert _recorded(train_dir)[0] == address

    before = len(cluster.recorder.finished)
    run_cli("-q", "select", *cohort, "--out", tmp_path / "select", "--scheduler", address)
    assert cluster.recorder.functions(before)["_one_draw"] == 1
    run_cli("-q", "select", *cohort, "--out", tmp_path / "select_local", "--jobs", "2")
    _same_files(tmp_path / "select_local", tmp_path / "select")


def test_an_explain_run_from_the_bundle_does_not_inherit_trains_scheduler(tmp_path, cluster, dask_train):
    before = len(cluster.recorder.finished)
    # no --config: explain runs on the bundle's config, which must not name train's scheduler
    run_cli("-q", "explain", "--model", dask_train[0], "--expression", TEST_DATA / "demo_expression.csv.gz",
            "--labels", TEST_DATA / "demo_labels.tsv", "--out", tmp_path / "explain", "--method", "shap")
    assert len(cluster.recorder.finished) == before
    assert _recorded(tmp_path / "explain")[0] is None
    # report runs in its own process: the scheduler in train's recorded config is neither used nor recorded
    run_cli("-q", "report", "--inputs", dask_train[0], "--out", tmp_path / "report")
    assert len(cluster.recorder.finished) == before
    assert _recorded(tmp_path / "report")[0] is None


@pytest.mark.slow
def test_run_with_a_scheduler_sends_each_steps_work_and_gives_the_local_bytes(tmp_path, cluster, small_config):
    cfg = yaml.safe_load(small_config.read_text())
    cfg["data"].update(expression=str(TEST_DATA / "demo_expression.csv.gz"), labels=str(TEST_DATA / "demo_labels.tsv"))
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(cfg))
    before = len(cluster.recorder.finished)
    steps = ["--steps", "train,explain,select"]
    run_cli("-q", "run", config, *steps, "--out", tmp_path / "dask", "--scheduler", cluster.scheduler_address)
    done = cluster.recorder.functions(before)
    assert done["_fit_fold"] == 3 and done["_refit_task"] == 3 and done["_explain_chunk"] >= 1 \
        and done["_one_draw"] == 1, done
    run_cli("-q", "run", config, *steps, "--out", tmp_path / "local", "--jobs", "2")
    for step in ("train", "explain", "select"):
        _same_files(tmp_path / "local" / step, tmp_path / "dask" / step)


@pytest.mark.parametrize("step", ["train", "explain", "select", "evaluate", "run"])
def test_an_unreachable_scheduler_is_one_line_exit_2_and_nothing_written(tmp_path, cohort, small_config, step,
                                                                        local_train):
    out = tmp_path / "out"
    args = {
        "train": ["train", *cohort],
        "explain": ["explain", *cohort, "--model", local_train],
        "select": ["select", *cohort],
        "evaluate": ["evaluate", "--truth", TEST_DATA / "demo_truth.tsv", "--ranking",
                     TEST_DATA / "demo_truth.tsv", "--expression", TEST_DATA / "demo_expression.csv.gz",
                     "--labels", TEST_DATA / "demo_labels.tsv", "--model", local_train],
        "run": ["run", small_config],
    }[step]
    if step == "run":
        cfg = yaml.safe_load(small_config.read_text())
        cfg["data"].update(expression=str(TEST_DATA / "demo_expression.csv.gz"),
                           labels=str(TEST_DATA / "demo_labels.tsv"))
        config = tmp_path / "run.yaml"
        config.write_text(yaml.safe_dump(cfg))
        args = ["run", config]
    started = time.monotonic()
    proc = run_cli(*args, "--out", out, "--scheduler", UNREACHABLE, check=False)
    one_line(proc, 2, "cannot reach the Dask scheduler at tcp://127.0.0.1:9")
    assert time.monotonic() - started < 15  # refused at once, not after the client's 20 s timeout
    assert not out.exists()


def test_an_unreachable_scheduler_in_the_config_stops_explain_too(tmp_path, small_config, local_train):
    cfg = yaml.safe_load(small_config.read_text())
    cfg["parallel"] = {"scheduler": UNREACHABLE}
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(cfg))
    proc = run_cli("explain", "--config", config, "--model", local_train, "--expression",
                   TEST_DATA / "demo_expression.csv.gz", "--labels", TEST_DATA / "demo_labels.tsv",
                   "--out", tmp_path / "out", check=False)
    one_line(proc, 2, "cannot reach the Dask scheduler")
    assert not (tmp_path / "out").exists()
