"""Time and peak memory of the report's per-gene tests and gene-set nulls on a (single-cell) cohort (issue 18).

Each stage's peak is the process's resident high-water mark (VmHWM, reset through /proc/self/clear_refs
before the stage), above the resident size when the stage starts (the cohort, the interpreter).

    PYTHONPATH=. python benchmarks/bench_report_blocks.py sc100k/sc_expression.h5ad sc100k/sc_pathways.gmt \\
        --label-column cell_type --positive-class type_1 --count-data
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def _hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _stage(name, fn, out):
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    start_rss, t0 = _rss(), time.perf_counter()
    result = fn()
    out[name] = {"seconds": round(time.perf_counter() - t0, 2), "peak_bytes": _hwm(),
                 "peak_above_start_bytes": _hwm() - start_rss}
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("expression")
    parser.add_argument("gmt")
    parser.add_argument("--label-column", required=True)
    parser.add_argument("--positive-class")
    parser.add_argument("--count-data", action="store_true")
    parser.add_argument("--n-permutations", type=int, default=1000)
    parser.add_argument("--top-k", type=int, default=50)
    args = parser.parse_args(argv)

    import anndata as ad

    from iml_genomics import genesets as gs
    from iml_genomics.parallel import fixed_blas_threads
    from iml_genomics.report import ReportInputs
    from iml_genomics.report.tables import analyse_gene_sets, univariate_effects

    out: dict = {}
    adata = _stage("read", lambda: ad.read_h5ad(args.expression), out)
    adata.obs[args.label_column] = adata.obs[args.label_column].astype(str)
    collection = gs.read_gmt(args.gmt)
    classes = sorted(set(adata.obs[args.label_column]))
    pos = args.positive_class or classes[-1]
    other = "rest" if len(classes) > 2 else [c for c in classes if c != pos][0]
    if len(classes) > 2:  # one class against the rest, as configs/single_cell.yaml
        adata.obs[args.label_column] = [c if c == pos else "rest" for c in adata.obs[args.label_column]]
    with fixed_blas_threads():
        uni = _stage("univariate_effects", lambda: univariate_effects(
            adata, label_column=args.label_column, task="classification", positive_class=pos,
            count_data=args.count_data), out)
        res = _stage("gene_sets", lambda: analyse_gene_sets(
            ReportInputs(), collection, gene_map=None, univariate=uni, min_size=5, max_size=500, top_k=args.top_k,
            n_permutations=args.n_permutations, ranking_metric="univariate", q_threshold=0.1, random_state=0,
            gene_ids=[str(g) for g in adata.var_names], classes=(pos, other), adata=adata,
            label_column=args.label_column, task="classification", positive_class=pos,
            count_data=args.count_data), out)
    out["shape"] = list(adata.shape)
    out["n_significant_sets"] = int(res.table["significant"].sum())
    out["null_method"] = res.summary["null_method"]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
