"""The forked shared-context pool: results, failures and nesting (real processes, no mocks)."""

import os
import signal
import sys

import numpy as np
import pytest

from iml_genomics.errors import NumericalError, ResourceError
from iml_genomics.parallel import Backend

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the forked path is Linux-only")


def _row_sum(context, i):
    return float(context["matrix"][i].sum()), os.getpid()


def _die(context, i):
    if i == 1:
        os.kill(os.getpid(), signal.SIGKILL)  # what the kernel's OOM killer does
    return i


def _fail(context, i):
    if i == 2:
        raise NumericalError(f"chunk {i} broke additivity")
    return i


def test_forked_workers_read_the_context_and_keep_task_order():
    matrix = np.arange(40.0).reshape(8, 5)
    with Backend.local(2).shared_context_pool({"matrix": matrix}) as run:
        out = run(_row_sum, [(i,) for i in range(8)])
    assert [v for v, _ in out] == [float(r.sum()) for r in matrix]
    assert os.getpid() not in {pid for _, pid in out}  # really ran in forked workers


def test_a_killed_worker_is_a_one_line_resource_error_not_a_hang():
    with pytest.raises(ResourceError, match="worker process died"):
        with Backend.local(2).shared_context_pool({}) as run:
            run(_die, [(i,) for i in range(4)])


def test_errors_raised_in_workers_reach_the_caller():
    with pytest.raises(NumericalError, match="chunk 2"):
        with Backend.local(2).shared_context_pool({}) as run:
            run(_fail, [(i,) for i in range(4)])


def test_pools_can_be_nested_and_do_not_share_contexts():
    a, b = np.ones((4, 3)), np.full((4, 3), 2.0)
    with Backend.local(2).shared_context_pool({"matrix": a}) as run_a:
        with Backend.local(2).shared_context_pool({"matrix": b}) as run_b:
            out_b = run_b(_row_sum, [(i,) for i in range(4)])
        out_a = run_a(_row_sum, [(i,) for i in range(4)])
    assert [v for v, _ in out_a] == [3.0] * 4 and [v for v, _ in out_b] == [6.0] * 4


def test_fork_false_and_one_job_run_the_same_tasks_without_forking():
    matrix = np.arange(12.0).reshape(4, 3)
    for backend, fork in ((Backend.local(2), False), (Backend.local(1), True)):
        with backend.shared_context_pool({"matrix": matrix}, fork=fork) as run:
            out = run(_row_sum, [(i,) for i in range(4)])
        assert [v for v, _ in out] == [float(r.sum()) for r in matrix]
