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


def test_rule_runtime_follows_the_time_estimate_above_its_floor(tmp_path):
    import math

    import yaml

    from iml_genomics.cluster import RUNTIME_MARGIN, rule_runtime, step_estimate

    demo = {"config": str(ROOT / "configs" / "demo.yaml"), "expression": str(ROOT / "test_data" / "demo_expression.csv.gz")}
    assert rule_runtime(demo, "explain", threads=2, attempt=1, floor_minutes=120) == 120
    assert rule_runtime(demo, "explain", threads=2, attempt=2, floor_minutes=120) == 240
    # a forest of 20,000 unbounded trees with interaction values on every sample: hours, above any floor
    cfg = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    cfg["data"] = {**cfg["data"], **{k: str(ROOT / v) for k, v in cfg["data"].items() if k in ("expression", "labels")}}
    cfg["model"] = {"name": "random_forest", "params": {"n_estimators": 20000}}
    cfg["explain"] = {**cfg["explain"], "interaction_max_samples": 400}
    (tmp_path / "big.yaml").write_text(yaml.safe_dump(cfg))
    big = {"config": str(tmp_path / "big.yaml"), "expression": demo["expression"]}
    from iml_genomics.config import load_config

    loaded = load_config(big["config"])
    loaded.n_jobs = 2
    seconds = step_estimate(loaded, big["expression"], "explain").seconds
    minutes = rule_runtime(big, "explain", threads=2, attempt=1, floor_minutes=120)
    assert minutes == math.ceil(RUNTIME_MARGIN * seconds / 60) > 120


def test_cluster_memory_estimate_reads_a_sparse_h5ad_as_sparse(tmp_path):
    """SLURM's mem_mb comes from the same estimate as the dry run, stored values included (it used to size a
    sparse cohort as dense)."""
    import anndata as ad
    import pandas as pd

    from iml_genomics.cluster import step_estimate_bytes
    from iml_genomics.single_cell import simulate_single_cell

    X, labels, *_ = simulate_single_cell(4000, 400, n_types=2, n_markers=5, seed=0)
    path = tmp_path / "cells.h5ad"
    ad.AnnData(X=X.astype("float64"), obs=pd.DataFrame(index=labels.index)).write_h5ad(path)
    cfg = load_config(ROOT / "configs" / "single_cell.yaml")
    cfg.n_jobs = 2
    dense = {e.step: e.peak_memory_bytes for e in pl.estimate_resources(cfg, 4000, 400, n_jobs=2)}
    sparse = {e.step: e.peak_memory_bytes for e in pl.estimate_resources(cfg, 4000, 400, n_jobs=2, nnz=X.nnz)}
    for step in ("train", "report"):
        assert step_estimate_bytes(cfg, path, step) == sparse[step] < dense[step]
