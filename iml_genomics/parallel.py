"""The one place that decides the joblib backend, worker count and seeds.

Seeds for parallel tasks are spawned from the run's seed *before* dispatch
(``numpy.random.SeedSequence.spawn``), so results never depend on how many
workers ran them or in which order they finished.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import sys
import time
from typing import Any, Callable, Iterable, Iterator

import numpy as np

_SCHEDULER: str | None = None
log = logging.getLogger("iml_genomics.progress")


class _Progress:
    """Progress of one parallel loop: a live line on a terminal, sparse log lines otherwise.

    Cluster logs get at most one line per ~10% (or per 30 s); a terminal
    gets a counter rewritten in place. Silent when logging is above INFO.
    """

    def __init__(self, name: str, total: int):
        self.name, self.total = name, total
        self.tty = sys.stderr.isatty()
        self.enabled = total > 1 and log.isEnabledFor(logging.INFO)
        self.last_logged, self.last_time = 0, time.monotonic()

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        if self.tty:
            end = "\n" if done == self.total else ""
            print(f"\r{self.name}: {done}/{self.total}", end=end, file=sys.stderr, flush=True)
            return
        step = max(1, self.total // 10)
        if done == self.total or done - self.last_logged >= step or time.monotonic() - self.last_time > 30:
            log.info("%s: %d/%d", self.name, done, self.total)
            self.last_logged, self.last_time = done, time.monotonic()


def effective_n_jobs(n_jobs: int | None) -> int:
    """Number of workers for ``n_jobs`` (-1 = all cores, None = 1)."""
    if n_jobs is None:
        return 1
    cores = os.cpu_count() or 1
    if n_jobs < 0:
        return max(1, cores + 1 + n_jobs)
    return max(1, n_jobs)


def spawn_seeds(seed: int, n: int) -> list[int]:
    """``n`` independent 32-bit seeds derived from ``seed``, stable across runs."""
    children = np.random.SeedSequence(seed).spawn(n)
    return [int(c.generate_state(1)[0]) for c in children]


def set_scheduler(address: str | None) -> None:
    """Route later :func:`parallel_map` calls to a dask.distributed scheduler.

    The scheduler is contacted once here, so a wrong address or a missing
    dask install fails at once with a one-line error, before any data is read.
    """
    global _SCHEDULER
    if address:
        from iml_genomics.errors import ConfigError

        try:
            from dask.distributed import Client
        except ImportError:
            raise ConfigError("parallel.scheduler is set but dask.distributed is not installed; "
                              "pip install 'iml-genomics[cluster]' or drop --scheduler.") from None
        try:
            Client(address, timeout="20s").close()
        except (OSError, TimeoutError) as exc:
            raise ConfigError(f"parallel.scheduler: cannot reach the Dask scheduler at {address} "
                              f"({type(exc).__name__}); check the address and that the scheduler is running.") from None
    _SCHEDULER = address


@contextlib.contextmanager
def _backend() -> Iterator[None]:
    if _SCHEDULER is None:
        yield
        return
    from dask.distributed import Client
    import joblib

    with Client(_SCHEDULER) as client, joblib.parallel_config(backend="dask"):
        del client
        yield


_BLAS_CONTROLLER: Any = None


def blas_threads(limit: int | None):
    """Context manager limiting the BLAS thread pools (``None``: leave them as they are).

    threadpoolctl's ``threadpool_limits`` rescans the process's shared libraries
    on every call (~8 ms); the knockoff path enters such limits a dozen times
    per run, so one controller is made once and reused. The limit is
    process-wide, not per thread.
    """
    global _BLAS_CONTROLLER
    if limit is None:
        return contextlib.nullcontext()
    if _BLAS_CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _BLAS_CONTROLLER = ThreadpoolController()
    return _BLAS_CONTROLLER.limit(limits=limit, user_api="blas")


def parallel_map(func: Callable[..., Any], tasks: Iterable[tuple], *, n_jobs: int | None) -> list[Any]:
    """Run ``func(*task)`` for each task, in order, on the configured backend.

    Parameters
    ----------
    func : callable
        A picklable function.
    tasks : iterable of tuple
        Positional arguments of each call; seeds must already be inside.
    n_jobs : int
        Workers (-1 = all cores). With 1 worker and no scheduler the calls run
        in this process.

    Returns
    -------
    list
        Results in task order.
    """
    from joblib import Parallel, delayed

    tasks = list(tasks)
    workers = effective_n_jobs(n_jobs)
    progress = _Progress(getattr(func, "__name__", "tasks").strip("_").replace("_", " "), len(tasks))
    results: list[Any] = []
    if _SCHEDULER is None and (workers == 1 or len(tasks) <= 1):
        for t in tasks:
            results.append(func(*t))
            progress.update(len(results))
        return results
    with _backend():
        # a generator in task order: results arrive as they finish, for progress
        for result in Parallel(n_jobs=workers if _SCHEDULER is None else -1, return_as="generator")(
                delayed(func)(*t) for t in tasks):
            results.append(result)
            progress.update(len(results))
    return results


# The read-only context of the open shared_context_pool. Forked workers inherit it (copy-on-write)
# instead of unpickling it, so it is set before the pool forks and cleared after.
_SHARED_CONTEXT: Any = None


def _run_with_shared_context(item: tuple) -> Any:
    func, task = item
    return func(_SHARED_CONTEXT, *task)


def _can_fork() -> bool:
    # fork is only trusted on Linux: macOS system frameworks are not fork-safe (the reason CPython made spawn
    # its default there).
    return sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()


@contextlib.contextmanager
def shared_context_pool(context: Any, *, n_jobs: int | None) -> Iterator[Callable[..., list[Any]]]:
    """A mapper whose tasks all read one large, read-only ``context``.

    With several workers on Linux and no Dask scheduler the workers are
    forked once, after ``context`` is in place, so they share its memory
    copy-on-write and nothing is pickled but each task's small arguments and
    its result. This is what brings one explain run on 2 cores close to half
    the time of a single ``shap.TreeExplainer`` call: loky's fresh workers each
    pay the ``shap`` import and the unpickling of the fitted explainer (seconds
    per worker), a fork pays neither. Elsewhere the context travels with every
    task through :func:`parallel_map`.

    ``func`` must only run code that is safe after ``fork`` (no OpenMP
    parallel region, no Dask client); tree SHAP in ``shap``'s C extension is.

    Yields
    ------
    map : callable
        ``map(func, tasks)`` returns ``[func(context, *task) for task in tasks]``
        in task order.
    """
    global _SHARED_CONTEXT
    workers = effective_n_jobs(n_jobs)

    def through_parallel_map(func, tasks):
        return parallel_map(func, [(context, *t) for t in tasks], n_jobs=n_jobs)

    if _SCHEDULER is not None or workers == 1 or not _can_fork():
        yield through_parallel_map
        return
    if _SHARED_CONTEXT is not None:
        raise RuntimeError("shared_context_pool is not re-entrant")
    _SHARED_CONTEXT = context
    pool = None
    try:
        def forked(func, tasks):
            nonlocal pool
            tasks = list(tasks)
            if len(tasks) <= 1:
                return [func(context, *t) for t in tasks]
            if pool is None:  # fork lazily: a call that never needs a second task never forks
                pool = multiprocessing.get_context("fork").Pool(workers)
            progress = _Progress(getattr(func, "__name__", "tasks").strip("_").replace("_", " "), len(tasks))
            results = []
            for result in pool.imap(_run_with_shared_context, [(func, t) for t in tasks]):
                results.append(result)
                progress.update(len(results))
            return results

        yield forked
    finally:
        _SHARED_CONTEXT = None
        if pool is not None:
            pool.terminate()
            pool.join()
