"""Knockoff FDR and power on an AR(1) chain above the dense threshold: factor vs factor_blocks.

The design of issue 11: AR(1) correlation rho = 0.8 over p = 3,000 genes
(a chain, so every gene has neighbours at corr 0.8, 0.64, ...), n = 300,
20 true genes at random positions with effects +-amplitude, continuous
outcome y = X beta + N(0, 1), knockoff+ at q = 0.1 with the lasso statistic
and MVR S. Each replicate redraws X, the positions and the signs; both
covariance models see the same data. Also reports the mean over genes of
corr(X~_j, X_{j+1}) (about rho when the knockoffs keep the local
correlation, about 0 when they do not).

Run (numbers in docs/select.md):

    python benchmarks/blockfactor_ar1.py --replicates 20 --out ar1_blockfactor.tsv
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from iml_genomics.parallel import spawn_seeds  # noqa: E402
from iml_genomics.select import knockoff_select  # noqa: E402
from iml_genomics.select.covariance import fit_covariance  # noqa: E402
from iml_genomics.select.sampler import sample_knockoffs  # noqa: E402
from iml_genomics.select.smatrix import compute_s  # noqa: E402


def ar1_cohort(n: int, p: int, rho: float, n_signal: int, amplitude: float, seed: int):
    """X (n x p) AR(1) with unit variance, y = X beta + N(0, 1), and the true gene indices."""
    rng = np.random.default_rng(seed)
    X = np.empty((n, p))
    X[:, 0] = rng.standard_normal(n)
    innov = rng.standard_normal((n, p)) * np.sqrt(1.0 - rho**2)
    for j in range(1, p):
        X[:, j] = rho * X[:, j - 1] + innov[:, j]
    true = np.sort(rng.choice(p, n_signal, replace=False))
    beta = np.zeros(p)
    beta[true] = amplitude * rng.choice([-1.0, 1.0], n_signal)
    y = X @ beta + rng.standard_normal(n)
    return X, y, true


def neighbour_knockoff_corr(X: np.ndarray, covariance: str, seed: int) -> float:
    """Mean over j of corr(X~_j, X_{j+1}) for one knockoff draw."""
    model = fit_covariance(X, method=covariance, random_state=seed)
    s, _ = compute_s(model, "mvr", random_state=seed)
    Xk = sample_knockoffs(model, s, X, random_state=seed)
    Z = (X - X.mean(0)) / X.std(0)
    Zk = (Xk - Xk.mean(0)) / Xk.std(0)
    return float(np.mean(np.mean(Zk[:, :-1] * Z[:, 1:], axis=0)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replicates", type=int, default=20)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--p", type=int, default=3000)
    ap.add_argument("--rho", type=float, default=0.8)
    ap.add_argument("--signals", type=int, default=20)
    ap.add_argument("--amplitude", type=float, default=0.5)
    ap.add_argument("--fdr", type=float, default=0.1)
    ap.add_argument("--models", default="factor,factor_blocks")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    rows = []
    for rep, seed in enumerate(spawn_seeds(args.seed, args.replicates)):
        X, y, true = ar1_cohort(args.n, args.p, args.rho, args.signals, args.amplitude, seed)
        is_true = np.zeros(args.p, dtype=bool)
        is_true[true] = True
        for cov in args.models.split(","):
            t0 = time.perf_counter()
            res = knockoff_select(X, y, [f"g{j}" for j in range(args.p)], task="regression", fdr=args.fdr,
                                  covariance=cov, random_state=seed, n_jobs=1, check_swap=False)
            sel = np.zeros(args.p, dtype=bool)
            sel[[int(g[1:]) for g in res.table.loc[res.table["selected"], "gene_id"]]] = True
            n_sel = int(sel.sum())
            rows.append({"replicate": rep, "covariance": cov, "n_selected": n_sel,
                         "fdp": float((sel & ~is_true).sum() / max(n_sel, 1)),
                         "power": float((sel & is_true).sum() / args.signals),
                         "factor_rank": res.summary["factor_rank"], "n_blocks": res.summary.get("n_blocks"),
                         "mean_s": res.summary["mean_s"],
                         "corr_xk_j_x_j1": neighbour_knockoff_corr(X, cov, seed) if rep < 3 else np.nan,
                         "seconds": time.perf_counter() - t0})
            print(rows[-1], flush=True)
    df = pd.DataFrame(rows)
    if args.out:
        df.to_csv(args.out, sep="\t", index=False)
    g = df.groupby("covariance")
    summary = pd.DataFrame({"mean_fdp": g["fdp"].mean(), "se_fdp": g["fdp"].std(ddof=1) / np.sqrt(g.size()),
                            "mean_power": g["power"].mean(), "se_power": g["power"].std(ddof=1) / np.sqrt(g.size()),
                            "corr_xk_j_x_j1": g["corr_xk_j_x_j1"].mean(), "mean_s": g["mean_s"].mean(),
                            "seconds": g["seconds"].mean(), "replicates": g.size()})
    print(summary.to_string(float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
