"""Model comparison: several registry models on the same CV folds, accuracy beside explainability.

Every candidate is cross-validated on the one set of folds :func:`iml_genomics.models.cv_splits` draws from
the config's seed, through :func:`iml_genomics.models.cross_validate` (preprocessing refit inside each
fold, exactly as ``train``). A candidate with a tuning grid is wrapped in a :class:`GridSearchCV` whose
inner CV runs on the outer training fold only (nested CV), so its outer metrics never saw the rows they
score. For each model the comparison reports the CV metrics (mean and sd), the genes its final fit uses,
how stable its gene ranking is across folds, how well a depth-3 tree reproduces its predictions, and how
much its top genes agree with every other model's. See docs/compare.md.

No file I/O and no click here: the step (:func:`iml_genomics.steps.compare`) and the CLI do that.
"""

from __future__ import annotations

import copy
import difflib
import logging
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from iml_genomics.errors import ConfigError
from iml_genomics.parallel import fixed_blas_threads

log = logging.getLogger("iml_genomics.compare")

# Built-in tuning grids (nested CV), per registry model and task. Small on purpose: every value costs
# inner_folds fits in every outer fold. Tree ensembles are not tuned by default (their defaults are robust
# and a grid over 300-tree forests multiplies the cost); give them a grid in model.tuning to tune them.
_LINEAR_C = [0.01, 0.1, 1.0, 10.0]
_LINEAR_ALPHA = [0.01, 0.05, 0.1, 0.5]
TUNING_GRIDS: dict[str, dict[str, dict[str, list]]] = {
    "l1_logistic": {"classification": {"C": _LINEAR_C}, "regression": {"alpha": _LINEAR_ALPHA}},
    "lasso": {"classification": {"C": _LINEAR_C}, "regression": {"alpha": _LINEAR_ALPHA}},
    "elasticnet_logistic": {"classification": {"C": _LINEAR_C}, "regression": {"alpha": _LINEAR_ALPHA}},
    "elasticnet": {"classification": {"C": _LINEAR_C}, "regression": {"alpha": _LINEAR_ALPHA}},
    "linear_svm": {"classification": {"C": [0.01, 0.1, 1.0]}, "regression": {"C": [0.01, 0.1, 1.0]}},
    "decision_tree": {"classification": {"max_depth": [2, 4, 6]}, "regression": {"max_depth": [2, 4, 6]}},
}

# the metric models are ranked by (higher is better for both)
PRIMARY_METRIC = {"classification": "auroc", "regression": "r2"}
SURROGATE_DEPTH = 3
EXPLAINS = "model"


def check_candidates(candidates, *, key: str = "model.candidates", source: str = "config") -> list[str]:
    """Validate a list of registry model names for a comparison (at least two): see
    :func:`iml_genomics.config.check_candidate_names`, the one check of these names."""
    from iml_genomics.config import check_candidate_names

    return check_candidate_names(candidates, key=key, source=source)


def tuning_grid(name: str, task: str, tuning: dict | None) -> dict[str, list]:
    """The hyperparameter grid of model ``name`` for ``task``: ``model.tuning[name]`` else the built-in one.

    An empty grid means the model is not tuned (its registry defaults, or ``model.params``, are used).
    """
    tuning = tuning or {}
    if name in tuning:
        return {str(k): list(v) for k, v in (tuning[name] or {}).items()}
    return {k: list(v) for k, v in TUNING_GRIDS.get(name, {}).get(task, {}).items()}


def candidate_pipeline(name: str, cfg, task: str, *, n_classes: int | None, sparse_input: bool = False,
                       inner_splitter=None):
    """Preprocessing + model ``name`` as ``train`` builds it; wrapped in nested-CV tuning when it has a grid.

    ``model.params`` apply only to the candidate named in ``model.name``; the others start from their registry
    defaults. A tuned candidate is ``Pipeline([("tuned", GridSearchCV(preprocessing + model))])``: the inner
    CV refits preprocessing on every inner training fold, and ``fit`` ends with the best grid point refit on
    all the rows it was given (``best_estimator_``).

    Returns
    -------
    pipeline : sklearn.pipeline.Pipeline
    grid : dict
        The grid (empty = not tuned).

    Raises
    ------
    ConfigError
        A grid naming a parameter the estimator does not take, or an empty list of values.
    """
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import Pipeline

    from iml_genomics.models import build_pipeline

    local = copy.deepcopy(cfg)
    if name != cfg.model.name:
        local.model.params = {}
    local.model.name = name
    pipeline = build_pipeline(local, task, sparse_input=sparse_input, n_classes=n_classes)
    grid = tuning_grid(name, task, cfg.model.tuning)
    if not grid:
        return pipeline, grid
    accepted = pipeline[-1].get_params()
    for param, values in grid.items():
        if param not in accepted:
            near = difflib.get_close_matches(param, list(accepted), n=1) if len(param) <= 200 else []
            raise ConfigError(f"config: key 'model.tuning.{name}' names '{param[:80]}', not a parameter of "
                              f"{type(pipeline[-1]).__name__}" + (f" (did you mean {near[0]!r}?)" if near else "")
                              + "; fix model.tuning (docs/compare.md).")
        if not values:
            raise ConfigError(f"config: key 'model.tuning.{name}.{param}' is an empty list; give the values to "
                              f"try or drop the key.")
    if task == "regression":
        scoring = "r2"
    else:
        scoring = "roc_auc" if n_classes == 2 else "balanced_accuracy"
    search = GridSearchCV(pipeline, {f"model__{k}": v for k, v in grid.items()}, cv=inner_splitter,
                          scoring=scoring, n_jobs=1, refit=True, error_score="raise")
    return Pipeline([("tuned", search)]), grid


def check_tuning(cfg, task: str = "auto") -> None:
    """Refuse, before any data are read, a ``model.tuning`` grid naming a parameter its estimator does not take.

    With task 'auto' a parameter of either the classifier or the regressor passes (the fit checks again).

    Raises
    ------
    ConfigError
    """
    from iml_genomics.models import build_estimator

    from iml_genomics.errors import shorten

    tasks = ["classification", "regression"] if task == "auto" else [task]
    for name in cfg.model.candidates:
        for param in sorted({p for t in tasks for p in tuning_grid(name, t, cfg.model.tuning)}):
            accepted = {k for t in tasks for k in build_estimator(name, t, seed=0).get_params()}
            if param not in accepted:
                near = difflib.get_close_matches(param, sorted(accepted), n=1) if len(param) <= 200 else []
                raise ConfigError(f"config: key 'model.tuning.{name}' names '{param[:80]}', not a parameter of "
                                  f"the {name} estimator" + (f" (did you mean {near[0]!r}?)" if near else "")
                                  + "; fix model.tuning (docs/compare.md).")
        for t in tasks:
            for param, values in tuning_grid(name, t, cfg.model.tuning).items():
                est = build_estimator(name, t, seed=0)
                if param not in est.get_params():
                    continue  # the other task's parameter (task 'auto')
                for value in values:
                    # scikit-learn checks values only in fit: a wrong one would be a traceback from inside the CV
                    try:
                        est.set_params(**{param: value})
                        getattr(est, "_validate_params", lambda: None)()
                    except (TypeError, ValueError) as exc:
                        first = shorten((str(exc).splitlines() or [""])[0], 200)[1:-1]
                        raise ConfigError(f"config: key 'model.tuning.{name}.{param}' has a value the {name} "
                                          f"estimator rejects ({first}); fix model.tuning (docs/compare.md).") from None


def inner_cv(task: str, *, n_splits: int, seed: int):
    """The inner splitter of nested CV: (stratified) k-fold, shuffled with the config's seed."""
    from sklearn.model_selection import KFold, StratifiedKFold

    cls = KFold if task == "regression" else StratifiedKFold
    return cls(n_splits=n_splits, shuffle=True, random_state=seed)


def unwrap(fitted):
    """The fitted preprocessing + model pipeline inside a (possibly tuned) fitted candidate."""
    last = fitted.steps[-1][1]
    return last.best_estimator_ if hasattr(last, "best_estimator_") else fitted


def chosen_params(fitted) -> tuple[dict | None, float | None]:
    """(best grid point without the ``model__`` prefix, its mean inner-CV score); (None, None) if untuned."""
    last = fitted.steps[-1][1]
    if not hasattr(last, "best_params_"):
        return None, None
    params = {k.split("__", 1)[1]: _plain(v) for k, v in sorted(last.best_params_.items())}
    return params, float(last.best_score_)


def _params_text(params: dict) -> str:
    """``{"C": 0.1, "l1_ratio": 0.5}`` -> ``C=0.1, l1_ratio=0.5`` (a TSV cell without quoting)."""
    return ", ".join(f"{k}={v}" for k, v in params.items())


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def native_importance(pipeline, n_genes: int) -> np.ndarray:
    """|coef| (summed over classes) or ``feature_importances_`` of a fitted pipeline, over the input genes.

    A network (``coefs_``) gets the summed |weights| from each gene into the first hidden layer, the usual
    connection-weight magnitude; a model with none of these (histogram gradient boosting) gets 1 for every
    gene a tree splits on and 0 elsewhere, which is what ``n_genes_used`` and ``used_by_final_model`` read
    (its fold importances are held-out SHAP values, see :func:`importance_kind`). Genes the pipeline's
    filters drop get 0.
    """
    from iml_genomics.explain.permutation import relevant_features
    from iml_genomics.preprocess import used_gene_mask

    est = pipeline.steps[-1][1]
    if hasattr(est, "coef_"):
        imp = np.abs(np.atleast_2d(np.asarray(est.coef_, dtype=np.float64))).sum(axis=0)
    elif hasattr(est, "feature_importances_"):
        imp = np.asarray(est.feature_importances_, dtype=np.float64)
    elif hasattr(est, "coefs_"):
        imp = np.abs(np.asarray(est.coefs_[0], dtype=np.float64)).sum(axis=1)
    else:
        imp = relevant_features(est, int(est.n_features_in_)).astype(np.float64)
    full = np.zeros(n_genes)
    full[used_gene_mask(pipeline, n_genes)] = imp
    return full


def importance_kind(name: str, classes) -> str:
    """'mean_abs_shap_held_out' where an exact SHAP algorithm applies to this model and outcome, else
    'model_importance' (|coef| or the trees' impurity importance)."""
    from iml_genomics.models import MODEL_REGISTRY

    spec = MODEL_REGISTRY[name]
    if spec.shap not in ("tree", "linear"):
        return "model_importance"
    if classes is not None and len(classes) > 2 and not spec.exact_multiclass:
        return "model_importance"
    return "mean_abs_shap_held_out"


def _fold_importance(fitted, X_test, gene_ids, classes, kind, seed, positive_class):
    """One fold's gene importances (input gene order) from its fitted candidate and held-out rows."""
    from iml_genomics.preprocess import used_gene_mask

    model = unwrap(fitted)
    n_genes = len(gene_ids)
    if kind == "model_importance":
        return native_importance(model, n_genes)
    from iml_genomics.explain.shap_values import shap_attributions

    res = shap_attributions(model, X_test, gene_ids=list(gene_ids), classes=classes, chunk_size=max(1, X_test.shape[0]),
                            n_jobs=1, random_state=seed, additivity_tolerance=np.inf,
                            positive_class=positive_class)
    full = np.zeros(n_genes)
    # mean |phi| over the held-out samples, summed over the explained outputs (classes), as explain's stability
    full[used_gene_mask(model, n_genes)] = np.abs(res.values).mean(axis=0).sum(axis=1)
    return full


def surrogate_fidelity(X, model_output, splits, task: str, *, seed: int, depth: int = SURROGATE_DEPTH) -> float:
    """How well a depth-``depth`` decision tree reproduces a model's out-of-fold predictions, held out.

    For each split the tree is fitted on the training rows' model outputs and scored on the test rows:
    the share of test samples whose class the tree predicts as the model did (classification), or the R^2
    of the tree's prediction against the model's (regression); the mean over splits is returned.

    Parameters
    ----------
    X : array or sparse matrix, samples x genes
        Input expression (a tree is unchanged by per-gene monotone transforms such as scaling).
    model_output : array, (n_samples,)
        The model's out-of-fold predicted class (classification) or prediction (regression).
    splits : list of (repeat, fold, train_idx, test_idx)
    task : str
    seed : int
    depth : int

    Returns
    -------
    float
    """
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    from iml_genomics.explain.surrogate import fidelity_score

    out = np.asarray(model_output)
    scores = []
    for _, _, tr, te in splits:
        if task == "regression":
            tree = DecisionTreeRegressor(max_depth=depth, random_state=seed).fit(X[tr], out[tr])
            # R^2 against a constant held-out output is undefined: left out of the mean
            scores.append(fidelity_score(tree.predict(X[te]), out[te], False) if np.ptp(out[te]) > 0 else np.nan)
        else:
            tree = DecisionTreeClassifier(max_depth=depth, random_state=seed).fit(X[tr], out[tr])
            scores.append(fidelity_score(tree.predict(X[te]), out[te], True))
    scores = np.asarray(scores, dtype=float)
    return float(np.nanmean(scores)) if np.isfinite(scores).any() else float("nan")


def top_set(importance: np.ndarray, gene_ids, k: int) -> list[int]:
    """Indices of the k most important genes with importance > 0, best first (ties by gene id)."""
    ids = np.asarray([str(g) for g in gene_ids], dtype=object)
    order = np.lexsort((ids, -importance))
    return [int(j) for j in order[:k] if importance[j] > 0]


@dataclass
class ModelRun:
    """One candidate's cross-validation and the measures derived from it."""

    name: str
    cv: object
    importances: np.ndarray  # (n_splits, n_genes)
    importance: str
    tuned: bool
    tuning: list
    final_importance: np.ndarray
    stability: dict
    fidelity: float


@dataclass
class Comparison:
    """What :func:`compare_models` returns: the tables the step writes and the per-model runs.

    Attributes
    ----------
    comparison : pandas.DataFrame
        ``model_comparison.tsv``: one row per model, ranked by the primary CV metric.
    agreement : pandas.DataFrame
        ``model_agreement.tsv``: one row per pair of models.
    robust_genes : pandas.DataFrame
        ``robust_genes.tsv``: genes in the top k of more than half of the models.
    gene_rankings : pandas.DataFrame
        ``model_gene_rankings.tsv``: each model's genes with non-zero mean importance, ranked.
    tuning : pandas.DataFrame
        ``model_tuning.tsv``: the grid point chosen by the inner CV in every outer fold (and the final fit).
    folds : pandas.DataFrame
        ``cv_folds.tsv``: the outer test fold of every sample in every repeat (shared by all models).
    oof : dict of str to pandas.DataFrame
        Each model's out-of-fold predictions (as ``oof_predictions.tsv``).
    summary : dict
        ``compare_summary.json``.
    runs : dict of str to ModelRun
    """

    comparison: pd.DataFrame
    agreement: pd.DataFrame
    robust_genes: pd.DataFrame
    gene_rankings: pd.DataFrame
    tuning: pd.DataFrame
    folds: pd.DataFrame
    oof: dict
    summary: dict
    runs: dict = field(default_factory=dict)


# the written results must not depend on the BLAS threads of the calling process (parallel.py)
@fixed_blas_threads()
def compare_models(X, y, cfg, *, candidates, task: str, classes, sample_ids, gene_ids,
                   positive_class: str | None = None, backend=None, source: str = "labels") -> Comparison:
    """Cross-validate every candidate on the same folds and compare accuracy, stability, fidelity, agreement.

    Parameters
    ----------
    X : array or sparse matrix, samples x genes
    y : array
        Outcome as :func:`iml_genomics.io.prepare_target` returns it.
    cfg : iml_genomics.config.Config
        seed, cv.n_splits, cv.n_repeats, preprocess, model.params (for ``model.name``), model.tuning,
        model.inner_folds, explain.top_k.
    candidates : list of str
        Registry names (:func:`check_candidates`).
    task : str
    classes : list of str or None
    sample_ids, gene_ids : list of str
    positive_class : str, optional
        Two classes: the class AUROC / AP and SHAP refer to.
    backend : iml_genomics.parallel.Backend, optional
        Runs the folds of every model; results do not depend on it.
    source : str
        The labels' name in error messages.

    Returns
    -------
    Comparison
    """
    from scipy import sparse
    from sklearn.base import clone

    from iml_genomics.explain.stability import ranking_stability
    from iml_genomics.models import MODEL_REGISTRY, cross_validate, cv_splits
    from iml_genomics.parallel import resolve_backend

    candidates = check_candidates(candidates)
    backend = resolve_backend(backend, 1)
    n_classes = len(classes) if classes else None
    seed, top_k = cfg.seed, cfg.explain.top_k
    splits = cv_splits(y, task, n_splits=cfg.cv.n_splits, n_repeats=cfg.cv.n_repeats, seed=seed)
    if any(tuning_grid(name, task, cfg.model.tuning) for name in candidates):
        _check_inner_folds(y, task, splits, cfg.model.inner_folds, source)
    inner = inner_cv(task, n_splits=cfg.model.inner_folds, seed=seed)
    sparse_input = sparse.issparse(X)
    runs: dict[str, ModelRun] = {}
    oof: dict[str, pd.DataFrame] = {}
    for i, name in enumerate(candidates, start=1):
        log.info("compare: model %d/%d, %s", i, len(candidates), name)
        pipeline, grid = candidate_pipeline(name, cfg, task, n_classes=n_classes, sparse_input=sparse_input,
                                            inner_splitter=inner)
        cv = cross_validate(pipeline, X, y, sample_ids=sample_ids, classes=classes, task=task,
                            n_splits=cfg.cv.n_splits, n_repeats=cfg.cv.n_repeats, seed=seed,
                            positive_class=positive_class, backend=backend)
        kind = importance_kind(name, classes)
        imps = np.stack(backend.map(_fold_importance, [(m, X[te], list(gene_ids), classes, kind, seed, positive_class)
                                                       for m, (_, _, _, te) in zip(cv.models, splits)]))
        tuning_rows = []
        for m, (rep, fold, _, _) in zip(cv.models, splits):
            params, score = chosen_params(m)
            if params is not None:
                tuning_rows.append({"model": name, "split": f"r{rep}_f{fold}", "params": _params_text(params),
                                    "inner_score": score})
        final = clone(pipeline).fit(X, y)
        params, score = chosen_params(final)
        if params is not None:
            tuning_rows.append({"model": name, "split": "final", "params": _params_text(params),
                                "inner_score": score})
        _, agreement = ranking_stability(imps, gene_ids=gene_ids, top_k=top_k)
        first = cv.oof[cv.oof["repeat"] == 1].set_index("sample_id").loc[list(sample_ids)]
        first_splits = [s for s in splits if s[0] == 1]
        fidelity = surrogate_fidelity(X, first["y_pred"].to_numpy(), first_splits, task, seed=seed)
        cv.models = []  # the fold models are no longer needed: free them before the next candidate
        runs[name] = ModelRun(name, cv, imps, kind, bool(grid), tuning_rows,
                              native_importance(unwrap(final), len(gene_ids)), agreement, fidelity)
        oof[name] = cv.oof
    primary = PRIMARY_METRIC[task]
    comparison, agreement_table, robust, rankings = _tables(runs, candidates, gene_ids, top_k, primary, MODEL_REGISTRY)
    tuning = pd.DataFrame([r for n in candidates for r in runs[n].tuning],
                          columns=["model", "split", "params", "inner_score"])
    fold_rows = [(sample_ids[i], rep, fold) for rep, fold, _, te in splits for i in te]
    folds = pd.DataFrame(fold_rows, columns=["sample_id", "repeat", "fold"])
    order = {s: i for i, s in enumerate(sample_ids)}
    folds = folds.sort_values(["repeat", "sample_id"], key=lambda c: c.map(order) if c.name == "sample_id" else c,
                              kind="stable").reset_index(drop=True)
    summary = _summary(comparison, robust, candidates, primary, top_k, cfg, task, classes, positive_class)
    return Comparison(comparison, agreement_table, robust, rankings, tuning, folds, oof, summary, runs)


def _check_inner_folds(y, task, splits, inner_folds: int, source: str) -> None:
    """Every class must have at least ``inner_folds`` members in every outer training fold."""
    from iml_genomics.errors import InputDataError

    if task == "regression":
        smallest = min(len(tr) for _, _, tr, _ in splits)
        if smallest < 2 * inner_folds:
            raise InputDataError(f"{source}: an outer training fold has {smallest} samples, too few for "
                                 f"model.inner_folds = {inner_folds}; lower model.inner_folds or cv.n_splits.")
        return
    for _, _, tr, _ in splits:
        values, counts = np.unique(np.asarray(y)[tr], return_counts=True)
        if counts.min() < inner_folds:
            raise InputDataError(f"{source}: class '{values[counts.argmin()]}' has {counts.min()} samples in an outer "
                                 f"training fold, fewer than model.inner_folds = {inner_folds} (nested CV); lower "
                                 f"model.inner_folds or cv.n_splits.")


def _tables(runs, candidates, gene_ids, top_k, primary, registry):
    from scipy.stats import spearmanr

    ids = [str(g) for g in gene_ids]
    mean_imp = {n: runs[n].importances.mean(axis=0) for n in candidates}
    tops = {n: top_set(mean_imp[n], ids, top_k) for n in candidates}
    pairs = []
    for i, a in enumerate(candidates):
        for b in candidates[i + 1:]:
            union = sorted(set(tops[a]) | set(tops[b]))
            jac = len(set(tops[a]) & set(tops[b])) / len(union) if union else float("nan")
            if len(union) >= 3 and np.ptp(mean_imp[a][union]) > 0 and np.ptp(mean_imp[b][union]) > 0:
                rho = float(spearmanr(mean_imp[a][union], mean_imp[b][union]).statistic)
            else:
                rho = float("nan")
            pairs.append({"model_a": a, "model_b": b, "top_k": top_k, "n_union": len(union),
                          "n_shared": len(set(tops[a]) & set(tops[b])), "top_k_jaccard": jac,
                          "spearman_union": rho, "importance_a": runs[a].importance,
                          "importance_b": runs[b].importance, "explains": EXPLAINS})
    agreement = pd.DataFrame(pairs, columns=["model_a", "model_b", "top_k", "n_union", "n_shared", "top_k_jaccard",
                                             "spearman_union", "importance_a", "importance_b", "explains"])

    rows = []
    for n in candidates:
        run = runs[n]
        summary = run.cv.summary.set_index("metric")  # cv_summary.tsv's rows: mean, sd over the folds
        row = {"model": n, "kind": registry[n].kind, "tuned": run.tuned}
        for c in summary.index:
            row[f"{c}_mean"] = float(summary.loc[c, "mean"])
            row[f"{c}_sd"] = float(summary.loc[c, "sd"])
        others = [p["top_k_jaccard"] for p in pairs if n in (p["model_a"], p["model_b"])]
        row.update({
            "n_genes_used": int((run.final_importance > 0).sum()),
            "importance": run.importance,
            "top_k": top_k,
            "jaccard_top_k_mean": run.stability["jaccard_top_k_mean"],
            "kendall_tau_mean": run.stability["kendall_tau_mean"],
            "surrogate_fidelity": run.fidelity,
            "mean_jaccard_top_k_other_models": float(np.nanmean(others)) if others else float("nan"),
            "top_genes": ",".join(ids[j] for j in tops[n][:10]),
            "explains": EXPLAINS,
        })
        rows.append(row)
    comparison = pd.DataFrame(rows)
    key = f"{primary}_mean"
    # best first; NaN (a fold without both classes) last; ties keep the candidate order
    comparison = comparison.sort_values(key, ascending=False, kind="mergesort", na_position="last")
    comparison.insert(0, "rank", np.arange(1, len(comparison) + 1))
    comparison = comparison.reset_index(drop=True)

    n_models = len(candidates)
    counts, members, ranks = {}, {}, {}
    for n in candidates:
        for r, j in enumerate(tops[n], start=1):
            counts[j] = counts.get(j, 0) + 1
            members.setdefault(j, []).append(n)
            ranks.setdefault(j, []).append(r)
    keep = [j for j, c in counts.items() if c > n_models / 2]
    robust = pd.DataFrame({
        "gene_id": [ids[j] for j in keep],
        "n_models": [counts[j] for j in keep],
        "n_candidates": n_models,
        "fraction_models": [counts[j] / n_models for j in keep],
        "in_all_models": [counts[j] == n_models for j in keep],
        "mean_rank_in_top_k": [float(np.mean(ranks[j])) for j in keep],
        "models": [",".join(members[j]) for j in keep],
    }, columns=["gene_id", "n_models", "n_candidates", "fraction_models", "in_all_models", "mean_rank_in_top_k",
                "models"])
    robust = robust.sort_values(["n_models", "mean_rank_in_top_k", "gene_id"], ascending=[False, True, True],
                                kind="mergesort").reset_index(drop=True)
    robust.insert(0, "rank", np.arange(1, len(robust) + 1))
    robust["top_k"] = top_k
    robust["explains"] = EXPLAINS

    parts = []
    for n in candidates:
        imp = mean_imp[n]
        order = [j for j in np.lexsort((np.asarray(ids, dtype=object), -imp)) if imp[j] > 0]
        freq = np.zeros(len(ids))
        for row in runs[n].importances:
            freq[top_set(row, ids, top_k)] += 1
        parts.append(pd.DataFrame({
            "model": n, "rank": np.arange(1, len(order) + 1, dtype=np.int64), "gene_id": [ids[j] for j in order],
            "importance": runs[n].importance, "mean_importance": imp[order],
            "sd": runs[n].importances[:, order].std(axis=0, ddof=1) if len(runs[n].importances) > 1 else np.nan,
            "top_k_frequency": freq[order] / len(runs[n].importances),
            "used_by_final_model": runs[n].final_importance[order] > 0, "explains": EXPLAINS}))
    rankings = pd.concat(parts, ignore_index=True)
    return comparison, agreement, robust, rankings


def _summary(comparison, robust, candidates, primary, top_k, cfg, task, classes, positive_class) -> dict:
    key = f"{primary}_mean"
    rows = comparison.to_dict(orient="records")
    best = rows[0]
    second = rows[1] if len(rows) > 1 else None
    within = None
    if second is not None and all(math.isfinite(v) for v in (best[key], second[key], best[f"{primary}_sd"])):
        within = bool(best[key] - second[key] <= best[f"{primary}_sd"])
    summary = {
        "candidates": list(candidates), "task": task, "classes": classes, "positive_class": positive_class,
        "primary_metric": primary, "n_splits": cfg.cv.n_splits, "n_repeats": cfg.cv.n_repeats,
        "inner_folds": cfg.model.inner_folds, "top_k": top_k, "seed": cfg.seed,
        "ranking": [r["model"] for r in rows],
        "best_model": best["model"], "best_metric_mean": best[key], "best_metric_sd": best[f"{primary}_sd"],
        "runner_up": second["model"] if second else None,
        "runner_up_metric_mean": second[key] if second else None,
        "best_within_one_sd_of_runner_up": within,
        "robust_genes_all_models": robust.loc[robust["in_all_models"], "gene_id"].tolist(),
        "n_robust_genes_majority": int(len(robust)),
        "explains": EXPLAINS,
    }
    summary["text"] = comparison_text(summary)
    return summary


def comparison_text(summary: dict) -> str:
    """The comparison in words, from its numbers: the best model with its metric, a warning when the
    runner-up is within one sd, and the genes in the top k of every model."""
    m = summary["primary_metric"]
    text = (f"{summary['best_model']} has the best cross-validated {m} ({summary['best_metric_mean']:.3f} +/- "
            f"{summary['best_metric_sd']:.3f} sd over {summary['n_splits']}-fold x {summary['n_repeats']} CV, "
            f"{len(summary['candidates'])} models on the same folds)")
    if summary.get("runner_up"):
        gap = summary["best_metric_mean"] - summary["runner_up_metric_mean"]
        text += f"; the runner-up {summary['runner_up']} is {gap:.3f} lower"
        if summary.get("best_within_one_sd_of_runner_up"):
            text += (", within one sd: the data do not single out the best model, so weigh stability, fidelity "
                     "and the number of genes used")
    text += ". "
    genes = summary["robust_genes_all_models"]
    k = summary["top_k"]
    if genes:
        shown = ", ".join(genes[:15]) + (f" and {len(genes) - 15} more" if len(genes) > 15 else "")
        text += (f"{len(genes)} gene(s) are in the top {k} of every model, robust to the choice of model: "
                 f"{shown}.")
    else:
        text += (f"No gene is in the top {k} of every model: the gene list depends on the model chosen.")
    return text
