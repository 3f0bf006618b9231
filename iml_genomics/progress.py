"""Progress of long loops, for every step: the one module that draws bars or writes progress lines.

Three ways to show it, chosen once per process (:func:`configure`):

``"bar"``
    One tqdm bar per phase on stderr (words a user understands, count, rate,
    ETA). A finished bar is closed with a newline, so whatever follows (the
    summary line, a warning) starts on a clean line. In a Jupyter kernel the
    bar is tqdm's notebook widget (``tqdm.auto``).
``"log"``
    Sparse timestamped lines through the ``iml_genomics.progress`` logger,
    never a carriage return: at most one every :data:`LOG_INTERVAL` seconds
    while a phase runs, and one when it ends (``explain: SHAP values 256/700
    samples``). For files: cluster and Snakemake logs.
``"off"``
    Nothing (``iml-genomics -q``).

The command line picks ``bar`` when stderr is a terminal, ``log`` otherwise
and ``off`` with ``-q``. The Python API starts in ``"auto"``: a bar in a
notebook or when stderr is a terminal, else ``log`` lines (visible only when
the caller's logging shows INFO of ``iml_genomics``). ``iml_genomics.progress.configure("off")``
silences it for a whole session.

Only the process that configured progress (or, by default, the first one that
imported this module) shows it: worker processes inherit its id through the
environment and stay silent, so a worker never draws a second bar on the
terminal. Parallel loops get their words from :data:`LABELS` (by task
function); a step that runs several loops for one phase (SHAP's waves of
chunks) opens one :func:`phase` around them, and the loops inside stay quiet.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from typing import Callable, Iterator

log = logging.getLogger("iml_genomics.progress")

MODES = ("auto", "bar", "log", "off")
#: Seconds between two progress lines of one phase in ``log`` mode.
LOG_INTERVAL = 10.0
_OWNER_ENV = "IML_GENOMICS_PROGRESS_PID"
# the first importer owns progress unless someone configured it before (a parent process)
os.environ.setdefault(_OWNER_ENV, str(os.getpid()))

_state = threading.local()
_settings = {"mode": "auto", "interval": LOG_INTERVAL, "step": None}

#: Task function (module:name) -> (what the user reads, unit of the count). A function run by
#: ``Backend.map`` that is not listed shows its name (tests/test_progress.py checks every entry exists).
LABELS: dict[str, tuple[str, str]] = {
    "iml_genomics.models:_fit_fold": ("fitting CV folds", "folds"),
    "iml_genomics.select.filter:_one_draw": ("knockoff draws", "draws"),
    "iml_genomics.select.dcrt:_test_chunk": ("dCRT tests", "chunks"),
    "iml_genomics.explain.stability:_refit_task": ("stability refits", "refits"),
    "iml_genomics.explain.permutation:_importance_batch": ("permutation importance", "batches"),
    "iml_genomics.explain.permutation:_perm_fold": ("permutation importance per fold", "folds"),
    "iml_genomics.explain.integrated_gradients:_integrated_gradients_chunk": ("integrated gradients", "chunks"),
    "iml_genomics.explain.interactions:_interaction_chunk": ("SHAP interaction values", "chunks"),
    "iml_genomics.explain.shap_values:_explain_chunk": ("SHAP values", "chunks"),
    "iml_genomics.evaluate:_cv_score": ("refits without top genes", "refits"),
    "iml_genomics.compare:_fold_importance": ("importances per fold", "folds"),
    "iml_genomics.explain.surrogate:_refit_predict": ("surrogate refits", "refits"),
    "iml_genomics.explain.lime:_lime_task": ("LIME explanations", "samples"),
    "iml_genomics.explain.pdp:_one_gene": ("partial dependence", "genes"),
    "iml_genomics.explain.anchors:_anchor_task": ("anchor rules", "samples"),
    "iml_genomics.explain.conditional:_conditional_importance_fit": ("conditional importance", "fits"),
}


def configure(mode: str = "auto", *, interval: float | None = None, step: str | None = None) -> None:
    """Choose how progress is shown in this process (and claim it from any parent process).

    Parameters
    ----------
    mode : {"auto", "bar", "log", "off"}
        See the module docstring.
    interval : float, optional
        Seconds between two lines of one phase in ``log`` mode [:data:`LOG_INTERVAL`].
    step : str, optional
        Prefix of every label (``explain`` -> ``explain: SHAP values``).

    Raises
    ------
    ValueError
        An unknown mode.
    """
    if mode not in MODES:
        raise ValueError(f"progress mode must be one of {', '.join(MODES)}, got {mode!r}")
    _settings.update(mode=mode, interval=LOG_INTERVAL if interval is None else float(interval), step=step)
    # a CLI started from another iml-genomics process (a notebook, a test) shows its own progress
    os.environ[_OWNER_ENV] = str(os.getpid())


def mode() -> str:
    """The mode in force here: ``"bar"``, ``"log"`` or ``"off"`` (``"auto"`` resolved)."""
    if os.environ.get(_OWNER_ENV) != str(os.getpid()):
        return "off"  # a worker process: its parent shows the progress
    chosen = _settings["mode"]
    if chosen != "auto":
        return chosen
    return "bar" if _in_notebook() or isatty(sys.stderr) else "log"


@contextlib.contextmanager
def step(name: str | None) -> Iterator[None]:
    """Prefix labels with ``name`` (``run`` composes several steps in one process)."""
    previous = _settings["step"]
    _settings["step"] = name
    try:
        yield
    finally:
        _settings["step"] = previous


class Phase:
    """One phase's progress: a bar, sparse log lines or nothing. Use :func:`phase` to open one."""

    def __init__(self, label: str, total: int | None, unit: str):
        self.label, self.total, self.unit = label, total, unit
        self.done = 0
        self.started = self.last = time.monotonic()
        self.mode = mode()
        prefix = _settings["step"]
        self.text = f"{prefix}: {label}" if prefix else label
        self.bar = None
        if self.mode == "bar":
            self.bar = _make_bar(self.text, total, unit)

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units done."""
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.mode == "log" and time.monotonic() - self.last >= _settings["interval"]:
            self._line()

    def _line(self, suffix: str = "") -> None:
        self.last = time.monotonic()
        count = f"{self.done}/{self.total}" if self.total is not None else f"{self.done}"
        log.info("%s %s %s%s", self.text, count, self.unit, suffix)

    def close(self, ok: bool = True) -> None:
        """End the phase: close the bar on its own line, or log the last line with the elapsed time."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.mode == "log" and ok:
            self._line(f" in {time.monotonic() - self.started:.1f} s")


class _Quiet:
    """A phase inside another phase: counts nothing, shows nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self, ok: bool = True) -> None:
        pass


@contextlib.contextmanager
def phase(label: str, total: int | None = None, unit: str = "") -> Iterator[Phase | _Quiet]:
    """Show the progress of one phase of a step.

    Parameters
    ----------
    label : str
        What the user reads ("SHAP values", "knockoff draws").
    total : int, optional
        Units to do; unknown when None (the bar then counts without ETA).
    unit : str
        Name of the unit ("samples", "folds").

    Yields
    ------
    Phase
        Call ``.update(n)`` as units finish. Inside another open phase of this
        thread the yielded object does nothing (the outer phase counts).

    Examples
    --------
    >>> with phase("SHAP values", total=700, unit="samples") as p:  # doctest: +SKIP
    ...     for chunk in chunks:
    ...         p.update(len(chunk))
    """
    if getattr(_state, "open", False):
        yield _Quiet()
        return
    current = Phase(label, total, unit)
    _state.open = True
    ok = False
    try:
        yield current
        ok = True
    finally:
        _state.open = False
        current.close(ok)


@contextlib.contextmanager
def silenced(on: bool = True) -> Iterator[None]:
    """No progress in this thread while the block runs (when ``on``); warnings and log lines are unaffected."""
    previous = getattr(_state, "open", False)
    _state.open = previous or on
    try:
        yield
    finally:
        _state.open = previous


def tracker(label: str, total: int | None = None, unit: str = "") -> Phase | _Quiet:
    """A phase's progress that the caller closes itself (``.close(ok)``), for a generator that yields mid-phase.

    Unlike :func:`phase` it does not silence loops run while it is open (wrap those in :func:`silenced`), so
    a generator abandoned between two items leaves nothing silenced behind it. Quiet inside an open phase.
    """
    return _Quiet() if getattr(_state, "open", False) else Phase(label, total, unit)


def loop_phase(func: Callable, total: int):
    """The :func:`phase` of a parallel loop running ``func`` ``total`` times (words from :data:`LABELS`)."""
    key = f"{getattr(func, '__module__', '')}:{getattr(func, '__name__', '')}"
    # one task of a known long loop (a single knockoff draw) is still worth a line; one of anything else is not
    if total < 1 or (total == 1 and key not in LABELS):
        return contextlib.nullcontext(_Quiet())
    label, unit = LABELS.get(key, (getattr(func, "__name__", "tasks").strip("_").replace("_", " "), "tasks"))
    return phase(label, total, unit)


class BarSafeHandler(logging.StreamHandler):
    """A stderr handler that writes through tqdm while a bar is drawn, so a log line never lands inside it."""

    def emit(self, record: logging.LogRecord) -> None:
        if _settings["mode"] == "bar":
            try:
                from tqdm import tqdm

                if getattr(tqdm, "_instances", None):  # a bar is on the screen
                    tqdm.write(self.format(record), file=self.stream)
                    return
            except Exception:  # noqa: BLE001 - a log line must never break the run
                pass
        super().emit(record)


def _make_bar(text: str, total: int | None, unit: str):
    if _in_notebook() and _has_widgets():
        from tqdm.notebook import tqdm  # a widget bar (what tqdm.auto picks in a kernel)
    else:
        # a terminal, or a kernel without ipywidgets: a text bar (notebooks render its \r redraws in place)
        from tqdm import tqdm
    # leave=True: the finished bar stays as one line ending in a newline, so the next output starts clean;
    # mininterval keeps redraws cheap on slow terminals (tmux over ssh)
    # a terminal that reports no size (a bare pseudo-terminal, some CI consoles) would get empty bars: tqdm
    # hides bars below the last of 0 rows
    sized = _width(sys.stderr) > 0
    # count, unit, elapsed < remaining (ETA) and the rate in units per second ("5.9 s/ refits" reads badly)
    fmt = "{l_bar}{bar}| {n_fmt}/{total_fmt} " + unit + " [{elapsed}<{remaining}, {rate_noinv_fmt}]"
    return tqdm(total=total, desc=text, unit=f" {unit}" if unit else "it", file=sys.stderr, leave=True,
                bar_format=fmt,
                dynamic_ncols=sized, ncols=None if sized else 100, nrows=None if sized else 24,
                mininterval=0.2, smoothing=0.1)


def _width(stream) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 0


def _has_widgets() -> bool:
    import importlib.util

    return importlib.util.find_spec("ipywidgets") is not None


def isatty(stream) -> bool:
    """Whether ``stream`` is a terminal (False for a closed or replaced stream)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (where tqdm.auto draws a widget)."""
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ip = shell.get_ipython()
    except Exception:  # noqa: BLE001
        return False
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})
