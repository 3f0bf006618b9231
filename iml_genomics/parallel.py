"""The one place that decides processes, threads or Dask: the :class:`Backend` object.

Every parallel loop of the core runs through a :class:`Backend` that its
caller passes down explicitly (keyword ``backend=``): process maps
(:meth:`Backend.map`), the forked shared-context pool
(:meth:`Backend.shared_context_pool`), thread maps (:meth:`Backend.thread_map`)
and the ``n_jobs`` handed to scikit-learn (:attr:`Backend.sklearn_n_jobs`).
There is no module-level scheduler: two backends (say a local one and one on a
Dask cluster) can be used side by side in one process.

The rule for entry points that take both ``n_jobs`` and ``backend``: a given
``backend`` decides (its ``n_jobs`` and scheduler); ``n_jobs`` is used only
when ``backend`` is None, as ``Backend.local(n_jobs)`` (:func:`resolve_backend`).

Seeds for parallel tasks are spawned from the run's seed *before* dispatch
(``numpy.random.SeedSequence.spawn``), so results never depend on how many
workers ran them, where, or in which order they finished.

Same seed, same bytes, whatever ``--jobs`` or backend, also needs two rules
this module enforces (measured causes, docs/pipeline.md "Determinism"):

* OpenBLAS (numpy's and scipy's) gives different last bits for the same
  matrix product, Cholesky, eigen- or singular-value decomposition with 1 or 2
  threads, while worker processes (loky, forked, Dask) run 1 thread and the
  main process all cores. Every task a :class:`Backend` runs, and every core
  entry point (decorated with :func:`fixed_blas_threads`), therefore runs with
  :data:`BLAS_THREADS` BLAS threads. OpenMP (scikit-learn's histogram gradient
  boosting) is left alone: its results were found not to depend on its
  thread count.
* scikit-learn's liblinear and libsvm (binary L1 logistic, linear SVM) draw
  their coordinate order from one random generator per process, shared by
  every thread, so two fits in threads of one process (a Dask worker with
  several threads) change each other's results. Tasks of this library
  therefore run one at a time per process (:class:`_Task`); parallelism comes
  from processes.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import numpy as np

# imported here, in the parent, before any worker exists: it records this process as the one showing progress
from iml_genomics.progress import loop_phase

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


#: BLAS threads of every computation whose result this library writes (tasks and core entry points). One,
#: because that is what worker processes run with (loky and Dask limit their workers to one thread; the forked
#: workers are limited here) and the result must not depend on where a computation ran.
BLAS_THREADS = 1

# the process-wide BLAS pin: nesting depth, the limiter to restore on the last exit, the sys.modules count at the
# last library scan (threadpoolctl sees only libraries loaded when it scans)
_PIN_LOCK = threading.Lock()
_PIN_DEPTH = 0
_PIN_LIMITER: Any = None
_PIN_SCAN: tuple[Any, int] = (None, -1)


def _blas_controller():
    global _PIN_SCAN
    from threadpoolctl import ThreadpoolController

    controller, n_modules = _PIN_SCAN
    if controller is None or n_modules != len(sys.modules):  # an import since the last scan may have loaded a BLAS
        controller = ThreadpoolController()  # a scan takes ~8 ms, so it is not repeated for nothing
        _PIN_SCAN = (controller, len(sys.modules))
    return controller


@contextlib.contextmanager
def fixed_blas_threads() -> Iterator[None]:
    """Run the block with :data:`BLAS_THREADS` BLAS threads, whatever the process was started with.

    OpenBLAS splits a matrix product or a factorisation differently with a
    different thread count, so the last bits of its results change with it.
    The limit is process-wide (a BLAS library has one thread setting) and
    counted: threads that enter it concurrently (thread maps, Dask worker
    threads) keep it until the last one leaves, and only then is the previous
    setting restored. Usable as a decorator (``@fixed_blas_threads()``) on the
    core's entry points.

    Only BLAS is limited: OpenMP loops (scikit-learn's histogram gradient
    boosting) keep their threads; their results do not depend on them. The
    BLAS libraries are those loaded when the outermost pin starts (numpy's and
    scipy's are, once the core's modules are imported).
    """
    global _PIN_DEPTH, _PIN_LIMITER
    with _PIN_LOCK:
        if _PIN_DEPTH == 0:
            _PIN_LIMITER = _as_blas_owner(lambda: _blas_controller().limit(limits=BLAS_THREADS, user_api="blas"))
        _PIN_DEPTH += 1
    try:
        yield
    finally:
        with _PIN_LOCK:
            _PIN_DEPTH -= 1
            if _PIN_DEPTH == 0:
                _as_blas_owner(_PIN_LIMITER.restore_original_limits)
                _PIN_LIMITER = None


def _as_blas_owner(action: Callable[[], Any]) -> Any:
    """Run ``action`` (a change of the OpenBLAS thread count) from whatever thread calls it.

    threadpoolctl (3.6 and later) lets only one thread, the first that set an
    OpenBLAS limit (usually the main thread), change OpenBLAS's process-wide
    pool, and silently ignores every other thread: a limit set in a Dask
    worker's thread would do nothing. The pin is process-wide and may start
    and end in any thread, so it takes the control for the change and gives
    it back at once.
    """
    import threadpoolctl

    clear = getattr(getattr(threadpoolctl, "OpenBLASController", None), "clear_controlling_thread", None)
    if clear is not None:
        clear(force=True)
    try:
        return action()
    finally:
        if clear is not None:
            clear(force=True)


# One task of this library at a time per process (see the module docstring: liblinear's shared random generator).
# Re-entrant: a task may run a nested map in its own thread. Threads of a thread_map started by a task that holds it
# do not take it (their parent waits for them while holding it).
_TASK_LOCK = threading.RLock()
_THREAD_STATE = threading.local()


def _reset_after_fork() -> None:
    # a fork copies the locks in whatever state another thread of the parent left them
    global _TASK_LOCK, _PIN_LOCK, _PIN_DEPTH, _PIN_LIMITER
    _TASK_LOCK, _PIN_LOCK = threading.RLock(), threading.Lock()
    _PIN_DEPTH, _PIN_LIMITER = 0, None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


class _Task:
    """``func`` run under the rules of a task: alone among this library's tasks in its process, BLAS pinned.

    A picklable callable (joblib and Dask ship it) that keeps the function's name, so a scheduler's task
    keys still name the function (``batch_of__fit_fold_...``).
    """

    def __init__(self, func: Callable[..., Any]):
        self.func = func
        self.__name__ = getattr(func, "__name__", "task")
        self.__qualname__ = getattr(func, "__qualname__", self.__name__)
        self.__module__ = getattr(func, "__module__", __name__)

    def __call__(self, *args: Any) -> Any:
        if getattr(_THREAD_STATE, "in_thread_map", False):
            with fixed_blas_threads():
                return self.func(*args)
        with _TASK_LOCK, fixed_blas_threads():
            return self.func(*args)


def _thread_task(func: Callable[..., Any]) -> Callable[..., Any]:
    def run(*args: Any) -> Any:
        _THREAD_STATE.in_thread_map = True
        try:
            with fixed_blas_threads():
                return func(*args)
        finally:
            _THREAD_STATE.in_thread_map = False

    return run


# Read-only contexts of the open shared_context_pools, by token. Forked workers inherit them (copy-on-write)
# instead of unpickling them, so a context is registered before its pool forks and removed after.
_SHARED_CONTEXTS: dict[int, Any] = {}
_NEXT_TOKEN = iter(range(1, sys.maxsize))


def _run_with_shared_context(item: tuple) -> Any:
    token, func, task = item
    return _Task(func)(_SHARED_CONTEXTS[token], *task)


def _single_threaded_worker() -> None:
    # as loky does for its workers: two processes each running a multi-threaded BLAS or OpenMP pool on two
    # cores would oversubscribe them
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)


def _can_fork() -> bool:
    # fork is only trusted on Linux: macOS system frameworks are not fork-safe (the reason CPython made spawn
    # its default there).
    return sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()



def _refused_at_once(address: str) -> None:
    """Raise ConnectionRefusedError when nothing listens at a tcp:// / tls:// ``address``.

    dask's Client retries a refused connection until its timeout (20 s), which
    is right for a scheduler still starting but makes a mistyped port cost
    20 s per command; a refused TCP connection is answered in milliseconds, so
    it is tried first. Other errors (a host that does not answer) are left to
    the Client and its timeout.
    """
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    if parts.scheme not in ("tcp", "tls") or not parts.hostname or parts.port is None:
        return
    try:
        socket.create_connection((parts.hostname, parts.port), timeout=5).close()
    except ConnectionRefusedError:
        raise
    except OSError:
        return


@dataclass(frozen=True)
class Backend:
    """Where parallel work runs: local processes and threads, or a dask.distributed cluster.

    Build one with :meth:`local`, :meth:`connect` or :meth:`from_config`
    rather than directly: :meth:`connect` checks the scheduler is reachable.

    Parameters
    ----------
    n_jobs : int or None
        Local workers (-1 = all cores, None = 1). With a scheduler, the
        threads used by work that stays in this process (thread maps,
        scikit-learn's ``n_jobs``); process maps use every cluster worker.
    scheduler : str or None
        dask.distributed scheduler address; None = local joblib / fork.
    """

    n_jobs: int | None = 1
    scheduler: str | None = None

    @classmethod
    def local(cls, n_jobs: int | None = 1) -> "Backend":
        """Local processes and threads with ``n_jobs`` workers (-1 = all cores)."""
        return cls(n_jobs=n_jobs, scheduler=None)

    @classmethod
    def connect(cls, address: str, n_jobs: int | None = -1, *, timeout: str = "20s") -> "Backend":
        """A backend on the Dask scheduler at ``address``, contacted now.

        The scheduler is contacted here, once, so a wrong address or a missing
        dask install fails at once with a one-line error, before any data is read.

        Raises
        ------
        ConfigError
            dask.distributed is not installed, or the scheduler cannot be reached.
        """
        from iml_genomics.errors import ConfigError

        try:
            from dask.distributed import Client
        except ImportError:
            raise ConfigError("parallel.scheduler is set but dask.distributed is not installed; "
                              "pip install 'iml-genomics[cluster]' or drop --scheduler.") from None
        failure = None
        try:
            _refused_at_once(address)
            Client(address, timeout=timeout).close()
        except (OSError, TimeoutError, ValueError, TypeError) as exc:
            failure = type(exc).__name__
        if failure is not None:
            # A Client whose constructor failed is left in reference cycles, and its __del__ (close) runs at
            # whatever later garbage collection frees it. When that collection happens while distributed's
            # LoopRunner holds its class-wide lock (e.g. as a LocalCluster starts its loop thread), close waits for
            # that same lock: the process hangs (seen in test_backend.py under pytest -n 2). Collected here, now.
            import gc

            gc.collect()
            raise ConfigError(f"parallel.scheduler: cannot reach the Dask scheduler at {address} "
                              f"({failure}); check the address and that the scheduler is running.")
        return cls(n_jobs=n_jobs, scheduler=address)

    @classmethod
    def from_config(cls, cfg, n_jobs: int | None = None) -> "Backend":
        """The backend a resolved config asks for: ``cfg.parallel.scheduler`` (contacted now) and ``n_jobs``.

        ``n_jobs`` None = ``cfg.n_jobs``.
        """
        n_jobs = cfg.n_jobs if n_jobs is None else n_jobs
        address = cfg.parallel.scheduler
        return cls.connect(address, n_jobs) if address else cls.local(n_jobs)

    @property
    def distributed(self) -> bool:
        """True when process maps go to a Dask cluster."""
        return self.scheduler is not None

    @property
    def workers(self) -> int:
        """Local worker count (``n_jobs`` resolved: -1 = all cores, None = 1)."""
        return effective_n_jobs(self.n_jobs)

    @property
    def sklearn_n_jobs(self) -> int:
        """What to pass as a scikit-learn estimator's ``n_jobs`` for work in this process.

        scikit-learn's own joblib loops run threads or loky processes on this
        machine; they are given the local worker count whether or not a
        scheduler is set (the scheduler takes this library's process maps).
        """
        return self.workers

    def local_part(self, n_jobs: int | None = None) -> "Backend":
        """A local backend for work inside one task (a task that runs on a Dask worker must not
        open its own client): ``n_jobs`` None = this backend's."""
        return Backend.local(self.n_jobs if n_jobs is None else n_jobs)

    @staticmethod
    def blas_threads(limit: int | None):
        """:func:`blas_threads`: limit the BLAS / OpenMP thread pools (process-wide)."""
        return blas_threads(limit)

    def map(self, func: Callable[..., Any], tasks: Iterable[tuple]) -> list[Any]:
        """Run ``func(*task)`` for each task in worker processes (or Dask tasks), in task order.

        Parameters
        ----------
        func : callable
            A picklable function.
        tasks : iterable of tuple
            Positional arguments of each call; seeds must already be inside.

        Returns
        -------
        list
            Results in task order. With 1 local worker (or one task) and no
            scheduler the calls run in this process.

        Notes
        -----
        Every call runs with :data:`BLAS_THREADS` BLAS threads and, in a
        process that runs several of them in threads (a Dask worker with
        ``--nthreads`` > 1), one at a time: see the module docstring.
        """
        from joblib import Parallel, delayed

        tasks = list(tasks)
        results: list[Any] = []
        with loop_phase(func, len(tasks)) as progress:
            func = _Task(func)  # the same rules (BLAS threads, one task per process) wherever the task runs
            if self.scheduler is None and (self.workers == 1 or len(tasks) <= 1):
                for t in tasks:
                    results.append(func(*t))
                    progress.update(1)
                return results
            with self._joblib_context():
                # a generator in task order: results arrive as they finish, for progress
                for result in Parallel(n_jobs=self.workers if self.scheduler is None else -1,
                                       return_as="generator")(delayed(func)(*t) for t in tasks):
                    results.append(result)
                    progress.update(1)
        return results

    @contextlib.contextmanager
    def _joblib_context(self) -> Iterator[None]:
        if self.scheduler is None:
            yield
            return
        import joblib
        from dask.distributed import Client

        # a client of our own for the loop: it registers the joblib "dask" backend and is closed after
        with Client(self.scheduler) as client, joblib.parallel_config(backend="dask"):
            del client
            yield

    def thread_map(self, func: Callable[..., Any], tasks: Iterable[tuple], *,
                   max_threads: int | None = None) -> list[Any]:
        """Run ``func(*task)`` for each task in threads of this process, in task order.

        For work that releases the GIL (numpy / scipy kernels) on data too
        large to send to other processes. Always local, also with a scheduler.
        The calls run with :data:`BLAS_THREADS` BLAS threads; they must be
        thread-safe (no liblinear / libsvm fits: see the module docstring).

        Parameters
        ----------
        func : callable
        tasks : iterable of tuple
        max_threads : int, optional
            Cap on the threads (e.g. the number of tasks); at most :attr:`workers`.
        """
        tasks = list(tasks)
        threads = self.workers if max_threads is None else max(1, min(self.workers, max_threads))
        if threads == 1 or len(tasks) <= 1:
            with fixed_blas_threads():
                return [func(*t) for t in tasks]
        from concurrent.futures import ThreadPoolExecutor

        run = _thread_task(func)
        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(lambda t: run(*t), tasks))

    @contextlib.contextmanager
    def shared_context_pool(self, context: Any, *, fork: bool = True) -> Iterator[Callable[..., list[Any]]]:
        """A mapper whose tasks all read one large, read-only ``context``.

        With several local workers on Linux, no scheduler and ``fork`` true,
        the workers are forked once, after ``context`` is in place, so they
        share its memory copy-on-write and nothing is pickled but each task's
        small arguments and its result. This is what brings one explain run on
        2 cores close to half the time of a single ``shap.TreeExplainer``
        call: loky's fresh workers each pay the ``shap`` import and the
        unpickling of the fitted explainer (seconds per worker), a fork pays
        neither. Otherwise the context travels with every task through
        :meth:`map` (to the Dask workers when a scheduler is set).

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
        workers = self.workers

        def through_map(func, tasks):
            return self.map(func, [(context, *t) for t in tasks])

        if not fork or self.scheduler is not None or workers == 1 or not _can_fork():
            yield through_map
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
                    return [_Task(func)(context, *t) for t in tasks]
                if executor is None:  # fork lazily: a call that never needs a second task never forks
                    # unlike multiprocessing.Pool, the executor notices a worker that died and raises
                    executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                                   initializer=_single_threaded_worker)
                results = []
                try:
                    with loop_phase(func, len(tasks)) as progress:
                        for result in executor.map(_run_with_shared_context, [(token, func, t) for t in tasks]):
                            results.append(result)
                            progress.update(1)
                except BrokenProcessPool:
                    from iml_genomics.errors import ResourceError

                    raise ResourceError("a worker process died (killed by the system, usually for lack of "
                                        "memory); lower --jobs or the chunk size, or give the job more "
                                        "memory.") from None
                return results

            yield forked
        finally:
            del _SHARED_CONTEXTS[token]
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=True)


def resolve_backend(backend: Backend | None, n_jobs: int | None = 1) -> Backend:
    """The backend an entry point runs on: ``backend`` when given (it decides), else ``Backend.local(n_jobs)``."""
    if backend is not None:
        if not isinstance(backend, Backend):
            raise TypeError(f"backend must be an iml_genomics.parallel.Backend, got {type(backend).__name__}")
        return backend
    return Backend.local(n_jobs)
