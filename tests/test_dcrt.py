"""The distilled conditional randomization test (select --method dcrt).

Statistical claims are checked on seeded simulations: null p-values are
uniform (and shown *not* to be when the covariance model misses the
correlation), FDP <= q on average, power where knockoff+ cannot select, and
agreement with hidimstat's D0CRT given the same covariance and penalty.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from conftest import CONFIGS, TEST_DATA, run_cli
from iml_genomics.errors import ConfigError
from iml_genomics.select import knockoff_select
from iml_genomics.select.covariance import fit_covariance
from iml_genomics.select.dcrt import dcrt_select, precision_columns, precision_diagonal

Q = 0.1


def ar1(n: int, p: int, rho: float, rng) -> np.ndarray:
    X = np.empty((n, p))
    X[:, 0] = rng.standard_normal(n)
    for j in range(1, p):
        X[:, j] = rho * X[:, j - 1] + np.sqrt(1 - rho**2) * rng.standard_normal(n)
    return X


def linear_cohort(seed: int, *, n: int, p: int, rho: float, k: int = 10, amp: float = 0.5, spaced: bool = False):
    """AR(1) genes; continuous outcome on k genes with effects +-amp (spaced: every p/k-th gene)."""
    rng = np.random.default_rng(seed)
    X = ar1(n, p, rho, rng)
    true = np.arange(k) * (p // k) + p // (2 * k) if spaced else np.sort(rng.choice(p, k, replace=False))
    beta = np.zeros(p)
    beta[true] = amp * rng.choice([-1.0, 1.0], k)
    return X, X @ beta + rng.standard_normal(n), true


def _p_by_gene(result, p: int) -> np.ndarray:
    idx = result.table["gene_id"].astype(int).to_numpy()
    out = np.empty(p)
    out[idx] = result.table["p_value"].to_numpy()
    return out


def _selected(result) -> np.ndarray:
    return np.sort(result.table.loc[result.table["selected"], "gene_id"].astype(int).to_numpy())


def _null_pvalues(designs, **kwargs) -> np.ndarray:
    pooled = []
    for seed, n, p, rho in designs:
        X, y, true = linear_cohort(seed, n=n, p=p, rho=rho)
        res = dcrt_select(X, y, [str(j) for j in range(p)], task="regression", fdr=Q, screening=False, **kwargs)
        null = np.setdiff1d(np.arange(p), true)
        pooled.append(_p_by_gene(res, p)[null])
    return np.concatenate(pooled)


def test_null_pvalues_uniform_on_correlated_genes():
    # every gene tested (no screening), so the null p-values must be Uniform(0, 1): KS over the pooled nulls,
    # AR(1) rho 0.5 and 0.8, 10 true genes each
    nulls = _null_pvalues([(1, 400, 200, 0.5), (2, 400, 200, 0.8), (3, 400, 200, 0.8)])
    assert nulls.size == 3 * 190
    assert stats.kstest(nulls, "uniform").pvalue > 0.01
    assert np.mean(nulls <= 0.05) < 0.05 + 2 * np.sqrt(0.05 * 0.95 / nulls.size)


def test_uniformity_check_rejects_when_the_covariance_model_misses_local_correlation():
    # the same check must fail on a model built to be wrong: a rank-1 factor model treats AR(1) rho = 0.8
    # neighbours as independent. The conditional residual then keeps the neighbours' part, which the distilled
    # outcome (fitted on those neighbours) is orthogonal to, so the p-values are too large: the error is on the
    # conservative side (unlike knockoffs on the same model, issue 11), but they are not uniform
    nulls = _null_pvalues([(11, 400, 200, 0.8), (12, 400, 200, 0.8), (13, 400, 200, 0.8)],
                          covariance="factor", factor_rank=1)
    assert stats.kstest(nulls, "uniform").pvalue < 1e-6
    assert np.mean(nulls <= 0.05) < 0.02


def test_screened_pvalues_are_conservative_and_screening_is_reported():
    X, y, true = linear_cohort(4, n=400, p=300, rho=0.5)
    res = dcrt_select(X, y, [str(j) for j in range(300)], task="regression", fdr=Q)
    full = dcrt_select(X, y, [str(j) for j in range(300)], task="regression", fdr=Q, screening=False)
    ps, pf = _p_by_gene(res, 300), _p_by_gene(full, 300)
    screened = ps < 1
    assert res.summary["n_screened"] == full.summary["n_screened"] >= screened.sum() > 0
    assert res.summary["screening"] is True and full.summary["screening"] is False
    # screening only raises p-values: equal where tested, 1 elsewhere
    np.testing.assert_allclose(ps[screened], pf[screened], rtol=1e-12)
    assert np.all(ps >= pf)
    assert set(true) <= set(np.flatnonzero(screened))


def _fdp_power(seeds, *, n, p, rho, amp):
    fdp, power = [], []
    for seed in seeds:
        X, y, true = linear_cohort(seed, n=n, p=p, rho=rho, amp=amp)
        sel = _selected(dcrt_select(X, y, [str(j) for j in range(p)], task="regression", fdr=Q))
        fdp.append(np.setdiff1d(sel, true).size / max(1, sel.size))
        power.append(np.isin(true, sel).mean())
    return np.array(fdp), np.array(power)


def test_fdr_controlled_on_average_fast():
    fdp, power = _fdp_power(range(20, 25), n=300, p=150, rho=0.5, amp=0.4)
    assert fdp.mean() <= Q + 2 * fdp.std(ddof=1) / np.sqrt(fdp.size) + 1e-12
    assert power.mean() > 0.7


@pytest.mark.slow
@pytest.mark.parametrize("rho", [0.5, 0.8])
def test_fdr_controlled_on_average_slow(rho):
    fdp, power = _fdp_power(range(100, 140), n=400, p=300, rho=rho, amp=0.5)
    assert fdp.mean() <= Q + 2 * fdp.std(ddof=1) / np.sqrt(fdp.size)
    assert power.mean() > 0.5


def test_power_where_knockoffs_select_nothing():
    # three strong genes among 1,000: knockoff+ needs about 1/q = 10 genes past its threshold, so it cannot
    # select any; the dCRT gives each a p-value and BH selects them
    rng = np.random.default_rng(5)
    n, p = 300, 1000
    X = ar1(n, p, 0.5, rng)
    true = np.array([100, 500, 900])
    y = X[:, true] @ np.array([1.0, -1.0, 1.0]) + rng.standard_normal(n)
    genes = [str(j) for j in range(p)]
    dc = dcrt_select(X, y, genes, task="regression", fdr=Q)
    # the factor model keeps the knockoff side fast (dense p = 1,000 linear algebra is most of a minute on a
    # busy 2-core machine); the point is knockoff+'s threshold, which does not depend on the covariance model
    ko = knockoff_select(X, y, genes, task="regression", fdr=Q, covariance="factor", s_method="equicorrelated",
                         check_swap=False)
    assert set(true) <= set(_selected(dc)) and _selected(dc).size <= 4
    assert int(ko.table["selected"].sum()) == 0
    # the knockoff W ranks them first all the same: the difference is the threshold, not the signal
    assert set(ko.table["gene_id"].head(3).astype(int)) == set(true)


def test_agrees_with_hidimstat_d0crt_given_the_same_covariance_and_penalty():
    from sklearn.linear_model import Lasso
    from hidimstat import D0CRT

    X, y, true = linear_cohort(6, n=300, p=60, rho=0.5, k=6, amp=0.3)
    genes = [str(j) for j in range(60)]
    ours = dcrt_select(X, y, genes, task="regression", fdr=Q, screening=False, scale="model")
    alpha = ours.summary["screening_alpha"][0]
    corr = fit_covariance(X, method="ledoit_wolf").corr
    theirs = D0CRT(estimator=Lasso(alpha=alpha, tol=1e-10, max_iter=100000), sigma_X=corr,
                   screening_threshold=None, fit_y=True, random_state=0)
    theirs.fit_importance(X, y)
    ps, pt = _p_by_gene(ours, 60), theirs.pvalues_
    lp, lt = -np.log10(ps), -np.log10(pt)
    assert np.corrcoef(lp, lt)[0, 1] > 0.999
    np.testing.assert_allclose(ps, pt, rtol=1e-3, atol=1e-6)
    sel_theirs = np.flatnonzero(stats.false_discovery_control(pt) <= Q)
    assert np.array_equal(_selected(ours), sel_theirs) and sel_theirs.size >= 4
    # the default (empirical scale) ranks the genes the same way up to the scale
    default = _p_by_gene(dcrt_select(X, y, genes, task="regression", fdr=Q, screening=False), 60)
    assert stats.spearmanr(-np.log10(default), lt)[0] > 0.95


def test_results_do_not_depend_on_n_jobs():
    X, y, _ = linear_cohort(7, n=200, p=150, rho=0.6)
    labels = np.where(y > np.median(y), "case", "control")
    genes = [f"g{j}" for j in range(150)]
    one = dcrt_select(X, labels, genes, task="classification", fdr=Q, n_jobs=1)
    two = dcrt_select(X, labels, genes, task="classification", fdr=Q, n_jobs=2)
    assert one.table.to_csv(sep="\t") == two.table.to_csv(sep="\t")
    assert json.dumps(one.summary, sort_keys=True) == json.dumps(two.summary, sort_keys=True)
    assert one.summary["n_selected"] > 0


def test_multiclass_bonferroni_and_binary_agree_on_a_one_class_signal():
    rng = np.random.default_rng(8)
    n, p = 300, 80
    X = ar1(n, p, 0.4, rng)
    classes = np.array(["a", "b", "c"])[rng.integers(0, 3, n)]
    X[classes == "c", 10] += 1.2  # gene 10 marks class c only
    genes = [str(j) for j in range(p)]
    res = dcrt_select(X, classes, genes, task="classification", fdr=Q)
    assert res.summary["n_classes_tested"] == 3
    assert 10 in _selected(res)
    # the class-c one-vs-rest test alone (a binary outcome) gives a p-value 3 times smaller
    single = dcrt_select(X, np.where(classes == "c", "c", "rest"), genes, task="classification", fdr=Q)
    p3, p1 = _p_by_gene(res, p)[10], _p_by_gene(single, p)[10]
    assert p3 == pytest.approx(min(1.0, 3 * p1), rel=1e-9)


def test_covariates_are_partialled_out():
    # gene 0 follows a batch covariate that drives the outcome; given the batch it is null
    rng = np.random.default_rng(9)
    n, p = 400, 60
    batch = rng.integers(0, 2, n).astype(float)
    X = rng.standard_normal((n, p))
    X[:, 0] += 2.0 * batch
    y = 2.0 * batch + 0.6 * X[:, 5] + rng.standard_normal(n)
    genes = [str(j) for j in range(p)]
    naive = dcrt_select(X, y, genes, task="regression", fdr=Q)
    adjusted = dcrt_select(X, y, genes, task="regression", fdr=Q, covariates=pd.DataFrame({"batch": batch}))
    assert 0 in _selected(naive) and 5 in _selected(naive)
    assert 0 not in _selected(adjusted) and 5 in _selected(adjusted)
    assert adjusted.summary["t_degrees_of_freedom"] == n - 3


def test_by_is_more_conservative_than_bh_and_bad_procedure_refused():
    X, y, _ = linear_cohort(10, n=300, p=100, rho=0.5)
    genes = [str(j) for j in range(100)]
    bh = dcrt_select(X, y, genes, task="regression", fdr=Q)
    by = dcrt_select(X, y, genes, task="regression", fdr=Q, fdr_procedure="by")
    assert np.all(by.table["q_value"].to_numpy() >= bh.table["q_value"].to_numpy())
    assert set(_selected(by)) <= set(_selected(bh))
    assert by.summary["fdr_procedure"] == "by"
    np.testing.assert_allclose(bh.table["q_value"], stats.false_discovery_control(bh.table["p_value"]))
    with pytest.raises(ConfigError, match="fdr_procedure"):
        dcrt_select(X, y, genes, task="regression", fdr_procedure="holm")


@pytest.mark.parametrize("kind", ["ledoit_wolf", "factor"])
def test_precision_helpers_equal_the_dense_inverse(kind):
    X = ar1(120, 40, 0.7, np.random.default_rng(11))
    model = fit_covariance(X, method=kind, rank=3 if kind == "factor" else None)
    inv = np.linalg.inv(model.dense())
    np.testing.assert_allclose(precision_diagonal(model), np.diag(inv), rtol=1e-8)
    np.testing.assert_allclose(precision_columns(model, np.array([3, 0, 39]), chunk=2), inv[:, [3, 0, 39]],
                               rtol=1e-8, atol=1e-10)


DEMO = ["--config", CONFIGS / "demo.yaml", "--expression", TEST_DATA / "demo_expression.csv.gz",
        "--labels", TEST_DATA / "demo_labels.tsv", "--label-column", "condition"]


def test_cli_method_dcrt_on_the_demo_data(tmp_path):
    out = tmp_path / "sel"
    run_cli("select", *DEMO, "--out", out, "--method", "dcrt")
    table = pd.read_csv(out / "knockoff_selection.tsv", sep="\t", keep_default_na=False)
    assert list(table.columns) == ["gene_id", "w", "selected", "selection_frequency", "e_value", "rank", "group",
                                   "tested", "p_value", "q_value"]
    assert len(table) == 400 and list(table["rank"]) == list(range(1, 401))
    p = table["p_value"].astype(float)
    assert p.is_monotonic_increasing and (table["e_value"] == "NA").all()
    summary = json.loads((out / "select_summary.json").read_text())
    assert summary["method"] == "dcrt" and summary["fdr_procedure"] == "bh"
    assert summary["n_selected"] == int(table["selected"].sum()) > 0 and summary["n_screened"] > 0
    truth = set(pd.read_csv(TEST_DATA / "demo_truth.tsv", sep="\t")["gene_id"])
    selected = set(table.loc[table["selected"], "gene_id"])
    assert len(selected & truth) >= 0.8 * len(selected)


def test_cli_refuses_dcrt_with_groups(tmp_path):
    cfg = tmp_path / "c.yaml"
    text = (CONFIGS / "demo.yaml").read_text().replace("select:\n", "select:\n  method: dcrt\n  groups: clusters\n")
    cfg.write_text(text)
    out = tmp_path / "sel"
    proc = run_cli("select", *DEMO[2:], "--config", cfg, "--out", out, check=False)
    assert proc.returncode == 2 and not out.exists()
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "select.groups" in lines[0] and "dcrt" in lines[0]
