"""Atomic outputs and provenance.

Each subcommand writes its files into a staging directory inside the output
directory and switches them in only when every file is complete, under a lock
on the directory, never replacing what iml-genomics did not write (see
``docs/pipeline.md``, "Output directories"). An interrupted or failed run
leaves no partial file (and no new directory).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file (streamed)."""
    # one debug line per hash: `run` hashes each input once, and a test counts these lines to keep it so
    log.debug("sha256 %s", path)
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (Path,)):
        return str(obj)
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def json_document(obj):
    """``obj`` as a reader of the file :func:`write_json` writes sees it (sorted keys, plain JSON types)."""
    return json.loads(json.dumps(obj, sort_keys=True, default=_json_default))


def write_json(obj, path: str | Path) -> None:
    """Write JSON with sorted keys (byte-stable) atomically."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n"
    atomic_write_bytes(text.encode(), path)


def write_tsv(frame: pd.DataFrame, path: str | Path, *, index: bool = False) -> None:
    """Write a tab-separated table atomically, floats in round-trip precision."""
    atomic_write_bytes(tsv_text(frame, index=index).encode(), path)


def tsv_text(frame: pd.DataFrame, *, index: bool = False) -> str:
    """The text :func:`write_tsv` writes: tab-separated, ``\\n`` line ends, floats to 10 significant digits.

    Booleans are ``TRUE``/``FALSE`` and every missing value (NaN, None, an
    empty string) is ``NA``, so pandas and R's ``read.delim`` read the same
    table (:mod:`iml_genomics.io.interchange`).
    """
    from iml_genomics.io.interchange import NA, interchange_frame

    return interchange_frame(frame).to_csv(sep="\t", index=index, lineterminator="\n", float_format="%.10g",
                                           na_rep=NA)


_UMASK = os.umask(0)
os.umask(_UMASK)

# Names of everything iml-genomics itself creates for bookkeeping inside an output
# directory. Only entries with these prefixes are ever removed as leftovers.
LISTING = ".iml-outputs.json"
LOCK_FILE = ".iml-lock"
STAGING_PREFIX = ".iml-staging-"
TMP_PREFIX = ".iml-tmp-"
LISTING_FORMAT = 2
_MAX_LISTING_BYTES = 16 << 20  # a listing is a few KiB; a bigger one is not ours

log = logging.getLogger("iml_genomics.io")


def atomic_write_bytes(data: bytes, path: str | Path) -> None:
    """Write ``data`` to a temporary file next to ``path`` and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the prefix marks the temporary file as ours: a run killed here leaves it, the next one removes it
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{path.name}.", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs should be readable as usual
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# ---------------------------------------------------------------------------
# Output directories: ownership listing, lock, staging, commit
# ---------------------------------------------------------------------------


def _is_hex64(value) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _safe_rel(rel) -> bool:
    """A listed name must stay inside its directory (no absolute paths, no '..')."""
    if not isinstance(rel, str) or not rel or "\x00" in rel:
        return False
    parts = Path(rel).parts
    return not Path(rel).is_absolute() and ".." not in parts and parts[0] not in (LISTING, LOCK_FILE)


def read_listing(directory: str | Path) -> tuple[dict | None, str | None]:
    """The ownership listing of an output directory, validated.

    Returns
    -------
    listing : dict or None
        ``{"format": 2, "step": str, "complete": bool, "files": {name: {"sha256", "size"}},
        "replacing": {name: [sha256, ...]}}``; None when absent or unusable.
    problem : str or None
        Why an existing listing is unusable (then nothing it names is trusted).
    """
    path = Path(directory) / LISTING
    if not os.path.lexists(path):
        return None, None
    if path.is_symlink() or not path.is_file():
        return None, "it is not a regular file"
    try:
        if path.stat().st_size > _MAX_LISTING_BYTES:
            return None, "it is too large to be a listing"
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        return None, f"it cannot be read ({type(exc).__name__})"
    if isinstance(data, list):
        return None, "it was written by an older iml-genomics without checksums"
    if not isinstance(data, dict) or data.get("format") != LISTING_FORMAT:
        return None, "it is not in the expected format"
    step, complete, files = data.get("step"), data.get("complete"), data.get("files")
    replacing = data.get("replacing", {})
    ok = (isinstance(step, str) and isinstance(complete, bool) and isinstance(files, dict)
          and isinstance(replacing, dict)
          and all(_safe_rel(k) and isinstance(v, dict) and _is_hex64(v.get("sha256"))
                  and isinstance(v.get("size"), int) for k, v in files.items())
          and all(_safe_rel(k) and isinstance(v, list) and all(map(_is_hex64, v)) for k, v in replacing.items()))
    if not ok:
        return None, "its entries are malformed"
    return data, None


def owned_hashes(listing: dict | None) -> dict[str, set[str]]:
    """name -> every sha256 a file of that name may have and still be ours.

    Parameters
    ----------
    listing : dict or None
        The directory's listing (:func:`read_listing`).

    Returns
    -------
    dict of str to set of str
    """
    owned: dict[str, set[str]] = {}
    if listing is None:
        return owned
    for rel, entry in listing["files"].items():
        owned.setdefault(rel, set()).add(entry["sha256"])
    for rel, hashes in listing.get("replacing", {}).items():
        owned.setdefault(rel, set()).update(hashes)
    return owned


def check_step_dir(directory: str | Path, role: str = "input") -> None:
    """Refuse a step directory whose last commit was interrupted.

    A step's files are switched in one by one and the listing is marked
    complete only after the last one; a directory whose listing says
    ``"complete": false`` may mix files of two runs. Directories without a
    listing (made by hand or by other tools) are not judged here.

    Raises
    ------
    InputDataError
        The listing says the step that wrote ``directory`` did not finish.
    """
    from iml_genomics.errors import InputDataError

    listing, _ = read_listing(directory)
    if listing is not None and not listing["complete"]:
        raise InputDataError(f"{directory}: {role} directory left by an interrupted 'iml-genomics {listing['step']}' "
                             f"(marked incomplete in {LISTING}); re-run that step first.")


def verify_step_dir(directory: str | Path, step: str) -> bool:
    """Whether ``directory`` holds a complete, unmodified commit of ``step``.

    Every listed file must exist with the sha256 the listing records; used by
    ``run`` to decide whether a step is up to date.
    """
    directory = Path(directory)
    if directory.is_symlink() or not directory.is_dir():
        return False
    listing, _ = read_listing(directory)
    if listing is None or not listing["complete"] or listing["step"] != step:
        return False
    for rel, entry in listing["files"].items():
        path = directory / rel
        try:
            if path.is_symlink() or not path.is_file() or path.stat().st_size != entry["size"]:
                return False
            if file_sha256(path) != entry["sha256"]:
                return False
        except OSError:
            return False
    return True


_WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EIO}


def write_error(exc: OSError, out_dir) -> Exception:
    """One-line :class:`OutputWriteError` for an OSError raised while writing ``out_dir``."""
    from iml_genomics.errors import OutputWriteError

    reason = exc.strerror or (str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
    if exc.errno == errno.EFBIG:
        reason = "file size limit exceeded (ulimit -f)"
    where = f" ({exc.filename})" if exc.filename else ""
    return OutputWriteError(f"{out_dir}: cannot write outputs: {reason}{where}. Free disk space or choose another "
                            f"--out; no partial outputs were left.")


# Locks this process holds: resolved directory -> [file descriptor, nesting depth], so
# the steps that `run` invokes in-process re-enter the lock `run` took.
_HELD: dict[str, list] = {}
_ACTIVE: list["OutputGuard"] = []


def _lock(directory: Path, *, shared: bool = False) -> int | None:
    """Take a non-blocking flock on DIR/.iml-lock; None when another process holds it."""
    key = os.path.realpath(directory)
    if key in _HELD:
        _HELD[key][1] += 1
        return _HELD[key][0]
    flags = (os.O_RDONLY if shared else os.O_RDWR | os.O_CREAT) | getattr(os, "O_NOFOLLOW", 0) \
        | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(directory / LOCK_FILE, flags, 0o666 & ~_UMASK)
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    _HELD[key] = [fd, 1]
    return fd


@contextlib.contextmanager
def reading_step_dirs(directories) -> Iterator[None]:
    """Hold a shared lock on each input step directory that has a lock file, for the ``with`` body.

    A writer takes the exclusive lock of its ``--out`` without waiting, so while
    a command reads a step directory (a model bundle, explain/select outputs) no
    other iml-genomics process can switch new files into it, and a directory
    being written now is refused at once instead of read half old, half new.

    Raises
    ------
    OutputBusyError
        Another iml-genomics process is writing one of ``directories``.
    """
    from iml_genomics.errors import OutputBusyError

    held: list[Path] = []
    try:
        for d in directories:
            d = Path(d)
            lock = d / LOCK_FILE
            if d.is_symlink() or not d.is_dir() or lock.is_symlink() or not lock.is_file():
                continue  # made by hand or by other tools: nothing to coordinate with
            try:
                fd = _lock(d, shared=True)
            except OSError:
                continue  # an unreadable lock file: the directory's own checks speak for it
            if fd is None:
                raise OutputBusyError(f"{d}: another iml-genomics process is writing this input directory "
                                      f"(lock {lock} held); wait for it to finish, then run this again.")
            held.append(d)
        yield
    finally:
        for d in reversed(held):
            _unlock(d)


def _unlock(directory: Path) -> None:
    key = os.path.realpath(directory)
    held = _HELD.get(key)
    if held is None:
        return
    held[1] -= 1
    if held[1] == 0:
        del _HELD[key]
        os.close(held[0])  # closing the descriptor releases the flock


def _file_identity(path) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


class OutputGuard:
    """Everything a command does to its ``--out`` directory goes through one guard.

    On entry: create the directory, take an exclusive ``flock`` on
    ``OUT/.iml-lock`` (a second process gets :class:`OutputBusyError` at once),
    remove staging and temporary files that a killed run left (safe: we hold the
    lock, so no live process uses them), refuse a directory that another step
    wrote, and refuse output names that are directories, links, inputs or files
    iml-genomics did not write. :meth:`commit` switches a staging directory in.

    Parameters
    ----------
    out_dir : path
    step : str or None
        The subcommand writing; recorded in the listing as the directory's owner.
        None (library use) adopts whatever step the listing names.
    names : iterable of str
        Output names the step may write, checked before any work is done.
    inputs : iterable of path
        Files and directories the command reads; never replaced or removed.
    """

    def __init__(self, out_dir, step: str | None, *, names=(), inputs=(), on_interrupt: str | None = None):
        self.out = Path(out_dir)
        self.on_interrupt = on_interrupt
        self.step = step
        self.names = list(names)
        self.inputs: list[Path] = []
        self.committed = False
        self.created: list[Path] = []
        self._locked: list[Path] = []
        self._made_lock = False
        self._warned = False
        self._listing_problem: str | None = None
        self.add_inputs(inputs)

    # -- inputs -----------------------------------------------------------
    def add_inputs(self, paths) -> None:
        """Register files the command reads (also called by :class:`Provenance`)."""
        for p in paths:
            if p is not None and str(p) != "":
                self.inputs.append(Path(p))

    def _input_match(self, path: Path) -> Path | None:
        real, ident = os.path.realpath(path), _file_identity(path)
        for p in self.inputs:
            if os.path.realpath(p) == real or (ident is not None and _file_identity(p) == ident):
                return p
        return None

    # -- entry / exit -----------------------------------------------------
    def __enter__(self) -> "OutputGuard":
        from iml_genomics.errors import OutputConflictError

        out = self.out
        if out.is_symlink() and not out.exists():
            raise OutputConflictError(f"{out}: is a broken symbolic link; remove it or choose another --out.")
        try:
            self._take_parent_lock()
            if (out / LOCK_FILE).is_file():
                self._take_lock()  # a live writer is reported as busy, not as a collision
            if out.is_dir():
                # refusals first, before anything (even the lock file) is written
                self._check_directory()
            if out not in self._locked:
                missing, probe = [], out
                while not probe.exists() and not probe.is_symlink():
                    missing.append(probe)
                    probe = probe.parent
                out.mkdir(parents=True, exist_ok=True)
                self.created = missing  # deepest first
                self._take_lock()
            self._remove_leftovers()
            self._check_directory()  # again, now that no other process can change it
        except BaseException as exc:
            self._release(failed=True)
            if isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS:
                raise write_error(exc, out) from None
            raise
        _ACTIVE.append(self)
        return self

    def _take_parent_lock(self) -> None:
        """A `run` into the parent holds the parent's lock: a step writing one of its step
        directories from outside that run fails (before creating anything), and vice versa."""
        from iml_genomics.errors import OutputBusyError

        out, parent = self.out, self.out.parent
        if (parent / LOCK_FILE).is_file() and not (parent / LOCK_FILE).is_symlink():
            if _lock(parent, shared=True) is None:
                raise OutputBusyError(f"{out}: another iml-genomics process (a `run` into {parent}) is writing "
                                      f"here; wait for it to finish or choose another --out.")
            self._locked.append(parent)

    def _take_lock(self) -> None:
        from iml_genomics.errors import OutputBusyError

        out = self.out
        self._made_lock = not (out / LOCK_FILE).exists()
        if _lock(out) is None:
            raise OutputBusyError(f"{out}: another iml-genomics process is writing or reading this directory (lock "
                                  f"{out / LOCK_FILE} held); wait for it to finish or choose another --out.")
        self._locked.append(out)

    def _check_directory(self) -> None:
        """Refuse a directory another step wrote, an input directory, and colliding output names."""
        from iml_genomics.errors import OutputConflictError

        out = self.out
        if (out / LISTING).is_symlink() or (out / LISTING).is_dir():
            kind = "a symbolic link" if (out / LISTING).is_symlink() else "a directory"
            raise OutputConflictError(f"{out / LISTING}: is {kind}; iml-genomics keeps its file listing under "
                                      f"this name. Move it away or choose another --out.")
        listing, problem = read_listing(out)
        self._listing_problem = problem
        if listing is not None and self.step is not None and listing["step"] != self.step:
            raise OutputConflictError(
                f"{out}: holds the outputs of 'iml-genomics {listing['step']}' (see {LISTING}); give "
                f"'{self.step}' its own --out directory.")
        for p in self.inputs:
            if p.is_dir() and os.path.realpath(p) == os.path.realpath(out):
                raise OutputConflictError(f"{out}: is also an input directory of this command; write to "
                                          f"another --out.")
        owned = owned_hashes(listing)
        for name in self.names:
            self._check_name(name, owned)
        if problem and not self._warned:
            self._warned = True
            log.warning("%s: ignoring %s (%s); nothing it names will be replaced or removed.", out, LISTING, problem)

    def __exit__(self, exc_type, exc, tb):
        from iml_genomics.errors import Interrupted

        if self in _ACTIVE:
            _ACTIVE.remove(self)
        if isinstance(exc, Interrupted | KeyboardInterrupt) and getattr(exc, "detail", None) is None:
            done = "its outputs were written completely" if self.committed else "no outputs were written"
            with contextlib.suppress(AttributeError):
                exc.detail = self.on_interrupt or f"{done} to {self.out}"
        self._release(failed=exc_type is not None and not self.committed)
        return False

    def _release(self, *, failed: bool) -> None:
        if failed and self._locked and self.out in self._locked:
            # leave no trace of a failed command: our leftovers, and the lock file if we made it
            # (unlinked while still held, so no other process can be holding it)
            with contextlib.suppress(OSError):
                self._remove_leftovers()
            if self._made_lock:
                with contextlib.suppress(OSError):
                    (self.out / LOCK_FILE).unlink()
        for d in reversed(self._locked):
            _unlock(d)
        self._locked = []
        if failed and self.created:
            with contextlib.suppress(OSError):
                if not any(p.name != LISTING for p in self.out.iterdir()):
                    (self.out / LISTING).unlink(missing_ok=True)
            for d in self.created:
                with contextlib.suppress(OSError):
                    d.rmdir()  # only if empty

    def _remove_leftovers(self) -> None:
        remove_leftovers(self.out)

    # -- checks -----------------------------------------------------------
    def check_names(self, names, listing: dict | None, problem: str | None = None) -> None:
        """Refuse, before any work, output ``names`` that would replace a file this tool did not write.

        ``listing`` and ``problem`` are :func:`read_listing`'s answer for the directory. Raises the same
        one-line :class:`~iml_genomics.errors.OutputConflictError` the guarded commit would raise later.
        """
        self._listing_problem = problem
        owned = owned_hashes(listing)
        for name in names:
            self._check_name(name, owned)

    def _check_name(self, rel: str, owned: dict[str, set[str]]) -> None:
        from iml_genomics.errors import OutputConflictError

        dest = self.out / rel
        step = f"'iml-genomics {self.step}'" if self.step else "iml-genomics"
        for parent in list(reversed(Path(rel).parents))[1:]:
            if (self.out / parent).is_symlink():
                raise OutputConflictError(f"{self.out / parent}: is a symbolic link; iml-genomics does not write "
                                          f"through links. Remove it or choose another --out.")
        if dest.is_symlink():
            raise OutputConflictError(f"{dest}: is a symbolic link; iml-genomics does not write through links. "
                                      f"Remove it or choose another --out.")
        if not dest.exists():
            return
        source = self._input_match(dest)
        if source is not None:
            raise OutputConflictError(f"{dest}: is also an input of this command ({source}); writing the output "
                                      f"'{rel}' would replace it. Choose another --out.")
        if dest.is_dir():
            raise OutputConflictError(f"{dest}: is a directory that iml-genomics did not write, where {step} writes "
                                      f"its file '{rel}'; move it away or choose another --out.")
        if not dest.is_file():
            raise OutputConflictError(f"{dest}: is not a regular file; move it away or choose another --out.")
        if rel not in owned or file_sha256(dest) not in owned[rel]:
            why = (f" (its listing {LISTING} is unusable: {self._listing_problem})"
                   if self._listing_problem else " (or was changed since)")
            raise OutputConflictError(f"{dest}: exists and was not written by {step}{why}; move it away or choose "
                                      f"another --out.")

    # -- commit -----------------------------------------------------------
    def commit(self, stage: Path) -> None:
        """Switch the files of ``stage`` into the output directory.

        Order: (1) check every name; (2) write the listing marked incomplete,
        naming the new files and every file it may replace; (3) rename each
        file into place; (4) remove files the previous commit wrote and this
        one did not, only when their sha256 still matches; (5) write the
        listing marked complete. A kill between (2) and (5) leaves a listing
        that says incomplete, which readers refuse and the next run repairs.
        SIGTERM/SIGINT are held back during (2)-(5).
        """
        out = self.out
        written = sorted(str(p.relative_to(stage)) for p in stage.rglob("*") if p.is_file())
        entries = {rel: {"sha256": file_sha256(stage / rel), "size": (stage / rel).stat().st_size}
                   for rel in written}
        listing, _ = read_listing(out)
        if listing is not None and self.step is not None and listing["step"] != self.step:
            from iml_genomics.errors import OutputConflictError

            raise OutputConflictError(f"{out}: holds the outputs of 'iml-genomics {listing['step']}' (see {LISTING});"
                                      f" give '{self.step}' its own --out directory.")
        step = self.step or (listing["step"] if listing else "unknown")
        owned = owned_hashes(listing)
        for rel in written:
            self._check_name(rel, owned)
        replacing = {rel: set(hashes) for rel, hashes in owned.items()}
        pending = {"format": LISTING_FORMAT, "step": step, "complete": False, "files": entries,
                   "replacing": {rel: sorted(h) for rel, h in sorted(replacing.items())}}
        blocked = _block_signals()
        try:
            _write_listing(out, pending)
            for rel in written:
                dest = out / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(stage / rel, dest)
            for rel in sorted(set(owned) - set(written)):
                stale = out / rel
                # a listed name under a linked directory ("sub/x" with sub -> elsewhere) would
                # delete a file outside --out: never go through a link, at any level
                if _through_link(out, rel) or not stale.is_file() or self._input_match(stale) is not None:
                    continue
                if file_sha256(stale) in owned[rel]:
                    stale.unlink()
            _write_listing(out, {"format": LISTING_FORMAT, "step": step, "complete": True, "files": entries})
            self.committed = True
        finally:
            _unblock_signals(blocked)


def _through_link(out: Path, rel: str) -> bool:
    """Whether ``out/rel`` or any directory between ``out`` and it is a symbolic link."""
    path = out
    for part in Path(rel).parts:
        path = path / part
        if path.is_symlink():
            return True
    return False


def remove_leftovers(directory: str | Path) -> None:
    """Remove the staging directories and temporary files that killed runs left in ``directory``.

    Only names with our prefixes, never links. Call it only while holding the
    directory's lock, or the lock of a `run` into its parent (which keeps
    every other iml-genomics writer out of the step directories).
    """
    if not Path(directory).is_dir() or Path(directory).is_symlink():
        return
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.startswith(STAGING_PREFIX) and entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            elif entry.name.startswith(TMP_PREFIX) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)


def _write_listing(out: Path, listing: dict) -> None:
    path = out / LISTING
    if path.is_dir() and not path.is_symlink():
        from iml_genomics.errors import OutputConflictError

        raise OutputConflictError(f"{path}: is a directory; iml-genomics keeps its file listing under this name. "
                                  f"Move it away or choose another --out.")
    atomic_write_bytes((json.dumps(listing, indent=1, sort_keys=True) + "\n").encode(), path)


_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _block_signals():
    """Hold SIGTERM/SIGINT back (main thread only); they are delivered when unblocked."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)


def _unblock_signals(previous) -> None:
    if previous is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def active_guard(out_dir) -> OutputGuard | None:
    """The innermost guard of this process for ``out_dir`` (None outside any)."""
    real = os.path.realpath(out_dir)
    for guard in reversed(_ACTIVE):
        if os.path.realpath(guard.out) == real:
            return guard
    return None


def register_inputs(paths) -> None:
    """Tell every active guard about files the command reads (they are never replaced)."""
    for guard in _ACTIVE:
        guard.add_inputs(paths)


@contextlib.contextmanager
def output_guard(out_dir, step: str | None, *, names=(), inputs=(), on_interrupt: str | None = None
                 ) -> Iterator[OutputGuard]:
    """Context manager form of :class:`OutputGuard`; OSErrors of a full disk become one line."""
    try:
        guard = OutputGuard(out_dir, step, names=names, inputs=inputs, on_interrupt=on_interrupt)
        with guard:
            yield guard
    except OSError as exc:
        if exc.errno in _WRITE_ERRNOS:
            raise write_error(exc, out_dir) from None
        raise


@contextlib.contextmanager
def staged_output(out_dir: str | Path) -> Iterator[Path]:
    """Yield a staging directory; switch its files into ``out_dir`` on success.

    The staging directory (``OUT/.iml-staging-*``) is removed on any exception,
    and ``out_dir`` too if this command created it, so failures leave nothing
    behind. The switch is :meth:`OutputGuard.commit`: files iml-genomics did not
    write are never replaced or removed; files the previous run into
    ``out_dir`` wrote and this one did not are removed when their sha256 still
    matches the listing ``.iml-outputs.json``. Inside a CLI command the
    command's guard (lock, step, inputs) is used; otherwise one is made here.
    """
    out_dir = Path(out_dir)
    with contextlib.ExitStack() as stack:
        guard = active_guard(out_dir) if out_dir.is_dir() else None
        if guard is None:
            guard = stack.enter_context(output_guard(out_dir, None))
        try:
            stage = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out_dir))
        except OSError as exc:
            raise write_error(exc, out_dir) from None
        try:
            try:
                yield stage
            except OSError as exc:
                # a write into staging failed (disk full, file size limit, quota): one line, nothing partial
                raise write_error(exc, out_dir) from None
            try:
                guard.commit(stage)
            except OSError as exc:
                raise write_error(exc, out_dir) from None
        finally:
            shutil.rmtree(stage, ignore_errors=True)


PROVENANCE_PACKAGES = ("iml-genomics", "numpy", "pandas", "scipy", "scikit-learn", "anndata", "pyarrow",
                       "joblib", "shap", "skops")


def package_versions(names=PROVENANCE_PACKAGES) -> dict[str, str | None]:
    """Installed versions of the packages that shape results."""
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


class Provenance:
    """Collects what a run needs to be reproduced, written as ``provenance.json``.

    Parameters
    ----------
    step : str
        Subcommand name.
    config : dict
        Resolved configuration.
    inputs : dict
        Role -> path of every input file (hashed with sha256).
    known_sha256 : mapping of str to str, optional
        Resolved path -> sha256 of inputs already hashed in this process (``run`` hashes each input once
        and shares the digests between fingerprints and every step's provenance).
    """

    def __init__(self, step: str, config: dict, inputs: dict[str, str | Path | None], *,
                 known_sha256: dict[str, str] | None = None):
        self.step = step
        self.known_sha256 = known_sha256 if known_sha256 is not None else {}
        self.config = config
        self.inputs = {role: p for role, p in inputs.items() if p is not None}
        register_inputs(self.inputs.values())  # an input is never replaced by an output of the same name
        self.started = time.time()
        self.timings: dict[str, float] = {}
        self.extra: dict = {}
        self._t = time.perf_counter()

    def mark(self, name: str) -> None:
        """Record the seconds spent since the previous mark under ``name``."""
        now = time.perf_counter()
        self.timings[name] = round(now - self._t, 3)
        self._t = now

    def to_dict(self) -> dict:
        inputs = {}
        for role, p in self.inputs.items():
            p = Path(p)
            if p.is_file():
                digest = self.known_sha256.get(os.path.realpath(p)) or file_sha256(p)
                inputs[role] = {"path": str(p), "sha256": digest}
            elif p.is_dir():
                inputs[role] = {"path": str(p), "sha256": None}
        cfg = self.config
        return {
            "step": self.step,
            "command_line": [Path(sys.argv[0]).name, *sys.argv[1:]],
            "started_utc": datetime.fromtimestamp(self.started, timezone.utc).isoformat(timespec="seconds"),
            "wall_time_seconds": round(time.time() - self.started, 3),
            "timings_seconds": self.timings,
            "seed": cfg.get("seed"),
            "n_jobs": cfg.get("n_jobs"),
            "config": cfg,
            "inputs": inputs,
            "versions": package_versions(),
            **self.extra,
        }

    def write(self, directory: str | Path) -> None:
        write_json(self.to_dict(), Path(directory) / "provenance.json")
