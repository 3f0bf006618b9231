"""knockoff_select: derandomised e-BH, group knockoffs, factor model, covariates, output contract."""

import numpy as np
import pandas as pd
import pytest

from iml_genomics.select import knockoff_select
from iml_genomics.select.filter import TABLE_COLUMNS
from iml_genomics.simulate import simulate_gaussian

SUMMARY_KEYS = {"target_fdr", "offset", "threshold", "n_selected", "covariance_model", "factor_rank", "s_method",
                "statistic", "n_draws", "aggregation", "diagnostics", "notes"}
DIAG_KEYS = {"mean_abs_corr_x_xk", "min_eig_2sigma_minus_s", "swap_check", "exchangeability", "fraction_negative_w"}


@pytest.fixture(scope="module")
def cohort():
    c = simulate_gaussian(300, 200, n_signal=15, effect_size=1.5, rho=0.5, block_size=10, outcome="binary", seed=3)
    return c.expression.to_numpy(), c.labels["condition"].to_numpy(), list(c.expression.columns), set(c.true_genes)


def _check_contract(res, p):
    t = res.table
    assert list(t.columns) == TABLE_COLUMNS
    assert len(t) == p and t["gene_id"].is_unique
    assert list(t["rank"]) == list(range(1, p + 1))
    assert SUMMARY_KEYS <= set(res.summary) and DIAG_KEYS == set(res.summary["diagnostics"])
    assert res.summary["n_selected"] == int(t["selected"].sum())
    assert t["selection_frequency"].between(0, 1).all()
    # sorted best first: e-value, then W, then gene id
    key = list(zip(-t["e_value"], -t["w"], t["gene_id"]))
    assert key == sorted(key)


def test_single_draw_classification(cohort):
    X, y, genes, truth = cohort
    res = knockoff_select(X, y, genes, task="classification", fdr=0.2, random_state=0)
    _check_contract(res, len(genes))
    sel = set(res.table.loc[res.table["selected"], "gene_id"])
    assert res.summary["aggregation"] == "none" and res.summary["threshold"] > 0
    assert len(sel & truth) >= 8
    d = res.summary["diagnostics"]
    assert d["min_eig_2sigma_minus_s"] > 0 and 0 < d["mean_abs_corr_x_xk"] < 1
    assert d["swap_check"]["passed"] is True
    # selected genes are exactly those with W >= threshold
    assert (res.table.loc[res.table["selected"], "w"] >= res.summary["threshold"]).all()


def test_derandomised_ebh(cohort):
    X, y, genes, truth = cohort
    res = knockoff_select(X, y, genes, task="classification", fdr=0.2, n_draws=4, random_state=1,
                          check_swap=False)
    _check_contract(res, len(genes))
    s = res.summary
    assert s["aggregation"] == "ebh" and res.W.shape == (4, len(genes))
    t = res.table
    p = len(genes)
    # e-BH: the k selected genes have e >= p / (q k), and the threshold says so
    k = int(t["selected"].sum())
    assert k > 0
    assert s["threshold"] == pytest.approx(p / (0.2 * k))
    assert (t.loc[t["selected"], "e_value"] >= s["threshold"] - 1e-9).all()
    assert (t.loc[~t["selected"], "e_value"] < s["threshold"]).all()
    # e-values of null genes average at most 1 (up to noise); planted genes are found in most draws
    null = t[~t["gene_id"].isin(truth)]
    assert null["e_value"].mean() <= 1.0
    assert t.loc[t["gene_id"].isin(truth), "selection_frequency"].mean() > 0.5


def test_group_knockoffs_over_clusters():
    c = simulate_gaussian(300, 150, n_signal=6, effect_size=1.5, rho=0.7, block_size=10, outcome="continuous", seed=5)
    X, y, genes = c.expression.to_numpy(), c.labels["condition"].to_numpy(dtype=float), list(c.expression.columns)
    res = knockoff_select(X, y, genes, task="regression", fdr=0.2, groups="clusters", cluster_correlation=0.4,
                          random_state=0, check_swap=False)
    t = res.table
    _check_contract(res, len(genes))
    assert res.summary["s_method"] == "group_equicorrelated"
    # the clusters recover the simulated blocks of 10 correlated genes
    assert res.summary["n_groups"] == 15
    assert (t["group"] != "").all()
    # genes of one group share W and selection
    assert (t.groupby("group")["w"].nunique() == 1).all()
    assert (t.groupby("group")["selected"].nunique() == 1).all()
    truth_groups = set(t.loc[t["gene_id"].isin(c.true_genes), "group"])
    sel_groups = set(t.loc[t["selected"], "group"])
    assert len(sel_groups & truth_groups) >= 4
    assert res.summary["diagnostics"]["min_eig_2sigma_minus_s"] > 0


def test_user_groups_and_covariates(cohort):
    X, y, genes, truth = cohort
    groups = np.repeat(np.arange(20), 10)
    rng = np.random.default_rng(0)
    cov = pd.DataFrame({"batch": rng.choice(["a", "b", "c"], len(y)), "age": rng.normal(50, 10, len(y))})
    res = knockoff_select(X, y, genes, task="classification", fdr=0.2, groups=groups, covariates=cov,
                          random_state=0, check_swap=False)
    _check_contract(res, len(genes))
    assert res.summary["n_covariates"] == 3 and res.summary["n_groups"] == 20
    assert set(res.table["gene_id"]) == set(genes)  # covariates are never tested


def test_factor_model_path():
    rng = np.random.default_rng(2)
    n, p, k = 300, 600, 3
    X = rng.standard_normal((n, k)) @ (rng.standard_normal((p, k)) * 0.6).T + rng.standard_normal((n, p))
    beta = np.zeros(p)
    beta[:10] = 1.0
    y = X @ beta / X.std(axis=0)[0] + rng.standard_normal(n)
    genes = [f"g{j:04d}" for j in range(p)]
    res = knockoff_select(X, y, genes, task="regression", fdr=0.2, covariance="factor", random_state=0)
    s = res.summary
    assert s["covariance_model"] == "factor" and s["factor_rank"] == k and s["s_approximation"] == "factor"
    assert s["diagnostics"]["min_eig_2sigma_minus_s"] > 0
    assert s["diagnostics"]["swap_check"]["covariance_model"] == "factor"
    sel = set(res.table.loc[res.table["selected"], "gene_id"])
    assert len(sel & set(genes[:10])) >= 6


def test_null_e_values_average_at_most_one_for_both_offsets():
    """e-values of one knockoff run are valid (mean <= 1 under a sign-symmetric null) for offset 0 and 1."""
    from iml_genomics.select.threshold import knockoff_evalues

    rng = np.random.default_rng(5)
    for offset in (0, 1):
        means = [knockoff_evalues(rng.standard_normal(20) * rng.choice([-1, 1], 20), 0.3, offset)[0].mean()
                 for _ in range(4000)]
        assert np.mean(means) <= 1.0 + 3 * np.std(means) / np.sqrt(len(means)), (offset, np.mean(means))
