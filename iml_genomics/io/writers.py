"""Atomic outputs and provenance.

Each subcommand writes its files into a staging directory inside the output
directory and moves them into place only when every file is complete, so an
interrupted or failed run leaves no partial file (and no new directory).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file (streamed)."""
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


def write_json(obj, path: str | Path) -> None:
    """Write JSON with sorted keys (byte-stable) atomically."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n"
    atomic_write_bytes(text.encode(), path)


def write_tsv(frame: pd.DataFrame, path: str | Path, *, index: bool = False) -> None:
    """Write a tab-separated table atomically, floats in round-trip precision."""
    text = frame.to_csv(sep="\t", index=index, lineterminator="\n", float_format="%.10g")
    atomic_write_bytes(text.encode(), path)


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(data: bytes, path: str | Path) -> None:
    """Write ``data`` to a temporary file next to ``path`` and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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


@contextlib.contextmanager
def staged_output(out_dir: str | Path) -> Iterator[Path]:
    """Yield a staging directory; move its files into ``out_dir`` on success.

    On any exception the staging directory is removed, and ``out_dir`` too if
    this call created it and it is empty, so failures leave nothing behind.
    Each file is moved with :func:`os.replace` (atomic on one filesystem).
    Files that the previous run into ``out_dir`` wrote and this one did not
    (listed in ``.iml-outputs.json``) are removed, so a directory never mixes
    outputs of two runs; files iml-genomics did not write are never touched.
    """
    out_dir = Path(out_dir)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".iml-staging-", dir=out_dir))
    listing = out_dir / ".iml-outputs.json"
    try:
        yield stage
        written = sorted(str(p.relative_to(stage)) for p in stage.rglob("*") if p.is_file())
        for rel in written:
            src, dest = stage / rel, out_dir / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.is_dir():
                shutil.rmtree(dest)
            os.replace(src, dest)
        try:
            previous = json.loads(listing.read_text())
        except (FileNotFoundError, ValueError):
            previous = []
        for rel in set(previous) - set(written):
            stale = out_dir / rel
            if stale.is_file() and stale.resolve().is_relative_to(out_dir.resolve()):
                stale.unlink()
        if written:
            atomic_write_bytes(json.dumps(written, indent=1).encode(), listing)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if created and out_dir.exists() and not any(out_dir.iterdir()):
            out_dir.rmdir()


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
    """

    def __init__(self, step: str, config: dict, inputs: dict[str, str | Path | None]):
        self.step = step
        self.config = config
        self.inputs = {role: p for role, p in inputs.items() if p is not None}
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
                inputs[role] = {"path": str(p), "sha256": file_sha256(p)}
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
