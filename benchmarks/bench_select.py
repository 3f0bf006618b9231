"""Benchmark `select` (knockoffs and the dCRT) against knockpy and hidimstat, then ours alone at p = 20,000.

Every (method, p, seed) runs in a fresh subprocess so that the peak resident
memory (ru_maxrss, includes the interpreter and imports) belongs to that run
alone; times are measured inside the worker around the call itself, after the
tool's module and scikit-learn are imported (the same for every tool).

Comparison data: `simulate_gaussian` (blocks of 20 genes, rho = 0.5),
n = 500, 20 planted genes, continuous outcome, so all three tools fit the same
linear lasso statistic. Targets: knockoff FDR q = 0.1, knockoff+.

  knockpy    KnockoffFilter(ksampler="gaussian", fstat="lasso"), default MVR S,
             Ledoit-Wolf covariance (its defaults)
  hidimstat  model_x_knockoff_importance (equicorrelated Gaussian knockoffs, LassoCV)
  ours       iml_genomics.select.knockoff_select (auto covariance, MVR, lasso)
  dcrt       iml_genomics.select.dcrt.dcrt_select (auto covariance, lasso distillation, BH)

Large run: ours (knockoffs and dCRT) at p = 20,000, n = 1,000, binary outcome (20 planted genes),
genes from 10 genome-wide factors plus modules of 20 co-regulated genes plus noise, lasso statistic; knockoff construction
(covariance model + S + sampling) is timed separately from the end-to-end call.

Usage:
  python benchmarks/bench_select.py                  # full (tens of minutes on 2 busy cores)
  python benchmarks/bench_select.py --p-list 500 --seeds 1 --skip-big   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np


def _big_data(p, n, seed, n_signal=20, n_factors=10, module_size=20):
    """Genes = 10 genome-wide factors + co-regulated modules of 20 (within-module corr ~0.5) + noise.

    Binary outcome from 20 planted genes. The modules are the local
    correlation a factor model alone misses (issue 11).
    """
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, n_factors)) @ (0.5 * rng.standard_normal((p, n_factors))).T
    module_of = np.arange(p) // module_size
    X += 1.2 * rng.standard_normal((n, int(module_of[-1]) + 1))[:, module_of]
    X += rng.standard_normal((n, p))
    X /= X.std(axis=0)
    signal = rng.choice(p, n_signal, replace=False)
    beta = np.zeros(p)
    beta[signal] = 1.0 * np.where(np.arange(n_signal) % 2 == 0, 1.0, -1.0)
    y = np.where(rng.random(n) < 1 / (1 + np.exp(-(X @ beta))), "tumour", "normal")
    genes = [f"G{j + 1:05d}" for j in range(p)]
    return X, y, genes, np.isin(np.arange(p), signal)


def _data(p, n, seed, outcome="continuous", big=False):
    from iml_genomics.simulate import simulate_gaussian

    if big:
        return _big_data(p, n, seed)
    c = simulate_gaussian(n, p, n_signal=20, effect_size=0.4 if outcome == "continuous" else 1.0, rho=0.5,
                          block_size=20, outcome=outcome, seed=seed)
    X = c.expression.to_numpy()
    genes = list(c.expression.columns)
    truth = np.isin(genes, c.true_genes)
    y = c.labels["condition"].to_numpy()
    if outcome == "continuous":
        y = y.astype(float)
    return X, y, genes, truth


def _score(selected, truth):
    selected = np.asarray(selected, dtype=bool)
    k = int(selected.sum())
    tp = int((selected & truth).sum())
    return {"n_selected": k, "power": tp / truth.sum(), "fdp": (k - tp) / max(k, 1)}


def worker(method, p, n, seed, fdr, jobs):
    import warnings

    warnings.filterwarnings("ignore")
    big = method.startswith("ours_big") or method == "dcrt_big"
    X, y, genes, truth = _data(p, n, seed, outcome="binary" if big else "continuous", big=big)
    out = {"method": method, "p": p, "n": n, "seed": seed}
    # Module imports happen before the clock starts, for every tool alike: scikit-learn and scipy, which all three
    # use, cost ~2 s to import in a fresh process, which a CLI pays once and which would otherwise dominate the
    # smaller runs. Everything a call does itself (lazy imports, numba's cache load, worker start-up) is timed.
    import sklearn.covariance  # noqa: F401
    import sklearn.linear_model  # noqa: F401
    if method == "knockpy":
        from knockpy.knockoff_filter import KnockoffFilter
    elif method == "hidimstat":
        from hidimstat import model_x_knockoff_importance
    elif method in ("dcrt", "dcrt_big"):
        from iml_genomics.select.dcrt import dcrt_select
    else:
        from iml_genomics.select import knockoff_select
    t0 = time.perf_counter()
    if method == "knockpy":
        kf = KnockoffFilter(ksampler="gaussian", fstat="lasso", knockoff_kwargs={"method": "mvr"})
        selected = kf.forward(X=X, y=y, fdr=fdr)
    elif method == "hidimstat":
        selected, _, _ = model_x_knockoff_importance(X, y, fdr=fdr, random_state=seed, n_jobs=jobs)
    elif method in ("ours", "ours_big"):
        task = "classification" if big else "regression"
        res = knockoff_select(X, y, genes, task=task, fdr=fdr, random_state=seed, n_jobs=jobs)
        selected = res.table.set_index("gene_id").loc[genes, "selected"].to_numpy()
        out.update({"covariance_model": res.summary["covariance_model"], "factor_rank": res.summary["factor_rank"],
                    "swap_check_passed": res.summary["diagnostics"]["swap_check"].get("passed"),
                    "exchangeability_passed": res.summary["diagnostics"]["exchangeability"].get("passed")})
    elif method in ("dcrt", "dcrt_big"):
        task = "classification" if big else "regression"
        res = dcrt_select(X, y, genes, task=task, fdr=fdr, random_state=seed, n_jobs=jobs)
        selected = res.table.set_index("gene_id").loc[genes, "selected"].to_numpy()
        out.update({"covariance_model": res.summary["covariance_model"], "factor_rank": res.summary["factor_rank"],
                    "exchangeability_passed": res.summary["diagnostics"]["exchangeability"].get("passed")})
    elif method == "ours_big_construct":
        from iml_genomics.select.covariance import fit_covariance
        from iml_genomics.select.sampler import prepare_sampler, sample_knockoffs
        from iml_genomics.select.smatrix import check_psd, compute_s, min_eig_2c_minus_s

        t = time.perf_counter()
        model = fit_covariance(X, random_state=seed)
        t_cov = time.perf_counter() - t
        t = time.perf_counter()
        s, _ = compute_s(model, "mvr", random_state=seed)
        t_s = time.perf_counter() - t
        t = time.perf_counter()
        check_psd(min_eig_2c_minus_s(model, s))
        t_psd = time.perf_counter() - t
        t = time.perf_counter()
        sample_knockoffs(model, s, X, random_state=seed, prepared=prepare_sampler(model, s))
        t_sample = time.perf_counter() - t
        out.update({"covariance_s": t_cov, "s_matrix_s": t_s, "psd_check_s": t_psd, "sampling_s": t_sample,
                    "factor_rank": model.rank})
        selected = np.zeros(p, dtype=bool)
    else:
        raise SystemExit(f"unknown method {method}")
    out["seconds"] = time.perf_counter() - t0
    out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    out.update(_score(selected, truth))
    print(json.dumps(out))


def run(method, p, n, seed, fdr, jobs, timeout):
    cmd = [sys.executable, __file__, "--worker", method, "--p", str(p), "--n", str(n), "--seed", str(seed),
           "--fdr", str(fdr), "--jobs", str(jobs)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"method": method, "p": p, "seed": seed, "error": f"timeout after {timeout} s"}
    if proc.returncode != 0:
        return {"method": method, "p": p, "seed": seed, "error": proc.stderr.strip().splitlines()[-1][:200]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker")
    ap.add_argument("--p", type=int)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fdr", type=float, default=0.1)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--p-list", default="500,1000,2000")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--big-p", type=int, default=20000)
    ap.add_argument("--big-n", type=int, default=1000)
    ap.add_argument("--skip-big", action="store_true")
    ap.add_argument("--skip-peers", action="store_true")
    ap.add_argument("--timeout", type=int, default=1800)
    ap.add_argument("--json", help="also write all raw results to this file")
    a = ap.parse_args()
    if a.worker:
        worker(a.worker, a.p, a.n, a.seed, a.fdr, a.jobs)
        return
    try:
        import hidimstat  # noqa: F401
        have_hidimstat = True
    except ImportError:
        have_hidimstat = False
        print("hidimstat is not installed (pip install hidimstat failed or was not run); its rows are skipped.")
    methods = ["ours", "dcrt"] + ([] if a.skip_peers else ["knockpy"] + (["hidimstat"] if have_hidimstat else []))
    print(f"# bench_select: n = {a.n}, q = {a.fdr}, {a.seeds} seed(s), jobs = {a.jobs}, "
          f"load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    raw = []
    rows = []
    for p in [int(v) for v in a.p_list.split(",") if v]:
        agg = {}
        for m in methods:
            res = [run(m, p, a.n, s, a.fdr, a.jobs, a.timeout) for s in range(a.seeds)]
            raw.extend(res)
            ok = [r for r in res if "error" not in r]
            if not ok:
                agg[m] = {"error": res[0]["error"]}
                continue
            agg[m] = {k: float(np.mean([r[k] for r in ok])) for k in ("seconds", "peak_rss_gib", "power", "fdp")}
        for m in methods:
            r = agg[m]
            if "error" in r:
                rows.append(f"| {p} | {m} | error: {r['error']} | | | | |")
                continue
            ratio = (agg[m]["seconds"] / agg["ours"]["seconds"]) if "seconds" in agg.get("ours", {}) else float("nan")
            rows.append(f"| {p} | {m} | {r['seconds']:.1f} | {r['peak_rss_gib']:.2f} | {r['power']:.3f} | "
                        f"{r['fdp']:.3f} | {ratio:.1f}x |")
    print("\n| p | method | wall s | peak RSS GiB | power | FDP | time / ours |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if not a.skip_big:
        c = run("ours_big_construct", a.big_p, a.big_n, 0, a.fdr, a.jobs, a.timeout)
        e = run("ours_big", a.big_p, a.big_n, 0, a.fdr, a.jobs, a.timeout)
        d = run("dcrt_big", a.big_p, a.big_n, 0, a.fdr, a.jobs, a.timeout)
        raw.extend([c, e, d])
        print(f"\n## ours at p = {a.big_p}, n = {a.big_n} (binary outcome, lasso statistic)")
        if "error" in c:
            print(f"construction: error {c['error']}")
        else:
            total = c["covariance_s"] + c["s_matrix_s"] + c["psd_check_s"] + c["sampling_s"]
            print(f"knockoff construction: {total:.1f} s (covariance model, k = {c['factor_rank']}: "
                  f"{c['covariance_s']:.1f} s; MVR S: {c['s_matrix_s']:.1f} s; PSD check: {c['psd_check_s']:.1f} s; "
                  f"sampling: {c['sampling_s']:.1f} s), peak RSS {c['peak_rss_gib']:.2f} GiB")
        if "error" in e:
            print(f"end to end: error {e['error']}")
        else:
            print(f"end to end (knockoff_select incl. statistic, diagnostics): {e['seconds']:.1f} s, peak RSS "
                  f"{e['peak_rss_gib']:.2f} GiB, selected {e['n_selected']}, power {e['power']:.3f}, "
                  f"FDP {e['fdp']:.3f}, swap check passed: {e.get('swap_check_passed')}, exchangeability check "
                  f"passed: {e.get('exchangeability_passed')}")
        if "error" in d:
            print(f"dCRT end to end: error {d['error']}")
        else:
            print(f"dCRT end to end (dcrt_select incl. screening, distillation, diagnostics): {d['seconds']:.1f} s, "
                  f"peak RSS {d['peak_rss_gib']:.2f} GiB, selected {d['n_selected']}, power {d['power']:.3f}, "
                  f"FDP {d['fdp']:.3f}, exchangeability check passed: {d.get('exchangeability_passed')}")
    print(f"\nload average at end {os.getloadavg()[0]:.1f}")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(raw, fh, indent=1)


if __name__ == "__main__":
    main()
