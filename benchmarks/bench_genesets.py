"""Benchmark: our over-representation + prerank test vs gseapy prerank, blitzgsea and pyfgsea.

A 20,000-gene ranking (all symbols of the GO BP file, padded with unnamed
genes) against test_data/go_bp_2022-07.gmt.gz with set sizes 15-500
(4,463 sets), 1,000 gene permutations, weight p = 1. Scores are standard
normal with a shift of +0.6 for the members of 40 random sets (planted
enrichment), so NES spans a real range. Each engine runs in its own
subprocess so that its wall time and peak memory (summed RSS of the process tree,
polled every 0.2 s) are its own.
CPU seconds are summed over the tree too (robust when
other jobs share the machine). Prints one table: engine, wall s, CPU s, peak RSS, the correlation of NES with
ours and the correlation of -log10 p with ours on the sets both engines can resolve (p > 1/(permutations + 1)
for both).

Peers, all on the same ranking and sets (sizes 15-500 after matching to the ranking), weight p = 1:
  gseapy prerank    permutation_num = --n-permutations, threads = --gseapy-threads
  blitzgsea gsea    permutations = --n-permutations, center=False (the raw ranking, like the others),
                    processes = --peer-threads; p-values from its fitted analytic null
  pyfgsea run_gsea  nperm_simple = nperm_nes = --n-permutations (fgsea-multilevel for small p)
blitzgsea and pyfgsea are optional (the `bench` extra): if one does not import or fails, one line says so and it
is skipped.

Usage:
  /work/venv/bin/python benchmarks/bench_genesets.py                 # all engines (gseapy ~6-7 min, 6 GB)
  /work/venv/bin/python benchmarks/bench_genesets.py --skip-gseapy   # ours, blitzgsea, pyfgsea
  /work/venv/bin/python benchmarks/bench_genesets.py --skip-gseapy --skip-blitzgsea --skip-pyfgsea  # ours only
  /work/venv/bin/python benchmarks/bench_genesets.py --n-genes 5000 --n-permutations 200  # quick
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_GMT = ROOT / "test_data" / "go_bp_2022-07.gmt.gz"


def make_ranking(gmt: Path, n_genes: int, seed: int) -> tuple[pd.Series, dict[str, list[str]]]:
    from iml_genomics.genesets import read_gmt

    coll = read_gmt(gmt)
    symbols = sorted({g.strip().upper() for genes in coll.sets.values() for g in genes})
    rng = np.random.default_rng(seed)
    if len(symbols) >= n_genes:
        genes = sorted(rng.choice(symbols, size=n_genes, replace=False))
    else:
        genes = symbols + [f"UNNAMED{i:05d}" for i in range(n_genes - len(symbols))]
    scores = pd.Series(rng.standard_normal(n_genes), index=genes)
    names = sorted(coll.sets)
    planted = rng.choice(len(names), size=40, replace=False)
    for i in planted:
        members = [g.upper() for g in coll.sets[names[i]]]
        scores[scores.index.isin(members)] += 0.6
    sets = {name: [g.upper() for g in genes_] for name, genes_ in coll.sets.items()}
    return scores, sets


def run_engine(engine: str, args, out: Path) -> None:
    scores, sets = make_ranking(Path(args.gmt), args.n_genes, args.seed)
    t0 = time.perf_counter()
    if engine == "ours":
        from iml_genomics import genesets as gs

        kept, _ = gs.restrict_gene_sets(gs.GeneSetCollection(sets), scores.index, min_size=15, max_size=500)
        t1 = time.perf_counter()
        top = scores.sort_values(ascending=False).index[:200]
        gs.over_representation(top, scores.index, kept)
        t2 = time.perf_counter()
        res = gs.prerank(scores, kept, n_permutations=args.n_permutations, random_state=args.seed)
        t3 = time.perf_counter()
        frame = res[["gene_set", "es", "nes", "p_value"]]
        timings = {"prepare": t1 - t0, "ora": t2 - t1, "prerank": t3 - t2}
    elif engine == "blitzgsea":
        import blitzgsea

        signature = pd.DataFrame({0: scores.index, 1: scores.to_numpy()})
        r = blitzgsea.gsea(signature, sets, permutations=args.n_permutations, min_size=15, max_size=500,
                           processes=args.peer_threads, center=False, seed=args.seed)
        t3 = time.perf_counter()
        frame = pd.DataFrame({"gene_set": r.index, "es": r["es"].astype(float).to_numpy(),
                              "nes": r["nes"].astype(float).to_numpy(), "p_value": r["pval"].astype(float).to_numpy()})
        timings = {"prerank": t3 - t0}
    elif engine == "pyfgsea":
        import pyfgsea

        r = pyfgsea.run_gsea(scores, sets, min_size=15, max_size=500, nperm_simple=args.n_permutations,
                             nperm_nes=args.n_permutations, seed=args.seed, gsea_param=1.0)
        t3 = time.perf_counter()
        frame = pd.DataFrame({"gene_set": r["Pathway"], "es": r["ES"].astype(float), "nes": r["NES"].astype(float),
                              "p_value": r["P-value"].astype(float)})
        timings = {"prerank": t3 - t0}
    else:
        import gseapy

        rnk = scores.sort_values(ascending=False)
        pre = gseapy.prerank(rnk=rnk, gene_sets=sets, min_size=15, max_size=500,
                             permutation_num=args.n_permutations, weight=1.0, threads=args.gseapy_threads,
                             seed=args.seed, outdir=None, no_plot=True, verbose=False)
        t3 = time.perf_counter()
        r = pre.res2d
        frame = pd.DataFrame({"gene_set": r["Term"], "es": r["ES"].astype(float), "nes": r["NES"].astype(float),
                              "p_value": r["NOM p-val"].astype(float)})
        timings = {"prerank": t3 - t0}
    frame.to_csv(out, sep="\t", index=False)
    out.with_suffix(".json").write_text(json.dumps(timings))


OPTIONAL = ("blitzgsea", "pyfgsea")


def version(engine: str) -> str:
    if engine == "ours":
        return "iml_genomics.genesets.prerank"
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as v

    try:
        return f"{engine} {v(engine)}"
    except PackageNotFoundError:
        return engine


def agreement(ours: pd.DataFrame, other: pd.DataFrame, n_permutations: int) -> dict:
    """NES correlation over the sets both tested; -log10 p correlation over those both can resolve."""
    both = ours.set_index("gene_set").join(other.set_index("gene_set"), lsuffix="_o", rsuffix="_x",
                                           how="inner").dropna(subset=["nes_o", "nes_x", "p_value_o", "p_value_x"])
    floor = 1.0 / (n_permutations + 1)
    res = both[(both["p_value_o"] > floor) & (both["p_value_x"] > floor)]
    r_p = np.corrcoef(-np.log10(res["p_value_o"]), -np.log10(res["p_value_x"]))[0, 1] if len(res) > 2 else np.nan
    return {"n_both": len(both), "r_nes": np.corrcoef(both["nes_o"], both["nes_x"])[0, 1],
            "n_resolved": len(res), "r_p": r_p, "max_es": np.abs(both["es_o"] - both["es_x"]).max()}


def measure(engine: str, args, workdir: Path) -> dict:
    """Run one engine in a subprocess; poll the RSS of its whole process tree (workers included)."""
    import psutil

    out = workdir / f"{engine}.tsv"
    cmd = [sys.executable, __file__, "--engine", engine, "--out", str(out), "--gmt", args.gmt,
           "--n-genes", str(args.n_genes), "--n-permutations", str(args.n_permutations), "--seed", str(args.seed),
           "--gseapy-threads", str(args.gseapy_threads), "--peer-threads", str(args.peer_threads)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    root = psutil.Process(proc.pid)
    peak, cpu = 0, {}
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            for p in tree:  # CPU seconds per process (user + system), last value seen
                t = p.cpu_times()
                cpu[p.pid] = t.user + t.system
        except psutil.Error:
            pass
        time.sleep(0.2)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        if engine in OPTIONAL:
            print(f"{engine}: failed with exit code {proc.returncode}; skipped")
            return {}
        raise SystemExit(f"{engine} failed with exit code {proc.returncode}")
    return {"engine": engine, "wall_s": wall, "peak_gb": peak / 1024**3, "cpu_s": sum(cpu.values()),
            "timings": json.loads(out.with_suffix(".json").read_text()), "result": pd.read_csv(out, sep="\t")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gmt", default=str(DEFAULT_GMT))
    parser.add_argument("--n-genes", type=int, default=20_000)
    parser.add_argument("--n-permutations", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gseapy-threads", type=int, default=2)
    parser.add_argument("--peer-threads", type=int, default=2, help="processes for blitzgsea")
    parser.add_argument("--skip-gseapy", action="store_true")
    parser.add_argument("--skip-blitzgsea", action="store_true")
    parser.add_argument("--skip-pyfgsea", action="store_true")
    parser.add_argument("--engine", choices=["ours", "gseapy", *OPTIONAL], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine:
        run_engine(args.engine, args, Path(args.out))
        return
    engines = ["ours"] + ([] if args.skip_gseapy else ["gseapy"])
    for e in OPTIONAL:
        if getattr(args, f"skip_{e}"):
            continue
        if importlib.util.find_spec(e) is None:
            print(f"{e}: not installed (pip install {e}); skipped")
            continue
        engines.append(e)
    with tempfile.TemporaryDirectory() as tmp:
        results = {e: measure(e, args, Path(tmp)) for e in engines}
    results = {e: r for e, r in results.items() if r}
    ours = results["ours"]
    print(f"\n{args.n_genes} genes, {args.n_permutations} permutations, sets 15-500 from {Path(args.gmt).name}, "
          f"{len(ours['result'])} sets tested by ours; os.cpu_count() = {os.cpu_count()}")
    print(f"ours: prepare {ours['timings']['prepare']:.2f} s, over-representation {ours['timings']['ora']:.2f} s, "
          f"prerank {ours['timings']['prerank']:.2f} s")
    print("| engine | wall s (incl. start-up and input) | CPU s | engine call only, wall s | peak RSS GB | "
          "sets tested (in common with ours) | corr(NES) with ours | corr(-log10 p) with ours (sets both resolve) "
          "| max abs ES diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    for e, r in results.items():
        if e == "ours":
            agree = "| — | — | — |"
            common = f"{len(r['result'])}"
        else:
            a = agreement(ours["result"], r["result"], args.n_permutations)
            agree = f"| {a['r_nes']:.5f} | {a['r_p']:.4f} (n = {a['n_resolved']}) | {a['max_es']:.1e} |"
            common = f"{len(r['result'])} ({a['n_both']})"
        print(f"| {version(e)} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['timings']['prerank']:.1f} | "
              f"{r['peak_gb']:.2f} | {common} {agree}")


if __name__ == "__main__":
    main()
