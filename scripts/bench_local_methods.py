"""Time explain.methods lime, anchors and examples on a simulated cohort (defaults of each method).

Usage: python scripts/bench_local_methods.py N_SAMPLES N_GENES [MODEL]   (MODEL: random_forest | l1_logistic)

Five of the genes carry the signal (class b when their sum plus noise is positive); two samples are explained.
Prints the seconds of SHAP (the context), of each method, and each sample's LIME fidelity and anchor.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main(n: str, p: str, model: str = "random_forest") -> None:
    from local_method_helpers import make_context, pipeline

    from iml_genomics.explain import anchors, examples, lime

    rng = np.random.default_rng(0)
    X = rng.normal(size=(int(n), int(p)))
    y = np.where(X[:, :5].sum(axis=1) + rng.normal(size=int(n)) > 0, "b", "a")
    params = {"n_estimators": 100, "max_depth": 6} if model == "random_forest" else {"C": 0.1}
    pipe = pipeline(model, X, y, params=params, n_classes=2)
    t = time.perf_counter()
    ctx = make_context(pipe, X, classes=["a", "b"], y=y, samples=["s0", "s1"])
    print(f"SHAP (context): {time.perf_counter() - t:.1f} s")
    for method in (lime, anchors, examples):
        t = time.perf_counter()
        out = method.run(ctx)
        print(f"{method.__name__.rsplit('.', 1)[1]}: {time.perf_counter() - t:.1f} s")
        for sid, res in out.summary.get("samples", {}).items():
            print(f"  {sid}: " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                          for k, v in res.items()))


if __name__ == "__main__":
    main(*sys.argv[1:])
