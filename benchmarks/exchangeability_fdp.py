"""FDP of knockoff+ and the verdict of the exchangeability check on AR(1) genes (docs/select.md, diagnostics).

Usage (20 replicates at q = 0.1, 20 planted genes with effects +-0.5, continuous outcome):
  python benchmarks/exchangeability_fdp.py --covariance ledoit_wolf --n 300 --p 1000 --rho 0.8 --reps 20
  python benchmarks/exchangeability_fdp.py --design blocks --block-size 20 --rho 0.5 --n 500 --p 2000 --reps 10
"""

from __future__ import annotations

import argparse

import numpy as np

from iml_genomics.select import knockoff_select
from iml_genomics.simulate import ar1_correlated_normal, block_correlated_normal


def ar1(n: int, p: int, rho: float, seed: int) -> np.ndarray:
    """AR(1) genes: corr(X_j, X_k) = rho^|j - k| (each gene's neighbours correlate at rho)."""
    return ar1_correlated_normal(n, p, rho=rho, rng=np.random.default_rng(seed))


def blocks(n: int, p: int, size: int, rho: float, seed: int) -> np.ndarray:
    """Equicorrelated blocks of ``size`` genes at correlation rho (bench_select's design with size 20, rho 0.5)."""
    return block_correlated_normal(n, p, block_size=size, rho=rho, rng=np.random.default_rng(seed))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--covariance", default="ledoit_wolf")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--p", type=int, default=1000)
    ap.add_argument("--rho", type=float, default=0.8)
    ap.add_argument("--design", choices=["ar1", "blocks"], default="ar1")
    ap.add_argument("--block-size", type=int, default=20)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--fdr", type=float, default=0.1)
    a = ap.parse_args()
    fdps, powers, passed = [], [], []
    for seed in range(a.reps):
        X = (ar1(a.n, a.p, a.rho, 100 + seed) if a.design == "ar1"
             else blocks(a.n, a.p, a.block_size, a.rho, 100 + seed))
        rng = np.random.default_rng(seed)
        true = np.sort(rng.choice(a.p, 20, replace=False))
        beta = np.zeros(a.p)
        beta[true] = rng.choice([-1, 1], 20) * 0.5
        y = X @ beta + rng.standard_normal(a.n)
        res = knockoff_select(X, y, [f"g{j}" for j in range(a.p)], task="regression", fdr=a.fdr,
                              covariance=a.covariance, random_state=seed)
        sel = set(res.table.loc[res.table["selected"], "gene_id"])
        truth = {f"g{j}" for j in true}
        fdps.append(len(sel - truth) / max(1, len(sel)))
        powers.append(len(sel & truth) / 20)
        ex = res.summary["diagnostics"]["exchangeability"]
        passed.append(bool(ex.get("passed", False)))
        print(f"rep {seed}: shrinkage {res.summary['ledoit_wolf_shrinkage']}, {len(sel)} selected, FDP "
              f"{fdps[-1]:.3f}, check passed {passed[-1]} ({ex.get('fraction_exceeding')})", flush=True)
    se = np.std(fdps, ddof=1) / np.sqrt(a.reps) if a.reps > 1 else float("nan")
    print(f"mean FDP {np.mean(fdps):.3f} +- {se:.3f}, power {np.mean(powers):.2f}, check passed in "
          f"{sum(passed)}/{a.reps}")


if __name__ == "__main__":
    main()
