"""Group knockoffs: gene partitions, group S-matrices and group statistics.

Group knockoffs (Dai and Barber 2016) only need exchangeability of whole
groups, so S may be block-diagonal over groups. We use the group
equicorrelated construction ``S = gamma * blockdiag(C_gg)`` with
``gamma = min(1, 2 lambda_min(D^{-1/2} C D^{-1/2}))``, ``D = blockdiag(C_gg)``,
which is feasible by construction, and the group statistic
``W_g = sum_{j in g} |b_j| - sum_{j in g} |b~_j|``.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg


def cluster_genes(C: np.ndarray, threshold: float) -> np.ndarray:
    """Group ids (0..G-1) from average-linkage clustering on 1 - |corr|, cut at 1 - threshold.

    Genes whose average absolute correlation with a cluster exceeds
    ``threshold`` join it; uncorrelated genes stay alone.
    """
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    p = C.shape[0]
    if p == 1:
        return np.zeros(1, dtype=int)
    dist = np.clip(1.0 - np.abs(C), 0.0, None)
    np.fill_diagonal(dist, 0.0)
    Z = linkage(squareform(dist, checks=False), method="average")
    labels = fcluster(Z, t=1.0 - threshold, criterion="distance")
    return canonical_groups(labels)


def canonical_groups(labels) -> np.ndarray:
    """Relabel groups 0..G-1 in order of first appearance (stable ids whatever the input labels)."""
    _, first, inverse = np.unique(np.asarray(labels), return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return order[inverse].astype(int)


def group_equicorrelated(C: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, float]:
    """Block-diagonal S = gamma * blockdiag(C_gg) and gamma."""
    p = C.shape[0]
    Dinv_half = np.zeros((p, p))
    S = np.zeros((p, p))
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        block = C[np.ix_(idx, idx)]
        w, Q = linalg.eigh(block, check_finite=False)
        w = np.clip(w, 1e-10, None)
        Dinv_half[np.ix_(idx, idx)] = (Q / np.sqrt(w)) @ Q.T
        S[np.ix_(idx, idx)] = block
    lam = linalg.eigh(Dinv_half @ C @ Dinv_half, eigvals_only=True, subset_by_index=[0, 0], check_finite=False)[0]
    gamma = min(1.0, 2.0 * lam) * (1.0 - 1e-4)
    return gamma * S, float(gamma)


def group_w(importance: np.ndarray, knockoff_importance: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """W_g = sum of gene importances minus sum of knockoff importances, per group."""
    n_groups = int(groups.max()) + 1
    return (np.bincount(groups, weights=importance, minlength=n_groups)
            - np.bincount(groups, weights=knockoff_importance, minlength=n_groups))
