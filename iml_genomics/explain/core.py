"""The `explain` step as a plain function: fitted model + cohort -> ranking, local explanations, summary.

No file I/O here: attributions are streamed to an ``on_chunk`` callback (the
CLI writes them to Parquet), everything else is returned in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from iml_genomics.errors import InputDataError
from iml_genomics.parallel import fixed_blas_threads

RANKING_COLUMNS = ["gene_id", "rank", "mean_abs_shap", "mean_shap", "sd", "rank_low", "rank_high", "top_k_frequency",
                   "permutation_importance", "permutation_importance_sd", "used", "method", "scale", "feature_type"]


@dataclass
class ExplainResult:
    """Everything `explain` writes besides the attributions themselves."""

    ranking: pd.DataFrame
    local: pd.DataFrame
    interactions: pd.DataFrame
    summary: dict
    refit_importances: np.ndarray | None = None
    extra: dict = field(default_factory=dict)


# the written results must not depend on the BLAS threads of the calling process (parallel.py)
@fixed_blas_threads()
def explain_cohort(pipeline, X, *, gene_ids, sample_ids, classes, task: str, explain_cfg, refit_pipeline=None,
                   y=None, n_splits: int = 5, n_repeats: int = 1, random_state: int = 0, n_jobs: int | None = 1,
                   on_chunk: Callable | None = None, method: str | None = None,
                   positive_class: str | None = None, backend=None, methods=None) -> ExplainResult:
    """Explain a fitted model on a cohort.

    Parameters
    ----------
    pipeline : fitted Pipeline (the bundle's model)
    X : array or sparse matrix, samples x input genes, in the model's gene order
    gene_ids, sample_ids : list of str
    classes : list of str or None
    task : {'classification', 'regression'}
    explain_cfg : iml_genomics.config.ExplainConfig
    refit_pipeline : unfitted Pipeline, optional
        ``models.build_pipeline(bundle_cfg, task)``; needed with ``y`` for
        permutation importance and the ranking's stability.
    y : array, optional
        Outcome; without it only SHAP of the final model is computed.
    n_splits, n_repeats : int
        CV folds for refits (``explain_cfg.stability == 'folds'``).
    random_state : int
    n_jobs : int
        Results do not depend on it. Used only when ``backend`` is None.
    on_chunk : callable, optional
        Called with (ShapChunk, ShapPlan) for every chunk, in sample order.
    method : {'shap', 'permutation', 'all'}, optional
        Defaults to ``explain_cfg.method``.
    positive_class : str, optional
        Two classes: the class SHAP explains (positive attributions push towards it); the last class when None.
        mean |SHAP|, permutation importance and the stability of the ranking do not depend on it.
    backend : iml_genomics.parallel.Backend, optional
        Where SHAP chunks, refits and permutations run; None = ``Backend.local(n_jobs)``. A given backend
        decides over ``n_jobs``.
    methods : list of str or 'all', optional
        Explanation methods beyond SHAP (:mod:`iml_genomics.explain.methods`); defaults to
        ``explain_cfg.methods``. Their outputs are in ``result.extra["methods"]`` (name -> MethodOutput).
    """
    from iml_genomics.parallel import resolve_backend

    backend = resolve_backend(backend, n_jobs)
    from iml_genomics.explain.interactions import INTERACTION_COLUMNS, tree_interactions
    from iml_genomics.explain.local import LOCAL_COLUMNS, local_explanations
    from iml_genomics.explain.shap_values import iter_shap_chunks, plan_shap, split_pipeline
    from iml_genomics.explain.stability import bootstrap_splits, ranking_stability, refit_importances

    method = method or explain_cfg.method
    ecfg = explain_cfg
    gene_ids = [str(g) for g in gene_ids]
    sample_ids = [str(s) for s in sample_ids]
    has_labels = y is not None
    if method == "permutation" and not has_labels:
        raise InputDataError("explain --method permutation needs labels (held-out rows are scored); pass --labels "
                             "and --label-column, or use --method shap.")
    do_shap = method in ("shap", "all")
    do_perm = method in ("permutation", "all") and has_labels
    notes: list[str] = []
    if not has_labels:
        notes.append("no labels given: permutation importance and fold stability were skipped "
                     "(sd, rank_low, rank_high, top_k_frequency, permutation_importance are empty)")
    pos = {s: i for i, s in enumerate(sample_ids)}
    missing = [s for s in ecfg.samples if s not in pos]
    if missing:
        raise InputDataError(f"explain: sample id(s) {', '.join(repr(s) for s in missing[:5])} given to --samples "
                             f"(explain.samples) are not in the expression matrix.")
    if len(set(ecfg.samples)) < len(ecfg.samples):
        # a sample named twice in --samples is explained once: local_explanations.tsv always was, and the
        # methods (lime, anchors, examples) would otherwise repeat its rows and redo its work
        import dataclasses

        ecfg = dataclasses.replace(ecfg, samples=list(dict.fromkeys(ecfg.samples)))
    local_rows = sorted({pos[s] for s in ecfg.samples})
    from iml_genomics.explain.methods import NEEDS_ALL_ATTRIBUTIONS, resolve_methods

    requested = ecfg.methods if methods is None else methods  # kept: 'all' skips what does not apply
    extra_methods = resolve_methods(requested)
    # bad method settings (k above the genes, ...) are refused before SHAP and refits, not after them
    from iml_genomics.explain.methods import validate_methods

    validate_methods(requested, ecfg, gene_ids=gene_ids, sample_ids=sample_ids, classes=classes)
    keep_all = do_shap and bool(NEEDS_ALL_ATTRIBUTIONS & set(extra_methods))
    all_values = []

    plan, payload = plan_shap(pipeline, X, gene_ids=gene_ids, classes=classes, mode=ecfg.shap_mode,
                              background_size=ecfg.background_size, random_state=random_state,
                              positive_class=positive_class, values=do_shap,
                              engine=getattr(ecfg, "tree_shap_engine", "fast"))
    mask = plan.used_mask
    q, k = len(plan.gene_ids), len(plan.outputs)
    summary: dict = {"method": method, "task": task, "classes_explained": plan.outputs, "labels_used": has_labels,
                     "positive_class": plan.outputs[0] if classes is not None and len(classes) == 2 else None,
                     "top_k": ecfg.top_k, "n_genes_input": len(gene_ids), "n_genes_used": q,
                     "n_samples": len(sample_ids), "additivity_tolerance": ecfg.additivity_tolerance,
                     "approximations": [], "notes": notes, "model_type": type(split_pipeline(pipeline)[1]).__name__}
    mean_abs = np.full(len(gene_ids), np.nan)
    mean_sgn = np.full(len(gene_ids), np.nan)
    local_frame = pd.DataFrame(columns=LOCAL_COLUMNS)
    if do_shap:
        sum_abs, sum_sgn = np.zeros(q), np.zeros(q)
        max_err, n_done = 0.0, 0
        keep_v, keep_b, keep_o = {}, {}, {}
        for chunk in iter_shap_chunks(pipeline, X, plan=plan, payload=payload, classes=classes,
                                      chunk_size=ecfg.chunk_size, backend=backend, random_state=random_state,
                                      additivity_tolerance=ecfg.additivity_tolerance, sample_ids=sample_ids):
            if on_chunk is not None:
                on_chunk(chunk, plan)
            # multiclass: |phi| summed over classes (a gene's total effect), phi averaged over classes
            sum_abs += np.abs(chunk.values).sum(axis=(0, 2))
            sum_sgn += chunk.values.sum(axis=(0, 2)) / k
            max_err = max(max_err, chunk.max_additivity_error)
            if keep_all:
                all_values.append(chunk.values[:, :, 0])
            n_done += chunk.stop - chunk.start
            for r in local_rows:
                if chunk.start <= r < chunk.stop:
                    keep_v[r] = chunk.values[r - chunk.start]
                    keep_b[r] = chunk.base_values[r - chunk.start]
                    keep_o[r] = chunk.model_output[r - chunk.start]
        mean_abs[mask] = sum_abs / max(n_done, 1)
        mean_sgn[mask] = sum_sgn / max(n_done, 1)
        summary.update({"max_additivity_error": max_err, "shap_method": plan.method, "scale": plan.scale,
                        "n_samples_explained": n_done, "shap_exact": plan.exact,
                        "shap_background": plan.background_note})
        if plan.kind == "tree":  # which Tree SHAP implementation ran (explain.tree_shap_engine), and why not fast
            summary.update({"shap_engine": plan.engine, "shap_engine_note": plan.engine_note})
        summary["approximations"] += plan.approximations
        if local_rows:
            expr = X[local_rows][:, np.flatnonzero(mask)]
            expr = expr.toarray() if hasattr(expr, "toarray") else np.asarray(expr)
            local_frame = local_explanations(np.stack([keep_v[r] for r in local_rows]),
                                             np.stack([keep_b[r] for r in local_rows]),
                                             np.stack([keep_o[r] for r in local_rows]),
                                             sample_ids=[sample_ids[r] for r in local_rows], gene_ids=plan.gene_ids,
                                             outputs=plan.outputs, expression=expr, top_n=ecfg.local_top_n)
    else:
        summary.update({"max_additivity_error": None, "shap_method": None, "scale": "raw",
                        "n_samples_explained": 0})
        if ecfg.samples:
            notes.append("--samples ignored: local explanations need SHAP (--method shap or all)")

    # --- refits: permutation importance and ranking stability ---------------------------------------------
    perm_mean = np.full(len(gene_ids), np.nan)
    perm_sd = np.full(len(gene_ids), np.nan)
    stab = None
    refit_imp = None
    cv_folds = None
    if has_labels:
        if refit_pipeline is None:
            raise ValueError("refit_pipeline is required when y is given")
        from iml_genomics.models import cv_splits

        if ecfg.stability == "bootstrap":
            splits = bootstrap_splits(len(y), n_bootstraps=ecfg.n_bootstraps, random_state=random_state, y=y,
                                      stratify=classes is not None)
            perm_splits = cv_splits(y, task, n_splits=n_splits, n_repeats=n_repeats, seed=random_state)
        else:
            splits = cv_splits(y, task, n_splits=n_splits, n_repeats=n_repeats, seed=random_state)
            perm_splits = splits
        cv_folds = perm_splits
        same = perm_splits is splits
        # one refit per stability split; it also yields the OOF permutation importance when the splits are the
        # CV folds. Permutation-only runs rank each refit by its held-out permutation importance.
        refits = refit_importances(refit_pipeline, X, y, splits=splits, classes=classes, gene_ids=gene_ids,
                                   shap=do_shap, shap_mode=ecfg.shap_mode, background_size=ecfg.background_size,
                                   permutation=(do_perm and same) or not do_shap,
                                   n_repeats=ecfg.permutation_repeats, scoring=ecfg.permutation_scoring,
                                   random_state=random_state, backend=backend,
                                   tree_shap_engine=getattr(ecfg, "tree_shap_engine", "fast"))
        perm_list = refits["permutation"]
        if do_perm and not same:
            perm_list = refit_importances(refit_pipeline, X, y, splits=perm_splits, classes=classes,
                                          gene_ids=gene_ids, shap=False, permutation=True,
                                          n_repeats=ecfg.permutation_repeats, scoring=ecfg.permutation_scoring,
                                          random_state=random_state, backend=backend)["permutation"]
        if do_perm:
            allv = np.concatenate(perm_list, axis=1)
            perm_mean = allv.mean(axis=1)
            perm_sd = allv.std(axis=1, ddof=1) if allv.shape[1] > 1 else np.full(len(gene_ids), np.nan)
            from iml_genomics.explain.permutation import resolve_scoring

            summary["permutation"] = {"scoring": resolve_scoring(ecfg.permutation_scoring, classes),
                                      "n_repeats": ecfg.permutation_repeats, "n_splits": len(perm_splits),
                                      "held_out": "out-of-fold rows of each CV refit"}
        if do_shap:
            refit_imp = refits["mean_abs_shap"]
            importance_name = "mean_abs_shap on each refit's held-out rows"
        else:
            refit_imp = np.stack([p.mean(axis=1) for p in refits["permutation"]])
            importance_name = "permutation importance on each refit's held-out rows"
        stab, agreement = ranking_stability(refit_imp, gene_ids=gene_ids, top_k=ecfg.top_k)
        summary["fold_agreement"] = {**agreement, "refits": ecfg.stability, "importance": importance_name}
    else:
        summary["fold_agreement"] = {"n_refits": 0, "jaccard_top_k_mean": None, "kendall_tau_mean": None,
                                     "skipped": "no labels"}

    # --- ranking -------------------------------------------------------------------------------------------
    ranking = pd.DataFrame({"gene_id": gene_ids, "mean_abs_shap": mean_abs, "mean_shap": mean_sgn,
                            "permutation_importance": perm_mean, "permutation_importance_sd": perm_sd,
                            "used": mask})
    if stab is not None:
        ranking["sd"] = stab["sd"].to_numpy()
        ranking["rank_low"] = pd.array(stab["rank_low"].to_numpy(), dtype="Int64")
        ranking["rank_high"] = pd.array(stab["rank_high"].to_numpy(), dtype="Int64")
        ranking["top_k_frequency"] = stab["top_k_frequency"].to_numpy()
    else:
        ranking["sd"] = np.nan
        ranking["rank_low"] = pd.array([pd.NA] * len(gene_ids), dtype="Int64")
        ranking["rank_high"] = pd.array([pd.NA] * len(gene_ids), dtype="Int64")
        ranking["top_k_frequency"] = np.nan
    # genes the final model does not use have no importance (NaN), whatever the refits saw
    for col in ("mean_abs_shap", "mean_shap", "permutation_importance", "permutation_importance_sd", "sd"):
        ranking.loc[~mask, col] = np.nan
    ranking["method"] = plan.method if do_shap else "permutation_oof"
    ranking["scale"] = plan.scale if do_shap else "raw"
    # gene | covariate: the explain step marks the covariate inputs of a model trained with data.covariates
    ranking["feature_type"] = np.where(pd.Series(gene_ids).str.startswith("covariate:").to_numpy(), "covariate",
                                       "gene")
    key = "mean_abs_shap" if do_shap else "permutation_importance"
    score = np.where(mask, np.nan_to_num(ranking[key].to_numpy(), nan=-np.inf), -np.inf)
    order = np.lexsort((np.asarray(gene_ids, dtype=object), ~mask, -score))
    ranking = ranking.iloc[order].reset_index(drop=True)
    ranking["rank"] = np.arange(1, len(ranking) + 1)
    ranking = ranking[RANKING_COLUMNS]

    # --- interactions (tree models) ------------------------------------------------------------------------
    inter = pd.DataFrame(columns=INTERACTION_COLUMNS)
    if do_shap and plan.kind == "tree":
        from iml_genomics.explain.shap_values import background_rows

        top = ranking.loc[ranking["used"], "gene_id"].head(ecfg.interaction_top_k).tolist()
        rows = background_rows(X.shape[0], ecfg.interaction_max_samples, random_state)
        inter, info = tree_interactions(pipeline, X[rows], used_gene_ids=plan.gene_ids, top_genes=top,
                                        classes=classes, max_samples=len(rows), backend=backend)
        summary["interactions"] = info
        if info["n_samples"] and info["n_samples"] < X.shape[0]:
            summary["approximations"].append(
                f"interaction values averaged over a seeded subset of {info['n_samples']} of {X.shape[0]} samples")
    else:
        summary["interactions"] = {"skipped": "interaction values are computed for tree models only"
                                   if do_shap else "needs SHAP"}

    # --- explanation methods beyond SHAP (explain.methods) -------------------------------------------------
    extra = {}
    if extra_methods:
        from iml_genomics.explain.methods import MethodContext, run_methods

        first = 0  # the explained output: the positive class (two classes), else the first output
        ctx = MethodContext(
            pipeline=pipeline, refit_pipeline=refit_pipeline, X=X, y=y, gene_ids=gene_ids, sample_ids=sample_ids,
            classes=classes, task=task, positive_class=summary["positive_class"], explain_cfg=ecfg,
            splits=cv_folds, random_state=random_state, backend=backend, ranking=ranking,
            shap_genes=list(plan.gene_ids) if do_shap else [],
            local_shap={sample_ids[r]: np.asarray(keep_v[r])[:, first] for r in local_rows} if do_shap else {},
            attributions=np.concatenate(all_values) if keep_all and all_values else None)
        extra["methods"] = run_methods(requested, ctx)
        summary["methods"] = {name: out.summary for name, out in extra["methods"].items()}
    return ExplainResult(ranking, local_frame, inter, summary, refit_imp, extra)
