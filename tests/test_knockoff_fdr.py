"""FDR control and null sign symmetry on seeded simulations, and the thresholding rules."""

import numpy as np
import pytest
from scipy import stats

from iml_genomics.select import knockoff_select
from iml_genomics.select.threshold import ebh, knockoff_evalues, knockoff_threshold
from iml_genomics.simulate import simulate_gaussian

Q = 0.2


def test_knockoff_threshold_by_hand():
    W = np.array([5.0, 4.0, 3.0, 2.5, -2.0, 1.0, -0.5, 0.0])
    # t = 3: (1 + 0) / 3 = 0.33; t = 2.5: (1 + 0) / 4 = 0.25 <= 0.3 -> T = 2.5 (smallest t that works)
    assert knockoff_threshold(W, 0.3, offset=1) == 2.5
    # offset 0 at q = 0.3: t = 0.5 gives 2 / 5 = 0.4, t = 1 gives 1 / 5 = 0.2 -> T = 1
    assert knockoff_threshold(W, 0.3, offset=0) == 1.0
    assert knockoff_threshold(np.array([1.0, -1.0]), 0.1) == np.inf


def test_single_draw_ebh_reproduces_knockoff_plus():
    rng = np.random.default_rng(0)
    for _ in range(20):
        W = rng.standard_normal(200) + np.r_[np.full(30, 3.0), np.zeros(170)]
        e, T = knockoff_evalues(W, 0.1, offset=1)
        sel, _ = ebh(e, 0.1)
        np.testing.assert_array_equal(sel, W >= T)
        assert e.mean() <= W.size / (1 + np.sum(W <= -T)) * np.mean(W >= T) + 1e-12


def _factor_cohort(n, p, n_signal, seed, k=3):
    rng = np.random.default_rng(seed)
    L = rng.standard_normal((p, k)) * 0.5
    X = rng.standard_normal((n, k)) @ L.T + rng.standard_normal((n, p))
    X /= X.std(axis=0)
    idx = rng.choice(p, n_signal, replace=False)
    beta = np.zeros(p)
    beta[idx] = 1.0 * rng.choice([-1, 1], n_signal)
    y = X @ beta + rng.standard_normal(n)
    return X, y, set(idx.tolist())


def _block_cohort(n, p, n_signal, seed):
    c = simulate_gaussian(n, p, n_signal=n_signal, effect_size=1.2, rho=0.6, block_size=10, outcome="continuous",
                          seed=seed)
    genes = list(c.expression.columns)
    return c.expression.to_numpy(), c.labels["condition"].to_numpy(dtype=float), {genes.index(g) for g in c.true_genes}


CASES = [("block", "equicorrelated", "ledoit_wolf"), ("block", "sdp", "ledoit_wolf"), ("block", "mvr", "ledoit_wolf"),
         ("factor", "mvr", "factor")]


@pytest.fixture(scope="module")
def replicates():
    """Knockoff+ runs on R seeded cohorts per case: FDP, power and the null W."""
    R = 10
    out = {}
    for sim, s_method, cov in CASES:
        fdp, power, null_w = [], [], []
        for r in range(R):
            make = _block_cohort if sim == "block" else _factor_cohort
            X, y, truth = make(250, 120, 12, seed=1000 * r + 7)
            res = knockoff_select(X, y, [f"g{j}" for j in range(X.shape[1])], task="regression", fdr=Q,
                                  s_method=s_method, covariance=cov, random_state=r, check_swap=False)
            sel = {int(g[1:]) for g in res.table.loc[res.table["selected"], "gene_id"]}
            fdp.append(len(sel - truth) / max(1, len(sel)))
            power.append(len(sel & truth) / len(truth))
            W = res.W[0]
            null_w.append(W[[j for j in range(X.shape[1]) if j not in truth]])
        out[(sim, s_method)] = (np.array(fdp), np.array(power), np.concatenate(null_w))
    return out


@pytest.mark.parametrize("case", [c[:2] for c in CASES], ids=["-".join(c[:2]) for c in CASES])
def test_mean_fdp_at_most_q(replicates, case):
    fdp, power, _ = replicates[case]
    se = max(fdp.std(ddof=1), 0.05) / np.sqrt(fdp.size)
    assert fdp.mean() <= Q + 2 * se, f"mean FDP {fdp.mean():.3f} > {Q} + 2 se ({se:.3f})"
    # and the filter is not trivially empty: the planted genes are found
    assert power.mean() > 0.5


def test_pooled_fdp_over_all_cases(replicates):
    fdp = np.concatenate([v[0] for v in replicates.values()])
    assert fdp.mean() <= Q + 2 * fdp.std(ddof=1) / np.sqrt(fdp.size)


def test_null_w_sign_symmetric(replicates):
    null = np.concatenate([v[2] for v in replicates.values()])
    nonzero = null[null != 0]
    assert nonzero.size > 200
    test = stats.binomtest(int(np.sum(nonzero > 0)), int(nonzero.size), 0.5)
    assert test.pvalue > 0.001, f"{np.mean(nonzero > 0):.3f} of {nonzero.size} null W positive"


@pytest.mark.slow
@pytest.mark.parametrize("statistic", ["random_forest", "model", "lasso"])
def test_mean_fdp_at_most_q_other_statistics_long(statistic):
    """Longer check (30 replicates, binary outcome) for each statistic; run with -m slow."""
    fdp = []
    for r in range(30):
        c = simulate_gaussian(300, 100, n_signal=12, effect_size=1.5, rho=0.6, block_size=10, outcome="binary",
                              seed=500 + r)
        genes = list(c.expression.columns)
        res = knockoff_select(c.expression.to_numpy(), c.labels["condition"].to_numpy(), genes,
                              task="classification", fdr=Q, statistic=statistic, model="l1_logistic",
                              model_params={"C": 0.3}, random_state=r, check_swap=False)
        sel = set(res.table.loc[res.table["selected"], "gene_id"])
        fdp.append(len(sel - set(c.true_genes)) / max(1, len(sel)))
    fdp = np.array(fdp)
    assert fdp.mean() <= Q + 2 * max(fdp.std(ddof=1), 0.05) / np.sqrt(fdp.size)
