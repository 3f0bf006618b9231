"""SHAP attributions of a fitted pipeline, exact where the model allows it.

The explained function is the pipeline's final estimator applied to the
*preprocessed* features (the output of the steps before the model), so the
attributions live on the genes that reach the model; they are mapped back to
gene ids with :func:`iml_genomics.preprocess.used_gene_mask`. Three routes:

- tree ensembles (random forest, extra trees, gradient boosting, histogram
  gradient boosting, CART): exact Tree SHAP, path-dependent or interventional, from the compiled engine
  :mod:`iml_genomics.explain.fast_treeshap` (threads over rows; ``explain.tree_shap_engine: fast``, the
  default) or from the ``shap`` library's TreeExplainer (``shap``, and for models the engine does not read);
- linear models (logistic / lasso / elastic net / linear SVM): the closed form
  ``phi_j = b_j (z_j - E[z_j])`` on the margin scale; exact;
- anything else (models the registry declares ``shap="agnostic"``, and
  estimators outside the registry): permutation-sampling Shapley values (the estimator of
  ``shap.PermutationExplainer``: antithetic permutations over an independent
  background masker, written in numpy) with an evaluation budget that grows
  with the number of genes; approximate, and said so.

Samples are explained in equal chunks of at most ``chunk_size`` dispatched with
:meth:`iml_genomics.parallel.Backend.shared_context_pool`; chunk boundaries and the per-chunk
seeds do not depend on ``n_jobs``, so neither do the values. Which route a
model takes is declared in :data:`iml_genomics.models.MODEL_REGISTRY`
(:class:`iml_genomics.models.ModelSpec`), looked up from the estimator's class. Additivity
(``base + sum(phi) == f(x)``) is checked on every chunk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
from scipy import sparse

from iml_genomics.errors import NumericalError
from iml_genomics.parallel import Backend, resolve_backend, spawn_seeds
from iml_genomics.preprocess import used_gene_mask

SHAP_MODES = ("tree_path_dependent", "interventional")
#: ``explain.tree_shap_engine``: the compiled engine of :mod:`iml_genomics.explain.fast_treeshap` (threads over
#: rows, shap's values to float rounding) or shap's own ``TreeExplainer`` (forked processes over chunks).
TREE_SHAP_ENGINES = ("fast", "shap")
#: ``ShapPlan.engine`` / explain_summary.json ``shap_engine`` of each engine actually used.
ENGINE_NAMES = {"fast": "iml_genomics.fast_treeshap", "shap": "shap.TreeExplainer"}



def _spec(estimator):
    from iml_genomics.models import spec_for_estimator

    return spec_for_estimator(estimator)


def model_kind(estimator) -> str:
    """'tree', 'linear' or 'agnostic': the SHAP algorithm the registry declares for ``estimator``'s class.

    Estimators outside the registry (a hand-built pipeline from Python) take the model-agnostic route.
    """
    spec = _spec(estimator)
    return "agnostic" if spec is None else spec.shap


def check_shap_supported(estimator, classes, *, model_name: str | None = None) -> None:
    """Refuse, in one line, a model the registry declares its exact SHAP algorithm cannot explain.

    Raises
    ------
    ConfigError
        A multiclass model whose entry has ``exact_multiclass=False`` (multiclass gradient boosting: shap's
        TreeExplainer handles binary ``GradientBoostingClassifier`` only), or a regressor fitted with one of
        its entry's ``log_link_losses`` (the prediction is exp of what Tree SHAP explains).
    """
    from iml_genomics.errors import ConfigError
    from iml_genomics.models import MODEL_REGISTRY, registry_name_for_estimator

    spec = _spec(estimator)
    if spec is None:
        return
    name = model_name or registry_name_for_estimator(estimator)
    loss = estimator.get_params().get("loss") if classes is None else None
    if isinstance(loss, str) and loss in spec.log_link_losses:
        raise ConfigError(f"explain: model '{name}' ({type(estimator).__name__}) with loss '{loss}' predicts "
                          f"exp(sum of its trees) and Tree SHAP explains the sum, so SHAP values would not add up "
                          f"to the prediction; re-train with model.params loss 'squared_error', or run explain "
                          f"--method permutation.")
    if classes is None or len(classes) <= 2 or spec.exact_multiclass:
        return
    # same algorithm and output scale first: gradient boosting -> hist_gradient_boosting
    alternatives = sorted((n for n, s in MODEL_REGISTRY.items() if s.shap == spec.shap and s.exact_multiclass),
                          key=lambda n: MODEL_REGISTRY[n].log_odds_output != spec.log_odds_output)
    instead = " or ".join(f"'{n}'" for n in alternatives[:2])
    raise ConfigError(f"explain: model '{name}' ({type(estimator).__name__}) with {len(classes)} classes has no exact "
                      f"SHAP (shap's {spec.shap} explainer supports it for two classes only); re-train with "
                      f"model.name {instead} (exact multiclass {spec.shap} SHAP), or run explain --method "
                      f"permutation.")


def split_pipeline(pipeline):
    """(preprocessing callable, final estimator) of a fitted Pipeline (or a bare estimator)."""
    steps = getattr(pipeline, "steps", None)
    if steps is None:
        return None, pipeline
    pre = pipeline[:-1] if len(steps) > 1 else None
    return pre, steps[-1][1]


def preprocess(pre, X) -> np.ndarray:
    """Apply the preprocessing steps and return a dense float64 array."""
    Z = X if pre is None else pre.transform(X)
    if sparse.issparse(Z):
        Z = Z.toarray()
    return np.ascontiguousarray(Z, dtype=np.float64)


def explained_outputs(estimator, classes: list | None, positive_class: str | None = None) -> list[str]:
    """Labels of the outputs explained: positive class (binary), every class, or '' (regression).

    The positive class is ``positive_class`` when it is one of two classes, else the last class.
    """
    if classes is None:
        return [""]
    if len(classes) == 2:
        return [str(classes[_positive_index(classes, positive_class)])]
    return [str(c) for c in classes]


def _positive_index(classes, positive_class) -> int:
    from iml_genomics.io.cohort import positive_index

    return positive_index([str(c) for c in classes], None if positive_class is None else str(positive_class))


def _binary_sign(classes, positive_class) -> float:
    """+1 when a binary model's single margin (log-odds of classes[1]) is the positive class's, else -1.

    Binary scikit-learn models have one margin, the log-odds (or SVM score) of the second sorted class;
    the other class's margin is its negative, so explaining it negates every attribution and the base value.
    """
    if classes is None or len(classes) != 2:
        return 1.0
    return 1.0 if _positive_index(classes, positive_class) == 1 else -1.0


def output_scale(estimator, classes: list | None) -> str:
    """Scale of the explained output: 'log_odds', 'probability' or 'raw'.

    Registry models declare it (``ModelSpec.log_odds_output``): boosting and logistic margins are log-odds /
    softmax logits, a linear SVM's margin is 'raw', forests and trees average probabilities.
    """
    if classes is None:
        return "raw"
    spec = _spec(estimator)
    if spec is not None and spec.log_odds_output:
        return "log_odds"
    if spec is not None and spec.shap == "linear":
        return "raw"  # a margin that is not a log-odds (linear SVM)
    return "probability" if hasattr(estimator, "predict_proba") else "raw"


def model_output(estimator, Z: np.ndarray, classes: list | None, positive_class: str | None = None) -> np.ndarray:
    """The model's output on the explained scale, shape (n, n_outputs); binary: the positive class's."""
    scale = output_scale(estimator, classes)
    if classes is None:
        return np.asarray(estimator.predict(Z), dtype=np.float64).reshape(-1, 1)
    if scale == "probability":
        proba = np.asarray(estimator.predict_proba(Z), dtype=np.float64)
        return proba[:, [_positive_index(classes, positive_class)]] if len(classes) == 2 else proba
    dec = np.asarray(estimator.decision_function(Z), dtype=np.float64)
    return _binary_sign(classes, positive_class) * dec.reshape(-1, 1) if dec.ndim == 1 else dec


def method_name(kind: str, mode: str) -> str:
    """The value written in gene_ranking.tsv's ``method`` column."""
    if kind == "tree":
        return "tree_shap_path_dependent" if mode == "tree_path_dependent" else "tree_shap_interventional"
    if kind == "linear":
        return "linear_shap"
    return "permutation_shap_approximate"


@dataclass
class ShapChunk:
    """Attributions of consecutive samples ``start:stop``.

    Attributes
    ----------
    values : ndarray, (n_chunk, n_genes_used, n_outputs) float64
    base_values : ndarray, (n_chunk, n_outputs)
    model_output : ndarray, (n_chunk, n_outputs)
    max_additivity_error : float
    """

    start: int
    stop: int
    values: np.ndarray
    base_values: np.ndarray
    model_output: np.ndarray
    max_additivity_error: float


@dataclass
class ShapResult:
    """SHAP attributions of a cohort.

    Attributes
    ----------
    values : ndarray, (n_samples, n_genes_used, n_outputs) float64
        ``values[i, j, k]`` is gene ``gene_ids[j]``'s attribution for sample i and output ``outputs[k]``.
    base_values : ndarray, (n_samples, n_outputs)
    model_output : ndarray, (n_samples, n_outputs)
        ``base_values + values.sum(axis=1)`` up to ``max_additivity_error``.
    gene_ids : list of str
        Genes that enter the model (after the pipeline's filter), in input order.
    outputs : list of str
        The ``class`` of each output: the positive class (binary), each class (multiclass), '' (regression).
    scale : str
        'log_odds', 'probability' or 'raw'.
    method : str
        'tree_shap_path_dependent', 'tree_shap_interventional', 'linear_shap' or 'permutation_shap_approximate'.
    exact : bool
        False for the model-agnostic estimator.
    max_additivity_error : float
    approximations : list of str
        Empty when exact.
    """

    values: np.ndarray
    base_values: np.ndarray
    model_output: np.ndarray
    gene_ids: list
    outputs: list
    scale: str
    method: str
    exact: bool
    max_additivity_error: float
    approximations: list = field(default_factory=list)


@dataclass
class ShapPlan:
    """What :func:`iter_shap_chunks` will do; known before any sample is explained."""

    gene_ids: list
    used_mask: np.ndarray
    outputs: list
    scale: str
    method: str
    kind: str
    exact: bool
    approximations: list
    background_note: str
    # False when the model's predict runs OpenMP (ModelSpec.openmp_predict): chunks then go to fresh
    # workers instead of forked ones
    fork: bool = True
    # the Tree SHAP implementation used (ENGINE_NAMES), '' for the linear and agnostic routes, and why the
    # compiled engine was not used when it was asked for
    engine: str = ""
    engine_note: str = ""


@dataclass
class FastTreePayload:
    """What a chunk needs from the compiled engine: the explainer and the sign of a single binary margin."""

    explainer: object
    sign: float = 1.0


# ---------------------------------------------------------------------------
# per-chunk workers (module level: picklable for joblib)
# ---------------------------------------------------------------------------


def _linear_terms(estimator, classes):
    """Coefficients (n_outputs, q) and intercepts (n_outputs,) of the explained margins."""
    coef = np.atleast_2d(np.asarray(estimator.coef_, dtype=np.float64))
    intercept = np.atleast_1d(np.asarray(getattr(estimator, "intercept_", 0.0), dtype=np.float64))
    if intercept.size == 1 and coef.shape[0] > 1:
        intercept = np.repeat(intercept, coef.shape[0])
    return coef, intercept


def _chunk_linear(estimator, Z, classes, mean, positive_class=None):
    # Closed form of exact linear SHAP under feature independence (Lundberg & Lee 2017):
    # phi_j = b_j (z_j - E[z_j]) on the margin scale. The model sees scaled genes z = (x - m) / s; since
    # b_j (z_j - E z_j) = (b_j / s_j)(x_j - E x_j), the attribution of a gene in scaled space equals its
    # attribution in original space (linear SHAP is invariant to affine per-feature transforms).
    coef, intercept = _linear_terms(estimator, classes)
    sign = _binary_sign(classes, positive_class)
    coef, intercept = sign * coef, sign * intercept
    values = (Z - mean)[:, :, None] * coef.T[None, :, :]
    base = np.broadcast_to(intercept + coef @ mean, (Z.shape[0], coef.shape[0])).copy()
    return values, base


def _chunk_tree(explainer, Z, n_outputs, positive_index=-1, sign=1.0):
    raw = np.asarray(explainer.shap_values(Z, check_additivity=False), dtype=np.float64)
    expected = np.atleast_1d(np.asarray(explainer.expected_value, dtype=np.float64))
    if raw.ndim == 2:
        raw = raw[:, :, None]
    if raw.shape[2] != n_outputs:  # binary classifiers with two probability outputs: keep the positive class
        raw, expected = raw[:, :, [positive_index]], expected[[positive_index]]
    elif sign != 1.0:  # one log-odds output (gradient boosting): the other class's is its negative
        raw, expected = sign * raw, sign * expected
    base = np.broadcast_to(expected, (Z.shape[0], n_outputs)).copy()
    return raw, base


def _permutation_shap_row(f, x, background, n_pairs, rng, max_cells):
    """Antithetic permutation-sampling Shapley values of one sample (Strumbelj & Kononenko 2014).

    The same estimator as ``shap.PermutationExplainer`` with an independent masker (each permutation is walked
    forward and backward), written in numpy so worker processes do not pay numba's compilation. Each walk
    telescopes from f(background) to f(x), so efficiency (additivity) holds exactly for any budget.
    """
    q, nb = x.shape[0], background.shape[0]
    ks = np.arange(q + 1)
    block = max(1, int(max_cells // max(1, nb * q)))
    phi = None
    base = None
    for _ in range(n_pairs):
        perm = rng.permutation(q)
        for order in (perm, perm[::-1]):
            rank = np.empty(q, dtype=np.int64)
            rank[order] = np.arange(q)
            v = []
            for s in range(0, q + 1, block):
                kk = ks[s:s + block]
                masks = rank[None, :] < kk[:, None]  # prefix k: the first k genes of the order come from x
                rows = np.where(masks[:, None, :], x[None, None, :], background[None, :, :]).reshape(-1, q)
                out = f(rows)
                v.append(out.reshape(len(kk), nb, -1).mean(axis=1))
            v = np.concatenate(v)  # (q + 1, n_outputs)
            contrib = np.diff(v, axis=0)  # contribution of order[i]
            step = np.empty_like(contrib)
            step[order] = contrib
            phi = step if phi is None else phi + step
            base = v[0]
    return phi / (2 * n_pairs), base


def _chunk_agnostic(estimator, Z, classes, background, n_pairs, seed, positive_class=None):
    rng = np.random.default_rng(seed)

    def f(rows):
        return model_output(estimator, rows, classes, positive_class)

    vals, bases = [], []
    for i in range(Z.shape[0]):
        phi, base = _permutation_shap_row(f, Z[i], background, n_pairs, rng, max_cells=2**24)
        vals.append(phi)
        bases.append(base)
    return np.stack(vals), np.stack(bases)


def _explain_chunk(context, X_chunk, start, stop, seed):
    pre, estimator, classes, kind, payload, positive = context
    Z = preprocess(pre, X_chunk)
    if isinstance(payload, FastTreePayload):
        # the explainer was built for exactly the explained outputs (plan_shap): only a single binary margin
        # (boosting's log-odds of classes[1]) is negated when the other class is the positive one
        values = payload.explainer.shap_values(Z)
        if payload.sign != 1.0:  # (no pass over the chunk's values otherwise)
            values = payload.sign * values
        base = np.broadcast_to(payload.sign * payload.explainer.expected_value, (Z.shape[0], values.shape[2])).copy()
    elif kind == "linear":
        values, base = _chunk_linear(estimator, Z, classes, payload, positive)
    elif kind == "tree":
        values, base = _chunk_tree(payload, Z, len(explained_outputs(estimator, classes)),
                                   _positive_index(classes, positive) if classes else -1,
                                   _binary_sign(classes, positive))
    else:
        background, n_pairs = payload
        values, base = _chunk_agnostic(estimator, Z, classes, background, n_pairs, seed, positive)
    out = model_output(estimator, Z, classes, positive)
    err = float(np.max(np.abs(base + values.sum(axis=1) - out))) if out.size else 0.0
    return ShapChunk(start, stop, values, base, out, err)


# ---------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------


def background_rows(n: int, size: int, random_state: int) -> np.ndarray:
    """Sorted row indices of a seeded background sample (all rows when n <= size)."""
    if n <= size:
        return np.arange(n)
    rng = np.random.default_rng(random_state)
    return np.sort(rng.choice(n, size=size, replace=False))


def plan_shap(pipeline, X, *, gene_ids, classes, mode: str = "tree_path_dependent", background_size: int = 100,
              random_state: int = 0, background=None, agnostic_pairs: int = 5, positive_class: str | None = None,
              values: bool = True, engine: str = "fast"):
    """Decide the explainer and prepare what every chunk needs.

    ``engine`` (tree models): 'fast' uses the compiled :class:`iml_genomics.explain.fast_treeshap.FastTreeExplainer`
    where it reads the model and shap's ``TreeExplainer`` elsewhere (``plan.engine`` says which, ``plan.engine_note``
    why not the fast one); 'shap' always uses shap's.

    ``positive_class`` (two classes) is the class explained (``plan.outputs``); the last class when None.
    ``values=False`` plans without building an explainer (payload None): the genes used and the outputs
    only, for runs that compute no SHAP values (``explain --method permutation``).

    Raises
    ------
    ConfigError
        ``values`` is True and the registry declares the model's exact algorithm cannot explain this many
        classes (:func:`check_shap_supported`), before any work is done.

    Returns
    -------
    plan : ShapPlan
    payload : object
        The fitted explainer (trees), the background mean (linear) or
        (background, n_pairs) (model-agnostic), shipped to every chunk.
    """
    if mode not in SHAP_MODES:
        raise ValueError(f"mode must be one of {SHAP_MODES}; got {mode!r}")
    if engine not in TREE_SHAP_ENGINES:
        raise ValueError(f"engine must be one of {TREE_SHAP_ENGINES}; got {engine!r}")
    pre, estimator = split_pipeline(pipeline)
    gene_ids = [str(g) for g in gene_ids]
    if len(gene_ids) != X.shape[1]:
        raise ValueError(f"gene_ids has {len(gene_ids)} entries but X has {X.shape[1]} columns")
    mask = used_gene_mask(pipeline, X.shape[1]) if pre is not None else np.ones(X.shape[1], dtype=bool)
    used = [g for g, u in zip(gene_ids, mask) if u]
    kind = model_kind(estimator)
    outputs = explained_outputs(estimator, classes, positive_class)
    approximations: list[str] = []
    spec = _spec(estimator)
    fork = kind in ("tree", "linear") and not (spec is not None and spec.openmp_predict)
    if not values:
        return ShapPlan(used, mask, outputs, output_scale(estimator, classes), method_name(kind, mode), kind,
                        kind != "agnostic", approximations, "", fork), None
    check_shap_supported(estimator, classes)

    def background_matrix():
        if background is not None:
            return preprocess(pre, background)
        return preprocess(pre, X[background_rows(X.shape[0], background_size, random_state)])

    engine_used, engine_note = "", ""
    if kind == "tree":
        bg = background_matrix() if mode == "interventional" else None
        payload = None
        if engine == "fast":
            payload, engine_note = _fast_tree_payload(estimator, classes, positive_class, mode, bg)
        if payload is None:
            import shap

            payload = shap.TreeExplainer(estimator, data=bg, feature_perturbation=mode)
        engine_used = ENGINE_NAMES["fast" if isinstance(payload, FastTreePayload) else "shap"]
        if mode == "interventional":
            note = f"interventional: {bg.shape[0]} background samples drawn from the explained cohort"
        else:
            note = "tree_path_dependent: expectations under the trees' own training cover"
    elif kind == "linear":
        scaler = dict(getattr(pipeline, "steps", [])).get("scale")
        if scaler is not None and getattr(scaler, "with_mean", False) and getattr(scaler, "mean_", None) is not None:
            # the model's features are centred on the training data: E[z_j] = 0 exactly
            payload = np.zeros(len(used))
            note = "E[z] = training mean (0 after the fitted StandardScaler)"
        else:
            bg = background_matrix()
            payload = bg.mean(axis=0)
            note = f"E[z] = mean of {bg.shape[0]} background samples drawn from the explained cohort"
    else:
        bg = background_matrix()
        # the budget grows linearly with the genes: each antithetic pair walks 2 (q + 1) coalitions
        n_pairs = int(agnostic_pairs)
        evals = 2 * n_pairs * (len(used) + 1)
        payload = (bg, n_pairs)
        approximations.append(f"model-agnostic permutation SHAP ({type(estimator).__name__}): Monte Carlo estimate "
                              f"from {n_pairs} antithetic permutation pairs ({evals} coalitions per sample) over "
                              f"{bg.shape[0]} background samples; additive exactly, not exact per gene")
        note = f"independent masker over {bg.shape[0]} background samples drawn from the explained cohort"
    plan = ShapPlan(used, mask, outputs, output_scale(estimator, classes), method_name(kind, mode), kind,
                    kind != "agnostic", approximations, note, fork, engine_used, engine_note)
    return plan, payload


def _fast_tree_payload(estimator, classes, positive_class, mode, bg):
    """(FastTreePayload, '') for a model the compiled engine reads, else (None, the reason it does not)."""
    from iml_genomics.explain.fast_treeshap import FastTreeExplainer, UnsupportedModel, model_outputs

    try:
        columns, sign = None, 1.0
        if classes is not None and len(classes) == 2:
            if model_outputs(estimator) == 2:  # class probabilities: keep the positive one's column only
                columns = [_positive_index(classes, positive_class)]
            else:  # one log-odds margin of classes[1]
                sign = _binary_sign(classes, positive_class)
        explainer = FastTreeExplainer(estimator, data=bg, feature_perturbation=mode, output_columns=columns)
    except UnsupportedModel as exc:
        return None, f"{exc}: shap.TreeExplainer used"
    if mode == "interventional" and not explainer.shares_background:
        # no per-leaf background summary (a leaf with more than 63 path genes, or too many distinct masks): only
        # the per-(row, background row) walk runs, exact but slower than shap's (docs/benchmarks.md)
        return None, f"interventional: {explainer.summary_note}: shap.TreeExplainer used (faster there)"
    return FastTreePayload(explainer, sign), ""


def iter_shap_chunks(pipeline, X, *, plan: ShapPlan, payload, classes, chunk_size: int = 256, n_jobs: int | None = 1,
                     random_state: int = 0, additivity_tolerance: float = 1e-4,
                     sample_ids=None, backend: Backend | None = None) -> Iterator[ShapChunk]:
    """Explain ``X`` chunk by chunk, yielding :class:`ShapChunk` in sample order.

    Chunks are computed in waves of ``2 * n_workers`` so memory stays near a
    few chunks whatever the cohort size. Raises :class:`NumericalError` when a
    chunk breaks additivity by more than ``additivity_tolerance``. The chunks run on ``backend``
    (None = ``Backend.local(n_jobs)``; a given backend decides over ``n_jobs``).
    """
    pre, estimator = split_pipeline(pipeline)
    n = X.shape[0]
    backend = resolve_backend(backend, n_jobs)
    if isinstance(payload, FastTreePayload) and not backend.distributed:
        # the compiled engine runs the rows of each chunk in threads (no GIL): no processes to fork or start,
        # so small jobs gain too. The values do not depend on the threads, nor on the chunks.
        payload.explainer.n_threads = backend.workers
        positive = plan.outputs[0] if classes is not None and len(classes) == 2 else None
        context = (pre, estimator, classes, plan.kind, payload, positive)
        edges = np.linspace(0, n, -(-n // chunk_size) + 1).round().astype(int) if n else np.zeros(1, dtype=int)
        for s, e in zip(edges[:-1].tolist(), edges[1:].tolist()):
            chunk = _explain_chunk(context, X[s:e], s, e, 0)
            if chunk.max_additivity_error > additivity_tolerance:
                _raise_additivity(chunk, plan, additivity_tolerance, sample_ids)
            yield chunk
        return
    if isinstance(payload, FastTreePayload):
        payload.explainer.n_threads = 1  # one thread per Dask task: the workers are the parallelism
    # ceil(n / chunk_size) chunks of equal size (within one sample): unequal chunks leave a worker idle at the end
    edges = np.linspace(0, n, -(-n // chunk_size) + 1).round().astype(int) if n else np.zeros(1, dtype=int)
    bounds = list(zip(edges[:-1].tolist(), edges[1:].tolist()))
    seeds = spawn_seeds(random_state, len(bounds))
    wave = max(1, 2 * backend.workers)
    # the model and explainer are shared by every chunk: forked workers inherit them instead of each importing
    # shap and unpickling the forest (see shared_context_pool); each task carries only its own rows. Only tree
    # and linear SHAP of models whose predict uses no OpenMP are forked (plan.fork): each chunk calls the model's
    # predict for the additivity check, and the model-agnostic route calls it for every coalition.
    # binary: plan.outputs holds the one class explained (plan_shap's positive_class)
    positive = plan.outputs[0] if classes is not None and len(classes) == 2 else None
    from iml_genomics.progress import silenced, tracker

    # one bar over all waves, counted in samples; each wave's own loop stays quiet. A tracker, not a phase
    # context, because this generator may be abandoned between chunks (the caller's exception)
    progress, finished = tracker("SHAP values", total=n, unit="samples"), False
    try:
        with backend.shared_context_pool((pre, estimator, classes, plan.kind, payload, positive),
                                         fork=plan.fork) as run:
            for w in range(0, len(bounds), wave):
                tasks = [(X[s:e], s, e, seeds[w + i]) for i, (s, e) in enumerate(bounds[w:w + wave])]
                with silenced():
                    chunks = run(_explain_chunk, tasks)
                for chunk, (s, e) in zip(chunks, bounds[w:w + wave]):
                    if chunk.max_additivity_error > additivity_tolerance:
                        _raise_additivity(chunk, plan, additivity_tolerance, sample_ids)
                    progress.update(e - s)
                    yield chunk
        finished = True
    finally:
        progress.close(finished)


def _raise_additivity(chunk: ShapChunk, plan: ShapPlan, tol: float, sample_ids) -> None:
    total = chunk.base_values + chunk.values.sum(axis=1)
    err = np.abs(total - chunk.model_output)
    i, k = np.unravel_index(int(np.argmax(err)), err.shape)
    row = chunk.start + i
    name = f"sample '{sample_ids[row]}'" if sample_ids is not None else f"sample {row}"
    raise NumericalError(
        f"Additivity check failed in {plan.method}: for {name} (output '{plan.outputs[k]}') the base value plus "
        f"the sum of the SHAP values was {total[i, k]:.9g}, while the model output was "
        f"{chunk.model_output[i, k]:.9g} (|error| {err[i, k]:.3g} > explain.additivity_tolerance {tol:g}). "
        f"This is a bug or a model the explainer cannot represent exactly; report it, or raise the tolerance "
        f"if the difference is float32 rounding.")


def shap_attributions(pipeline, X, *, gene_ids, classes, mode: str = "tree_path_dependent",
                      background_size: int = 100, chunk_size: int = 256, n_jobs: int | None = 1,
                      random_state: int = 0, additivity_tolerance: float = 1e-4, background=None,
                      sample_ids=None, agnostic_pairs: int = 5, positive_class: str | None = None,
                      backend: Backend | None = None, engine: str = "fast") -> ShapResult:
    """SHAP values of a fitted pipeline for every row of ``X``, on the genes that enter the model.

    Parameters
    ----------
    pipeline : sklearn.pipeline.Pipeline or estimator
        Fitted preprocessing + model (as loaded by ``models.load_bundle``).
    X : array or sparse matrix, samples x input genes
        Raw expression in the model's gene order (``training.align_genes``).
    gene_ids : list of str
        Input gene ids (one per column of X).
    classes : list of str or None
        Sorted classes (bundle manifest) or None for regression.
    mode : {'tree_path_dependent', 'interventional'}
        Value function for tree models (ignored by the linear and agnostic routes).
    background_size : int
        Rows of X sampled (seeded) as background for interventional, agnostic and unscaled linear SHAP.
    chunk_size : int
        Samples per parallel task.
    n_jobs : int
        Workers; the values do not depend on it. Used only when ``backend`` is None.
    backend : iml_genomics.parallel.Backend, optional
        Runs the chunks (forked workers, loky processes or Dask tasks); it decides over ``n_jobs``.
    random_state : int
        Seed for the background sample and the agnostic explainer's permutations.
    additivity_tolerance : float
        Maximum allowed ``|base + sum(phi) - f(x)|``.
    background : array, optional
        Explicit background rows (raw expression) instead of a sample of X.
    sample_ids : list of str, optional
        Used in error messages.
    agnostic_pairs : int
        Antithetic permutation pairs per sample for the model-agnostic route
        (2 * agnostic_pairs * (n_genes_used + 1) model evaluations per sample and background row).
    positive_class : str, optional
        Two classes: the class whose output is explained (its attributions are the negatives of the other
        class's on the log-odds / margin scale, and 1 - p on the probability scale); the last class when None.
    engine : {'fast', 'shap'}
        Tree models: the compiled engine where it reads the model (else shap's TreeExplainer), or shap's.

    Returns
    -------
    ShapResult

    Raises
    ------
    NumericalError
        When additivity fails for any sample.
    """
    plan, payload = plan_shap(pipeline, X, gene_ids=gene_ids, classes=classes, mode=mode,
                              background_size=background_size, random_state=random_state, background=background,
                              agnostic_pairs=agnostic_pairs, positive_class=positive_class, engine=engine)
    n, q, k = X.shape[0], len(plan.gene_ids), len(plan.outputs)
    values = np.empty((n, q, k))
    base = np.empty((n, k))
    out = np.empty((n, k))
    max_err = 0.0
    for chunk in iter_shap_chunks(pipeline, X, plan=plan, payload=payload, classes=classes, chunk_size=chunk_size,
                                  n_jobs=n_jobs, backend=backend, random_state=random_state,
                                  additivity_tolerance=additivity_tolerance, sample_ids=sample_ids):
        values[chunk.start:chunk.stop] = chunk.values
        base[chunk.start:chunk.stop] = chunk.base_values
        out[chunk.start:chunk.stop] = chunk.model_output
        max_err = max(max_err, chunk.max_additivity_error)
    return ShapResult(values, base, out, plan.gene_ids, plan.outputs, plan.scale, plan.method, plan.exact, max_err,
                      list(plan.approximations))
