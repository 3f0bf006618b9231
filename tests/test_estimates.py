"""`run --dry-run`'s time estimates: scaled by a probe of the machine it runs on, and the probe can tell a busy
machine from an idle one."""

from __future__ import annotations

import multiprocessing
import os

import pytest

from conftest import ROOT

from iml_genomics import pipeline as pl
from iml_genomics.config import load_config


def test_estimates_scale_with_the_slowdown_and_memory_does_not():
    cfg = load_config(ROOT / "configs" / "single_cell.yaml")
    base = pl.estimate_resources(cfg, 100_000, 2_000, n_jobs=2, nnz=20_000_000)
    slow = pl.estimate_resources(cfg, 100_000, 2_000, n_jobs=2, nnz=20_000_000, slowdown=3.0)
    for b, s in zip(base, slow):
        assert s.seconds == pytest.approx(3.0 * b.seconds, rel=0.01, abs=0.2)
        assert s.peak_memory_bytes == b.peak_memory_bytes


def test_slowdown_is_the_probe_over_its_reference_clipped(monkeypatch):
    times = iter([9.0, 0.3, 0.2, 0.4])  # the first (warm-up) call is ignored; the median of the rest is 0.3
    monkeypatch.setattr(pl, "_probe_once", lambda *a: next(times))
    assert pl.machine_slowdown(repeats=3) == pytest.approx(0.3 / pl._PROBE_REFERENCE_SECONDS)
    monkeypatch.setattr(pl, "_probe_once", lambda *a: 1e3)
    assert pl.machine_slowdown() == 20.0
    monkeypatch.setattr(pl, "_probe_once", lambda *a: 1e-9)
    assert pl.machine_slowdown() == 0.25


def _spin(stop):
    while not stop.is_set():
        pass


def test_the_probe_sees_a_busy_machine():
    """Not a speed target: the probe must move when every core is taken by other work (else it cannot fail)."""
    idle = pl.machine_slowdown(repeats=3)
    stop = multiprocessing.Event()
    # three spinners per core: the probe then gets about a quarter of a core
    spinners = [multiprocessing.Process(target=_spin, args=(stop,)) for _ in range(3 * (os.cpu_count() or 1))]
    for proc in spinners:
        proc.start()
    try:
        busy = pl.machine_slowdown(repeats=3)
    finally:
        stop.set()
        for proc in spinners:
            proc.join()
    assert busy > 1.5 * idle, (idle, busy)
