"""GSEA-style running-sum (enrichment) plots of the leading gene sets.

The running sum is recomputed from the same ranking and the same rule as
:func:`iml_genomics.genesets.prerank` (keys ordered by score, descending,
ties by key; a step up of |score|^p / sum over the set at each member, a
step down of 1 / (N - k) at each other gene), so the curve's extreme is the
``es`` of ``gene_sets.tsv``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from iml_genomics.report.plots import PALETTE, _plt, _short, to_base64_png


def running_sum(scores: pd.Series, members, *, weight: float = 1.0) -> tuple[np.ndarray, np.ndarray, float]:
    """The weighted Kolmogorov-Smirnov running sum of one set down a ranking.

    Parameters
    ----------
    scores : pandas.Series
        Score per key (higher = earlier), as given to :func:`~iml_genomics.genesets.prerank`.
    members : iterable of str
        The set's keys; those absent from ``scores`` are ignored.
    weight : float
        Exponent p of |score| (1 = classic GSEA, the report's choice).

    Returns
    -------
    curve : (N,) float array
        Running sum after each gene of the ranking.
    hits : (k,) int array
        0-based positions of the members in the ranking.
    es : float
        The enrichment score: the curve's largest deviation from zero (signed).
    """
    values = scores.to_numpy(dtype=float)
    keys = scores.index.astype(str).to_numpy()
    order = np.lexsort((keys, -values))
    ranked = keys[order]
    n = len(ranked)
    member = np.isin(ranked, np.asarray([str(m) for m in members]))
    k = int(member.sum())
    if k == 0 or k == n:
        return np.zeros(n), np.flatnonzero(member), 0.0
    w = np.abs(values[order]) ** weight * member
    total = w.sum()
    up = w / total if total > 0 else member / k
    step = np.where(member, up, -1.0 / (n - k))
    curve = np.cumsum(step)
    lo, hi = float(min(curve.min(), 0.0)), float(max(curve.max(), 0.0))
    es = hi if abs(hi) >= abs(lo) else lo
    return curve, np.flatnonzero(member), es


def running_sum_plot(scores: pd.Series, gene_set: str, members, *, metric: str,
                     row: pd.Series | None = None) -> str | None:
    """One set's running sum over the ranking, its members as ticks below, base64 PNG."""
    curve, hits, es = running_sum(scores, members)
    if not len(hits):
        return None
    plt = _plt()
    fig, (ax, rug) = plt.subplots(2, 1, figsize=(4.6, 3.0), sharex=True,
                                  gridspec_kw={"height_ratios": [4, 1], "hspace": 0.05})
    x = np.arange(1, len(curve) + 1)
    ax.plot(x, curve, color=PALETTE["green"], lw=1.4)
    ax.axhline(0, color="black", lw=0.6)
    at = int(np.argmax(np.abs(curve)))
    ax.axvline(at + 1, color=PALETTE["red"], lw=0.8, ls="--")
    label = f"ES = {es:.3f}"
    if row is not None:
        nes, q = pd.to_numeric(row.get("nes"), errors="coerce"), pd.to_numeric(row.get("gsea_q_value"), errors="coerce")
        if np.isfinite(nes):
            label += f", NES = {nes:.2f}"
        if np.isfinite(q):
            label += f", q = {q:.2g}"
    # the label goes where the curve is not: top right for a positive ES, bottom left for a negative one
    ax.text(*((0.98, 0.95, label) if es >= 0 else (0.02, 0.05, label)), transform=ax.transAxes,
            ha="right" if es >= 0 else "left", va="top" if es >= 0 else "bottom", fontsize=7)
    ax.set_ylabel("running sum")
    ax.set_title(_short(gene_set, 55), fontsize=8)
    rug.vlines(hits + 1, 0, 1, color=PALETTE["blue"], lw=0.6)
    rug.set_yticks([])
    rug.set_xlabel(f"genes ranked by {metric} (1 = top)")
    rug.set_xlim(1, len(curve))
    return to_base64_png(fig)
