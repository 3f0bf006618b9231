"""One end-to-end `knockoff_select` at genome scale on factors plus local modules (covariance: auto).

Genes = 10 genome-wide factors (loadings N(0, 0.5^2)) + modules of 20 genes at
within-module correlation 0.5, standardised; binary outcome from 20 planted
genes (logistic, effects +-1). Above 2,500 genes ``auto`` is ``factor_blocks``.
Prints the wall time of the call, the covariance summary and the selection.
Run under ``/usr/bin/time -v`` for the peak memory:

    /usr/bin/time -v python benchmarks/bench_blockfactor_big.py --p 20000 --n 1000 --jobs 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from iml_genomics.select import knockoff_select  # noqa: E402
from iml_genomics.simulate import block_correlated_normal  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--p", type=int, default=20000)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    n, p = args.n, args.p
    X = rng.standard_normal((n, 10)) @ (0.5 * rng.standard_normal((p, 10))).T
    X += block_correlated_normal(n, p, block_size=20, rho=0.5, rng=rng)
    X /= X.std(axis=0)
    signal = rng.choice(p, 20, replace=False)
    beta = np.zeros(p)
    beta[signal] = np.where(np.arange(20) % 2 == 0, 1.0, -1.0)
    y = np.where(rng.random(n) < 1 / (1 + np.exp(-(X @ beta))), "tumour", "normal")
    t0 = time.perf_counter()
    res = knockoff_select(X, y, [f"G{j:05d}" for j in range(p)], task="classification", fdr=0.1,
                          random_state=args.seed, n_jobs=args.jobs, check_swap=False)
    wall = time.perf_counter() - t0
    s = res.summary
    sel = np.isin(res.table["gene_id"], [f"G{j:05d}" for j in signal])
    chosen = res.table["selected"].to_numpy()
    print({"seconds": round(wall, 1), "covariance_model": s["covariance_model"], "factor_rank": s["factor_rank"],
           "n_blocks": s["n_blocks"], "max_block_size": s["max_block_size"], "mean_s": round(s["mean_s"], 3),
           "min_eig": s["diagnostics"]["min_eig_2sigma_minus_s"], "n_selected": int(chosen.sum()),
           "true_selected": int((sel & chosen).sum())})
    return 0


if __name__ == "__main__":
    sys.exit(main())
