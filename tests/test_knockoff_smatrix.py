"""S-matrix solvers and the Gaussian sampler, checked against knockpy and against theory."""

import numpy as np
import pytest

from iml_genomics.errors import NumericalError
from iml_genomics.select.covariance import CovarianceModel, fit_covariance
from iml_genomics.select.sampler import sample_knockoffs
from iml_genomics.select.smatrix import check_psd, compute_s, min_eig_2c_minus_s, mvr_loss


def _ar1(p, rho=0.6):
    return rho ** np.abs(np.subtract.outer(np.arange(p), np.arange(p)))


def _dense(C):
    p = C.shape[0]
    return CovarianceModel("ledoit_wolf", np.zeros(p), np.ones(p), corr=C)


def _factor(p, k, seed=0, scale=0.3):
    rng = np.random.default_rng(seed)
    U = rng.standard_normal((p, k)) * scale
    U *= np.minimum(1.0, np.sqrt(0.8 / np.sum(U**2, axis=1)))[:, None]
    return CovarianceModel("factor", np.zeros(p), np.ones(p), d=1.0 - np.sum(U**2, axis=1), U=U)


@pytest.fixture(scope="module")
def knockpy_s():
    knockpy_smatrix = pytest.importorskip("knockpy.smatrix")
    C = _ar1(60)
    return C, {m: np.diag(knockpy_smatrix.compute_smatrix(C, method=m)) for m in ("equicorrelated", "sdp", "mvr")}


def test_equicorrelated_matches_knockpy(knockpy_s):
    C, ref = knockpy_s
    s, _ = compute_s(_dense(C), "equicorrelated")
    np.testing.assert_allclose(s, ref["equicorrelated"], atol=2e-3)


def test_sdp_matches_knockpy(knockpy_s):
    C, ref = knockpy_s
    s, _ = compute_s(_dense(C), "sdp")
    # the SDP objective (sum s) agrees to 0.5%; single coordinates of an SDP optimum are less determined
    assert s.sum() == pytest.approx(ref["sdp"].sum(), rel=5e-3)
    assert np.mean(np.abs(s - ref["sdp"])) < 0.06
    assert min_eig_2c_minus_s(_dense(C), s) > -1e-8


def test_mvr_objective_no_worse_than_knockpy(knockpy_s):
    C, ref = knockpy_s
    s, _ = compute_s(_dense(C), "mvr")
    ours, theirs = mvr_loss(C, s), mvr_loss(C, ref["mvr"])
    assert np.isfinite(ours)
    assert ours <= theirs * (1 + 1e-3)


@pytest.mark.parametrize("method", ["mvr", "sdp"])
def test_factor_solver_equals_dense_solver_on_same_covariance(method):
    fm = _factor(150, 4)
    s_f, info = compute_s(fm, method, random_state=3)
    s_d, _ = compute_s(_dense(fm.dense()), method, random_state=3, max_block=1000)
    assert info["approximation"] == "factor"
    np.testing.assert_allclose(s_f, s_d, atol=1e-6)
    # Woodbury/Lanczos min eigenvalue equals the dense one
    exact = np.linalg.eigvalsh(2 * fm.dense() - np.diag(s_f)).min()
    assert min_eig_2c_minus_s(fm, s_f) == pytest.approx(exact, abs=1e-6)
    assert exact > 0


def test_block_approximation_is_feasible_and_close_to_exact():
    C = np.kron(np.eye(6), np.full((25, 25), 0.5)) + 0.5 * np.eye(150)
    s_block, info = compute_s(_dense(C), "mvr", max_block=50)
    s_exact, _ = compute_s(_dense(C), "mvr", max_block=1000)
    assert info["approximation"] == "blockdiag"
    assert min_eig_2c_minus_s(_dense(C), s_block) > 0
    # blocks follow the true correlation blocks, so nothing is lost
    np.testing.assert_allclose(s_block, s_exact, atol=1e-3)


def test_infeasible_s_raises_numerical_error():
    C = _ar1(30, 0.8)
    s = np.full(30, 1.0)  # 2C - I is indefinite for a strongly correlated AR(1)
    min_eig = min_eig_2c_minus_s(_dense(C), s)
    assert min_eig < 0
    with pytest.raises(NumericalError, match="Minimum eigenvalue of 2Sigma - S is"):
        check_psd(min_eig)


@pytest.mark.parametrize("kind", ["dense", "factor"])
def test_sampler_joint_covariance_matches_theory(kind):
    fm = _factor(25, 3, seed=1, scale=0.35)
    C = fm.dense()
    model = _dense(C) if kind == "dense" else fm
    s, _ = compute_s(model, "mvr")
    rng = np.random.default_rng(0)
    X = rng.multivariate_normal(np.zeros(25), C, size=30000)
    Xk = sample_knockoffs(model, s, X, random_state=1)
    G = np.cov(np.hstack([X, Xk]), rowvar=False)
    # (X, X~) must have covariance [[C, C - S], [C - S, C]]; MC error at n = 30,000 is ~0.015
    assert np.abs(G[25:, 25:] - C).max() < 0.045
    assert np.abs(G[:25, 25:] - (C - np.diag(s))).max() < 0.045


def test_factor_rank_is_chosen_from_data():
    rng = np.random.default_rng(0)
    n, p, k = 400, 800, 4
    F = rng.standard_normal((n, k))
    L = rng.standard_normal((p, k)) * 0.6
    X = F @ L.T + rng.standard_normal((n, p))
    model = fit_covariance(X, method="factor")
    assert model.kind == "factor" and model.rank == k
    assert np.all(model.d > 0)
    np.testing.assert_allclose(model.d + np.sum(model.U**2, axis=1), 1.0)


def test_ledoit_wolf_correlation_equals_sklearn():
    from sklearn.covariance import ledoit_wolf

    from iml_genomics.select.covariance import _standardize, ledoit_wolf_correlation

    rng = np.random.default_rng(2)
    for n, p in [(40, 300), (300, 60)]:
        X = rng.standard_normal((n, p)) @ (np.eye(p) + 0.2 * rng.standard_normal((p, p)) / np.sqrt(p))
        Xs, _, _ = _standardize(X)
        cov, shrinkage = ledoit_wolf(Xs, assume_centered=True)
        sd = np.sqrt(np.diag(cov))
        corr, ours = ledoit_wolf_correlation(Xs)
        assert ours == pytest.approx(shrinkage, abs=1e-12) and 0 < ours < 1
        np.testing.assert_allclose(corr, cov / np.outer(sd, sd), atol=1e-12)


def test_spd_inverse_equals_numpy_and_rejects_indefinite():
    from iml_genomics.select.covariance import spd_inverse

    rng = np.random.default_rng(3)
    for p in (1, 7, 256, 300):  # below, at and across the 256-row copy blocks
        B = rng.standard_normal((p + 5, p))
        A = B.T @ B + np.eye(p)
        inv = spd_inverse(A)
        np.testing.assert_allclose(inv, np.linalg.inv(A), atol=1e-10)
        assert np.array_equal(inv, inv.T)
    with pytest.raises(np.linalg.LinAlgError):
        spd_inverse(2.0 * _ar1(30, 0.8) - np.eye(30) * 1.5)


def test_block_solves_do_not_depend_on_threads_and_min_eig_is_exact():
    C = np.kron(np.eye(4), np.full((80, 80), 0.6)) + 0.4 * np.eye(320)
    s1, info = compute_s(_dense(C), "mvr", max_block=100, n_jobs=1)
    s2, _ = compute_s(_dense(C), "mvr", max_block=100, n_jobs=2)
    assert info["approximation"] == "blockdiag" and np.array_equal(s1, s2)
    # p > 200 takes the Lanczos path on the dense inverse
    exact = np.linalg.eigvalsh(2.0 * C - np.diag(s1))[0]
    assert min_eig_2c_minus_s(_dense(C), s1) == pytest.approx(exact, rel=1e-6, abs=1e-9)
