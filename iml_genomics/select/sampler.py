"""Gaussian model-X knockoff sampling.

For standardised genes Z ~ N(0, C) and a diagonal (or group block-diagonal) S,

    Z~ | Z ~ N(Z - Z C^{-1} S, 2S - S C^{-1} S).

Dense models use Cholesky factors (O(p^3) once). The factor model
``C = diag(d) + U U^T`` with diagonal S never forms a p x p matrix:
``Z C^{-1}`` costs O(n p k) by Woodbury and the conditional covariance is
``diag(2s - s^2/d) + W G W^T`` with ``W = diag(s/d) U`` and
``G = (I + U^T D^{-1} U)^{-1}``, so noise is ``sqrt(2s - s^2/d) e1 + e2 (W L_G)^T``
with ``L_G`` the k x k Cholesky factor of G: O(n p k) time and memory.

Factor plus blocks ``C = B + U U^T`` (B block-diagonal): ``Z C^{-1}`` is
``Z B^{-1} - (Z B^{-1} U) G (B^{-1} U)^T`` with ``G = (I + U^T B^{-1} U)^{-1}``,
and the conditional covariance is ``(2S - S B^{-1} S) + W G W^T`` with
``W = S B^{-1} U``: block-diagonal (PSD when ``2B - S`` is, which the S
solver guarantees) plus rank k, so noise is drawn per block and through
``W L_G``: O(n p k + n sum b^2).
"""

from __future__ import annotations

import numpy as np
from scipy import linalg

from iml_genomics.select.covariance import spd_inverse


def _psd_sqrt_factor(make_v) -> np.ndarray:
    """A factor L with L L^T = V for the symmetric PSD (possibly singular) V that ``make_v()`` returns.

    At p = 2,000 a copy of V costs as much as the factorisation, so LAPACK
    works in place on V's Fortran-ordered view (V is symmetric); if V is
    not positive definite the failed factorisation has spoilt it, and V is made
    again for the eigendecomposition.
    """
    from scipy.linalg import lapack

    V = make_v()
    V[np.diag_indices_from(V)] += 1e-10
    L, info = lapack.dpotrf(V.T if V.flags.c_contiguous else V, lower=1, clean=1, overwrite_a=1)
    if info == 0:
        return L
    w, Q = linalg.eigh(make_v(), check_finite=False)
    return Q * np.sqrt(np.clip(w, 0.0, None))


def sample_knockoffs(model, S: np.ndarray, X: np.ndarray, *, random_state: int | np.random.Generator = 0,
                     prepared: dict | None = None) -> np.ndarray:
    """Draw Gaussian knockoffs of X.

    Parameters
    ----------
    model : CovarianceModel
    S : ndarray
        Diagonal of S, shape (p,), or a p x p block-diagonal S (group knockoffs, dense models only).
    X : ndarray of shape (n, p)
        Expression on the original scale.
    random_state : int or Generator
    prepared : dict, optional
        Output of :func:`prepare_sampler` (reused across draws).

    Returns
    -------
    ndarray of shape (n, p)
        Knockoffs on the original scale.
    """
    rng = np.random.default_rng(random_state)
    prep = prepared if prepared is not None else prepare_sampler(model, S)
    Z = model.standardize(X)
    n, p = Z.shape
    if prep["kind"] == "dense":
        Z -= Z @ prep["CinvS"]
        Z += rng.standard_normal((n, p)) @ prep["L"].T
    elif prep["kind"] == "factor_blocks":
        s, U = prep["s"], model.U
        BinvU, G = model.woodbury()
        T = model.block.solve_right(Z)
        T -= ((T @ U) @ G) @ BinvU.T  # T = Z C^{-1} (Woodbury)
        T *= s
        Z -= T
        del T
        E = rng.standard_normal((n, p))
        E[:, prep["single"]] *= prep["single_sd"]
        for idx, L in zip(model.block.blocks, prep["block_L"]):
            E[:, idx] = E[:, idx] @ L.T
        E += rng.standard_normal((n, U.shape[1])) @ prep["WL"].T
        Z += E
        del E
    else:
        # in-place steps: at n = 1,000, p = 20,000 each n x p temporary is 160 MB of memory traffic
        s, d, U = prep["s"], model.d, model.U
        T = Z / d
        T -= ((T @ U) @ prep["G"]) @ (U.T / d)  # T = Z C^{-1} (Woodbury)
        T *= s
        Z -= T  # conditional mean Z - Z C^{-1} S
        del T
        E = rng.standard_normal((n, p))
        E *= prep["diag_sd"]
        E += rng.standard_normal((n, U.shape[1])) @ prep["WL"].T
        Z += E
        del E
    Z *= model.scale
    Z += model.mean
    return Z


def prepare_sampler(model, S: np.ndarray) -> dict:
    """Precompute what every knockoff draw needs (Cholesky factors, Woodbury core)."""
    if model.corr is not None:
        # p x p arrays are made in place where possible: at p = 2,000 each new one costs ~0.05 s of page faults
        CinvS = spd_inverse(model.corr)
        if S.ndim == 1:  # diagonal S: scale columns and rows instead of multiplying p x p matrices
            CinvS *= S[None, :]

            def conditional_cov():  # 2S - S C^-1 S, exactly symmetric because spd_inverse's result is
                V = CinvS * -S[:, None]
                V[np.diag_indices_from(V)] += 2.0 * S
                return V
        else:
            CinvS = CinvS @ S

            def conditional_cov():
                V = 2.0 * S - S @ CinvS
                return (V + V.T) / 2.0
        return {"kind": "dense", "CinvS": CinvS, "L": _psd_sqrt_factor(conditional_cov)}
    if S.ndim != 1:
        raise ValueError("the factor-model sampler needs a diagonal S")
    if model.is_blocks:
        blk, s = model.block, S
        BinvU, G = model.woodbury()
        single = blk.singletons()
        block_L = []
        for idx, L in zip(blk.blocks, blk.chol):
            sb = s[idx]

            def conditional_cov(L=L, sb=sb):  # 2S_b - S_b B_b^{-1} S_b
                X = linalg.solve_triangular(L, np.diag(sb), lower=True, check_finite=False)
                V = -(X.T @ X)
                V[np.diag_indices_from(V)] += 2.0 * sb
                return V

            block_L.append(_psd_sqrt_factor(conditional_cov))
        sd = np.sqrt(np.clip(2.0 * s[single] - s[single] ** 2 / blk.diag[single], 0.0, None))
        W = s[:, None] * BinvU
        return {"kind": "factor_blocks", "s": s, "single": single, "single_sd": sd, "block_L": block_L,
                "WL": W @ np.linalg.cholesky(G)}
    d, U, s = model.d, model.U, S
    G = np.linalg.inv(np.eye(U.shape[1]) + (U.T / d) @ U)
    W = (s / d)[:, None] * U
    diag = 2.0 * s - s**2 / d
    return {"kind": "factor", "s": s, "G": G, "diag_sd": np.sqrt(np.clip(diag, 0.0, None)),
            "WL": W @ np.linalg.cholesky((G + G.T) / 2.0)}
