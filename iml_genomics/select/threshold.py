"""Knockoff thresholds, knockoff e-values and the e-BH procedure.

- knockoff+ (offset 1, Barber and Candes 2015):
  T = min{t > 0 : (1 + #{W_j <= -t}) / max(1, #{W_j >= t}) <= q}; offset 0
  drops the 1 (controls a modified FDR only).
- e-values of one knockoff run (Ren and Barber 2023):
  e_j = p * 1{W_j >= T} / (offset + #{W_k <= -T}); they average to <= 1
  under the null, and the average over draws is an e-value too.
- e-BH (Wang and Ramdas 2022): sort e descending, take the largest k with
  e_(k) >= p / (q k) and select those k.
"""

from __future__ import annotations

import numpy as np


def knockoff_threshold(W: np.ndarray, fdr: float, offset: int = 1) -> float:
    """The knockoff(+) threshold T (``inf`` when nothing can be selected)."""
    W = np.asarray(W, dtype=float)
    ts = np.unique(np.abs(W[W != 0]))  # ascending candidate thresholds
    if ts.size == 0:
        return float("inf")
    neg = np.sort(-W[W < 0])  # magnitudes of negative W, ascending
    pos = np.sort(W[W > 0])
    # counts for every candidate t: #{W <= -t} and #{W >= t}
    n_neg = neg.size - np.searchsorted(neg, ts, side="left")
    n_pos = pos.size - np.searchsorted(pos, ts, side="left")
    ratio = (offset + n_neg) / np.maximum(1, n_pos)
    ok = np.flatnonzero(ratio <= fdr)
    return float(ts[ok[0]]) if ok.size else float("inf")


def knockoff_evalues(W: np.ndarray, fdr: float, offset: int = 1) -> tuple[np.ndarray, float]:
    """Per-gene e-values of one knockoff run at level ``fdr``, and its threshold."""
    W = np.asarray(W, dtype=float)
    T = knockoff_threshold(W, fdr, offset)
    if not np.isfinite(T):
        return np.zeros_like(W), T
    # always 1 + #{W <= -T}: with offset 0 in the denominator the mean null
    # e-value exceeds 1 and e-BH loses its guarantee (the threshold may still be offset 0)
    denom = 1 + np.sum(W <= -T)
    return W.size * (W >= T) / denom, T


def ebh(e: np.ndarray, fdr: float) -> tuple[np.ndarray, float]:
    """e-BH selection mask and the e-value threshold (``inf`` when nothing is selected)."""
    e = np.asarray(e, dtype=float)
    p = e.size
    order = np.argsort(-e, kind="stable")
    ranked = e[order]
    ok = np.flatnonzero(ranked >= p / (fdr * np.arange(1, p + 1)))
    selected = np.zeros(p, dtype=bool)
    if ok.size == 0:
        return selected, float("inf")
    k = ok[-1] + 1
    threshold = p / (fdr * k)
    selected[e >= threshold] = True
    return selected, float(threshold)
