"""Permutation importance on held-out rows, batched into large prediction calls.

``sklearn.inspection.permutation_importance`` makes one prediction call per gene
and repeat; at genome scale that is p x R small calls, each paying the model's
fixed per-call cost (for a forest: one Python-level call per tree). Here:

- preprocessing is applied once: the pipeline's steps act column by column
  (except the per-sample CPM scaling), so permuting a raw gene's values across
  rows is the same as permuting its preprocessed column;
- genes the fitted model does not depend on (removed by the filter, a zero
  coefficient, never split on) have an importance of exactly 0 and are not
  evaluated;
- the R repeats of a gene are stacked into one matrix and scored in one call;
- for forests (registry entries declared ``forest=True``), only the trees
  that split on the permuted gene are re-evaluated (the other trees'
  predictions cannot change), which is where most of the speed-up comes from.

Which shortcut applies is looked up in :data:`iml_genomics.models.MODEL_REGISTRY`
from the estimator's class, never from its name.

Every gene's permutations come from its own seed (``[random_state, gene]``),
so the result does not depend on how genes are batched or on ``n_jobs``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import sparse

from iml_genomics.parallel import Backend, resolve_backend, spawn_seeds

SCORINGS = ("auto", "log_loss", "auroc", "accuracy", "r2")


def resolve_scoring(scoring: str, classes) -> str:
    """'auto' -> 'log_loss' for classification, 'r2' for regression."""
    if scoring == "auto":
        return "r2" if classes is None else "log_loss"
    if scoring not in SCORINGS:
        raise ValueError(f"scoring must be one of {SCORINGS}; got {scoring!r}")
    if (classes is None) != (scoring == "r2"):
        from iml_genomics.errors import ConfigError

        task = "regression" if classes is None else "classification"
        valid = "r2" if classes is None else "log_loss, auroc or accuracy"
        raise ConfigError(f"config: explain.permutation_scoring '{scoring}' does not apply to a {task} model; "
                          f"use auto or {valid}.")
    return scoring


def _score_blocks(pred: np.ndarray, y_idx: np.ndarray, scoring: str) -> np.ndarray:
    """Score B stacked prediction blocks at once (higher is better).

    pred : (B, m, K) class probabilities, or (B, m) regression predictions.
    y_idx : (m,) class indices, or (m,) float targets.
    """
    if scoring == "r2":
        ss_tot = np.sum((y_idx - y_idx.mean()) ** 2)
        return 1.0 - np.sum((pred - y_idx[None, :]) ** 2, axis=1) / ss_tot
    m = y_idx.shape[0]
    if scoring == "log_loss":
        p = pred[:, np.arange(m), y_idx] / pred.sum(axis=2)  # sklearn renormalises rows before the loss
        return np.mean(np.log(np.clip(p, 1e-15, 1.0)), axis=1)  # = -log_loss
    if scoring == "accuracy":
        return np.mean(pred.argmax(axis=2) == y_idx[None, :], axis=1)
    # AUROC: binary on the positive class, macro one-vs-rest otherwise (Mann-Whitney U via ranks)
    from scipy.stats import rankdata

    k = pred.shape[2]
    cols = [k - 1] if k == 2 else range(k)
    out = np.zeros(pred.shape[0])
    for c in cols:
        pos = y_idx == c
        n_pos, n_neg = pos.sum(), (~pos).sum()
        ranks = rankdata(pred[:, :, c], axis=1)
        out += (ranks[:, pos].sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return out / len(cols)


def _predict(estimator, Z, classes):
    if classes is None:
        return np.asarray(estimator.predict(Z), dtype=np.float64)
    from iml_genomics.models import predict_scores

    return predict_scores(estimator, Z, classes)


def _forest_kind(estimator) -> str | None:
    """'classifier' / 'regressor' when the registry declares the model a plain average of its trees, else None."""
    from sklearn.base import is_classifier

    from iml_genomics.models import spec_for_estimator

    spec = spec_for_estimator(estimator)
    if spec is None or not spec.forest:
        return None
    return "classifier" if is_classifier(estimator) else "regressor"


def _tree_output(tree, Z32, kind):
    if kind == "classifier":
        return tree.predict_proba(Z32, check_input=False)
    return tree.predict(Z32, check_input=False)


def _tree_split_features(estimator, n_features: int) -> np.ndarray:
    """Mask of the features any tree of a tree model splits on.

    Covers the three layouts of the registry's tree models: one ``tree_`` (CART), ``estimators_`` holding
    trees (forests; an array of stage trees for gradient boosting), and ``_predictors`` (histogram gradient
    boosting: per iteration, one predictor per class, each a node array with ``feature_idx`` and ``is_leaf``).
    """
    used = np.zeros(n_features, dtype=bool)
    trees = [estimator.tree_] if hasattr(estimator, "tree_") else []
    trees += [t.tree_ for t in np.ravel(np.asarray(getattr(estimator, "estimators_", []), dtype=object))]
    for t in trees:
        f = t.feature
        used[f[f >= 0]] = True
    for stage in getattr(estimator, "_predictors", []):
        for predictor in stage:
            nodes = predictor.nodes
            used[nodes["feature_idx"][nodes["is_leaf"] == 0]] = True
    return used


def relevant_features(estimator, n_features: int) -> np.ndarray:
    """Mask of the model's input features its predictions can depend on.

    Tree models (as the registry declares them): the features some tree splits on; linear models: nonzero
    coefficients; anything else: every feature (an estimator outside the registry with a ``coef_`` is read
    as linear).
    """
    from iml_genomics.models import spec_for_estimator

    spec = spec_for_estimator(estimator)
    if spec is not None and spec.kind == "tree":
        return _tree_split_features(estimator, n_features)
    coef = getattr(estimator, "coef_", None)
    if coef is not None and (spec is None or spec.kind == "linear"):
        return np.any(np.atleast_2d(np.asarray(coef)) != 0, axis=0)
    return np.ones(n_features, dtype=bool)


def _gene_perms(seed: int, gene: int, m: int, n_repeats: int) -> np.ndarray:
    rng = np.random.default_rng([seed, gene])
    return np.stack([rng.permutation(m) for _ in range(n_repeats)])


def _importance_batch(estimator, Z, y_idx, classes, genes, n_repeats, seed, scoring, base_score, forest):
    """Importances (len(genes), n_repeats) of the model-space columns ``genes``."""
    m = Z.shape[0]
    out = np.zeros((len(genes), n_repeats))
    if forest is not None:
        kind, trees_of = forest
        trees = estimator.estimators_
        Z32 = np.ascontiguousarray(Z, dtype=np.float32)
        per_tree = {}
        total = None
        # the forest's prediction is the mean of its trees': cache each tree's output on the
        # unpermuted rows and swap in the permuted output only for the trees that split on the gene
        for t in trees:
            o = _tree_output(t, Z32, kind)
            total = o.copy() if total is None else total + o
        stack = np.tile(Z32, (n_repeats, 1))
        for gi, g in enumerate(genes):
            perms = _gene_perms(seed, g, m, n_repeats)
            stack[:, g] = Z32[perms.ravel(), g]
            pred = np.broadcast_to(total, (n_repeats, *total.shape)).copy()
            for ti in trees_of[g]:
                if ti not in per_tree:
                    per_tree[ti] = _tree_output(trees[ti], Z32, kind)
                pred -= per_tree[ti][None]
                pred += _tree_output(trees[ti], stack, kind).reshape(n_repeats, *total.shape)
            stack[:, g] = np.tile(Z32[:, g], n_repeats)
            pred /= len(trees)
            out[gi] = base_score - _score_blocks(pred, y_idx, scoring)
        return out
    stack = np.tile(Z, (n_repeats, 1))
    for gi, g in enumerate(genes):
        perms = _gene_perms(seed, g, m, n_repeats)
        stack[:, g] = Z[perms.ravel(), g]
        pred = _predict(estimator, stack, classes)
        stack[:, g] = np.tile(Z[:, g], n_repeats)
        pred = pred.reshape(n_repeats, m, *pred.shape[1:])
        out[gi] = base_score - _score_blocks(pred, y_idx, scoring)
    return out


def permutation_importance_fitted(pipeline, X, y, *, classes, n_repeats: int = 5, random_state: int = 0,
                                  n_jobs: int | None = 1, scoring: str = "auto",
                                  backend: Backend | None = None) -> np.ndarray:
    """Permutation importance of each input gene for a fitted pipeline on rows (X, y).

    Parameters
    ----------
    pipeline : fitted Pipeline or estimator
    X : array or sparse matrix, held-out rows x input genes (raw expression)
    y : array
        Class labels (classification) or numbers (regression).
    classes : list of str or None
    n_repeats : int
    random_state : int
    n_jobs : int
        Gene batches run in parallel; the result does not depend on it. Used only when ``backend`` is None.
    backend : iml_genomics.parallel.Backend, optional
        Runs the gene batches; it decides over ``n_jobs``.
    scoring : {'auto', 'log_loss', 'auroc', 'accuracy', 'r2'}
        Importance = score on intact rows - score with the gene permuted
        ('log_loss' means the negative log loss, so larger is better).

    Returns
    -------
    ndarray, (n_genes, n_repeats)
        Per-repeat importances; 0 for genes the model does not use.
    """
    from iml_genomics.explain.shap_values import preprocess, split_pipeline

    if n_repeats < 1:
        raise ValueError(f"n_repeats must be >= 1; got {n_repeats}")
    scoring = resolve_scoring(scoring, classes)
    pre, estimator = split_pipeline(pipeline)
    n_genes = X.shape[1]
    result = np.zeros((n_genes, n_repeats))
    transform = getattr(pre, "named_steps", {}).get("transform") if pre is not None else None
    if transform is not None and getattr(transform, "method", "none") == "log1p_cpm":
        # CPM rescales each sample by its own total, so a gene's permutation changes every column: permute raw
        # genes and rerun the whole pipeline (still batched by repeats).
        Xd = X.toarray() if sparse.issparse(X) else np.asarray(X, dtype=np.float64)
        return _importance_raw(pipeline, Xd, y, classes, n_repeats, random_state, scoring)
    from iml_genomics.preprocess import used_gene_mask

    mask = used_gene_mask(pipeline, n_genes) if pre is not None else np.ones(n_genes, dtype=bool)
    Z = preprocess(pre, X)
    y_idx = _encode(y, classes)
    relevant = relevant_features(estimator, Z.shape[1])
    base_pred = _predict(estimator, Z, classes)
    base_score = float(_score_blocks(base_pred[None], y_idx, scoring)[0])
    genes = np.flatnonzero(relevant)
    forest = None
    fkind = _forest_kind(estimator)
    if fkind is not None:
        trees_of = {int(g): [] for g in genes}
        for ti, t in enumerate(estimator.estimators_):
            f = t.tree_.feature
            for g in np.unique(f[f >= 0]):
                trees_of[int(g)].append(ti)
        forest = (fkind, trees_of)
        if fkind == "regressor":
            classes = None
    backend = resolve_backend(backend, n_jobs)
    workers = backend.workers
    batches = [b for b in np.array_split(genes, max(1, min(len(genes), 4 * workers))) if len(b)]
    parts = backend.map(_importance_batch,
                        [(estimator, Z, y_idx, classes, b, n_repeats, random_state, scoring, base_score, forest)
                         for b in batches])
    model_space = np.zeros((Z.shape[1], n_repeats))
    for b, part in zip(batches, parts):
        model_space[b] = part
    result[np.flatnonzero(mask)] = model_space
    return result


def _importance_raw(pipeline, X, y, classes, n_repeats, seed, scoring):
    y_idx = _encode(y, classes)
    m = X.shape[0]
    base_score = float(_score_blocks(_predict(pipeline, X, classes)[None], y_idx, scoring)[0])
    out = np.zeros((X.shape[1], n_repeats))
    stack = np.tile(X, (n_repeats, 1))
    for g in range(X.shape[1]):
        perms = _gene_perms(seed, g, m, n_repeats)
        stack[:, g] = X[perms.ravel(), g]
        pred = _predict(pipeline, stack, classes)
        stack[:, g] = np.tile(X[:, g], n_repeats)
        out[g] = base_score - _score_blocks(pred.reshape(n_repeats, m, *pred.shape[1:]), y_idx, scoring)
    return out


def _encode(y, classes):
    if classes is None:
        return np.asarray(y, dtype=np.float64)
    lookup = {str(c): i for i, c in enumerate(classes)}
    return np.array([lookup[str(v)] for v in y], dtype=np.int64)


def _perm_fold(pipeline, X, y, train_idx, test_idx, classes, n_repeats, seed, scoring):
    from sklearn.base import clone

    model = clone(pipeline).fit(X[train_idx], y[train_idx])
    return permutation_importance_fitted(model, X[test_idx], y[test_idx], classes=classes, n_repeats=n_repeats,
                                         random_state=seed, n_jobs=1, scoring=scoring)


def permutation_importance_oof(pipeline, X, y, *, splits, classes, n_repeats: int = 5, random_state: int = 0,
                               n_jobs: int | None = 1, gene_ids=None, scoring: str = "auto",
                               return_folds: bool = False, backend: Backend | None = None):
    """Out-of-fold permutation importance: refit on each split's training rows, permute on its test rows.

    Parameters
    ----------
    pipeline : Pipeline
        Unfitted (or fitted; it is cloned) preprocessing + model, e.g. ``models.build_pipeline(cfg, task)``.
    X : array or sparse matrix, samples x input genes
    y : array
    splits : list of (repeat, fold, train_idx, test_idx)
        As returned by ``models.cv_splits``.
    classes : list of str or None
    n_repeats : int
        Permutations per gene and fold.
    random_state : int
        Each split gets a child seed (spawned before dispatch).
    n_jobs : int
        Splits run in parallel; the result does not depend on it. Used only when ``backend`` is None.
    backend : iml_genomics.parallel.Backend, optional
        Runs the splits; it decides over ``n_jobs``.
    gene_ids : list of str, optional
        Names of the columns of X (default ``g0, g1, ...``).
    scoring : str
        See :func:`permutation_importance_fitted`.
    return_folds : bool
        Also return the (n_splits, n_genes) matrix of per-split mean importances.

    Returns
    -------
    pandas.DataFrame
        gene_id, permutation_importance (mean over splits and repeats),
        permutation_importance_sd (sd over all split x repeat values), in input gene order.
    """
    seeds = spawn_seeds(random_state, len(splits))
    tasks = [(pipeline, X, y, tr, te, classes, n_repeats, s, scoring) for (_, _, tr, te), s in zip(splits, seeds)]
    per_split = resolve_backend(backend, n_jobs).map(_perm_fold, tasks)
    allv = np.concatenate(per_split, axis=1)
    ids = list(gene_ids) if gene_ids is not None else [f"g{j}" for j in range(X.shape[1])]
    frame = pd.DataFrame({"gene_id": ids, "permutation_importance": allv.mean(axis=1),
                          "permutation_importance_sd": allv.std(axis=1, ddof=1) if allv.shape[1] > 1
                          else np.full(len(ids), np.nan)})
    if return_folds:
        return frame, np.stack([p.mean(axis=1) for p in per_split])
    return frame
