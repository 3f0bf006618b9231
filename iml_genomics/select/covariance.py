"""Covariance models of the genes: dense Ledoit-Wolf, a low-rank factor model, and factors plus blocks.

Knockoffs are built on the correlation scale: genes are centred and scaled,
and the model describes their correlation matrix ``C``. Three models:

- ``ledoit_wolf``: dense shrinkage estimate (p x p), for moderate p.
- ``factor``: ``C = diag(d) + U U^T`` with ``U`` p x k. It is never formed as a
  p x p matrix; every product with ``C`` or ``C^{-1}`` goes through the
  Woodbury identity and costs O(p k^2) or O(n p k).
- ``factor_blocks``: ``C = B + U U^T`` with the same ``U`` and ``B``
  block-diagonal (local modules of the residual correlation, see
  :mod:`iml_genomics.select.blockfactor`); Woodbury with block Cholesky
  factors of B, O(p k^2 + sum b^3) once and O(n p k + n sum b^2) per product.
  The default above ``DENSE_MAX_GENES``: the plain factor model gives
  neighbouring genes with correlation 0.8 independent knockoffs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import linalg

from iml_genomics.errors import InputDataError

#: Above this many genes ``covariance="auto"`` chooses the factor model.
DENSE_MAX_GENES = 2500
#: ``covariance="auto"`` keeps dense Ledoit-Wolf (at most ``DENSE_MAX_GENES`` genes) only while its
#: shrinkage intensity is at most this; a more heavily shrunk estimate goes to ``factor_blocks``.
MAX_AUTO_SHRINKAGE = 0.3
#: Largest rank considered when the factor rank is chosen from the data.
MAX_FACTOR_RANK = 50
#: Covariance kinds ``fit_covariance`` accepts (besides ``auto``).
COVARIANCE_KINDS = ("ledoit_wolf", "factor", "factor_blocks")


@dataclass
class CovarianceModel:
    """A fitted covariance model on the correlation scale.

    Attributes
    ----------
    kind : {'ledoit_wolf', 'factor', 'factor_blocks'}
    mean, scale : ndarray of shape (p,)
        Column means and standard deviations used to standardise X.
    corr : ndarray of shape (p, p) or None
        Dense correlation matrix (``ledoit_wolf``).
    d : ndarray of shape (p,) or None
        Diagonal of the factor model (``factor``), diagonal of B (``factor_blocks``).
    U : ndarray of shape (p, k) or None
        Loadings of the factor model.
    shrinkage : float or None
        Ledoit-Wolf shrinkage intensity.
    block : BlockDiagonal or None
        The block-diagonal residual B (``factor_blocks``).
    edge_threshold : float or None
        |residual correlation| that linked two genes into one block (``factor_blocks``).
    """

    kind: str
    mean: np.ndarray
    scale: np.ndarray
    corr: np.ndarray | None = None
    d: np.ndarray | None = None
    U: np.ndarray | None = None
    shrinkage: float | None = None
    block: object | None = None
    edge_threshold: float | None = None
    _woodbury: tuple | None = field(default=None, repr=False)

    @property
    def p(self) -> int:
        return self.mean.shape[0]

    @property
    def rank(self) -> int | None:
        return None if self.U is None else int(self.U.shape[1])

    def standardize(self, X: np.ndarray) -> np.ndarray:
        return (X - self.mean) / self.scale

    def unstandardize(self, Z: np.ndarray) -> np.ndarray:
        return Z * self.scale + self.mean

    @property
    def is_blocks(self) -> bool:
        """True for ``factor_blocks`` (no dense matrix, B block-diagonal)."""
        return self.corr is None and self.block is not None

    @property
    def n_blocks(self) -> int | None:
        # block, not is_blocks: a factor_blocks model made dense for group knockoffs still has its blocks
        return None if self.block is None else len(self.block.blocks)

    @property
    def max_block_size(self) -> int | None:
        if self.block is None:
            return None
        sizes = self.block.sizes
        return int(sizes.max()) if sizes.size else 1

    def dense(self) -> np.ndarray:
        """The p x p correlation matrix (only for moderate p: tests, groups, small checks)."""
        if self.corr is not None:
            return self.corr
        if self.is_blocks:
            return self.block.dense() + self.U @ self.U.T
        return np.diag(self.d) + self.U @ self.U.T

    def woodbury(self) -> tuple[np.ndarray, np.ndarray]:
        """``(B^{-1} U, G)`` with ``G = (I + U^T B^{-1} U)^{-1}`` (``factor_blocks``; computed once)."""
        if self._woodbury is None:
            BinvU = self.block.solve(self.U)
            G = np.linalg.inv(np.eye(self.U.shape[1]) + self.U.T @ BinvU)
            self._woodbury = (BinvU, (G + G.T) / 2.0)
        return self._woodbury

    def solve(self, B: np.ndarray) -> np.ndarray:
        """``C^{-1} B`` for B of shape (p,) or (p, m), via Cholesky or Woodbury (never p x p for the factor kinds)."""
        if self.corr is not None:
            return linalg.cho_solve(linalg.cho_factor(self.corr, lower=True, check_finite=False), B,
                                    check_finite=False)
        if self.is_blocks:
            BinvU, G = self.woodbury()
            T = self.block.solve(B)
            return T - BinvU @ (G @ (self.U.T @ T))
        return woodbury_solve(self.d, self.U, B)

    def precision_diagonal(self) -> np.ndarray:
        """Diagonal of ``C^{-1}`` (shape (p,)), without forming a p x p matrix for the factor kinds.

        Dense: from the Cholesky inverse. Factor kinds: Woodbury,
        ``diag(B^{-1}) - rowsum((B^{-1} U) G * (B^{-1} U))`` with
        ``G = (I + U^T B^{-1} U)^{-1}`` (``B = diag(d)`` for ``factor``).
        """
        if self.corr is not None:
            return np.diag(spd_inverse(self.corr.copy(), overwrite=True)).copy()
        if self.is_blocks:
            BinvU, G = self.woodbury()
            return self.block.inverse_diagonal() - np.einsum("ij,jk,ik->i", BinvU, G, BinvU)
        DinvU = self.U / self.d[:, None]
        G = np.linalg.inv(np.eye(self.U.shape[1]) + self.U.T @ DinvU)
        return 1.0 / self.d - np.einsum("ij,jk,ik->i", DinvU, G, DinvU)


def spd_inverse(A: np.ndarray, *, overwrite: bool = False) -> np.ndarray:
    """Inverse of a symmetric positive definite matrix from its Cholesky factor.

    LAPACK potrf + potri: about p^3 / 1.5 flops, against 2.3 p^3 for a Cholesky
    solve with the identity; the difference is most of a dense knockoff run at
    p = 2,000. With ``overwrite`` the inverse takes A's memory (a fresh p x p
    array costs page faults comparable to the flops on a VM). Raises
    ``numpy.linalg.LinAlgError`` when A is not positive definite.
    """
    from scipy.linalg import lapack

    # A is symmetric, so its transpose is A itself; LAPACK works in place only on Fortran-ordered memory
    L, info = lapack.dpotrf(A.T if A.flags.c_contiguous else A, lower=1, clean=0, overwrite_a=int(overwrite))
    if info != 0:
        raise np.linalg.LinAlgError(f"matrix is not positive definite (potrf info {info})")
    inv, info = lapack.dpotri(L, lower=1, overwrite_c=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"matrix is singular (potri info {info})")
    # potri fills the lower triangle only; copy it up in blocks (index arrays over p^2 / 2 entries cost as much
    # as the inversion itself)
    p, step = inv.shape[0], 256
    for start in range(0, p, step):
        stop = min(start + step, p)
        block = inv[start:stop, start:stop]
        block[:] = np.tril(block) + np.tril(block, -1).T
        inv[start:stop, stop:] = inv[stop:, start:stop].T
    return inv.T if not inv.flags.c_contiguous else inv  # symmetric: the C-ordered view of the same matrix


def two_c_minus_s(C: np.ndarray, s: np.ndarray) -> np.ndarray:
    """2C - diag(s) as one new array (no p x p temporaries)."""
    M = C * 2.0
    M[np.diag_indices_from(M)] -= s
    return M


def woodbury_solve(d: np.ndarray, U: np.ndarray, B: np.ndarray, scale_u: float = 1.0) -> np.ndarray:
    """``(diag(d) + scale_u U U^T)^{-1} B`` in O(p k^2 + p k m) without forming p x p matrices."""
    squeeze = B.ndim == 1
    B2 = B[:, None] if squeeze else B
    DinvB = B2 / d[:, None]
    DinvU = U / d[:, None]
    core = np.eye(U.shape[1]) / scale_u + U.T @ DinvU
    out = DinvB - DinvU @ linalg.solve(core, U.T @ DinvB, assume_a="pos", check_finite=False)
    return out[:, 0] if squeeze else out


def _standardize(X: np.ndarray, what: str = "expression") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mean = X.mean(axis=0)
    scale = X.std(axis=0)
    const = np.flatnonzero(scale <= 1e-12 * np.maximum(1.0, np.abs(mean)))
    if const.size:
        raise InputDataError(f"{what}: {const.size} gene(s) are constant across samples (first column index "
                             f"{const[0]}); knockoffs need variation. Remove them or set preprocess.min_expression.")
    return (X - mean) / scale, mean, scale


def choose_factor_rank(eigvals: np.ndarray, n: int, p: int) -> int:
    """Factor rank by the eigenvalue-ratio rule (Ahn and Horenstein 2013).

    k = argmax_i lambda_i / lambda_{i+1} over the sample-correlation
    eigenvalues that exceed the Marchenko-Pastur noise edge (the noise level is
    the mean of the eigenvalues left after removing them); 1 when none does.
    """
    gamma = p / n
    sigma2, n_above = 1.0, 0
    for _ in range(10):  # fixed point: strong factors must not inflate the noise level
        new = int(np.sum(eigvals > sigma2 * (1.0 + np.sqrt(gamma)) ** 2))
        sigma2 = max((p - eigvals[:new].sum()) / max(p - new, 1), 1e-3)
        if new == n_above:
            break
        n_above = new
    n_above = min(n_above, eigvals.size - 1)
    if n_above < 1:
        return 1
    ratios = eigvals[:n_above] / eigvals[1:n_above + 1]
    return int(np.argmax(ratios)) + 1


def _debias_spike(lam: np.ndarray, gamma: float, sigma2: float) -> np.ndarray:
    """Population spike ell from a sample eigenvalue (spiked-covariance model).

    Solves lam = ell + gamma * sigma2 * ell / (ell - sigma2) for ell > sigma2;
    below the detection threshold the spike is set to sigma2 (no signal).
    """
    lam_n, out = lam / sigma2, np.empty_like(lam)
    b = lam_n + 1.0 - gamma
    disc = b * b - 4.0 * lam_n
    ok = (disc > 0) & (b > 0)
    out[ok] = (b[ok] + np.sqrt(disc[ok])) / 2.0
    out[~ok] = 1.0
    return out * sigma2


def ledoit_wolf_correlation(Xs: np.ndarray) -> tuple[np.ndarray, float]:
    """Ledoit-Wolf shrunk covariance of centred data, rescaled to a correlation matrix.

    The same estimate and shrinkage as ``sklearn.covariance.ledoit_wolf(Xs,
    assume_centered=True)`` (checked in the tests), from one p x p product
    instead of three: scikit-learn forms ``X'X`` twice and ``(X**2)'(X**2)``
    only to sum their entries, and the second sum is ``sum_k ||x_k||^4``, an
    O(np) quantity. At p = 2,000 this is most of the covariance step.

    Returns
    -------
    corr : ndarray of shape (p, p)
    shrinkage : float
    """
    n, p = Xs.shape
    cov = Xs.T @ Xs
    cov /= n
    if p == 1:
        return np.ones((1, 1)), 0.0
    diag = np.diag(cov).copy()
    mu = diag.sum() / p
    sum_sq_cov = float(np.vdot(cov.ravel(), cov.ravel()))  # sum((X'X)^2) / n^2
    row_norms = np.einsum("ij,ij->i", Xs, Xs)
    beta = (float(np.sum(row_norms**2)) / n - sum_sq_cov) / (p * n)
    delta = (sum_sq_cov - 2.0 * mu * diag.sum() + p * mu**2) / p
    beta = min(beta, delta)
    shrinkage = 0.0 if beta == 0 else beta / delta
    cov *= 1.0 - shrinkage
    cov[np.diag_indices_from(cov)] += shrinkage * mu
    sd = np.sqrt(np.diag(cov)).copy()
    cov /= sd[:, None]
    cov /= sd[None, :]
    return cov, float(shrinkage)


def fit_covariance(X: np.ndarray, *, method: str = "auto", rank: int | None = None,
                   random_state: int = 0, dense_max: int = DENSE_MAX_GENES,
                   max_block: int | None = None) -> CovarianceModel:
    """Fit a covariance model of the genes on the correlation scale.

    Parameters
    ----------
    X : ndarray of shape (n, p)
        Expression, samples x genes (already preprocessed).
    method : {'auto', 'ledoit_wolf', 'factor', 'factor_blocks'}
        ``auto`` takes Ledoit-Wolf up to ``dense_max`` genes when its shrinkage
        intensity is at most ``MAX_AUTO_SHRINKAGE`` (0.3), ``factor_blocks`` otherwise.
    rank : int, optional
        Factor rank k; chosen by the eigenvalue-ratio rule among eigenvalues
        above the Marchenko-Pastur noise edge (at most 50) when None.
    random_state : int
        Seed of the randomized SVD.
    dense_max : int
    max_block : int, optional
        Largest block of ``factor_blocks`` (``blockfactor.default_block_size(n)`` when None:
        min(400, max(10, n // 6))).

    Returns
    -------
    CovarianceModel
    """
    n, p = X.shape
    Xs, mean, scale = _standardize(np.asarray(X, dtype=np.float64))
    if method == "auto" and p > dense_max:
        method = "factor_blocks"
    if method in ("auto", "ledoit_wolf"):
        corr, shrink = ledoit_wolf_correlation(Xs)
        # A heavily shrunk estimate pulls strong local correlations towards 0 (AR(1) rho = 0.8, n = 300,
        # p = 1,000: shrinkage 0.48, neighbours modelled at ~0.4, knockoff+ mean FDP 0.138 +- 0.028 at
        # q = 0.1 over 12 replicates), while factor_blocks keeps them (0.028 +- 0.013, power 0.83 vs
        # 0.91); on equicorrelated blocks (rho 0.5, n = 500, p = 2,000) both were calibrated with equal
        # power. So auto keeps the dense estimate only while it is close to the sample correlation.
        if method == "ledoit_wolf" or shrink <= MAX_AUTO_SHRINKAGE:
            return CovarianceModel("ledoit_wolf", mean, scale, corr=corr, shrinkage=shrink)
        del corr
        method = "factor_blocks"
    if method not in COVARIANCE_KINDS:
        raise ValueError(f"covariance must be auto, {', '.join(COVARIANCE_KINDS)}; got {method!r}")
    k_max = int(min(rank or MAX_FACTOR_RANK, n - 2, p - 1))
    if k_max < 1:
        # k_max = min(rank, n - 2, p - 1): name whichever of genes and samples is short
        short = f"{p} gene is" if p < 2 else f"{n} samples are"
        raise InputDataError(f"expression: {short} too few for a factor model; use covariance: ledoit_wolf.")
    if min(n, p) <= 3 * k_max + 10:
        _, sv, Vt = linalg.svd(Xs, full_matrices=False, check_finite=False)
        sv, Vt = sv[:k_max], Vt[:k_max]
    else:
        from sklearn.utils.extmath import randomized_svd

        _, sv, Vt = randomized_svd(Xs, k_max, n_oversamples=10, n_iter=2, random_state=random_state)
    eig = sv**2 / n  # eigenvalues of the sample correlation matrix
    k = rank if rank is not None else choose_factor_rank(eig, n, p)
    k = int(min(k, k_max))
    sigma2 = max((p - eig[:k].sum()) / max(p - k, 1), 1e-3)
    ell = _debias_spike(eig[:k], p / n, sigma2)
    U = Vt[:k].T * np.sqrt(np.maximum(ell - sigma2, 0.0))
    # unit diagonal: d_j = 1 - ||u_j||^2, floored so the model stays positive definite
    row = np.sum(U**2, axis=1)
    too_big = row > 0.95
    if np.any(too_big):
        U[too_big] *= np.sqrt(0.95 / row[too_big])[:, None]
        row = np.sum(U**2, axis=1)
    d = 1.0 - row
    if method == "factor":
        return CovarianceModel("factor", mean, scale, d=d, U=U)
    from iml_genomics.select import blockfactor

    # residuals after the k leading sample principal directions: what the factors leave for B to describe
    Xs -= (Xs @ Vt[:k].T) @ Vt[:k]
    blocks, threshold = blockfactor.residual_blocks(
        Xs, n_eff=n - k - 1, max_block=max_block or blockfactor.default_block_size(n))
    block = blockfactor.fit_blocks(Xs, d, blocks)
    return CovarianceModel("factor_blocks", mean, scale, d=d, U=U, block=block, edge_threshold=threshold)
