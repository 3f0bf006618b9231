"""explain.methods `conditional`: LOCO and knockoff CPI.

Known truth on seeded AR(1) Gaussian designs (planted genes found, null p-values uniform for CPI and
conservative for LOCO, a correlated bystander not called by CPI though marginal permutation importance rates
it), the knockoff check failing on misspecified knockoffs, agreement with hidimstat's LOCO and CFI, the CLI on
the demo cohort (--jobs invariance, bad input, no labels) and the Python API.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.base import clone
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import log_loss, mean_squared_error
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from iml_genomics.explain.conditional import COLUMNS, conditional_importance, paired_test, sample_losses
from iml_genomics.models import cv_splits
from iml_genomics.select.covariance import CovarianceModel

ROOT = Path(__file__).resolve().parents[1]
DEMO_EXPR = ROOT / "test_data" / "demo_expression.parquet"
DEMO_LABELS = ROOT / "test_data" / "demo_labels.tsv"


def ar1(n, p, rho, rng):
    X = np.empty((n, p))
    X[:, 0] = rng.standard_normal(n)
    for j in range(1, p):
        X[:, j] = rho * X[:, j - 1] + np.sqrt(1 - rho**2) * rng.standard_normal(n)
    return X


def ols():
    return Pipeline([("scale", StandardScaler()), ("model", LinearRegression())])


def genes(p):
    return [f"g{j}" for j in range(p)]


def by_gene(table, method):
    return table[table["method"] == method].set_index("gene_id")


def independent_knockoffs(X_train, seed):
    """A misspecified knockoff model: every gene independent (identity correlation), s = 1.

    Its "knockoffs" are fresh Gaussian draws with each gene's mean and sd, i.e. marginal permutation importance
    in Gaussian dress; the project's sampler draws them.
    """
    from iml_genomics.select.sampler import prepare_sampler

    p = X_train.shape[1]
    model = CovarianceModel("ledoit_wolf", X_train.mean(axis=0), X_train.std(axis=0), corr=np.eye(p))
    s = np.ones(p)
    return model, s, prepare_sampler(model, s)


# ---------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------


def test_paired_test_is_scipys_one_sided_t_test_and_interval():
    d = np.random.default_rng(0).normal(0.1, 1.0, size=60)
    mean, lo, hi, p = paired_test(d)
    res = stats.ttest_1samp(d, 0.0, alternative="greater")
    ci = stats.ttest_1samp(d, 0.0).confidence_interval(0.95)
    assert p == pytest.approx(res.pvalue, rel=1e-10) and mean == pytest.approx(d.mean())
    assert (lo, hi) == (pytest.approx(ci.low, rel=1e-10), pytest.approx(ci.high, rel=1e-10))
    # no spread: a gene the model ignores has differences exactly 0 -> importance 0, p = 1
    assert paired_test(np.zeros(30)) == (0.0, 0.0, 0.0, 1.0)


def test_sample_losses_average_to_sklearns_losses():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((120, 4))
    y = (X[:, 0] + rng.standard_normal(120) > 0).astype(int)
    clf = LogisticRegression().fit(X[:80], y[:80])
    assert sample_losses(clf, X[80:], y[80:], ["a", "b"], "classification").mean() == pytest.approx(
        log_loss(y[80:], clf.predict_proba(X[80:])), rel=1e-12)
    reg = LinearRegression().fit(X[:80], X[:80, 1])
    assert sample_losses(reg, X[80:], X[80:, 1] + 1, None, "regression").mean() == pytest.approx(
        mean_squared_error(X[80:, 1] + 1, reg.predict(X[80:])), rel=1e-12)


# ---------------------------------------------------------------------------
# against hidimstat
# ---------------------------------------------------------------------------


def test_loco_equals_hidimstat_loco_on_one_fold():
    """Same estimator, same training rows, same held-out rows: the refits are deterministic, so the mean loss
    difference is hidimstat's LOCO importance to rounding (1e-10). hidimstat's LOCO p-value is a t-test of the
    reduced model's residuals y - f_-j(x), not of the loss difference, so p-values are not compared."""
    from hidimstat import LOCO

    rng = np.random.default_rng(2)
    n, p = 200, 6
    X = ar1(n, p, 0.5, rng)
    y_reg = 1.5 * X[:, 1] - X[:, 4] + rng.standard_normal(n)
    y_cls = (X[:, 1] - X[:, 4] + rng.standard_normal(n) > 0).astype(int)
    train, test = np.arange(140), np.arange(140, n)
    split = [(1, 1, train, test)]
    for y, task, est, method, loss, classes in [
            (y_reg, "regression", ols(), "predict", mean_squared_error, None),
            (y_cls, "classification", Pipeline([("s", StandardScaler()), ("m", LogisticRegression())]),
             "predict_proba", log_loss, ["a", "b"])]:
        ours, _ = conditional_importance(est, X, y, gene_ids=genes(p), genes=genes(p), splits=split, task=task,
                                         classes=classes, tests="loco")
        # hidimstat's LOCO.importance predicts with the estimator it was given: pass it fitted
        ref = LOCO(clone(est).fit(X[train], y[train]), method=method, loss=loss).fit(X[train], y[train])
        ref.importance(X[test], y[test])
        got = by_gene(ours, "loco").loc[genes(p), "importance"].to_numpy()
        np.testing.assert_allclose(got, ref.importances_, rtol=1e-10, atol=1e-12)


def test_cpi_agrees_with_hidimstat_cfi_where_knockoffs_are_conditional_draws():
    """hidimstat's CFI replaces a gene by a conditional draw (ridge prediction + permuted residual); for
    independent genes the MVR knockoff is one too (s = 1: a fresh draw independent of the gene), so both estimate
    the same importance, 2 b_j^2 var(x_j) for OLS. They differ by Monte Carlo error (different draws, 30 each)
    and by the fitted covariance: tolerance 10% of the importance on planted genes, 0.02 absolute on nulls."""
    from hidimstat import CFI

    rng = np.random.default_rng(3)
    n, p = 600, 6
    X = rng.standard_normal((n, p))
    y = 1.0 * X[:, 0] - 0.7 * X[:, 3] + rng.standard_normal(n)
    train, test = np.arange(300), np.arange(300, n)
    ours, _ = conditional_importance(ols(), X, y, gene_ids=genes(p), genes=genes(p), splits=[(1, 1, train, test)],
                                     task="regression", tests="cpi", n_draws=30, random_state=0)
    model = ols().fit(X[train], y[train])
    ref = CFI(model, loss=mean_squared_error, n_permutations=30, random_state=0).fit(X[train], y[train])
    ref.importance(X[test], y[test])
    got = by_gene(ours, "cpi").loc[genes(p), "importance"].to_numpy()
    for j in (0, 3):
        assert got[j] == pytest.approx(ref.importances_[j], rel=0.10), (got, ref.importances_)
    np.testing.assert_allclose(got[[1, 2, 4, 5]], ref.importances_[[1, 2, 4, 5]], atol=0.02)
    assert by_gene(ours, "cpi").loc[["g0", "g3"], "p_value"].max() < 1e-6


# ---------------------------------------------------------------------------
# known truth
# ---------------------------------------------------------------------------


def _null_p_values(seeds, n, p, tests, task="regression"):
    """p-values of the null genes of an AR(1) (rho 0.5) design with genes 0 and p // 2 planted; OLS / logistic."""
    out = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        X = ar1(n, p, 0.5, rng)
        eta = X[:, 0] - X[:, p // 2]
        if task == "regression":
            y, est, classes = eta + rng.standard_normal(n), ols(), None
        else:
            # log loss differences are noisier than squared errors: a larger effect for the planted genes
            y = (2.5 * eta + rng.logistic(size=n) > 0).astype(int)
            est, classes = Pipeline([("s", StandardScaler()), ("m", LogisticRegression(C=10.0))]), ["a", "b"]
        splits = cv_splits(y, task, n_splits=5, n_repeats=1, seed=seed)
        table, _ = conditional_importance(est, X, y, gene_ids=genes(p), genes=genes(p), splits=splits, task=task,
                                          classes=classes, tests=tests, random_state=seed)
        nulls = [g for g in genes(p) if g not in ("g0", f"g{p // 2}")]
        for method in ("loco", "cpi"):
            if tests in ("both", method):
                sub = by_gene(table, method)
                out.append((method, sub.loc[nulls, "p_value"].to_numpy(),
                            sub.loc[["g0", f"g{p // 2}"], "p_value"].to_numpy()))
    return out


def _check_calibration(results, *, alpha_ks, max_ks_cpi):
    """Null p-values valid (not smaller than uniform), CPI's near uniform, planted genes found.

    Validity: the one-sided KS test against p-values *smaller* than uniform (``alternative='greater'``) and the
    type-I error at 0.01, 0.05 and 0.1 within 3 binomial sd of the level. CPI's pooled p-values are not exactly
    uniform but conservative: measured (n = 200, p = 12, OLS, 5 folds, 40 seeds, true covariance) KS distance 0.14
    and type-I error 0.028 at 0.05, while the same test on one fold, or on an independent test set, is uniform
    (KS p 0.63 and 0.86; see test_cpi_p_values_uniform_on_an_independent_test_set). The held-out differences of
    different folds are dependent (each fold's model is trained on the other folds' test samples), which the
    per-sample t-test does not see. LOCO is conservative by construction (a refit with a useless gene is slightly
    worse), so only its validity is tested.
    """
    cpi = np.concatenate([r[1] for r in results if r[0] == "cpi"])
    loco = np.concatenate([r[1] for r in results if r[0] == "loco"])
    planted = np.concatenate([r[2] for r in results])
    for p in (cpi, loco):
        assert stats.kstest(p, "uniform", alternative="greater").pvalue > alpha_ks, np.sort(p)
        for level in (0.01, 0.05, 0.1):
            assert np.mean(p <= level) <= level + 3 * np.sqrt(level * (1 - level) / p.size), (level, np.sort(p))
    assert stats.kstest(cpi, "uniform").statistic <= max_ks_cpi, np.sort(cpi)
    # power: planted genes at p < 0.01 in at least 95% of (seed, gene, method)
    assert np.mean(planted < 0.01) >= 0.95, planted
    return cpi, loco


def test_null_p_values_valid_planted_small_cheap():
    # 8 seeds x 10 null genes per method; measured KS distance of CPI 0.21 (the conservative shift plus the noise
    # of 80 p-values, 0.18 at the 1% level), so 0.3 fails only a grossly miscalibrated test
    _check_calibration(_null_p_values(range(8), 200, 12, "both"), alpha_ks=0.001, max_ks_cpi=0.3)


def test_cpi_p_values_uniform_on_an_independent_test_set():
    """One model, one independent test set: CPI's paired t-test is calibrated (two-sided KS), with the knockoff
    model fitted on the training rows as in the method."""
    ps = []
    for seed in range(30):
        rng = np.random.default_rng(seed)
        X = ar1(400, 12, 0.5, rng)
        y = X[:, 0] - X[:, 6] + rng.standard_normal(400)
        table, _ = conditional_importance(ols(), X, y, gene_ids=genes(12), genes=genes(12),
                                          splits=[(1, 1, np.arange(200), np.arange(200, 400))], task="regression",
                                          tests="cpi", random_state=seed)
        ps += list(by_gene(table, "cpi").drop(["g0", "g6"])["p_value"])
    assert stats.kstest(ps, "uniform").pvalue > 0.01, np.sort(ps)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["regression", "classification"])
def test_null_p_values_valid_planted_small_many_seeds(task):
    # 60 seeds x 14 null genes; 0.2 allows the measured conservative shift (KS distance ~0.14)
    cpi, loco = _check_calibration(_null_p_values(range(100, 160), 300, 16, "both", task=task), alpha_ks=0.01,
                                   max_ks_cpi=0.2)
    print(task, "cpi KS", stats.kstest(cpi, "uniform"), "type-I at 0.05", np.mean(cpi <= 0.05),
          "loco type-I at 0.05", np.mean(loco <= 0.05), "loco KS", stats.kstest(loco, "uniform"))


def _bystander_design(seed, n=300):
    """AR(1) rho 0.8 over 8 genes; g2 planted, g3 its bystander (corr 0.8, no effect given g2)."""
    rng = np.random.default_rng(seed)
    X = ar1(n, 8, 0.8, rng)
    y = 2.0 * X[:, 2] + rng.standard_normal(n)
    return X, y


def _forest():
    # a forest uses the bystander as a proxy of the planted gene (max_features < p), so marginal permutation
    # importance rates it; CPI must not
    return RandomForestRegressor(n_estimators=40, max_features=0.3, min_samples_leaf=5, random_state=0, n_jobs=1)


def test_cpi_does_not_call_the_correlated_bystander_but_marginal_permutation_does():
    from sklearn.inspection import permutation_importance

    p_cpi, p_marginal, imp_marginal = [], [], []
    for seed in range(2):
        X, y = _bystander_design(seed)
        splits = cv_splits(y, "regression", n_splits=4, n_repeats=1, seed=seed)
        table, summary = conditional_importance(_forest(), X, y, gene_ids=genes(8), genes=["g2", "g3"],
                                                splits=splits, task="regression", tests="cpi", n_draws=3,
                                                random_state=seed)
        cpi = by_gene(table, "cpi")
        assert cpi.loc["g2", "p_value"] < 1e-6  # the planted gene
        assert summary["knockoffs"]["failing_genes"] == []
        p_cpi.append(cpi.loc["g3", "p_value"])
        # the same fold models, independent-Gaussian "knockoffs" (= marginal permutation of the gene)
        marg, msum = conditional_importance(_forest(), X, y, gene_ids=genes(8), genes=["g2", "g3"], splits=splits,
                                            task="regression", tests="cpi", n_draws=3, random_state=seed,
                                            knockoff_fit=independent_knockoffs)
        p_marginal.append(by_gene(marg, "cpi").loc["g3", "p_value"])
        # the knockoff check sees the misspecified sampler on both genes (their neighbours correlate at 0.8)
        assert set(msum["knockoffs"]["failing_genes"]) == {"g2", "g3"}, msum["knockoffs"]
        assert msum["knockoffs"]["max_z_gap"]["g3"] > 2 * msum["knockoffs"]["threshold"]
        # and scikit-learn's marginal permutation importance of the forests rates the bystander too
        for _, _, tr, te in splits:
            pi = permutation_importance(_forest().fit(X[tr], y[tr]), X[te], y[te], n_repeats=5, random_state=0,
                                        scoring="neg_mean_squared_error")
            imp_marginal.append(pi.importances_mean[3])
    assert min(p_cpi) > 0.05, p_cpi
    assert max(p_marginal) < 0.01, p_marginal
    # permutation importance of the bystander > 0 on all 8 folds (sign test p = 1 / 256)
    assert min(imp_marginal) > 0, imp_marginal


def test_results_do_not_depend_on_the_backend_workers():
    from iml_genomics.parallel import Backend

    X, y = _bystander_design(7, n=120)
    splits = cv_splits(y, "regression", n_splits=3, n_repeats=2, seed=0)
    runs = [conditional_importance(ols(), X, y, gene_ids=genes(8), genes=["g2", "g3", "g5"], splits=splits,
                                   task="regression", backend=Backend.local(j), random_state=4)[0]
            for j in (1, 2)]
    pd.testing.assert_frame_equal(runs[0], runs[1], check_exact=True)
    assert list(runs[0].columns) == COLUMNS and runs[0]["n_samples"].eq(120).all()  # repeats averaged per sample
    assert runs[0]["rank"].tolist() == [1, 2, 3, 1, 2, 3]


# ---------------------------------------------------------------------------
# CLI and Python API on the demo cohort
# ---------------------------------------------------------------------------

CONFIG = """\
seed: 0
task: classification
data:
  label_column: condition
model:
  name: l1_logistic
cv:
  n_splits: 3
explain:
  method: shap
  conditional_top_k: {k}
  methods: [conditional]
"""


def _cli(*args, cwd=ROOT):
    """A real process: exit code, stderr and no traceback as a user sees them."""
    return subprocess.run([sys.executable, "-m", "iml_genomics", *[str(a) for a in args]], cwd=cwd,
                          capture_output=True, text=True)


def _invoke(*args):
    """In-process (click's runner): the same command without a second interpreter's start-up and imports."""
    from click.testing import CliRunner

    from iml_genomics.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def demo_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("conditional_cli")
    (root / "cfg.yaml").write_text(CONFIG.format(k=4))
    _invoke("train", "--config", root / "cfg.yaml", "--expression", DEMO_EXPR, "--labels", DEMO_LABELS,
            "--out", root / "train", "--jobs", "1")
    return root


def test_cli_writes_conditional_importance(demo_bundle):
    # --jobs 2: the tasks run in worker processes (test_results_do_not_depend_on_the_backend_workers compares
    # one and two workers byte for byte on a smaller cohort)
    root = demo_bundle
    _invoke("explain", "--model", root / "train", "--expression", DEMO_EXPR, "--labels", DEMO_LABELS,
            "--out", root / "j2", "--jobs", 2)
    table = pd.read_csv(root / "j2" / "conditional_importance.tsv", sep="\t")
    assert list(table.columns) == COLUMNS and set(table["explains"]) == {"data"}
    assert table.groupby("method").size().to_dict() == {"cpi": 4, "loco": 4}
    ranking = pd.read_csv(root / "j2" / "gene_ranking.tsv", sep="\t")
    assert set(table["gene_id"]) == set(ranking["gene_id"].head(4))
    # every gene called at q <= 0.1 is one of the demo's planted genes
    truth = set(pd.read_csv(ROOT / "test_data" / "demo_truth.tsv", sep="\t")["gene_id"])
    called = table.loc[table["q_value"] <= 0.1, "gene_id"]
    assert len(called) >= 6 and set(called) <= truth, table
    summary = json.loads((root / "j2" / "explain_summary.json").read_text())["methods"]["conditional"]
    assert summary["files"] == ["conditional_importance.tsv"] and summary["knockoffs"]["failing_genes"] == []


def test_cli_refuses_conditional_top_k_above_the_genes_with_one_line(demo_bundle):
    root = demo_bundle
    (root / "cfg401.yaml").write_text(CONFIG.format(k=401))
    r = _cli("explain", "--model", root / "train", "--config", root / "cfg401.yaml", "--expression", DEMO_EXPR,
             "--labels", DEMO_LABELS, "--out", root / "bad", "--jobs", "1")
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and " INFO " not in ln]
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and "explain.conditional_top_k" in lines[0] and "400" in lines[0], r.stderr
    assert "Traceback" not in r.stderr and not (root / "bad").exists()


def test_cli_without_labels_skips_with_a_warning(demo_bundle):
    root = demo_bundle
    r = _invoke("explain", "--model", root / "train", "--expression", DEMO_EXPR, "--out", root / "nolab",
                "--method", "shap", "--jobs", "1")
    assert sum("conditional importance skipped" in ln for ln in r.stderr.splitlines()) == 1, r.stderr
    assert not (root / "nolab" / "conditional_importance.tsv").exists()
    summary = json.loads((root / "nolab" / "explain_summary.json").read_text())["methods"]["conditional"]
    assert "labels" in summary["skipped"]


def test_python_api_runs_conditional_and_caps_k_at_the_genes_the_model_uses():
    import anndata as ad

    import iml_genomics as ig

    rng = np.random.default_rng(5)
    n, p = 150, 10
    X = ar1(n, p, 0.5, rng)
    X[:, 1] *= 3.0  # the most variable gene, so the gene filter keeps it
    y = np.where(X[:, 1] + rng.logistic(size=n) > 0, "up", "down")
    adata = ad.AnnData(X=X.astype(np.float32), obs=pd.DataFrame({"group": y}, index=[f"c{i}" for i in range(n)]),
                       var=pd.DataFrame(index=genes(p)))
    # the pipeline keeps the 4 most variable genes: k = 6 is capped at 4, with a note
    ig.tl.train(adata, label_column="group", config={"seed": 0, "model": {"name": "l1_logistic"},
                                                     "preprocess": {"top_k_variable": 4}, "cv": {"n_splits": 3}})
    result = ig.tl.explain(adata, config={"explain": {"method": "shap", "methods": ["conditional"],
                                                      "conditional_top_k": 6, "conditional_tests": "cpi"}})
    table = ig.get.explain_method_df(adata, "conditional_importance.tsv")
    assert list(table.columns) == COLUMNS and set(table["method"]) == {"cpi"} and len(table) == 4
    assert table.iloc[0]["gene_id"] == "g1" and table.iloc[0]["q_value"] < 0.01
    notes = result.summary["methods"]["conditional"]["notes"]
    assert any("the model uses 4 genes" in note for note in notes), notes


def test_report_shows_conditional_importance_only_when_it_ran(demo_bundle):
    root = demo_bundle
    if not (root / "j2" / "conditional_importance.tsv").exists():
        _invoke("explain", "--model", root / "train", "--expression", DEMO_EXPR, "--labels", DEMO_LABELS,
                "--out", root / "j2", "--jobs", 1)
    _invoke("report", "--inputs", root / "train", "--inputs", root / "j2", "--out", root / "rep")
    page = (root / "rep" / "report.html").read_text()
    assert 'id="conditional"' in page and "beyond the other genes" in page and "G00005" in page
    # the SHAP-only explain output (no labels: the method was skipped) gives no section and no "missing" box
    if not (root / "nolab").exists():
        _invoke("explain", "--model", root / "train", "--expression", DEMO_EXPR, "--out", root / "nolab",
                "--method", "shap", "--jobs", "1")
    _invoke("report", "--inputs", root / "train", "--inputs", root / "nolab", "--out", root / "rep2")
    page2 = (root / "rep2" / "report.html").read_text()
    assert 'id="conditional"' not in page2 and "Conditional importance" not in page2
