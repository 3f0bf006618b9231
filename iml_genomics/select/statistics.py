"""Knockoff feature statistics: importances of genes and of their knockoffs.

Every statistic here treats a gene and its knockoff symmetrically (swapping
the two swaps their importances), which is what the knockoff filter needs.
The filter takes ``W_j = Z_j - Z~_j``.

- ``lasso``: lasso coefficient magnitudes at a cross-validated penalty.
  The design ``[X, X~]`` is standardised column by column. Classes are fitted
  as centred indicators (binary: the last class; multiclass: one lasso per
  class, importance = largest |coefficient|), i.e. a linear-probability lasso,
  because it is an order of magnitude faster than L1-logistic paths at
  genome scale and remains a valid (swap-symmetric) statistic. Paths run
  from alpha_max downwards and stop once min(250, half the training samples)
  variables are active (tolerance 1e-3, at most 300 sweeps per penalty).
  With more genes than ``max_pairs``, gene/knockoff pairs are first screened
  by ``max(|x_j'y|, |x~_j'y|)`` (swap-invariant, so validity is kept;
  screened-out genes get W = 0). Fixed covariates are
  partialled out of y and the design (Frisch-Waugh), which equals leaving
  them unpenalised in a linear lasso.
- ``random_forest``: impurity importance of a random forest on [X, X~, covariates].
- ``model``: any registry model fitted on [X, X~, covariates]; importance is
  |coef_| (summed over classes) or ``feature_importances_``.
"""

from __future__ import annotations

import numpy as np

from iml_genomics.parallel import Backend, resolve_backend


def check_positive_class(y, task: str, positive_class: str | None) -> None:
    """Refuse a ``positive_class`` that is not one of two classes of ``y`` (it is recorded in the summary
    and decides the sign of the dCRT's w, so a silent fallback would state results for the wrong class).

    Raises
    ------
    ConfigError
        One line naming the given value and the classes.
    """
    if positive_class is None or task == "regression":
        return
    from iml_genomics.errors import ConfigError

    classes = np.unique(np.asarray(y).astype(str)).tolist()
    if len(classes) != 2 or str(positive_class) not in classes:
        raise ConfigError(f"config: data.positive_class {str(positive_class)!r} is not one of the two classes "
                          f"({', '.join(classes[:10])}); give one of them or leave it unset.")


def class_targets(y, task: str, positive_class: str | None = None) -> np.ndarray:
    if task == "regression":
        return np.asarray(y, dtype=float)[:, None]
    classes = np.unique(np.asarray(y).astype(str))
    ys = np.asarray(y).astype(str)
    if len(classes) == 2:
        # the indicator of the positive class; the other class's is 1 minus it, so after centring the lasso
        # path only changes sign and |coef| (hence W) does not depend on the choice
        check_positive_class(y, task, positive_class)
        pos = classes[-1] if positive_class is None else str(positive_class)
        return (ys == pos).astype(float)[:, None]
    return (ys[:, None] == classes[None, :]).astype(float)


def residualize(A: np.ndarray, covariates: np.ndarray | None) -> np.ndarray:
    """Centre A, and remove its least-squares fit on the covariates when given."""
    A = A - A.mean(axis=0)
    if covariates is None or covariates.shape[1] == 0:
        return A
    Zc = covariates - covariates.mean(axis=0)
    Q, _ = np.linalg.qr(Zc)
    return A - Q @ (Q.T @ A)


def path_until(Z: np.ndarray, y: np.ndarray, alphas: np.ndarray, max_active: int,
                coef_init: np.ndarray | None = None) -> np.ndarray:
    """Lasso coefficients along ``alphas`` (descending), stopping early once > max_active are nonzero.

    Returns an array (n_alphas_done, n_features); warm starts chain the chunks
    of 4 penalties, so a path resumed from its last coefficients at a chunk
    boundary (``coef_init``) equals the uninterrupted path.
    """
    from sklearn.linear_model import enet_path

    coefs, coef = [], coef_init
    for start in range(0, len(alphas), 4):
        chunk = alphas[start:start + 4]
        _, c, _ = enet_path(Z, y, l1_ratio=1.0, alphas=chunk, coef_init=coef, precompute=False,
                            check_input=False, tol=1e-3, max_iter=300)
        coefs.extend(c.T)
        coef = np.ascontiguousarray(c[:, -1])
        if np.count_nonzero(coef) > max_active:
            break
    return np.array(coefs)


def fold_errors(Z: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, alphas: np.ndarray,
                 max_active: int) -> np.ndarray:
    Ztr = np.asfortranarray(Z[train])
    ytr = y[train]
    offset = ytr.mean()
    coefs = path_until(Ztr, ytr - offset, alphas, max_active)
    pred = Z[test] @ coefs.T + offset
    return np.mean((y[test, None] - pred) ** 2, axis=0)


def cv_lasso_path(Z: np.ndarray, yt: np.ndarray, folds, *, n_alphas: int, eps: float, n_jobs: int = 1,
                  backend: Backend | None = None):
    """Cross-validated penalty of a lasso of ``yt`` on ``Z`` (the knockoff statistic's and the dCRT's screen).

    Penalties descend geometrically from alpha_max to ``eps`` alpha_max; every
    path stops once min(250, half the training samples) variables are active
    (a CV optimum with more is not a sparse signal; the cap bounds the cost).
    The full-data path runs next to the folds (6 tasks fill 2 cores better
    than 5 + 1 after them), in threads: coordinate descent releases the GIL,
    the folds share Z without copies, and there is no worker start-up.
    The threads are ``backend``'s (:meth:`~iml_genomics.parallel.Backend.thread_map`, always in this process,
    also when the caller's backend has a scheduler); ``n_jobs`` is used only when ``backend`` is None.

    Returns
    -------
    None when alpha_max is 0 (nothing to fit), else (alphas, best, coefs, Zf):
    the penalties, the index of the one with the smallest mean CV error, the
    full-data path's coefficients so far (it may have stopped before ``best``;
    resume it from ``coefs[-1]``) and the Fortran-ordered Z it ran on.
    """
    n = Z.shape[0]
    alpha_max = float(np.max(np.abs(Z.T @ yt)) / n)
    if not np.isfinite(alpha_max) or alpha_max <= 0:
        return None
    alphas = alpha_max * np.geomspace(1.0, eps, n_alphas)
    max_active = max(10, min(250, int(0.5 * n * (1 - 1 / len(folds)))))
    Zf = np.asfortranarray(Z)
    calls = [(fold_errors, (Z, yt, tr, te, alphas, max_active)) for tr, te in folds]
    calls.append((path_until, (Zf, yt, alphas, max_active)))
    results = resolve_backend(backend, n_jobs).thread_map(lambda f, a: f(*a), calls)
    errs, coefs = results[:-1], results[-1]
    depth = min(len(e) for e in errs)
    best = int(np.argmin(np.mean([e[:depth] for e in errs], axis=0)))
    return alphas, best, coefs, Zf


def lasso_importance(X: np.ndarray, Xk: np.ndarray, y, *, task: str, covariates: np.ndarray | None = None,
                     random_state: int = 0, n_jobs: int = 1, n_folds: int = 5, n_alphas: int = 30,
                     eps: float = 1e-2, max_pairs: int | None = None,
                     positive_class: str | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """|lasso coefficients| of genes and knockoffs at the cross-validated penalty.

    Returns
    -------
    imp, imp_knockoff : ndarray of shape (p,)
    info : dict
        ``n_screened`` pairs and the chosen ``alpha`` per target.
    """
    from sklearn.model_selection import KFold

    n, p = X.shape
    Y = residualize(class_targets(y, task, positive_class), covariates)
    D = residualize(np.hstack([X, Xk]), covariates)
    sd = D.std(axis=0)
    sd[sd == 0] = 1.0
    D /= sd
    max_pairs = max_pairs if max_pairs is not None else max(1000, 2 * n)
    keep = np.arange(p)
    if p > max_pairs:
        score = np.abs(D.T @ Y).sum(axis=1)
        pair_score = np.maximum(score[:p], score[p:])
        keep = np.sort(np.argsort(-pair_score, kind="stable")[:max_pairs])
        D = D[:, np.concatenate([keep, keep + p])]
    m = keep.size
    # Coordinate descent visits columns in a fixed order and stops at a tolerance, so
    # swapping a gene with its knockoff can move its coefficient slightly. A seeded coin
    # flip of which copy sits first makes W's sign symmetry under the null exact.
    flip = np.random.default_rng(random_state).random(m) < 0.5
    order = np.arange(2 * m)
    order[:m][flip], order[m:][flip] = np.arange(m, 2 * m)[flip], np.arange(m)[flip]
    D = D[:, order]
    folds = list(KFold(n_splits=min(n_folds, n), shuffle=True, random_state=random_state).split(D))
    imp = np.zeros(2 * m)
    alphas_chosen = []
    for t in range(Y.shape[1]):
        yt = np.ascontiguousarray(Y[:, t])
        path = cv_lasso_path(D, yt, folds, n_alphas=n_alphas, eps=eps, n_jobs=n_jobs)
        if path is None:
            alphas_chosen.append(None)
            continue
        alphas, best, coefs, Df = path
        if best >= len(coefs):
            rest = path_until(Df, yt, alphas[len(coefs):best + 1], max_active=2 * m,
                               coef_init=coefs[-1].copy())  # enet_path updates coef_init in place
            coefs = np.concatenate([coefs, rest])
        coefs = coefs[:best + 1]
        imp = np.maximum(imp, np.abs(coefs[-1]))
        alphas_chosen.append(float(alphas[best]))
    imp = imp[np.argsort(order)]  # back to [genes, knockoffs]
    full, full_k = np.zeros(p), np.zeros(p)
    full[keep], full_k[keep] = imp[:m], imp[m:]
    return full, full_k, {"n_screened": int(m), "alpha": alphas_chosen}


def _design(X, Xk, covariates):
    parts = [X, Xk] + ([covariates] if covariates is not None and covariates.shape[1] else [])
    D = np.hstack(parts)
    sd = D.std(axis=0)
    sd[sd == 0] = 1.0
    return (D - D.mean(axis=0)) / sd


def forest_importance(X, Xk, y, *, task: str, covariates=None, random_state: int = 0, n_jobs: int = 1,
                      n_estimators: int = 300):
    """Impurity importances of a random forest on [X, X~, covariates]."""
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    p = X.shape[1]
    cls = RandomForestRegressor if task == "regression" else RandomForestClassifier
    # runs inside one draw (a task of its own when draws run in parallel): local threads
    est = cls(n_estimators=n_estimators, max_features="sqrt", random_state=random_state,
              n_jobs=Backend.local(n_jobs).sklearn_n_jobs)
    est.fit(_design(X, Xk, covariates), np.asarray(y))
    imp = est.feature_importances_
    return imp[:p], imp[p:2 * p], {}


def model_importance(X, Xk, y, *, task: str, covariates=None, random_state: int = 0, n_jobs: int = 1,
                     model: str = "l1_logistic", model_params: dict | None = None):
    """Importances of a registry model fitted on [X, X~, covariates]."""
    from iml_genomics.models import build_estimator

    p = X.shape[1]
    n_classes = None if task == "regression" else len(np.unique(np.asarray(y).astype(str)))
    est = build_estimator(model, task, seed=random_state, params=model_params, n_classes=n_classes)
    est.fit(_design(X, Xk, covariates), np.asarray(y))
    if hasattr(est, "coef_"):
        imp = np.abs(np.atleast_2d(est.coef_)).sum(axis=0)
    elif hasattr(est, "feature_importances_"):
        imp = np.asarray(est.feature_importances_)
    else:
        from iml_genomics.errors import ConfigError

        raise ConfigError(f"config: model '{model}' has neither coef_ nor feature_importances_; "
                          f"use select.statistic: lasso or random_forest.")
    return imp[:p], imp[p:2 * p], {}


STATISTICS = {"lasso": lasso_importance, "random_forest": forest_importance, "model": model_importance}
