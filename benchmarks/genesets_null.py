"""Null calibration and power of the gene-set tests that can set the report's `significant` flag.

Design (issue 12): n samples (two balanced classes), genes in disjoint sets of equal size; within a
set the genes share one latent factor, so their correlation is `rho` (exchangeable); sets are
independent. Global null: no gene is related to the labels. Power: the genes of `n_planted` sets
are shifted by `effect` in the positive class.

Every replicate runs the report's gene-set analysis (`analyse_gene_sets`) on the cohort alone
(no train/explain/select), so the over-representation query is the top `top_k` genes by
univariate p-value and the rank-based test runs on Welch t, exactly as `iml-genomics report`
does without a model. Three nulls are compared:

* `phenotype_permutation` (what `null='auto'` picks here: C(100, 50) label rearrangements);
* `correlation_adjusted` (CAMERA's VIF, forced with `null='correlation_adjusted'`; what a SHAP
  or knockoff ranking gets);
* `independent`: the genes-independent p-values the report used to flag on (hypergeometric,
  gene permutation), BH and the q/2 union rule applied here to the columns
  `hypergeometric_p_value` and `gene_permutation_p_value`.

For each null and each test (ora, rank, the flag = either, and the direction-split over-representation
`ora_up` / `ora_down`: genes higher in case / in control, BH within each list, at level q) it prints the share of null
replicates with any set flagged (must be <= q plus Monte Carlo error) and, under the planted
alternative, the mean share of planted sets flagged (power) and the mean share of flagged sets
that were not planted (FDP).

Usage:
  /work/venv/bin/python benchmarks/genesets_null.py                        # 50 replicates, 5 min
  /work/venv/bin/python benchmarks/genesets_null.py --replicates 10 --rhos 0.6   # quick
  /work/venv/bin/python benchmarks/genesets_null.py --power-only --effect 1.0 --replicates 20 --rhos 0.3 0.6
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TESTS = ("ora", "rank", "flag", "ora_up", "ora_down")
# ora_up / ora_down: the direction-split over-representation (genes higher in case / in control, each list
# the top `top_k` of its direction, BH within each list) at level q; it does not set the flag


def simulate_sets(n: int = 100, n_sets: int = 50, set_size: int = 20, rho: float = 0.3, *, n_planted: int = 0,
                  effect: float = 0.0, seed: int = 0):
    """A cohort with exchangeable correlation `rho` inside each of `n_sets` disjoint sets.

    Returns
    -------
    adata : anndata.AnnData
        n x (n_sets * set_size), obs column `condition` (`case` / `control`, n/2 each).
    sets : dict of str -> list of str
    planted : list of str
        Sets whose genes are `effect` higher in `case` (the first `n_planted`).
    """
    import anndata as ad

    rng = np.random.default_rng(seed)
    p = n_sets * set_size
    factors = rng.standard_normal((n, n_sets))
    X = np.sqrt(rho) * np.repeat(factors, set_size, axis=1) + np.sqrt(1 - rho) * rng.standard_normal((n, p))
    y = np.array(["case"] * (n // 2) + ["control"] * (n - n // 2))
    rng.shuffle(y)
    genes = [f"G{j:05d}" for j in range(p)]
    sets = {f"SET_{s:03d}": genes[s * set_size:(s + 1) * set_size] for s in range(n_sets)}
    planted = list(sets)[:n_planted]
    for name in planted:
        cols = [genes.index(g) for g in sets[name]]
        X[np.ix_(y == "case", cols)] += effect
    obs = pd.DataFrame({"condition": y}, index=[f"S{i:04d}" for i in range(n)])
    return ad.AnnData(X, obs=obs, var=pd.DataFrame(index=genes)), sets, planted


def flags(adata, sets, *, null: str, q: float = 0.1, n_permutations: int = 1000, top_k: int = 50,
          seed: int = 0) -> dict[str, dict[str, set[str]]]:
    """Sets flagged by each test ('ora', 'rank', 'flag' = either) under `null` and, from the same run, under
    the genes-independent p-values: {null: {...}, 'independent': {...}}."""
    from iml_genomics import genesets as gs
    from iml_genomics.report import ReportInputs
    from iml_genomics.report.tables import analyse_gene_sets, univariate_effects

    uni = univariate_effects(adata, label_column="condition", task="classification", positive_class="case")
    res = analyse_gene_sets(
        ReportInputs(), gs.GeneSetCollection(sets, source="sim"), gene_map=None, univariate=uni,
        min_size=5, max_size=500, top_k=top_k, n_permutations=n_permutations, ranking_metric="univariate",
        q_threshold=q, random_state=seed, gene_ids=list(adata.var_names), adata=adata, label_column="condition",
        task="classification", positive_class="case", classes=("case", "control"),
        null="correlation_adjusted" if null == "correlation_adjusted" else "auto")
    t = res.table
    assert set(t["null_method"]) == {null} and set(t["gsea_null_method"]) == {null}, (
        set(t["null_method"]), set(t["gsea_null_method"]))
    level = q / 2  # the union rule of the flag: each family at q/2
    out = {null: {"ora": set(t.loc[t["q_value"] <= level, "gene_set"]),
                  "rank": set(t.loc[t["gsea_q_value"] <= level, "gene_set"]),
                  "flag": set(t.loc[t["significant"].astype(bool), "gene_set"]),
                  "ora_up": set(t.loc[t["q_value_positive_class"] <= q, "gene_set"]),
                  "ora_down": set(t.loc[t["q_value_other_class"] <= q, "gene_set"])}}
    ora_q = gs.benjamini_hochberg(t["hypergeometric_p_value"].to_numpy(float))
    rank_q = gs.benjamini_hochberg(t["gene_permutation_p_value"].to_numpy(float))
    ind = {"ora": set(t.loc[ora_q <= level, "gene_set"]), "rank": set(t.loc[rank_q <= level, "gene_set"])}
    ind["flag"] = ind["ora"] | ind["rank"]
    ind["ora_up"] = ind["ora_down"] = None  # the split lists have no genes-independent column
    out["independent"] = ind
    return out


def study(rhos, replicates: int, *, n: int = 100, n_sets: int = 50, set_size: int = 20, n_planted: int = 5,
          effect: float = 0.5, q: float = 0.1, n_permutations: int = 1000, top_k: int = 50,
          nulls=("phenotype_permutation", "correlation_adjusted"), seed: int = 0, power: bool = True,
          null_runs: bool = True) -> pd.DataFrame:
    """One row per (rho, null, test): any_flag_rate under the global null; power and mean FDP when planted.
    The genes-independent p-values ('independent') are read off the first null's runs."""
    names = [*nulls, "independent"]
    rows = []
    for rho in rhos:
        any_flag = {(nl, t): 0 for nl in names for t in TESTS}
        pw = {(nl, t): [] for nl in names for t in TESTS}
        fdp = {(nl, t): [] for nl in names for t in TESTS}
        for r in range(replicates):
            base = seed + 1000 * r + int(round(rho * 100))
            adata, sets, _ = simulate_sets(n, n_sets, set_size, rho, seed=base)
            for i, nl in enumerate(nulls if null_runs else ()):
                f = flags(adata, sets, null=nl, q=q, n_permutations=n_permutations, top_k=top_k, seed=r)
                for name in ([nl, "independent"] if i == 0 else [nl]):
                    for t in TESTS:
                        if f[name][t] is not None:
                            any_flag[(name, t)] += bool(f[name][t])
            if power:
                adata, sets, planted = simulate_sets(n, n_sets, set_size, rho, n_planted=n_planted, effect=effect,
                                                     seed=base + 7)
                for i, nl in enumerate(nulls):
                    f = flags(adata, sets, null=nl, q=q, n_permutations=n_permutations, top_k=top_k, seed=r)
                    for name in ([nl, "independent"] if i == 0 else [nl]):
                        for t in TESTS:
                            if f[name][t] is None:
                                continue
                            pw[(name, t)].append(len(f[name][t] & set(planted)) / len(planted))
                            fdp[(name, t)].append(len(f[name][t] - set(planted)) / max(1, len(f[name][t])))
        for nl in names:
            for t in TESTS:
                if nl == "independent" and t.startswith("ora_"):
                    continue
                rows.append({"rho": rho, "null": nl, "test": t,
                             "any_flag_rate_null": any_flag[(nl, t)] / replicates if null_runs else np.nan,
                             "power": np.mean(pw[(nl, t)]) if pw[(nl, t)] else np.nan,
                             "mean_fdp_planted": np.mean(fdp[(nl, t)]) if fdp[(nl, t)] else np.nan})
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicates", type=int, default=50)
    ap.add_argument("--rhos", type=float, nargs="+", default=[0.0, 0.3, 0.6])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--n-sets", type=int, default=50)
    ap.add_argument("--set-size", type=int, default=20)
    ap.add_argument("--n-planted", type=int, default=5)
    ap.add_argument("--effect", type=float, default=0.5)
    ap.add_argument("--q", type=float, default=0.1)
    ap.add_argument("--permutations", type=int, default=1000)
    ap.add_argument("--top-k", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--power-only", action="store_true", help="Skip the global-null replicates.")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    res = study(args.rhos, args.replicates, n=args.n, n_sets=args.n_sets, set_size=args.set_size,
                n_planted=args.n_planted, effect=args.effect, q=args.q, n_permutations=args.permutations,
                top_k=args.top_k, seed=args.seed, null_runs=not args.power_only)
    bound = args.q + 2 * np.sqrt(args.q * (1 - args.q) / args.replicates)
    if not args.power_only:
        res["calibrated"] = res["any_flag_rate_null"] <= bound
    with pd.option_context("display.width", 200, "display.max_rows", 200):
        print(res.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"\nbound = q + 2 MC SE = {bound:.3f}; {args.replicates} replicates per rho; "
          f"wall {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
