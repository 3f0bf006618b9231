"""How often e-BH selects anything, by the per-draw knockoff level a = select.derandomize_fdr.

Backs the rule in docs/config.md (derandomize_fdr above fdr is refused). W
statistics are simulated directly (no knockoffs): p genes, k signals with
mean ``mu``, draws sharing part of their noise as real knockoff draws do;
each draw gives knockoff e-values at level a (select/threshold.py) and e-BH
at q combines them, as ``select --draws`` does.

    python benchmarks/derandomize_level.py
"""

from __future__ import annotations

import numpy as np

from iml_genomics.select.threshold import ebh, knockoff_evalues


def selection_rate(level: float, q: float, mu: float, *, p: int = 500, k: int = 30, draws: int = 10,
                   reps: int = 100, seed: int = 1) -> tuple[float, float]:
    """(share of replicates where e-BH selects >= 1 gene, mean number selected)."""
    rng = np.random.default_rng(seed)
    sizes = []
    for _ in range(reps):
        base = np.zeros(p)
        base[:k] = mu
        shared = rng.normal(size=p)
        W = [base + 0.6 * shared + 0.8 * rng.normal(size=p) for _ in range(draws)]
        e = np.mean([knockoff_evalues(w, level)[0] for w in W], axis=0)
        sizes.append(int(ebh(e, q)[0].sum()))
    sizes = np.asarray(sizes)
    return float(np.mean(sizes > 0)), float(sizes.mean())


def main() -> None:
    q = 0.1
    print("| signal mu | a = q/2 | a = 3q/4 | a = q | a = 1.5q |")
    print("|---|---|---|---|---|")
    for mu in (4.0, 5.0, 8.0):
        cells = []
        for level in (q / 2, 0.75 * q, q, 1.5 * q):
            share, mean = selection_rate(level, q, mu)
            cells.append(f"{100 * share:.0f} % ({mean:.1f})")
        print(f"| {mu:g} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
