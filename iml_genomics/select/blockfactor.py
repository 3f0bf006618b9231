"""Block-diagonal residual correlation for the ``factor_blocks`` covariance model.

The model is ``C = B + U U^T`` on the correlation scale: ``U`` are the factor
loadings of the plain factor model (global programmes), ``B`` is
block-diagonal and carries the local correlation the factors leave behind
(co-regulated modules, neighbouring probes). Genes are grouped into blocks
by clustering the residual correlation (after the k leading principal
directions are projected out):

1. a sparse graph of the gene pairs whose |residual correlation| exceeds a
   noise-aware threshold (the level a pure-noise correlation exceeds for
   about one gene in a hundred), computed in column chunks, each gene keeping at
   most ``MAX_NEIGHBOURS`` forward edges, so no p x p matrix is formed;
2. its connected components; a component larger than ``max_block`` is
   split by average linkage on 1 - |residual corr| (``smatrix.cluster_blocks``);
   one larger than ``COMPONENT_DENSE_MAX`` is first cut into contiguous pieces
   of a reverse Cuthill-McKee ordering (which keeps graph neighbours close),
   so the dense clustering never sees more than ``COMPONENT_DENSE_MAX`` genes;
3. each block's residual correlation is shrunk by Ledoit-Wolf and rescaled to
   the residual variances ``d_j = 1 - ||u_j||^2``, so ``diag(C) = 1`` and
   every block is positive definite. Genes in no block keep ``B_jj = d_j``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import linalg, sparse
from scipy.sparse.csgraph import connected_components, reverse_cuthill_mckee
from scipy.stats import norm

#: Largest number of genes in one block of B (chains longer than this are cut at block boundaries).
MAX_BLOCK_SIZE = 400
#: Default blocks hold at most n / BLOCK_SAMPLES_RATIO genes: Ledoit-Wolf shrinks a block's correlations by a
#: factor that grows with size / n, and shrunk correlations make knockoffs too independent of their
#: neighbours (AR(1) rho = 0.8, n = 300: model corr of neighbours 0.74 at 50 genes, 0.72 at 100,
#: 0.70 at 150, 0.66 at 250, 0.61 at 400). On benchmarks/blockfactor_ar1.py (12 replicates, same data)
#: n / 3 gave mean FDP 0.122 +- 0.038 (power 0.64), n / 6 0.074 +- 0.024 (power 0.59); the unshrunk
#: sample correlation (n / 3) 0.097 +- 0.037 but power 0.54 (its small eigenvalues force small s).
BLOCK_SAMPLES_RATIO = 6
#: Smallest default block size (few samples).
MIN_BLOCK_SIZE = 10


def default_block_size(n: int) -> int:
    """Largest block for n samples: min(MAX_BLOCK_SIZE, max(MIN_BLOCK_SIZE, n // BLOCK_SAMPLES_RATIO)) (n // 6)."""
    return int(min(MAX_BLOCK_SIZE, max(MIN_BLOCK_SIZE, n // BLOCK_SAMPLES_RATIO)))
#: Largest connected component clustered as one dense matrix (400 MB of float64 at 5,000 genes with the linkage).
COMPONENT_DENSE_MAX = 4000
#: Forward edges kept per gene in the residual-correlation graph (bounds its memory at ~p x 50).
MAX_NEIGHBOURS = 50
#: Expected number of pure-noise edges per gene the threshold allows (one gene in a hundred gets one). Each
#: chance edge joins two unrelated modules; with modules of m genes the joined modules percolate into one
#: giant component once 2 * rate * m > 1, so 0.01 keeps modules of up to 50 genes apart.
FALSE_EDGES_PER_GENE = 0.01
#: Genes per column chunk of the graph products (a chunk x p float32 block: 40 MB at p = 20,000).
CHUNK = 512


@dataclass
class BlockDiagonal:
    """A symmetric positive definite block-diagonal matrix B.

    Attributes
    ----------
    diag : ndarray of shape (p,)
        Diagonal of B (genes in no block are diagonal entries of B).
    blocks : list of ndarray
        Sorted gene indices of each block (size >= 2), blocks sorted by their first gene.
    mats : list of ndarray
        The dense block ``B[idx, idx]`` of each block.
    """

    diag: np.ndarray
    blocks: list
    mats: list
    _chol: list = field(default=None, repr=False)

    @property
    def p(self) -> int:
        return self.diag.shape[0]

    @property
    def chol(self) -> list:
        """Lower Cholesky factors of the blocks (computed once)."""
        if self._chol is None:
            self._chol = [linalg.cholesky(m, lower=True, check_finite=False) for m in self.mats]
        return self._chol

    def singletons(self) -> np.ndarray:
        """Indices of the genes in no block."""
        mask = np.ones(self.p, dtype=bool)
        for idx in self.blocks:
            mask[idx] = False
        return np.flatnonzero(mask)

    def solve(self, M: np.ndarray) -> np.ndarray:
        """``B^{-1} M`` for M of shape (p,) or (p, m)."""
        out = M / (self.diag if M.ndim == 1 else self.diag[:, None])
        for idx, L in zip(self.blocks, self.chol):
            out[idx] = linalg.cho_solve((L, True), M[idx], check_finite=False)
        return out

    def solve_right(self, Z: np.ndarray) -> np.ndarray:
        """``Z B^{-1}`` for Z of shape (n, p) (B is symmetric)."""
        out = Z / self.diag
        for idx, L in zip(self.blocks, self.chol):
            out[:, idx] = linalg.cho_solve((L, True), Z[:, idx].T, check_finite=False).T
        return out

    def inverse_diagonal(self) -> np.ndarray:
        """Diagonal of ``B^{-1}``."""
        out = 1.0 / self.diag
        for idx, L in zip(self.blocks, self.chol):
            Linv = linalg.solve_triangular(L, np.eye(L.shape[0]), lower=True, check_finite=False)
            out[idx] = np.sum(Linv**2, axis=0)  # (L L^T)^{-1} = Linv^T Linv
        return out

    def dense(self) -> np.ndarray:
        """B as a p x p array (small p only: tests and checks)."""
        out = np.diag(self.diag).astype(np.float64)
        for idx, m in zip(self.blocks, self.mats):
            out[np.ix_(idx, idx)] = m
        return out

    @property
    def sizes(self) -> np.ndarray:
        return np.array([len(idx) for idx in self.blocks], dtype=int)


def edge_threshold(n_eff: int, p: int) -> float:
    """|correlation| above which a residual gene pair is treated as correlated.

    Under independence a sample correlation is about N(0, 1 / n_eff); the
    two-sided level is set so that about ``FALSE_EDGES_PER_GENE * p`` (p / 100) of the
    p(p-1)/2 pairs pass by chance. Few false edges keep unrelated genes apart;
    the level is far below the correlations that break knockoffs (a missed
    pair at |corr| = threshold costs little, one at 0.8 costs the FDR).
    """
    pairs = max(p * (p - 1) / 2.0, 1.0)
    alpha = min(FALSE_EDGES_PER_GENE * p / pairs, 0.5)
    return float(min(norm.isf(alpha / 2.0) / np.sqrt(max(n_eff, 4)), 0.95))


def correlation_graph(Yn: np.ndarray, threshold: float, *, chunk: int = CHUNK,
                      max_neighbours: int = MAX_NEIGHBOURS) -> sparse.csr_matrix:
    """Sparse symmetric graph of |corr| > threshold from unit-norm columns Yn, in column chunks.

    Only the upper triangle is computed (chunk rows against the columns from
    the chunk on); each gene keeps its ``max_neighbours`` strongest forward
    edges, so memory is O(p * max_neighbours) whatever the correlation.
    """
    p = Yn.shape[1]
    rows, cols, vals = [], [], []
    for start in range(0, p, chunk):
        stop = min(start + chunk, p)
        A = np.abs(Yn[:, start:stop].T @ Yn[:, start:])  # (c, p - start)
        c = stop - start
        A[:, :c] = np.triu(A[:, :c], 1)  # pairs j > i only, no diagonal
        A[A <= threshold] = 0.0
        if A.shape[1] > max_neighbours:
            counts = np.count_nonzero(A, axis=1)
            for i in np.flatnonzero(counts > max_neighbours):  # rare: keep the strongest edges
                row = A[i]
                cut = np.partition(row, row.size - max_neighbours)[row.size - max_neighbours]
                row[row < cut] = 0.0
        ii, jj = np.nonzero(A)
        rows.append(ii + start)
        cols.append(jj + start)
        vals.append(A[ii, jj].astype(np.float64))
    r, c_, v = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    G = sparse.coo_matrix((v, (r, c_)), shape=(p, p)).tocsr()
    return (G + G.T).tocsr()


def residual_blocks(Xr: np.ndarray, *, n_eff: int, max_block: int = MAX_BLOCK_SIZE,
                    dense_max: int = COMPONENT_DENSE_MAX, threshold: float | None = None) -> tuple[list, float]:
    """Group genes into blocks of correlated residuals.

    Parameters
    ----------
    Xr : ndarray of shape (n, p)
        Residuals after the factors (centred columns).
    n_eff : int
        Effective sample size of a residual correlation (n - k - 1).
    max_block : int
        Largest block.
    dense_max : int
        Largest component clustered densely (see the module docstring).
    threshold : float, optional
        |correlation| of an edge; :func:`edge_threshold` when None.

    Returns
    -------
    blocks : list of ndarray
        Sorted indices of each block of >= 2 genes, sorted by first gene.
    threshold : float
        The edge threshold used.
    """
    from iml_genomics.select.smatrix import cluster_blocks

    n, p = Xr.shape
    norms = np.sqrt(np.einsum("ij,ij->j", Xr, Xr))
    Yn = (Xr / np.maximum(norms, 1e-300)).astype(np.float32)
    t = edge_threshold(n_eff, p) if threshold is None else float(threshold)
    G = correlation_graph(Yn, t)
    _, labels = connected_components(G, directed=False)
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    blocks = []
    for comp in np.split(order, bounds):
        if comp.size < 2:
            continue
        comp = np.sort(comp)
        if comp.size <= max_block:
            blocks.append(comp)
            continue
        pieces = [comp]
        if comp.size > dense_max:  # cut along a bandwidth-reducing order: neighbours in the graph stay together
            rcm = comp[reverse_cuthill_mckee(G[comp][:, comp].tocsr(), symmetric_mode=True)]
            pieces = [rcm[i:i + dense_max] for i in range(0, rcm.size, dense_max)]
        for piece in pieces:
            piece = np.sort(piece)
            if piece.size <= max_block:
                blocks.append(piece)
                continue
            Yp = Yn[:, piece].astype(np.float64)
            R = Yp.T @ Yp
            for sub in cluster_blocks(R, max_block):
                if sub.size >= 2:
                    blocks.append(np.sort(piece[sub]))
    blocks.sort(key=lambda idx: int(idx[0]))
    return blocks, t


def fit_blocks(Xr: np.ndarray, d: np.ndarray, blocks: list) -> BlockDiagonal:
    """B: per block the Ledoit-Wolf residual correlation rescaled to the residual variances d."""
    from iml_genomics.select.covariance import ledoit_wolf_correlation

    mats = []
    for idx in blocks:
        Xb = Xr[:, idx]
        Xb = Xb / np.maximum(Xb.std(axis=0), 1e-12)
        R, _ = ledoit_wolf_correlation(Xb)
        sd = np.sqrt(d[idx])
        mats.append(R * sd[:, None] * sd[None, :])
    return BlockDiagonal(diag=np.asarray(d, dtype=np.float64).copy(), blocks=blocks, mats=mats)
