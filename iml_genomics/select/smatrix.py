"""S-matrix solvers: equicorrelated, SDP and MVR, dense, on a factor model, or per block of factor_blocks.

All solvers work on the correlation scale (unit diagonal) and return the
diagonal ``s`` of S. Feasibility means ``S >= 0`` and ``2 C - S`` positive
semidefinite; :func:`check_psd` verifies it and raises :class:`NumericalError`.

SDP and MVR are solved by coordinate descent over s_j (Spector and Janson
2022; Askari et al. 2020). Each step needs only the j-th column of
``M^{-1}`` where ``M = 2 C - S``:

- dense: ``M^{-1}`` is kept and updated by Sherman-Morrison, O(p^2) per step;
  above ``max_block`` genes a block-diagonal approximation over clusters of
  correlated genes is solved block by block, then scaled to feasibility;
- factor model ``C = diag(d) + U U^T``: ``M = diag(2d - s) + 2 U U^T`` and
  Woodbury keeps two k x k matrices, so a step is O(k^2) and a sweep O(p k^2);
- factor plus blocks ``C = B + U U^T``: solved per block of B so that
  ``2B - S`` is PSD (then ``2C - S`` is), see :func:`_blocks_s`.

MVR minimises ``tr((2C - S)^{-1}) + sum 1/s_j``; the one-dimensional problem
in s_j is convex with the closed-form minimiser
``delta = (1 - ||v|| s_j) / (c_d + ||v||)``, ``v = M^{-1} e_j``, ``c_d = v_j``.
SDP maximises ``sum s_j`` with a log-det barrier ``mu log det M`` (mu -> 0):
``delta = 1 / c_d - mu``.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.sparse.linalg import LinearOperator, eigsh
from scipy.spatial.distance import squareform

from iml_genomics.errors import NumericalError
from iml_genomics.parallel import Backend, blas_threads, resolve_backend, spawn_seeds
from iml_genomics.select.covariance import spd_inverse, two_c_minus_s

#: Smallest s_j and the margin kept from the PSD boundary.
S_TOL = 1e-5
#: Block size of the dense block-diagonal approximation.
MAX_BLOCK = 400


try:  # numba ships with shap (a project dependency); the kernels also run as plain Python
    from numba import njit as _njit

    _jit = _njit(cache=True, nogil=True)
except ImportError:  # pragma: no cover
    def _jit(func):
        return func


@_jit
def _step(method, sj, cd, nv2, hi_extra, mu, s_max, s_tol):
    """Optimal change of s_j in one coordinate step (MVR closed form or SDP barrier), clipped to feasibility."""
    if method == 0:
        nv = np.sqrt(nv2)
        delta = (1.0 - nv * sj) / (cd + nv)
    else:
        delta = 1.0 / cd - mu
    hi = min((1.0 - 1e-4) / cd, hi_extra, s_max - sj)
    lo = s_tol - sj
    if hi < lo:
        hi = lo
    return min(max(delta, lo), hi)


@_jit
def _sweep_dense(Minv, s, order, method, mu, s_max, s_tol):
    """One coordinate sweep keeping M^{-1} (M = 2C - S) by Sherman-Morrison; returns the largest change."""
    p = s.shape[0]
    v = np.empty(p)
    biggest = 0.0
    for j in order:
        for a in range(p):
            v[a] = Minv[a, j]
        cd = v[j]
        nv2 = 0.0
        for a in range(p):
            nv2 += v[a] * v[a]
        delta = _step(method, s[j], cd, nv2, np.inf, mu, s_max, s_tol)
        if delta != 0.0:
            f = delta / (1.0 - delta * cd)
            for a in range(p):
                fa = f * v[a]
                for b in range(p):
                    Minv[a, b] += fa * v[b]
            s[j] += delta
            biggest = max(biggest, abs(delta))
    return biggest


@_jit
def _sweep_factor(K, B, U, d, s, order, method, mu, s_max, s_tol):
    """One coordinate sweep on M = diag(2d - s) + 2UU^T with K = (I + 2U'D^-1U)^-1, B = U'D^-2U (Woodbury)."""
    k = U.shape[1]
    a = np.empty(k)
    Ba = np.empty(k)
    biggest = 0.0
    for j in order:
        dj = 2.0 * d[j] - s[j]
        ua = 0.0
        for r in range(k):
            acc = 0.0
            for c in range(k):
                acc += K[r, c] * U[j, c]
            a[r] = acc
            ua += U[j, r] * acc
        aBa = 0.0
        for r in range(k):
            acc = 0.0
            for c in range(k):
                acc += B[r, c] * a[c]
            Ba[r] = acc
            aBa += a[r] * acc
        cd = 1.0 / dj - 2.0 * ua / dj ** 2
        nv2 = 1.0 / dj ** 2 - 4.0 * ua / dj ** 3 + 4.0 * aBa / dj ** 2
        # keep the diagonal part 2d_j - s_j positive: Woodbury stays valid and M positive definite
        hi_extra = dj - 1e-4 * max(d[j], 1e-3)
        delta = _step(method, s[j], cd, nv2, hi_extra, mu, s_max, s_tol)
        if delta != 0.0:
            new = dj - delta
            c2 = 2.0 * (1.0 / new - 1.0 / dj)
            f = c2 / (1.0 + c2 * ua)
            for r in range(k):
                for c in range(k):
                    K[r, c] -= f * a[r] * a[c]
            g = 1.0 / new ** 2 - 1.0 / dj ** 2
            for r in range(k):
                for c in range(k):
                    B[r, c] += g * U[j, r] * U[j, c]
            s[j] += delta
            biggest = max(biggest, abs(delta))
    return biggest


def _coordinate_descent(C, d, U, s: np.ndarray, *, method: str, n_iter: int, rng: np.random.Generator,
                        tol: float = 1e-4, s_max: float = 1.0) -> np.ndarray:
    """Coordinate descent on s; dense when C is given, else on the factor model (d, U).

    The inverse (or the Woodbury k x k state) is recomputed from scratch at
    every sweep, so rank-one updates never accumulate rounding drift.
    """
    # one BLAS thread at every size: small LAPACK calls are ~20x slower with a multi-threaded BLAS on a busy
    # machine, and OpenBLAS's last bits change with its thread count (same bytes whatever the caller's threads;
    # iml_genomics.parallel.BLAS_THREADS)
    with blas_threads(1):
        return _cd_loop(C, d, U, s, method=method, n_iter=n_iter, rng=rng, tol=tol, s_max=s_max)


def _cd_loop(C, d, U, s, *, method, n_iter, rng, tol, s_max):
    code = 0 if method == "mvr" else 1
    mus = np.geomspace(0.1, 1e-4, n_iter) if method == "sdp" else np.zeros(n_iter)
    for it in range(n_iter):
        order = rng.permutation(s.shape[0])
        if C is not None:
            for _ in range(50):  # rounding can put s a hair outside the PD region: step back
                try:
                    Minv = spd_inverse(two_c_minus_s(C, s), overwrite=True)
                    break
                except np.linalg.LinAlgError:
                    s *= 0.999
            else:
                raise NumericalError("2Sigma - S lost positive definiteness during coordinate descent; the "
                                     "correlation matrix may be singular. Use select.s_method: equicorrelated.")
            change = _sweep_dense(np.ascontiguousarray(Minv), s, order, code, mus[it], s_max, S_TOL)
        else:
            delta = 2.0 * d - s
            K = np.linalg.inv(np.eye(U.shape[1]) + 2.0 * (U.T / delta) @ U)
            B = (U.T / delta**2) @ U
            change = _sweep_factor(np.ascontiguousarray(K), np.ascontiguousarray(B), U, d, s, order, code,
                                   mus[it], s_max, S_TOL)
        if method == "mvr" and change < tol:
            break
    return s


def equicorrelated(model) -> np.ndarray:
    """s_j = min(2 lambda_min(C), 1) for every gene.

    For the factor model lambda_min(diag(d) + U U^T) >= min(d) is used, a
    conservative bound that is tight when p >> k.
    """
    if model.corr is not None:
        lam = linalg.eigh(model.corr, eigvals_only=True, subset_by_index=[0, 0], check_finite=False)[0]
    else:
        lam = float(np.min(model.d))
    value = min(2.0 * lam, 1.0) * (1.0 - 1e-6)
    return np.full(model.p, max(value, 0.0))


def _dense_solve(C: np.ndarray, method: str, rng: np.random.Generator, n_iter: int) -> np.ndarray:
    with blas_threads(1):  # see _coordinate_descent
        lam = linalg.eigh(C, eigvals_only=True, subset_by_index=[0, 0], check_finite=False)[0]
    s = np.full(C.shape[0], max(min(lam, 1.0) * (1.0 - 1e-6), S_TOL))
    return _coordinate_descent(C, None, None, s, method=method, n_iter=n_iter, rng=rng)


def cluster_blocks(C: np.ndarray, max_block: int) -> list[np.ndarray]:
    """Partition genes into blocks of at most ``max_block`` by average-linkage clustering on 1 - |corr|."""
    p = C.shape[0]
    dist = np.abs(C)  # 1 - |corr|, built in one p x p array (each temporary costs page faults at p = 2,000)
    np.subtract(1.0, dist, out=dist)
    np.maximum(dist, 0.0, out=dist)
    np.fill_diagonal(dist, 0.0)
    Z = linkage(squareform(dist, checks=False), method="average")
    lo, hi = 1, p
    best = np.arange(p)
    while lo <= hi:  # fewest clusters whose largest has <= max_block genes
        mid = (lo + hi) // 2
        labels = fcluster(Z, t=mid, criterion="maxclust")
        if np.bincount(labels).max() <= max_block:
            best, hi = labels, mid - 1
        else:
            lo = mid + 1
    # pack small clusters together (fewer, larger blocks solve faster and lose less)
    blocks, cur = [], []
    for lab in np.unique(best):
        members = np.flatnonzero(best == lab)
        if len(cur) + len(members) > max_block and cur:
            blocks.append(np.array(cur))
            cur = []
        cur.extend(members.tolist())
    if cur:
        blocks.append(np.array(cur))
    return blocks


def _scale_to_feasible(C: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Largest gamma in (0, 1] with 2C - gamma S positive definite (bisection on Cholesky)."""
    def ok(g):
        try:
            linalg.cholesky(2.0 * C - np.diag(g * s), lower=True, check_finite=False)
            return True
        except linalg.LinAlgError:
            return False

    if ok(1.0):
        return s
    lo, hi = 0.0, 1.0
    for _ in range(20):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return s * lo * (1.0 - 1e-4)


def compute_s(model, method: str = "mvr", *, random_state: int = 0, n_iter: int | None = None,
              max_block: int = MAX_BLOCK, n_jobs: int | None = 1,
              backend: Backend | None = None) -> tuple[np.ndarray, dict]:
    """Diagonal S for a covariance model.

    Parameters
    ----------
    model : CovarianceModel
    method : {'mvr', 'sdp', 'equicorrelated'}
    random_state : int
        Seed of the coordinate order.
    n_iter : int, optional
        Coordinate-descent sweeps (default 10 for MVR, 80 for the barrier SDP,
        whose barrier weight mu falls geometrically from 0.1 to 1e-4).
    max_block : int
        Dense models above this size use the block-diagonal approximation.
    n_jobs : int
        Threads over the blocks of the block-diagonal approximation; each block
        has its own seed, so the result does not depend on it. Used only when
        ``backend`` is None.
    backend : iml_genomics.parallel.Backend, optional
        Runs the block threads (:meth:`~iml_genomics.parallel.Backend.thread_map`); it decides over ``n_jobs``.

    Returns
    -------
    s : ndarray of shape (p,)
    info : dict
        ``approximation`` ('none', 'blockdiag', 'factor' or 'factor_blocks') and ``n_blocks``.
    """
    backend = resolve_backend(backend, n_jobs)
    rng = np.random.default_rng(random_state)
    if method not in ("mvr", "sdp", "equicorrelated"):
        raise ValueError(f"s_method must be mvr, sdp or equicorrelated, got {method!r}")
    if model.is_blocks:
        return _blocks_s(model, method, random_state=random_state, n_iter=n_iter, backend=backend), {
            "approximation": "factor_blocks", "n_blocks": len(model.block.blocks)}
    if method == "equicorrelated":
        return equicorrelated(model), {"approximation": "none" if model.corr is not None else "factor",
                                       "n_blocks": 1}
    n_iter = n_iter or (10 if method == "mvr" else 80)
    if model.corr is None:
        lam_lb = float(np.min(model.d))
        s = np.full(model.p, max(min(lam_lb, 1.0) * (1.0 - 1e-6), S_TOL))
        U = np.ascontiguousarray(model.U)
        s = _coordinate_descent(None, model.d, U, s, method=method, n_iter=n_iter, rng=rng)
        return s, {"approximation": "factor", "n_blocks": 1}
    C = model.corr
    if C.shape[0] <= max_block:
        return _dense_solve(C, method, rng, n_iter), {"approximation": "none", "n_blocks": 1}

    blocks = cluster_blocks(C, max_block)
    seeds = spawn_seeds(random_state, len(blocks))
    # threads: the numba sweeps are nogil and LAPACK releases the GIL, so single-threaded block solves fill the
    # cores without copying C to worker processes. The BLAS limit is process-wide, so it is set once here
    # rather than entered and left by each thread (their save/restore would interleave). Large blocks too: BLAS
    # is single-threaded at every size (see _coordinate_descent), so the cores come from the block threads.
    threads = min(backend.workers, len(blocks))

    def solve_block(idx, seed):  # the submatrix is cut inside the task: one block's copy alive per thread
        return _dense_solve(C[np.ix_(idx, idx)], method, np.random.default_rng(seed), n_iter)

    with blas_threads(1):
        solved = backend.thread_map(solve_block, list(zip(blocks, seeds)), max_threads=threads)
    s = np.empty(C.shape[0])
    for idx, s_block in zip(blocks, solved):
        s[idx] = s_block
    return _scale_to_feasible(C, s), {"approximation": "blockdiag", "n_blocks": len(blocks)}


def _blocks_s(model, method: str, *, random_state: int, n_iter: int | None, backend: Backend) -> np.ndarray:
    """Diagonal S for ``C = B + U U^T``, solved block by block on B.

    Each block's S_b makes ``2 B_b - S_b`` positive definite, so
    ``2C - S = (2B - S) + 2 U U^T`` is PSD by construction, whatever the
    factors. The block problem is MVR (or SDP) on ``B_b`` itself, with the
    usual ``1/s_j`` terms and cap ``s_j <= 1`` on the correlation scale.
    Two alternatives were compared (n = 300, p = 600, blocks <= 150; AR(1)
    rho = 0.8 and 3 factors + modules of 20 at rho = 0.6): (a) MVR on the block correlation ``D^-1/2 B_b D^-1/2`` rescaled
    by d, (b) MVR on ``C_bb`` scaled by one gamma to feasibility w.r.t.
    ``B_b``. Mean s: (a) 0.198 / 0.211, (b) 0.202 / 0.216, this 0.198 / 0.209;
    the full-model MVR objective ``tr((2C - S)^{-1}) + sum 1/s`` (the power
    criterion MVR stands for) is lowest here (5231 / 5448 against 5232 / 5453
    and 5234 / 5474), and (b)'s slightly larger mean hides a block-wide gamma
    (one gene with small d_j shrinks its whole block) and needs a bisection.
    The differences are small; this one optimises the feasible set exactly
    with no rescaling step. Genes in no block have the closed forms: MVR minimises
    ``1/(2d - s) + 1/s`` at ``s = d``; SDP takes ``min(2d, 1)`` less a margin.
    Blocks run in threads with their own seeds (numba and LAPACK release the
    GIL), BLAS single-threaded, so the result does not depend on ``n_jobs``.
    """
    blk = model.block
    d = blk.diag
    single = blk.singletons()
    s = np.empty(model.p)
    if method == "equicorrelated":
        lam = float(np.min(d[single])) if single.size else np.inf
        for m in blk.mats:
            lam = min(lam, float(linalg.eigh(m, eigvals_only=True, subset_by_index=[0, 0], check_finite=False)[0]))
        s[:] = max(min(2.0 * lam, 1.0) * (1.0 - 1e-6), 0.0)
        return s
    n_iter = n_iter or (10 if method == "mvr" else 80)
    if method == "mvr":
        s[single] = np.minimum(d[single], 1.0)
    else:
        s[single] = np.minimum(2.0 * d[single] - 1e-4 * np.maximum(d[single], 1e-3), 1.0)
    seeds = spawn_seeds(random_state, len(blk.blocks))
    with blas_threads(1):
        solved = backend.thread_map(_dense_solve, [(m, method, np.random.default_rng(seed), n_iter)
                                                   for m, seed in zip(blk.mats, seeds)])
    for idx, s_block in zip(blk.blocks, solved):
        s[idx] = s_block
    return s


def min_eig_2c_minus_s(model, s: np.ndarray, S_full: np.ndarray | None = None) -> float:
    """Smallest eigenvalue of 2C - S.

    Dense: the inverse of 2C - S from its Cholesky factor (fails -> not PD:
    LAPACK gives the negative eigenvalue), then Lanczos on that dense inverse;
    lambda_min = 1 / lambda_max(M^{-1}). The spectrum's low end is clustered,
    so Lanczos needs 60-90 products: dense ones cost a third of Cholesky solves.
    Factor model: M = diag(2d - s) + 2UU^T
    is never formed; its largest inverse eigenvalue is found by Lanczos on the
    Woodbury operator M^{-1} (O(p k) per product), and lambda_min(M) = 1 / that.
    If some 2d_j - s_j <= 0 the Woodbury form does not apply and the bound is
    reported from the Lanczos smallest eigenvalue of M itself.
    Factor plus blocks (``C = B + U U^T``): ``2C - S = (2B - S) + 2 U U^T``
    and ``2 U U^T`` is PSD, so the smallest eigenvalue of the block-diagonal
    ``2B - S`` (per block, and ``2 d_j - s_j`` for genes in no block) is a
    lower bound; it is what is reported. Negative means the construction is
    not certified (S was not solved for this B) and the filter refuses.
    """
    if model.is_blocks:
        blk = model.block
        single = blk.singletons()
        lam = float(np.min(2.0 * blk.diag[single] - s[single])) if single.size else np.inf
        for idx, m in zip(blk.blocks, blk.mats):
            M = 2.0 * m
            M[np.diag_indices_from(M)] -= s[idx]
            lam = min(lam, float(linalg.eigh(M, eigvals_only=True, subset_by_index=[0, 0], check_finite=False)[0]))
        return lam
    if model.corr is not None:
        def two_c_minus_s_full():
            return 2.0 * model.corr - S_full if S_full is not None else two_c_minus_s(model.corr, s)

        M = two_c_minus_s_full()
        p = M.shape[0]
        Minv = None
        if p > 200:
            try:
                Minv = spd_inverse(M, overwrite=True)
            except np.linalg.LinAlgError:  # not PD; the failed factorisation overwrote M
                M = two_c_minus_s_full()
        if Minv is None:  # small, or not PD: the (possibly negative) smallest eigenvalue itself
            return float(linalg.eigh(M, eigvals_only=True, subset_by_index=[0, 0], check_finite=False)[0])
        return float(1.0 / eigsh(Minv, k=1, which="LA", return_eigenvectors=False, tol=1e-8, v0=np.ones(p))[0])

    diag = 2.0 * model.d - s
    p = model.p
    if np.all(diag > 0):
        op = LinearOperator((p, p), matvec=lambda v: woodbury_inv_matvec(diag, model.U, v), dtype=np.float64)
        top = eigsh(op, k=1, which="LA", return_eigenvectors=False, tol=1e-6, maxiter=5000,
                    v0=np.ones(p))[0]
        return float(1.0 / top)
    op = LinearOperator((p, p), matvec=lambda v: diag * v + 2.0 * model.U @ (model.U.T @ v), dtype=np.float64)
    return float(eigsh(op, k=1, which="SA", return_eigenvectors=False, maxiter=20000, v0=np.ones(p))[0])


def woodbury_inv_matvec(diag: np.ndarray, U: np.ndarray, v: np.ndarray) -> np.ndarray:
    from iml_genomics.select.covariance import woodbury_solve

    return woodbury_solve(diag, U, np.asarray(v).ravel(), scale_u=2.0)


def check_psd(min_eig: float, *, tol: float = 1e-6) -> None:
    """Raise NumericalError when 2 Sigma - S is not positive semidefinite."""
    if not np.isfinite(min_eig) or min_eig < -tol:
        raise NumericalError(
            f"Minimum eigenvalue of 2Sigma - S is {min_eig:.3g}, meaning FDR control violations are extremely "
            f"likely; use select.s_method: equicorrelated or a different select.covariance.")


def mvr_loss(C: np.ndarray, s: np.ndarray) -> float:
    """MVR objective tr((2C - S)^{-1}) + sum 1/s_j (inf if infeasible); dense, for tests and checks."""
    M = 2.0 * C - np.diag(s)
    eig = np.linalg.eigvalsh(M)
    if eig.min() <= 0 or s.min() <= 0:
        return float("inf")
    return float(np.sum(1.0 / eig) + np.sum(1.0 / s))
