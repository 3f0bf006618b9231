"""Calibration study: which gene-selection methods keep their false discovery rate?

For each simulation family (gaussian, LDA-style pathway, semi-synthetic on
the Golub matrix) and each method, many seeded replicates are simulated and
analysed, and the table reports the mean false discovery proportion (FDP)
with its Monte Carlo standard error, the mean power and the stability of
the selected sets across replicates (mean pairwise Jaccard; the truth is the
same in every replicate of a family, only the samples are redrawn).

Methods
-------
Selections with an error-rate claim:
  knockoff_<statistic>   iml_genomics.select.knockoff_select (model-X knockoff+, q), one per statistic
  knockoff_lasso_clusters  group knockoffs over correlation clusters (groups="clusters"); a gene counts as
                         selected when its cluster is, and FDP is still computed over genes
  knockpy_lasso          knockpy's KnockoffFilter (Gaussian MVR knockoffs, lasso statistic), a reference
  marginal_bh            Welch t-test (or Pearson test) per gene + Benjamini-Hochberg at q; controls the
                         FDR of *marginal* association, not of the conditional truth simulated here
Selections without one:
  l1_cv                  genes with a nonzero coefficient in a cross-validated L1 model
Rankings cut at k = number of true genes (an oracle k that favours them):
  shap_top_k             mean |SHAP| of a random forest fitted on all samples
  permutation_top_k      out-of-fold permutation importance of the same forest (3 folds)
  lasso_path_top_k       order of entry along the lasso path

A method "controls" the FDR at q if its mean FDP <= q within Monte Carlo
error; the verdict column flags mean FDP > q + 2 SE.

Run (the full study recorded in docs/benchmarks/calibration.md):

    python benchmarks/calibration.py --replicates 30 --jobs 2 --out calibration.tsv

Methods whose module is not importable (e.g. before iml_genomics.select
exists) are skipped with a note.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from iml_genomics.evaluate import jaccard, selection_metrics  # noqa: E402
from iml_genomics.parallel import Backend, spawn_seeds  # noqa: E402

GOLUB = ROOT / "test_data" / "golub_expression.tsv.gz"

# family -> preset -> simulation parameters
PRESETS = {
    "full": {
        "gaussian": {"n_samples": 300, "n_genes": 200, "n_signal": 10, "effect_size": 1.0, "rho": 0.5,
                     "block_size": 10},
        # 40 pathways of 5 genes, 5 characteristic per class: 50 true genes in 10 true pathways, so
        # that group knockoff+ can reach its minimum of 1/q = 10 selected groups
        "pathway": {"n_samples": 300, "n_genes": 200, "pathway_size": 5, "n_characteristic": 5,
                    "over_weight": 2.0},
        "semi-synthetic": {"n_genes": 200, "n_signal": 10, "effect_size": 1.0, "outcome": "continuous"},
    },
    "small": {
        "gaussian": {"n_samples": 250, "n_genes": 80, "n_signal": 15, "effect_size": 1.0, "rho": 0.3,
                     "block_size": 10},
        "pathway": {"n_samples": 150, "n_genes": 60, "pathway_size": 5, "n_characteristic": 2,
                    "over_weight": 3.0},
        "semi-synthetic": {"n_genes": 60, "n_signal": 10, "effect_size": 1.5, "outcome": "continuous"},
    },
}

SELECTION_METHODS = ("knockoff_lasso", "dcrt", "hidimstat_dcrt", "knockoff_random_forest", "knockoff_lasso_clusters", "knockpy_lasso", "marginal_bh", "l1_cv")
RANKING_METHODS = ("shap_top_k", "permutation_top_k", "lasso_path_top_k")
FDR_CLAIM = {"knockoff_lasso": "FDR (conditional)", "knockoff_random_forest": "FDR (conditional)",
             "knockoff_lasso_clusters": "group FDR (clusters)",
             "knockoff_model": "FDR (conditional)", "knockpy_lasso": "FDR (conditional)",
             "hidimstat_dcrt": "FDR (conditional, BH)", "dcrt": "FDR (conditional, BH)",
             "marginal_bh": "FDR (marginal)"}


# ---------------------------------------------------------------------------
# Families: seed -> (X, y, gene_ids, truth, task)
# ---------------------------------------------------------------------------

_GOLUB_CACHE: dict = {}


def _golub(n_genes: int) -> pd.DataFrame:
    """The Golub matrix restricted to its ``n_genes`` most variable genes (ties by position)."""
    if n_genes not in _GOLUB_CACHE:
        frame = pd.read_csv(GOLUB, sep="\t", index_col=0)
        var = frame.var(axis=0).to_numpy()
        keep = np.sort(np.argsort(-var, kind="stable")[:n_genes])
        _GOLUB_CACHE[n_genes] = frame.iloc[:, keep]
    return _GOLUB_CACHE[n_genes]


def make_replicate(family: str, params: dict, seed: int):
    """Simulate one replicate of ``family``; returns X, y, gene_ids, truth, task.

    The pathway family's CPM values are analysed as log1p(CPM), as a user
    would. The semi-synthetic truth (planted genes) is fixed by
    ``signal_seed=0``; only the outcome noise changes between replicates.
    """
    from iml_genomics.simulate import simulate_gaussian, simulate_pathway, simulate_semisynthetic

    design = params.get("design")
    if design is not None:  # the genome-scale cells (preset "genome"): one design, many sizes
        return make_design_replicate(design, {k: v for k, v in params.items() if k != "design"}, seed)
    if family == "gaussian":
        c = simulate_gaussian(seed=seed, **params)
        X = c.expression.to_numpy()
    elif family == "pathway":
        c = simulate_pathway(seed=seed, **params)
        X = np.log1p(c.expression.to_numpy())
    elif family == "semi-synthetic":
        p = dict(params)
        expr = _golub(p.pop("n_genes"))
        c = simulate_semisynthetic(expr, seed=seed, signal_seed=0, **p)
        X = c.expression.to_numpy()
    else:
        raise ValueError(family)
    y = c.labels["condition"].to_numpy()
    task = "regression" if c.params.get("outcome") == "continuous" else "classification"
    if task == "regression":
        y = y.astype(np.float64)
    else:
        y = y.astype(str).astype(object)
    return X, y, list(c.expression.columns), list(c.true_genes), task


# ---------------------------------------------------------------------------
# Genome-scale designs (issue 11): AR(1) chains, co-regulated modules on top of
# global factors, and the real Golub correlation, each with a binary or a
# continuous outcome. Built in O(n p) memory, never a p x p matrix.
# ---------------------------------------------------------------------------


def _modules(n: int, p: int, rng: np.random.Generator, *, module_size: int = 30, rho: float = 0.6,
             n_factors: int = 3, factor_share: float = 0.15) -> np.ndarray:
    """Unit-variance genes: a few weak global factors plus equicorrelated modules of random size.

    Module sizes are drawn between module_size / 2 and 2 module_size, so block
    boundaries of the model cannot line up with the design by construction.
    """
    sizes = []
    while sum(sizes) < p:
        sizes.append(int(rng.integers(module_size // 2, 2 * module_size + 1)))
    module_of = np.repeat(np.arange(len(sizes)), sizes)[:p]
    modules = rng.standard_normal((n, len(sizes)))
    loadings = rng.standard_normal((p, n_factors))
    loadings /= np.linalg.norm(loadings, axis=1, keepdims=True)
    factors = rng.standard_normal((n, n_factors))
    own = 1.0 - rho - factor_share
    return (np.sqrt(rho) * modules[:, module_of] + np.sqrt(factor_share) * factors @ loadings.T
            + np.sqrt(own) * rng.standard_normal((n, p)))


def make_design_replicate(design: str, params: dict, seed: int):
    """One replicate of a genome-scale design; returns X, y, gene_ids, truth, task.

    The planted genes are spread evenly along the genes (so in AR(1) each has
    null neighbours correlated rho with it), with alternating signs. The
    outcome is y = X beta + N(0, 1) (continuous) or Bernoulli(logistic(X beta))
    (binary). The Golub design keeps the real matrix (its real correlation)
    and plants the outcome on it; only the outcome noise changes between
    replicates of the Golub design.
    """
    from iml_genomics.simulate import ar1_correlated_normal

    rng = np.random.default_rng(seed)
    n, p = params.get("n_samples", 300), params["n_genes"]
    k, effect, outcome = params.get("n_signal", 20), params.get("effect_size", 0.5), params.get("outcome", "continuous")
    if design == "ar1":
        X = ar1_correlated_normal(n, p, rho=params["rho"], rng=rng)
    elif design == "modules":
        X = _modules(n, p, rng, module_size=params.get("module_size", 30), rho=params.get("rho", 0.6))
    elif design == "golub":
        frame = _golub(p)
        X = frame.to_numpy(dtype=float)
        X = (X - X.mean(axis=0)) / X.std(axis=0)
        n, p = X.shape
    else:
        raise ValueError(design)
    signal_rng = np.random.default_rng(0) if design == "golub" else rng
    idx = np.sort(signal_rng.choice(p, size=k, replace=False)) if design == "golub" else \
        (np.arange(k) * (p // k) + p // (2 * k))
    beta = np.zeros(p)
    beta[idx] = effect * np.where(np.arange(k) % 2 == 0, 1.0, -1.0)
    eta = X @ beta
    if outcome == "continuous":
        y, task = eta + rng.standard_normal(n), "regression"
    else:
        y = np.where(rng.random(n) < 1.0 / (1.0 + np.exp(-eta)), "case", "control").astype(object)
        task = "classification"
    gene_ids = [f"G{j + 1:05d}" for j in range(p)]
    return X, y, gene_ids, [gene_ids[j] for j in idx], task


def _genome_cells() -> dict:
    """The preset "genome": AR(1) rho in {0.5, 0.8} x p in {500, 3,000, 20,000}, modules, Golub; two outcomes."""
    cells = {}
    for outcome, effect in (("continuous", 0.5), ("binary", 1.0)):
        tag = "cont" if outcome == "continuous" else "bin"
        for rho in (0.5, 0.8):
            for p, n in ((500, 300), (3000, 300), (20000, 1000)):
                cells[f"ar1_r{rho}_p{p}_{tag}"] = {"design": "ar1", "rho": rho, "n_genes": p, "n_samples": n,
                                                  "n_signal": 20, "effect_size": effect, "outcome": outcome}
        cells[f"modules_p3000_{tag}"] = {"design": "modules", "n_genes": 3000, "n_samples": 300, "n_signal": 20,
                                         "effect_size": effect, "outcome": outcome}
        # 38 samples: a larger effect, few genes, as in the real cohorts where the markers are obvious
        cells[f"golub_p3051_{tag}"] = {"design": "golub", "n_genes": 3051, "n_signal": 5,
                                       "effect_size": 2.0 * effect, "outcome": outcome}
    return cells


PRESETS["genome"] = _genome_cells()


# ---------------------------------------------------------------------------
# Methods: (X, y, gene_ids, task, q, k, seed) -> selected / top-k genes
# ---------------------------------------------------------------------------


def _top_k(score: np.ndarray, gene_ids, k: int) -> list[str]:
    """Top k genes by score, ties by gene id (NaN = unused = lowest)."""
    frame = pd.DataFrame({"gene_id": gene_ids, "score": np.nan_to_num(score, nan=-np.inf)})
    frame = frame.sort_values(["score", "gene_id"], ascending=[False, True], kind="stable")
    return frame["gene_id"].head(k).tolist()


def _forest_pipeline(task: str, seed: int):
    from iml_genomics.config import Config
    from iml_genomics.models import build_pipeline

    cfg = Config()
    cfg.seed = seed
    cfg.model.name = "random_forest"
    cfg.model.params = {"n_estimators": 100}
    cfg.preprocess.standardize = False
    return build_pipeline(cfg, task)


def _classes(y, task):
    return None if task == "regression" else sorted(set(y))


def m_knockoff(statistic: str, groups=None):
    def run(X, y, gene_ids, task, q, k, seed):
        from iml_genomics.select import knockoff_select

        # the diagnostics do not change the selection; they are checked in tests/test_select_diagnostics.py
        res = knockoff_select(X, y, gene_ids, task=task, fdr=q, statistic=statistic, random_state=seed, n_jobs=1,
                              groups=groups, check_swap=False)
        table = res.table
        flags = table["selected"]
        if flags.dtype != bool:
            flags = flags.astype(str).str.lower().isin({"true", "1"})
        return table.loc[flags.to_numpy(), "gene_id"].astype(str).tolist()

    return run


def m_dcrt(X, y, gene_ids, task, q, k, seed):
    from iml_genomics.select.dcrt import dcrt_select

    res = dcrt_select(X, y, gene_ids, task=task, fdr=q, random_state=seed, n_jobs=1, check_model=False)
    return res.table.loc[res.table["selected"].astype(bool).to_numpy(), "gene_id"].astype(str).tolist()


def m_knockpy_lasso(X, y, gene_ids, task, q, k, seed):
    from knockpy.knockoff_filter import KnockoffFilter

    yy = (y == sorted(set(y))[-1]).astype(float) if task == "classification" else y
    np.random.seed(seed % (2**32))  # knockpy draws from the global RNG
    kf = KnockoffFilter(ksampler="gaussian", fstat="lasso", knockoff_kwargs={"method": "mvr"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rej = kf.forward(X=X, y=yy, fdr=q, shrinkage="ledoitwolf")
    return [g for g, r in zip(gene_ids, np.asarray(rej, bool)) if r]


def m_hidimstat_dcrt(X, y, gene_ids, task, q, k, seed):
    """hidimstat's D0CRT (lasso screening + lasso distillation, Gaussian X) with BH at q."""
    from hidimstat import D0CRT
    from sklearn.linear_model import LassoCV
    from sklearn.preprocessing import StandardScaler

    Z = StandardScaler().fit_transform(X)
    yy = (y == sorted(set(y))[-1]).astype(float) if task == "classification" else np.asarray(y, float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        crt = D0CRT(estimator=LassoCV(cv=5, random_state=seed, n_jobs=1), screening_threshold=None
                    if Z.shape[1] <= 50 else 10, random_state=seed)
        crt.fit(Z, yy)
        crt.importance(Z, yy)
    pvals = np.nan_to_num(np.asarray(crt.pvalues_, float), nan=1.0)
    from scipy import stats

    reject = stats.false_discovery_control(pvals, method="bh") <= q
    return [g for g, r in zip(gene_ids, reject) if r]


def m_marginal_bh(X, y, gene_ids, task, q, k, seed):
    from scipy import stats

    if task == "classification":
        classes = sorted(set(y))
        groups = [X[y == c] for c in classes]
        if len(groups) == 2:
            pvals = stats.ttest_ind(groups[0], groups[1], axis=0, equal_var=False).pvalue
        else:
            pvals = stats.f_oneway(*groups).pvalue
    else:
        r = np.array([stats.pearsonr(X[:, j], y).pvalue if X[:, j].std() > 0 else 1.0 for j in range(X.shape[1])])
        pvals = r
    pvals = np.nan_to_num(pvals, nan=1.0)
    reject = stats.false_discovery_control(pvals, method="bh") <= q
    return [g for g, r in zip(gene_ids, reject) if r]


def m_l1_cv(X, y, gene_ids, task, q, k, seed):
    from sklearn.linear_model import LassoCV, LogisticRegressionCV
    from sklearn.preprocessing import StandardScaler

    Z = StandardScaler().fit_transform(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if task == "regression":
            coef = LassoCV(cv=5, alphas=30, random_state=seed).fit(Z, y).coef_
        else:
            model = LogisticRegressionCV(Cs=8, cv=3, l1_ratios=(1.0,), solver="liblinear", tol=1e-3,
                                         random_state=seed).fit(Z, y)
            coef = np.abs(model.coef_).sum(axis=0)
    return [g for g, c in zip(gene_ids, coef) if c != 0]


def m_lasso_path_top_k(X, y, gene_ids, task, q, k, seed):
    from sklearn.linear_model import lasso_path
    from sklearn.preprocessing import StandardScaler

    Z = StandardScaler().fit_transform(X)
    if task == "classification":
        classes = sorted(set(y))
        yy = (y == classes[-1]).astype(float)  # binary families; a linear-probability lasso screen
    else:
        yy = np.asarray(y, float)
    yy = yy - yy.mean()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, coefs, _ = lasso_path(Z, yy, n_alphas=100, eps=1e-3)
    active = coefs != 0
    entry = np.where(active.any(axis=1), active.argmax(axis=1), coefs.shape[1])
    # earlier entry first; then larger final |coef|
    score = -entry + np.abs(coefs[:, -1]) / (np.abs(coefs[:, -1]).max() + 1e-12) * 0.5
    return _top_k(score, gene_ids, k)


def m_shap_top_k(X, y, gene_ids, task, q, k, seed):
    from iml_genomics.explain import shap_attributions

    pipe = _forest_pipeline(task, seed).fit(X, y)
    res = shap_attributions(pipe, X, gene_ids=gene_ids, classes=_classes(y, task), n_jobs=1, random_state=seed)
    mean_abs = np.abs(res.values).sum(axis=2).mean(axis=0)
    score = pd.Series(mean_abs, index=res.gene_ids).reindex(gene_ids).to_numpy()
    return _top_k(score, gene_ids, k)


def m_permutation_top_k(X, y, gene_ids, task, q, k, seed):
    from iml_genomics.explain import permutation_importance_oof
    from iml_genomics.models import cv_splits

    splits = cv_splits(y, task, n_splits=3, n_repeats=1, seed=seed)
    frame = permutation_importance_oof(_forest_pipeline(task, seed), X, y, splits=splits, classes=_classes(y, task),
                                       n_repeats=3, random_state=seed, n_jobs=1, gene_ids=gene_ids)
    return _top_k(frame["permutation_importance"].to_numpy(), gene_ids, k)


METHODS = {
    "knockoff_lasso": m_knockoff("lasso"),
    "knockoff_random_forest": m_knockoff("random_forest"),
    "knockoff_lasso_clusters": m_knockoff("lasso", groups="clusters"),
    "dcrt": m_dcrt,
    "knockpy_lasso": m_knockpy_lasso,
    "hidimstat_dcrt": m_hidimstat_dcrt,
    "marginal_bh": m_marginal_bh,
    "l1_cv": m_l1_cv,
    "shap_top_k": m_shap_top_k,
    "permutation_top_k": m_permutation_top_k,
    "lasso_path_top_k": m_lasso_path_top_k,
}
# knockpy's MVR solver on the near-singular covariance of log1p(CPM) compositions took
# ~190 s per replicate (vs ~13 s on the gaussian family), so it is not run there.
SKIP = {("pathway", "knockpy_lasso")}
# Peers that do not scale: knockpy's MVR above the dense range takes many minutes a replicate,
# hidimstat's dCRT refits one LassoCV per screened gene.
MAX_GENES = {"knockpy_lasso": 2500, "hidimstat_dcrt": 600}
REQUIRES = {"knockoff_lasso": "iml_genomics.select", "dcrt": "iml_genomics.select", "knockoff_random_forest": "iml_genomics.select",
            "knockoff_lasso_clusters": "iml_genomics.select",
            "knockpy_lasso": "knockpy", "hidimstat_dcrt": "hidimstat", "shap_top_k": "iml_genomics.explain",
            "permutation_top_k": "iml_genomics.explain"}


def available_methods(methods) -> tuple[list[str], list[str]]:
    """Split ``methods`` into runnable ones and notes about skipped ones."""
    import importlib

    ok, notes = [], []
    for m in methods:
        mod = REQUIRES.get(m)
        if mod is not None:
            try:
                module = importlib.import_module(mod)
                if mod == "iml_genomics.select" and not hasattr(module, "knockoff_select"):
                    raise ImportError("no knockoff_select")
            except ImportError as exc:
                notes.append(f"{m}: skipped ({mod} not importable: {exc})")
                continue
        ok.append(m)
    return ok, notes


# ---------------------------------------------------------------------------
# The study
# ---------------------------------------------------------------------------


def run_replicate(family: str, params: dict, methods: list[str], q: float, replicate: int, seed: int) -> list[dict]:
    """Simulate one replicate and run every method on it; one row per method."""
    X, y, gene_ids, truth, task = make_replicate(family, params, seed)
    k = len(truth)
    method_seeds = spawn_seeds(seed, len(methods))
    rows = []
    for m, s in zip(methods, method_seeds):
        if (family, m) in SKIP or X.shape[1] > MAX_GENES.get(m, np.inf):
            continue
        t0 = time.perf_counter()
        error = ""
        try:
            genes = METHODS[m](X, y, gene_ids, task, q, k, s)
        except Exception as exc:  # a failing method is reported, not fatal for the study
            genes, error = [], f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
        met = selection_metrics(genes, truth)
        rows.append({"family": family, "method": m, "replicate": replicate, "seed": seed, "k": k,
                     "n_selected": met["n_selected"], "fdp": met["fdp"], "power": met["power"],
                     "seconds": time.perf_counter() - t0, "selected": ";".join(sorted(genes)), "error": error})
    return rows


def summarize(raw: pd.DataFrame, q: float) -> pd.DataFrame:
    """Mean FDP +/- SE, power +/- SE, stability and the FDR verdict per family x method."""
    rows = []
    for (family, method), part in raw.groupby(["family", "method"], sort=False):
        ok = part[part["error"] == ""]
        r = len(ok)
        fdp, power = ok["fdp"].to_numpy(), ok["power"].to_numpy()
        se_fdp = fdp.std(ddof=1) / np.sqrt(r) if r > 1 else float("nan")
        se_pow = power.std(ddof=1) / np.sqrt(r) if r > 1 else float("nan")
        sets = [set(s.split(";")) - {""} for s in ok["selected"]]
        # pairs where both selections are empty carry no information about stability
        pairs = [jaccard(a, b) for a, b in itertools.combinations(sets, 2) if a or b]
        claim = FDR_CLAIM.get(method, "none" if method in SELECTION_METHODS else "none (top-k)")
        mean_fdp = float(fdp.mean()) if r else float("nan")
        if not r:
            verdict = "failed"
        elif method in RANKING_METHODS:
            verdict = "no error control (top-k)"
        elif mean_fdp > q + 2 * (se_fdp if np.isfinite(se_fdp) else 0):
            verdict = f"EXCEEDS q={q:g} beyond MC error"
        elif mean_fdp > q:
            verdict = f"above q={q:g} within MC error"
        else:
            verdict = f"<= q={q:g}"
        rows.append({"family": family, "method": method, "error_claim": claim, "n_replicates": r,
                     "n_failed": int(len(part) - r), "mean_fdp": mean_fdp, "se_fdp": se_fdp,
                     "mean_power": float(power.mean()) if r else float("nan"), "se_power": se_pow,
                     "mean_n_selected": float(ok["n_selected"].mean()) if r else float("nan"),
                     "stability_jaccard": float(np.mean(pairs)) if pairs else float("nan"),
                     "seconds_per_replicate": float(ok["seconds"].mean()) if r else float("nan"),
                     "fdr_verdict": verdict})
    return pd.DataFrame(rows)


def run_study(*, families, methods, replicates: int, q: float = 0.1, preset: str = "full", seed: int = 2023,
              n_jobs: int | None = 1) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Run the calibration study.

    Returns
    -------
    summary : DataFrame
        One row per family x method (see :func:`summarize`).
    raw : DataFrame
        One row per family x method x replicate.
    notes : list of str
        Skipped methods.
    """
    methods, notes = available_methods(methods)
    tasks = []
    for f_i, family in enumerate(families):
        seeds = spawn_seeds(seed + 1000 * f_i, replicates)
        tasks += [(family, PRESETS[preset][family], methods, q, r + 1, s) for r, s in enumerate(seeds)]
    results = Backend.local(n_jobs).map(run_replicate, tasks)
    raw = pd.DataFrame([row for rows in results for row in rows])
    return summarize(raw, q), raw, notes


def to_markdown(summary: pd.DataFrame) -> str:
    cols = ["family", "method", "error_claim", "n_replicates", "mean_fdp", "se_fdp", "mean_power", "se_power",
            "mean_n_selected", "stability_jaccard", "seconds_per_replicate", "fdr_verdict"]
    head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    lines = []
    for row in summary[cols].itertuples(index=False):
        cells = []
        for c, v in zip(cols, row):
            cells.append(f"{v:.3f}" if isinstance(v, float) and c != "seconds_per_replicate"
                         else f"{v:.2f}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--families", nargs="+", default=None,
                    help="Families (cells) of the preset; default: all of them. Preset 'genome' has the "
                         "issue-11 cells: " + ", ".join(PRESETS["genome"]))
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--replicates", type=int, default=30)
    ap.add_argument("--fdr", type=float, default=0.1, help="Target q for knockoffs and BH.")
    ap.add_argument("--preset", choices=list(PRESETS), default="full")
    ap.add_argument("--seed", type=int, default=2023)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", default=None, help="Write the summary TSV here (and *_raw.tsv next to it).")
    args = ap.parse_args(argv)
    if args.families is None:
        args.families = list(PRESETS[args.preset])
    unknown = [f for f in args.families if f not in PRESETS[args.preset]]
    if unknown:
        ap.error(f"families not in preset {args.preset}: {', '.join(unknown)}")
    t0 = time.perf_counter()
    summary, raw, notes = run_study(families=args.families, methods=args.methods, replicates=args.replicates,
                                    q=args.fdr, preset=args.preset, seed=args.seed, n_jobs=args.jobs)
    wall = time.perf_counter() - t0
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    failed = raw[raw["error"] != ""]
    for row in failed.drop_duplicates(["family", "method"]).itertuples():
        print(f"note: {row.family}/{row.method} failed in {int((failed['method'] == row.method).sum())} "
              f"replicate(s): {row.error}", file=sys.stderr)
    print(to_markdown(summary))
    print(f"\n{args.replicates} replicates x {len(args.families)} families, preset {args.preset}, q = {args.fdr}, "
          f"--jobs {args.jobs}: {wall:.0f} s wall")
    if args.out:
        from iml_genomics.io import write_tsv

        out = Path(args.out)
        write_tsv(summary, out)
        write_tsv(raw, out.with_name(out.stem + "_raw.tsv"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
