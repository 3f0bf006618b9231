"""The factor_blocks covariance model (factors + block-diagonal residual): operations, blocks, knockoffs, FDR."""

import sys
from pathlib import Path

import numpy as np
import pytest

from iml_genomics.config import config_from_dict
from iml_genomics.errors import ConfigError, NumericalError
from iml_genomics.select import knockoff_select
from iml_genomics.select.blockfactor import BlockDiagonal, correlation_graph, default_block_size, residual_blocks
from iml_genomics.select.covariance import CovarianceModel, fit_covariance
from iml_genomics.select.sampler import sample_knockoffs
from iml_genomics.select.smatrix import check_psd, compute_s, min_eig_2c_minus_s
from iml_genomics.simulate import block_correlated_normal

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from blockfactor_ar1 import ar1_cohort  # noqa: E402


def _factor_modules(n, p, seed, *, k=2, block=15, rho=0.6, loading=0.35):
    """k global factors on top of modules of ``block`` genes at within-module correlation rho."""
    rng = np.random.default_rng(seed)
    F = rng.standard_normal((n, k))
    L = rng.standard_normal((p, k)) * loading
    return F @ L.T + block_correlated_normal(n, p, block_size=block, rho=rho, rng=rng)


@pytest.fixture(scope="module")
def fitted():
    X = _factor_modules(250, 150, 0)
    return X, fit_covariance(X, method="factor_blocks", max_block=40, random_state=0)


def test_model_operations_equal_dense(fitted):
    _, m = fitted
    assert m.kind == "factor_blocks" and m.is_blocks and m.n_blocks >= 2 and m.max_block_size <= 40
    C = m.dense()
    np.testing.assert_allclose(np.diag(C), 1.0, atol=1e-12)
    assert np.linalg.eigvalsh(C).min() > 0
    rhs = np.random.default_rng(1).standard_normal((m.p, 4))
    np.testing.assert_allclose(m.solve(rhs), np.linalg.solve(C, rhs), atol=1e-9)
    np.testing.assert_allclose(m.solve(rhs[:, 0]), np.linalg.solve(C, rhs[:, 0]), atol=1e-9)
    np.testing.assert_allclose(m.precision_diagonal(), np.diag(np.linalg.inv(C)), rtol=1e-9)
    # B is what the blocks say and nothing else: zero across blocks
    B = m.block.dense()
    np.testing.assert_allclose(B + m.U @ m.U.T, C)
    label = np.full(m.p, -1)
    for b, idx in enumerate(m.block.blocks):
        label[idx] = b
    across = (label[:, None] != label[None, :]) | (label[:, None] < 0)
    np.fill_diagonal(across, False)
    assert np.all(B[across] == 0)


@pytest.mark.parametrize("kind", ["ledoit_wolf", "factor"])
def test_precision_diagonal_other_kinds(kind):
    X = _factor_modules(200, 60, 3)
    m = fit_covariance(X, method=kind)
    np.testing.assert_allclose(m.precision_diagonal(), np.diag(np.linalg.inv(m.dense())), rtol=1e-9)


@pytest.mark.parametrize("method", ["mvr", "sdp", "equicorrelated"])
def test_s_feasible_and_min_eig_is_the_block_bound(fitted, method):
    _, m = fitted
    s, info = compute_s(m, method, random_state=0)
    assert info == {"approximation": "factor_blocks", "n_blocks": m.n_blocks}
    assert np.all(s > 0) and np.all(s <= 1)
    bound = min_eig_2c_minus_s(m, s)
    two_b = 2.0 * m.block.dense() - np.diag(s)
    assert bound == pytest.approx(np.linalg.eigvalsh(two_b).min(), abs=1e-10)
    exact = np.linalg.eigvalsh(2.0 * m.dense() - np.diag(s)).min()
    assert 0 <= bound <= exact + 1e-12
    check_psd(bound)


def test_mvr_blocks_beat_equicorrelated_on_the_mvr_objective(fitted):
    from iml_genomics.select.smatrix import mvr_loss

    _, m = fitted
    s_mvr, _ = compute_s(m, "mvr")
    s_eq, _ = compute_s(m, "equicorrelated")
    assert mvr_loss(m.dense(), s_mvr) < mvr_loss(m.dense(), s_eq)


def test_infeasible_s_fails_the_psd_check(fitted):
    _, m = fitted
    s, _ = compute_s(m, "mvr")
    bad = s.copy()
    idx = m.block.blocks[0]
    bad[idx] = 2.0  # 2B_b - 2I is indefinite: B_b has unit-or-less diagonal
    bound = min_eig_2c_minus_s(m, bad)
    assert bound < 0
    with pytest.raises(NumericalError, match="Minimum eigenvalue of 2Sigma - S is"):
        check_psd(bound)
    single = m.block.singletons()
    if single.size:  # a gene in no block: 2 d_j - s_j < 0 is caught too
        bad2 = s.copy()
        bad2[single[0]] = 2.0 * m.block.diag[single[0]] + 0.1
        assert min_eig_2c_minus_s(m, bad2) == pytest.approx(-0.1)


def test_sampler_joint_covariance_matches_theory():
    rng = np.random.default_rng(0)
    p, k = 24, 2
    U = rng.standard_normal((p, k)) * 0.3
    d = 1.0 - np.sum(U**2, axis=1)
    blocks = [np.arange(0, 8), np.arange(10, 22)]  # genes 8, 9, 22, 23 are in no block
    mats = []
    for idx in blocks:
        R = 0.6 ** np.abs(np.subtract.outer(np.arange(idx.size), np.arange(idx.size)))
        mats.append(R * np.sqrt(np.outer(d[idx], d[idx])))
    m = CovarianceModel("factor_blocks", np.zeros(p), np.ones(p), d=d, U=U,
                        block=BlockDiagonal(diag=d, blocks=blocks, mats=mats))
    C = m.dense()
    s, _ = compute_s(m, "mvr")
    X = rng.multivariate_normal(np.zeros(p), C, size=30000)
    Xk = sample_knockoffs(m, s, X, random_state=1)
    G = np.cov(np.hstack([X, Xk]), rowvar=False)
    # (X, X~) must have covariance [[C, C - S], [C - S, C]]; MC error at n = 30,000 is ~0.015
    assert np.abs(G[p:, p:] - C).max() < 0.045
    assert np.abs(G[:p, p:] - (C - np.diag(s))).max() < 0.045


def _modules(seed):
    # 60 modules of 10 genes at rho = 0.6, n = 150: the module eigenvalue (6.4) is below the noise edge
    # (1 + sqrt(p / n))^2 = 9, so the modules are left to B, not taken by factors
    return block_correlated_normal(150, 600, block_size=10, rho=0.6, rng=np.random.default_rng(seed))


def test_blocks_recover_simulated_modules():
    X = _modules(5)
    m = fit_covariance(X, method="factor_blocks", max_block=50, random_state=0)
    truth = np.arange(600) // 10
    label = np.full(600, -1)
    for b, idx in enumerate(m.block.blocks):
        label[idx] = b
    # every simulated module lies inside one block ...
    for t in range(60):
        assert np.unique(label[truth == t]).size == 1 and label[truth == t][0] >= 0
    # ... and blocks are unions of whole modules (a chance edge can join two modules, never split one)
    for idx in m.block.blocks:
        assert idx.size == 10 * np.unique(truth[idx]).size
    assert m.n_blocks >= 20


def test_blocks_miss_modules_when_the_threshold_is_too_high():
    # the recovery above is not automatic: an edge threshold above the module correlation finds no blocks
    X = _modules(5)
    Xr = X - X.mean(axis=0)
    blocks, t = residual_blocks(Xr, n_eff=149, max_block=50, threshold=0.8)
    assert t == 0.8 and blocks == []


def test_correlation_graph_equals_dense_threshold_and_caps_neighbours():
    rng = np.random.default_rng(2)
    X = block_correlated_normal(120, 90, block_size=10, rho=0.5, rng=rng)
    Y = X - X.mean(axis=0)
    Y /= np.linalg.norm(Y, axis=0)
    R = np.abs(Y.T @ Y)
    np.fill_diagonal(R, 0.0)
    G = correlation_graph(Y.astype(np.float32), 0.3, chunk=16, max_neighbours=1000)
    np.testing.assert_array_equal(G.toarray() > 0, R > 0.3)
    capped = correlation_graph(Y.astype(np.float32), 0.0, chunk=16, max_neighbours=3)
    forward = np.triu(capped.toarray(), 1)
    assert np.count_nonzero(forward, axis=1).max() == 3


def test_large_components_are_cut_into_contiguous_blocks():
    # an AR(1) chain is one connected component; with dense_max below its size it is first cut along the
    # reverse Cuthill-McKee order, then by average linkage; neighbours must still mostly share a block
    X, _, _ = ar1_cohort(200, 600, 0.8, 1, 0.0, seed=4)
    Xr = X - X.mean(axis=0)
    blocks, _ = residual_blocks(Xr, n_eff=199, max_block=60, dense_max=150)
    assert max(b.size for b in blocks) <= 60
    label = np.full(600, -1)
    for b, idx in enumerate(blocks):
        label[idx] = b
    assert np.mean(label[:-1] == label[1:]) > 0.9


def test_auto_picks_factor_blocks_above_dense_max_and_default_block_size():
    X = _factor_modules(90, 120, 7)
    assert fit_covariance(X, method="auto", dense_max=100).kind == "factor_blocks"
    assert fit_covariance(X, method="auto", dense_max=200).kind == "ledoit_wolf"
    m = fit_covariance(X, method="factor_blocks")
    assert m.max_block_size <= default_block_size(90) == 15
    assert default_block_size(5000) == 400 and default_block_size(12) == 10


def test_config_accepts_factor_blocks_and_rejects_others():
    assert config_from_dict({"select": {"covariance": "factor_blocks"}}).select.covariance == "factor_blocks"
    with pytest.raises(ConfigError, match="select.covariance"):
        config_from_dict({"select": {"covariance": "blocks"}})


def test_select_summary_and_jobs_invariance():
    X = _factor_modules(150, 120, 11)
    rng = np.random.default_rng(11)
    beta = np.zeros(120)
    beta[rng.choice(120, 12, replace=False)] = 1.0
    y = X @ beta + rng.standard_normal(150)
    genes = [f"g{j}" for j in range(120)]
    runs = [knockoff_select(X, y, genes, task="regression", fdr=0.2, covariance="factor_blocks", random_state=3,
                            n_jobs=jobs, check_swap=False) for jobs in (1, 2)]
    s = runs[0].summary
    assert s["covariance_model"] == "factor_blocks" and s["s_approximation"] == "factor_blocks"
    assert s["n_blocks"] >= 2 and 2 <= s["max_block_size"] <= default_block_size(150)
    assert s["factor_rank"] >= 1 and s["diagnostics"]["min_eig_2sigma_minus_s"] > 0
    assert any("block-diagonal residual" in note for note in s["notes"])
    assert runs[0].table.equals(runs[1].table) and np.array_equal(runs[0].s, runs[1].s)
    assert np.array_equal(runs[0].W, runs[1].W)


def _neighbour_corr(X, model, s, seed):
    Xk = sample_knockoffs(model, s, X, random_state=seed)
    Z = (X - X.mean(0)) / X.std(0)
    Zk = (Xk - Xk.mean(0)) / Xk.std(0)
    return float(np.mean(np.mean(Zk[:, :-1] * Z[:, 1:], axis=0)))


def test_ar1_knockoffs_keep_neighbour_correlation():
    # the point of issue 11: above the dense threshold, X~_j must be correlated with X_{j+1} as X_j is (0.8)
    X, _, _ = ar1_cohort(300, 3000, 0.8, 1, 0.0, seed=1)
    out = {}
    for kind in ("factor", "factor_blocks"):
        m = fit_covariance(X, method=kind, random_state=0)
        s, _ = compute_s(m, "mvr")
        out[kind] = _neighbour_corr(X, m, s, 0)
    assert out["factor"] < 0.15
    assert out["factor_blocks"] > 0.65


@pytest.mark.slow
def test_ar1_fdr_replicates_factor_blocks():
    """AR(1) rho = 0.8, n = 300, p = 3,000, 20 true genes, q = 0.1: mean FDP <= q + 2 SE over 12 replicates."""
    from iml_genomics.parallel import spawn_seeds

    q, fdps, powers = 0.1, [], []
    for seed in spawn_seeds(2026, 12):
        X, y, true = ar1_cohort(300, 3000, 0.8, 20, 0.5, seed)
        res = knockoff_select(X, y, [str(j) for j in range(3000)], task="regression", fdr=q, random_state=seed,
                              check_swap=False)
        assert res.summary["covariance_model"] == "factor_blocks"  # auto above DENSE_MAX_GENES
        sel = res.table.loc[res.table["selected"], "gene_id"].astype(int).to_numpy()
        fdps.append(np.mean(~np.isin(sel, true)) if sel.size else 0.0)
        powers.append(np.isin(true, sel).mean())
    se = np.std(fdps, ddof=1) / np.sqrt(len(fdps))
    assert np.mean(fdps) <= q + 2 * se
    assert np.mean(powers) > 0.3
