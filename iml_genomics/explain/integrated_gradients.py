"""Integrated gradients (Sundararajan, Taly and Yan 2017) of the registry's neural network (``model.name: mlp``).

For a sample ``z`` and a baseline ``z0`` (both model inputs), gene j's attribution is

    IG_j(z) = (z_j - z0_j) * integral_0^1 d f(z0 + a (z - z0)) / d z_j  da,

with ``f`` the explained output: the positive class's log-odds (two classes: the network's output unit before its
logistic link, negated when the positive class is the first one), every class's logit (more classes: the output
units before the softmax) or the regression output (with ``loss: poisson``, its logarithm: the output unit before
the exp). The gradients are exact: they are back-propagated by hand
through ``coefs_`` / ``intercepts_`` (relu, tanh, logistic and identity hidden units); only the integral over ``a``
is approximated, by a quadrature of ``explain.integrated_gradients_steps`` nodes (Gauss-Legendre or the trapezoid
rule). Completeness (``sum_j IG_j = f(z) - f(z0)``) holds for the exact integral, so the quadrature error is
measured on every sample and explain fails when it exceeds ``explain.integrated_gradients_tolerance``
(relative to ``max(1, |f(z) - f(z0)|)``), as SHAP's additivity check does.

Attributions are on the model's inputs: the genes that pass the pipeline's filter, after its transform and
scaler. A per-gene affine map (the StandardScaler) maps the straight path in expression space onto the straight
path in scaled space and scales gradient and displacement inversely, so with ``preprocess.transform: none`` these
are also the integrated gradients of the raw expression; with a log transform they are those of log expression.

Samples are processed in fixed chunks of ``explain.chunk_size`` on the step's backend: the values do not depend on
``--jobs``. No file I/O here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from iml_genomics.errors import NumericalError

IG_COLUMNS = ["gene_id", "rank", "mean_abs_ig", "mean_ig", "shap_rank", "mean_abs_shap", "explains"]
IG_LOCAL_COLUMNS = ["sample_id", "class", "gene_id", "rank", "ig", "input_value", "baseline_value", "shap",
                    "explains"]
BASELINES = ("mean", "zeros", "median")
RULES = ("gauss_legendre", "riemann_trapezoid")

# hidden-unit activations of scikit-learn's networks: value and derivative as a function of the pre-activation
_ACTIVATIONS = {
    "identity": (lambda h: h, lambda h, a: np.ones_like(h)),
    "relu": (lambda h: np.maximum(h, 0.0), lambda h, a: (h > 0).astype(h.dtype)),
    "tanh": (np.tanh, lambda h, a: 1.0 - a * a),
    "logistic": (lambda h: 0.5 * (1.0 + np.tanh(0.5 * h)), lambda h, a: a * (1.0 - a)),
}


def _weights(estimator):
    """(coefs, intercepts, activation) of a fitted network as float64 arrays; ValueError when unsupported."""
    activation = getattr(estimator, "activation", None)
    if activation not in _ACTIVATIONS:
        raise ValueError(f"integrated gradients: unsupported hidden activation {activation!r}")
    coefs = [np.asarray(W, dtype=np.float64) for W in estimator.coefs_]
    intercepts = [np.asarray(b, dtype=np.float64) for b in estimator.intercepts_]
    return coefs, intercepts, activation


def output_sign(classes, positive_class) -> np.ndarray | float:
    """+1 or -1: two classes, the network's single output is the log-odds of ``classes[1]``."""
    if classes is None or len(classes) != 2:
        return 1.0
    from iml_genomics.io.cohort import positive_index

    return 1.0 if positive_index([str(c) for c in classes], positive_class) == 1 else -1.0


def network_outputs(net, Z: np.ndarray, sign=1.0) -> np.ndarray:
    """The explained outputs (n, n_outputs): the output layer's pre-activation (log-odds / logits / prediction).

    Parameters
    ----------
    net : tuple
        ``(coefs, intercepts, activation)`` from a fitted network.
    Z : ndarray, (n, q)
        Model inputs.
    sign : float
        -1 negates a binary network's log-odds (the first class explained).
    """
    coefs, intercepts, activation = net
    act = _ACTIVATIONS[activation][0]
    a = Z
    for W, b in zip(coefs[:-1], intercepts[:-1]):
        a = act(a @ W + b)
    return sign * (a @ coefs[-1] + intercepts[-1])


def network_gradients(net, Z: np.ndarray, sign=1.0) -> np.ndarray:
    """Exact gradients (n, n_outputs, q) of :func:`network_outputs` with respect to the inputs, by back-propagation.

    relu's derivative at exactly 0 is taken as 0 (scikit-learn's convention); elsewhere every activation is
    differentiable.
    """
    coefs, intercepts, activation = net
    act, dact = _ACTIVATIONS[activation]
    pre, post = [], []
    a = Z
    for W, b in zip(coefs[:-1], intercepts[:-1]):
        h = a @ W + b
        a = act(h)
        pre.append(h)
        post.append(a)
    # delta[i, k, u]: d output_k / d (pre-activation u of the current layer), for row i
    n, n_out = Z.shape[0], coefs[-1].shape[1]
    delta = np.broadcast_to(sign * coefs[-1].T, (n, n_out, coefs[-1].shape[0]))
    for layer in range(len(coefs) - 2, -1, -1):
        delta = delta * dact(pre[layer], post[layer])[:, None, :]
        delta = delta @ coefs[layer].T
    return np.array(delta, dtype=np.float64)


def quadrature(steps: int, rule: str) -> tuple[np.ndarray, np.ndarray]:
    """Nodes in [0, 1] and weights (summing to 1) of the path integral."""
    if rule == "gauss_legendre":
        x, w = np.polynomial.legendre.leggauss(int(steps))
        return 0.5 * (x + 1.0), 0.5 * w
    if rule == "riemann_trapezoid":
        alphas = np.linspace(0.0, 1.0, int(steps))
        w = np.full(int(steps), 1.0 / (steps - 1))
        w[[0, -1]] *= 0.5
        return alphas, w
    raise ValueError(f"rule must be one of {RULES}; got {rule!r}")


def integrated_gradients(net, Z: np.ndarray, baseline: np.ndarray, *, steps: int = 64,
                         rule: str = "gauss_legendre", sign=1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integrated gradients of every row of ``Z`` against one ``baseline``.

    Parameters
    ----------
    net : tuple
        ``(coefs, intercepts, activation)`` of a fitted network.
    Z : ndarray, (n, q)
        Model inputs.
    baseline : ndarray, (q,)
    steps : int
        Quadrature nodes on the path.
    rule : {'gauss_legendre', 'riemann_trapezoid'}
    sign : float
        -1 explains the first of two classes.

    Returns
    -------
    attributions : ndarray, (n, q, n_outputs)
    output : ndarray, (n, n_outputs)
        f(z).
    baseline_output : ndarray, (n_outputs,)
        f(baseline).
    """
    coefs = net[0]
    alphas, weights = quadrature(steps, rule)
    n, q = Z.shape
    n_out = coefs[-1].shape[1]
    out = np.empty((n, q, n_out))
    first = coefs[0]
    # the first layer is linear in the input: average d output / d (first hidden pre-activation) over the path
    # and multiply by W1 once, instead of forming a (steps, outputs, genes) gradient per sample
    hidden_net = (coefs[1:], net[1][1:], net[2])
    h0 = baseline @ first + net[1][0]
    for i in range(n):
        d = Z[i] - baseline
        path_h = h0[None, :] + alphas[:, None] * (d @ first)[None, :]  # (steps, hidden) pre-activations
        mean_delta = np.tensordot(weights, _hidden_deltas(hidden_net, path_h, sign), axes=(0, 0))  # (out, hidden)
        out[i] = (d[:, None] * (mean_delta @ first.T).T)
    f_x = network_outputs(net, Z, sign)
    f_b = network_outputs(net, baseline[None, :], sign)[0]
    return out, f_x, f_b


def _hidden_deltas(hidden_net, H: np.ndarray, sign) -> np.ndarray:
    """d output / d (first-layer pre-activation H), (m, n_outputs, hidden), through the remaining layers."""
    act, dact = _ACTIVATIONS[hidden_net[2]]
    a = act(H)
    # gradients of the outputs with respect to the first hidden layer's activations (the input of the remaining
    # layers), then through that layer's activation
    return network_gradients(hidden_net, a, sign) * dact(H, a)[:, None, :]


def _integrated_gradients_chunk(net, pre, X_chunk, baseline, steps, rule, sign, keep_rows):
    """IG of one chunk, reduced to what the outputs need, so memory does not grow with samples x genes.

    Returns (sum over rows of |IG| summed over outputs (q,), sum over rows of IG averaged over outputs (q,),
    per-row sums of IG (m, k), f(x) (m, k), f(baseline) (k,), {row: (IG (q, k), model inputs (q,))} for the
    chunk's rows ``keep_rows`` (local explanations)).
    """
    from iml_genomics.explain.shap_values import preprocess

    Z = preprocess(pre, X_chunk)
    attr, f_x, f_b = integrated_gradients(net, Z, baseline, steps=steps, rule=rule, sign=sign)
    return (np.abs(attr).sum(axis=2).sum(axis=0), attr.mean(axis=2).sum(axis=0), attr.sum(axis=1), f_x, f_b,
            {r: (attr[r], Z[r]) for r in keep_rows})


def completeness_gaps(sums: np.ndarray, f_x: np.ndarray, f_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(|sum(IG) - (f(x) - f(b))|, that gap / max(1, |f(x) - f(b)|)), both (n, n_outputs).

    ``sums`` is each sample's sum of IG over the genes, (n, n_outputs).
    """
    delta = f_x - f_b[None, :]
    gap = np.abs(sums - delta)
    return gap, gap / np.maximum(1.0, np.abs(delta))


def check_completeness(sums, f_x, f_b, *, tolerance: float, sample_ids, outputs, steps: int, rule: str) -> float:
    """Largest relative completeness gap; NumericalError naming the worst sample when it exceeds ``tolerance``.

    ``sums`` (n, n_outputs) is each sample's sum of IG over the genes (:func:`completeness_gaps`).
    """
    if sums.shape[0] == 0:
        return 0.0
    gap, rel = completeness_gaps(sums, f_x, f_b)
    i, k = np.unravel_index(int(np.argmax(rel)), rel.shape)
    worst = float(rel[i, k])
    if worst > tolerance:
        raise NumericalError(
            f"integrated gradients completeness check failed: for sample '{sample_ids[i]}' (output "
            f"'{outputs[k]}') the attributions sum to {sums[i, k]:.9g} but f(x) - f(baseline) is "
            f"{f_x[i, k] - f_b[k]:.9g} (gap {gap[i, k]:.3g}, relative {worst:.3g} > "
            f"explain.integrated_gradients_tolerance {tolerance:g}) with {steps} {rule} steps; raise "
            f"explain.integrated_gradients_steps.")
    return worst


def _baseline(kind: str, pipeline, pre, X, backend_chunks) -> tuple[np.ndarray, str]:
    """The baseline in model-input space and a sentence saying what it is."""
    from iml_genomics.explain.shap_values import preprocess

    steps = dict(getattr(pipeline, "steps", []))
    scaler = steps.get("scale")
    q = pipeline[-1].n_features_in_
    if kind == "mean":
        if scaler is not None and getattr(scaler, "with_mean", False):
            return np.zeros(q), "training mean of the model inputs (0 after the fitted StandardScaler)"
        if scaler is not None and getattr(scaler, "mean_", None) is not None:
            # a scale-only scaler (sparse input) still records its training mean: divided by the scale, it is
            # the training mean of what the model sees
            sd = getattr(scaler, "scale_", None)
            mean = np.asarray(scaler.mean_, dtype=np.float64)
            return (mean / np.asarray(sd, dtype=np.float64) if sd is not None else mean,
                    "training mean of the model inputs (the fitted scale-only StandardScaler's mean / scale)")
        mean = np.zeros(q)
        for s, e in backend_chunks:
            mean += preprocess(pre, X[s:e]).sum(axis=0)
        return mean / max(X.shape[0], 1), (f"mean of the model inputs over the {X.shape[0]} explained samples "
                                            f"(the pipeline keeps no training mean without a centring scaler)")
    if kind == "zeros":
        if scaler is None:
            return np.zeros(q), "zero input (no expression after the transform)"
        # zero (transformed) expression of every gene that reaches the model, through the scaler only
        mean = getattr(scaler, "mean_", None)
        z = -np.asarray(mean, dtype=np.float64) if mean is not None and scaler.with_mean else np.zeros(q)
        sd = getattr(scaler, "scale_", None)
        if sd is not None:
            z = z / np.asarray(sd, dtype=np.float64)
        return z, "zero expression of every gene (after the transform), standardized by the fitted scaler"
    Z = preprocess(pre, X)
    return np.median(Z, axis=0), f"per-gene median of the model inputs over the {X.shape[0]} explained samples"


def _scale(estimator, classes) -> str:
    """Scale of the explained output: 'log_odds' (two classes), 'logit' (more), 'raw' or 'log_prediction'
    (a regression network with an exp output, loss 'poisson': its output layer before the exp)."""
    if classes is not None:
        return "log_odds" if len(classes) == 2 else "logit"
    return "log_prediction" if getattr(estimator, "out_activation_", "identity") == "exp" else "raw"


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    from scipy.stats import spearmanr

    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return None
    return float(spearmanr(a[ok], b[ok]).statistic)


def run(ctx):
    """Integrated gradients of an ``mlp`` model on every sample of the cohort.

    Returns
    -------
    iml_genomics.explain.methods.MethodOutput
        ``integrated_gradients.tsv`` (one row per gene reaching the model, best first: mean |IG|, mean IG over
        samples and classes, and SHAP's rank and mean |SHAP| on the same model), ``integrated_gradients_local.tsv``
        (every gene of each ``explain.samples`` sample) and a summary with the baseline, the quadrature, the
        largest completeness gap and the agreement with SHAP. Other model kinds: skipped with one warning.

    Raises
    ------
    NumericalError
        The completeness check fails on some sample.
    """
    from iml_genomics.explain.methods import MethodOutput
    from iml_genomics.explain.shap_values import explained_outputs, split_pipeline
    from iml_genomics.models import registry_name_for_estimator, spec_for_estimator
    from iml_genomics.preprocess import used_gene_mask

    cfg = ctx.explain_cfg
    pre, estimator = split_pipeline(ctx.pipeline)
    spec = spec_for_estimator(estimator)
    if spec is None or spec.kind != "neural":
        name = registry_name_for_estimator(estimator) or type(estimator).__name__
        reason = (f"model '{name}' is not a neural network; integrated gradients need a differentiable model "
                  f"(train with model.name: mlp)")
        return MethodOutput(summary={"skipped": reason}, warnings=[f"integrated_gradients skipped: {reason}."])
    net = _weights(estimator)
    classes = ctx.classes
    outputs = explained_outputs(estimator, classes, ctx.positive_class)
    sign = output_sign(classes, outputs[0] if classes is not None and len(classes) == 2 else None)
    n = ctx.X.shape[0]
    size = int(cfg.chunk_size)
    edges = np.linspace(0, n, -(-n // size) + 1).round().astype(int) if n else np.zeros(1, dtype=int)
    bounds = list(zip(edges[:-1].tolist(), edges[1:].tolist()))
    baseline, baseline_note = _baseline(cfg.integrated_gradients_baseline, ctx.pipeline, pre, ctx.X, bounds)
    steps, rule = int(cfg.integrated_gradients_steps), cfg.integrated_gradients_rule
    rows = ctx.sample_rows()
    # fixed chunks (explain.chunk_size), whatever --jobs: the same sums in the same order
    tasks = [(net, pre, ctx.X[s:e], baseline, steps, rule, sign, [r - s for r in rows if s <= r < e])
             for s, e in bounds]
    results = ctx.backend.map(_integrated_gradients_chunk, tasks)
    q, k = len(baseline), len(outputs)
    sums = np.concatenate([r[2] for r in results]) if results else np.empty((0, k))
    f_x = np.concatenate([r[3] for r in results]) if results else np.empty((0, k))
    f_b = network_outputs(net, baseline[None, :], sign)[0]
    worst = check_completeness(sums, f_x, f_b, tolerance=cfg.integrated_gradients_tolerance,
                               sample_ids=ctx.sample_ids, outputs=outputs, steps=steps, rule=rule)
    gap, _ = completeness_gaps(sums, f_x, f_b)

    mask = used_gene_mask(ctx.pipeline, ctx.X.shape[1]) if pre is not None else np.ones(ctx.X.shape[1], bool)
    genes = [g for g, u in zip(ctx.gene_ids, mask) if u]
    # as SHAP's ranking: |IG| summed over the explained outputs (a gene's total effect), IG averaged over them
    mean_abs = sum(r[0] for r in results) / n if n else np.zeros(q)
    mean_sgn = sum(r[1] for r in results) / n if n else np.zeros(q)
    shap_by_gene = ctx.ranking.set_index(ctx.ranking["gene_id"].astype(str))
    mean_abs_shap = shap_by_gene["mean_abs_shap"].reindex(genes).to_numpy(dtype=np.float64)
    shap_ran = bool(np.isfinite(mean_abs_shap).any())
    shap_rank = shap_by_gene["rank"].reindex(genes).to_numpy(dtype=np.float64) if shap_ran else np.full(q, np.nan)
    table = pd.DataFrame({"gene_id": genes, "mean_abs_ig": mean_abs, "mean_ig": mean_sgn,
                          "shap_rank": pd.array(np.where(np.isfinite(shap_rank), shap_rank, np.nan), dtype="Int64")
                          if shap_ran else pd.array([pd.NA] * q, dtype="Int64"),
                          "mean_abs_shap": mean_abs_shap})
    order = np.lexsort((np.asarray(genes, dtype=object), -mean_abs))
    table = table.iloc[order].reset_index(drop=True)
    table["rank"] = np.arange(1, q + 1)
    table["explains"] = "model"
    table = table[IG_COLUMNS]

    top_k = min(int(cfg.top_k), q)
    summary = {
        "model": registry_name_for_estimator(estimator), "activation": net[2],
        "scale": _scale(estimator, classes),
        "outputs": outputs, "baseline": cfg.integrated_gradients_baseline, "baseline_description": baseline_note,
        "baseline_output": [float(v) for v in f_b],
        "steps": steps, "rule": rule, "n_samples": int(n), "n_genes": int(q),
        "tolerance": float(cfg.integrated_gradients_tolerance),
        "max_completeness_gap": float(gap.max()) if gap.size else 0.0,
        "max_relative_completeness_gap": worst,
        "attributions_on": "model inputs (genes after the pipeline's filter, transform and scaler)",
    }
    if shap_ran:
        ig_top = set(table["gene_id"].head(top_k))
        shap_top = set(shap_by_gene.loc[shap_by_gene["used"].astype(bool)].sort_values("rank")["gene_id"]
                       .astype(str).head(top_k))
        summary["vs_shap"] = {
            "spearman": _spearman(table["mean_abs_ig"].to_numpy(), table["mean_abs_shap"].to_numpy()),
            "top_k": top_k, "top_k_overlap": len(ig_top & shap_top) / top_k if top_k else None,
            "shap_scale": str(ctx.ranking["scale"].iloc[0]) if len(ctx.ranking) else None,
        }
    else:
        summary["vs_shap"] = {"skipped": "SHAP did not run (explain --method permutation)"}

    tables = {"integrated_gradients.tsv": table}
    if rows:
        local_rows = {s + i: v for (s, _), res in zip(bounds, results) for i, v in res[5].items()}
        pos_shap = {g: j for j, g in enumerate(ctx.shap_genes)}
        parts = []
        for r in rows:
            sid = ctx.sample_ids[r]
            attr_r, zr = local_rows[r]
            shap_vec = ctx.local_shap.get(sid)
            for kk, out_name in enumerate(outputs):
                ig = attr_r[:, kk]
                rank = np.empty(q, dtype=np.int64)
                rank[np.lexsort((np.asarray(genes, dtype=object), -np.abs(ig)))] = np.arange(1, q + 1)
                # local SHAP exists for the first explained output only
                shap_col = (np.array([shap_vec[pos_shap[g]] if g in pos_shap else np.nan for g in genes])
                            if shap_vec is not None and kk == 0 else np.full(q, np.nan))
                part = pd.DataFrame({"sample_id": sid, "class": out_name, "gene_id": genes, "rank": rank, "ig": ig,
                                     "input_value": zr, "baseline_value": baseline, "shap": shap_col})
                parts.append(part.sort_values("rank", kind="stable"))
        local = pd.concat(parts, ignore_index=True)
        local["explains"] = "model"
        tables["integrated_gradients_local.tsv"] = local[IG_LOCAL_COLUMNS]
        summary["local"] = [{"sample_id": ctx.sample_ids[r], "output": outputs[kk],
                             "f_x": float(f_x[r, kk]), "sum_ig": float(sums[r, kk]),
                             "completeness_gap": float(gap[r, kk])} for r in rows for kk in range(k)]
    return MethodOutput(tables=tables, summary=summary)

