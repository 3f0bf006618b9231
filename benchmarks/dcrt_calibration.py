"""dCRT calibration cells and the genome-scale timing (docs/select.md, "The dCRT").

Calibration: AR(1) genes (rho), n samples, p genes, 10 true genes with effects
+-amp, continuous outcome y = X beta + N(0, 1); every gene tested
(``screening=False``) so the null p-values can be checked for uniformity;
BH at q = 0.1. Prints mean FDP +- se, power, the KS p-value of the pooled
null p-values and their share <= 0.05 and <= 0.005.

    python benchmarks/dcrt_calibration.py cell --n 400 --p 200 --rho 0.8 --reps 40 [--oracle] [--scale model]
    python benchmarks/dcrt_calibration.py genome     # p = 20,000, n = 1,000, binary outcome, 20 true genes
    python benchmarks/dcrt_calibration.py issue11 --reps 10   # issue 11's knockoff cell: rho 0.8, n 300, p 3,000

``--oracle`` replaces the fitted covariance by the true AR(1) correlation.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import stats

import iml_genomics.select.dcrt as dcrt
from iml_genomics.select.covariance import CovarianceModel


def ar1(n: int, p: int, rho: float, rng) -> np.ndarray:
    X = np.empty((n, p))
    X[:, 0] = rng.standard_normal(n)
    for j in range(1, p):
        X[:, j] = rho * X[:, j - 1] + np.sqrt(1 - rho**2) * rng.standard_normal(n)
    return X


def cell(n: int, p: int, rho: float, amp: float, reps: int, oracle: bool, scale: str, q: float = 0.1) -> None:
    if oracle:
        C = rho ** np.abs(np.subtract.outer(np.arange(p), np.arange(p)))

        def true_model(R, method, rank, random_state):
            return CovarianceModel("ledoit_wolf", R.mean(0), R.std(0), corr=C, shrinkage=0.0)

        dcrt.fit_covariance = true_model
    fdp, power, nulls = [], [], []
    for r in range(reps):
        rng = np.random.default_rng(100 + r)
        X = ar1(n, p, rho, rng)
        true = rng.choice(p, 10, replace=False)
        beta = np.zeros(p)
        beta[true] = amp * rng.choice([-1, 1], 10) / np.sqrt(n) * 10
        y = X @ beta + rng.standard_normal(n)
        res = dcrt.dcrt_select(X, y, [str(j) for j in range(p)], task="regression", fdr=q, scale=scale,
                               screening=False)
        sel = np.zeros(p, bool)
        sel[res.table["gene_id"].astype(int)[res.table["selected"]].to_numpy()] = True
        fdp.append(np.sum(sel & (beta == 0)) / max(1, sel.sum()))
        power.append(sel[true].mean())
        pv = np.empty(p)
        pv[res.table["gene_id"].astype(int).to_numpy()] = res.table["p_value"].to_numpy()
        nulls.extend(pv[beta == 0])
    fdp, nulls = np.array(fdp), np.array(nulls)
    print(f"n {n} p {p} rho {rho} reps {reps}{' oracle' if oracle else ''} scale {scale}: "
          f"FDP {fdp.mean():.3f} +- {fdp.std(ddof=1) / np.sqrt(reps):.3f}, power {np.mean(power):.2f}, "
          f"KS p {stats.kstest(nulls, 'uniform').pvalue:.3g}, null p <= 0.05: {np.mean(nulls <= 0.05):.3f}, "
          f"<= 0.005: {np.mean(nulls <= 0.005):.4f} ({nulls.size} null p-values)")


def genome(n_jobs: int) -> None:
    rng = np.random.default_rng(0)
    n, p, rho = 1000, 20000, 0.5
    X = ar1(n, p, rho, rng)
    true = np.sort(rng.choice(p, 20, replace=False))
    beta = np.zeros(p)
    beta[true] = 0.5 * rng.choice([-1, 1], 20)
    y = (X @ beta + rng.logistic(size=n) > 0).astype(int)
    t0 = time.time()
    res = dcrt.dcrt_select(X, y, [f"g{j}" for j in range(p)], task="classification", fdr=0.1, n_jobs=n_jobs)
    elapsed = time.time() - t0
    sel = res.table["gene_id"][res.table["selected"]].str[1:].astype(int).to_numpy()
    tp = int(np.isin(sel, true).sum())
    print(f"p = {p}, n = {n}: {elapsed:.1f} s; {res.summary['n_screened']} screened; {sel.size} selected, "
          f"{tp} of 20 true; FDP {(sel.size - tp) / max(1, sel.size):.3f}; covariance {res.summary['covariance_model']}"
          f" k = {res.summary['factor_rank']}")


def issue11(reps: int) -> None:
    """AR(1) rho 0.8, n = 300, p = 3,000 (covariance auto: the factor model), 20 true genes +-0.5, q = 0.1."""
    fdp, power = [], []
    for r in range(reps):
        rng = np.random.default_rng(1000 + r)
        n, p = 300, 3000
        X = ar1(n, p, 0.8, rng)
        true = np.sort(rng.choice(p, 20, replace=False))
        beta = np.zeros(p)
        beta[true] = 0.5 * rng.choice([-1, 1], 20)
        y = X @ beta + rng.standard_normal(n)
        res = dcrt.dcrt_select(X, y, [str(j) for j in range(p)], task="regression", fdr=0.1)
        sel = res.table["gene_id"][res.table["selected"]].astype(int).to_numpy()
        fdp.append(np.setdiff1d(sel, true).size / max(1, sel.size))
        power.append(np.isin(true, sel).mean())
    fdp = np.array(fdp)
    print(f"issue 11 cell, {reps} replicates: FDP {fdp.mean():.3f} +- {fdp.std(ddof=1) / np.sqrt(reps):.3f}, "
          f"power {np.mean(power):.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    c = sub.add_parser("cell")
    c.add_argument("--n", type=int, default=400)
    c.add_argument("--p", type=int, default=200)
    c.add_argument("--rho", type=float, default=0.8)
    c.add_argument("--amp", type=float, default=1.0)
    c.add_argument("--reps", type=int, default=40)
    c.add_argument("--oracle", action="store_true")
    c.add_argument("--scale", default="empirical", choices=["empirical", "model"])
    g = sub.add_parser("genome")
    g.add_argument("--jobs", type=int, default=2)
    i = sub.add_parser("issue11")
    i.add_argument("--reps", type=int, default=10)
    a = ap.parse_args()
    if a.what == "cell":
        cell(a.n, a.p, a.rho, a.amp, a.reps, a.oracle, a.scale)
    elif a.what == "issue11":
        issue11(a.reps)
    else:
        genome(a.jobs)


if __name__ == "__main__":
    main()
