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
    """Context manager limiting the BLAS and OpenMP thread pools (``None``: leave them as they are).

    threadpoolctl's ``threadpool_limits`` rescans the process's shared libraries
    on every call (~8 ms); the knockoff path enters such limits a dozen times
    per run, so one controller is made at the first call and reused (libraries
    loaded after that call are not limited; numpy's and scipy's BLAS and
    scikit-learn's OpenMP are loaded by then). The limit is process-wide, not
    per thread.
    """
    global _BLAS_CONTROLLER
    if limit is None:
        return contextlib.nullcontext()
    if _BLAS_CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _BLAS_CONTROLLER = ThreadpoolController()
    return _BLAS_CONTROLLER.limit(limits=limit)


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


# Read-only contexts of the open shared_context_pools, by token. Forked workers inherit them (copy-on-write)
# instead of unpickling them, so a context is registered before its pool forks and removed after.
_SHARED_CONTEXTS: dict[int, Any] = {}
_NEXT_TOKEN = iter(range(1, sys.maxsize))


def _run_with_shared_context(item: tuple) -> Any:
    token, func, task = item
    return func(_SHARED_CONTEXTS[token], *task)


def _single_threaded_worker() -> None:
    # as loky does for its workers: two processes each running a multi-threaded BLAS or OpenMP pool on two
    # cores would oversubscribe them
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)


def _can_fork() -> bool:
    # fork is only trusted on Linux: macOS system frameworks are not fork-safe (the reason CPython made spawn
    # its default there).
    return sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()


@contextlib.contextmanager
def shared_context_pool(context: Any, *, n_jobs: int | None, fork: bool = True
                        ) -> Iterator[Callable[..., list[Any]]]:
    """A mapper whose tasks all read one large, read-only ``context``.

    With several workers on Linux, no Dask scheduler and ``fork`` true, the
    workers are forked once, after ``context`` is in place, so they share its
    memory copy-on-write and nothing is pickled but each task's small
    arguments and its result. This is what brings one explain run on 2 cores
    close to half the time of a single ``shap.TreeExplainer`` call: loky's
    fresh workers each pay the ``shap`` import and the unpickling of the
    fitted explainer (seconds per worker), a fork pays neither. Otherwise the
    context travels with every task through :func:`parallel_map`.

    Only pass ``fork=True`` for work that is safe after ``fork``: no OpenMP
    parallel region (scikit-learn's HistGradientBoosting and nearest
    neighbours predict with OpenMP, and a forked child of a process that
    used OpenMP can hang), no Dask client. Tree SHAP in ``shap``'s C
    extension and numpy arithmetic are.

    Yields
    ------
    map : callable
        ``map(func, tasks)`` returns ``[func(context, *task) for task in tasks]``
        in task order.

    Raises
    ------
    ResourceError
        A forked worker died (killed by the system, usually for memory).
    """
    workers = effective_n_jobs(n_jobs)

    def through_parallel_map(func, tasks):
        return parallel_map(func, [(context, *t) for t in tasks], n_jobs=n_jobs)

    if not fork or _SCHEDULER is not None or workers == 1 or not _can_fork():
        yield through_parallel_map
        return
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    token = next(_NEXT_TOKEN)
    _SHARED_CONTEXTS[token] = context
    executor = None
    try:
        def forked(func, tasks):
            nonlocal executor
            tasks = list(tasks)
            if len(tasks) <= 1:
                return [func(context, *t) for t in tasks]
            if executor is None:  # fork lazily: a call that never needs a second task never forks
                # unlike multiprocessing.Pool, the executor notices a worker that died and raises
                executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                               initializer=_single_threaded_worker)
            progress = _Progress(getattr(func, "__name__", "tasks").strip("_").replace("_", " "), len(tasks))
            results = []
            try:
                for result in executor.map(_run_with_shared_context, [(token, func, t) for t in tasks]):
                    results.append(result)
                    progress.update(len(results))
            except BrokenProcessPool:
                from iml_genomics.errors import ResourceError

                raise ResourceError("a worker process died (killed by the system, usually for lack of memory); "
                                    "lower --jobs or the chunk size, or give the job more memory.") from None
            return results

        yield forked
    finally:
        del _SHARED_CONTEXTS[token]
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
