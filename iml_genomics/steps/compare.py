"""The `compare` step: several registry models on the same CV folds, accuracy beside explainability."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from iml_genomics.steps._common import label_source, require_label_column, resolved, step_backend


@dataclass
class CompareResult:
    """What :func:`compare` produces (docs/compare.md lists every column).

    Attributes
    ----------
    comparison : pandas.DataFrame
        ``model_comparison.tsv``: one row per model, best first by the primary CV metric.
    agreement : pandas.DataFrame
        ``model_agreement.tsv``: top-k Jaccard and Spearman correlation for each pair of models.
    robust_genes : pandas.DataFrame
        ``robust_genes.tsv``: genes in the top k of more than half of the models.
    gene_rankings : pandas.DataFrame
        ``model_gene_rankings.tsv``: each model's ranked genes.
    tuning : pandas.DataFrame
        ``model_tuning.tsv``: the parameters the inner CV chose in each outer fold and for the final fit.
    folds : pandas.DataFrame
        ``cv_folds.tsv``: the outer fold of each sample (the same for every model).
    summary : dict
        ``compare_summary.json`` (with ``text``, the comparison in words).
    oof : dict of str to pandas.DataFrame
        Each model's out-of-fold predictions (kept in memory, not written).
    cohort : dict
        Provenance's ``cohort`` block.
    warnings : list of str
    """

    comparison: pd.DataFrame
    agreement: pd.DataFrame
    robust_genes: pd.DataFrame
    gene_rankings: pd.DataFrame
    tuning: pd.DataFrame
    folds: pd.DataFrame
    summary: dict
    oof: dict
    cohort: dict
    warnings: list = field(default_factory=list)


def compare(adata, cfg, *, candidates=None, n_jobs: int | None = None, random_state: int | None = None,
            backend=None) -> CompareResult:
    """Cross-validate several models on the same folds and compare them.

    Parameters
    ----------
    adata : anndata.AnnData
        Samples x genes with the outcome in ``obs[cfg.data.label_column]``.
    cfg : iml_genomics.config.Config
        Resolved config: ``model.candidates`` (unless ``candidates`` is given), ``model.tuning``,
        ``model.inner_folds``, ``cv``, ``preprocess``, ``explain.top_k``, ``data.positive_class``.
    candidates : list of str, optional
        Registry model names; None = ``cfg.model.candidates``. At least two.
    n_jobs : int, optional
        Parallel folds; None = ``cfg.n_jobs``. Results do not depend on it.
    random_state : int, optional
        Seed of the folds, the models and the inner CV; None = ``cfg.seed``.
    backend : iml_genomics.parallel.Backend, optional
        Where the folds run; None = built from ``cfg.parallel.scheduler`` and ``n_jobs``.

    Returns
    -------
    CompareResult

    Raises
    ------
    iml_genomics.errors.ConfigError
        Fewer than two candidates, an unknown or repeated name, a tuning grid naming an unknown parameter.
    iml_genomics.errors.InputDataError
        A missing or unusable label column, a class too small for the (nested) CV.
    """
    from scipy import sparse

    from iml_genomics.compare import check_candidates, check_tuning, compare_models
    from iml_genomics.io.cohort import infer_task, prepare_target, resolve_positive_class
    from iml_genomics.preprocess import check_counts

    cfg = resolved(cfg, n_jobs, random_state)
    names = check_candidates(cfg.model.candidates if candidates is None else list(candidates),
                             key="model.candidates" if candidates is None else "candidates")
    source = label_source(adata)
    column = cfg.data.label_column
    require_label_column(adata, column, source)
    y_raw = adata.obs[column]
    task = infer_task(y_raw, cfg.task)
    y, classes = prepare_target(y_raw, task, n_splits=cfg.cv.n_splits, source=source, column=column)
    check_tuning(cfg, task)
    positive, warning = resolve_positive_class(classes, cfg.data.positive_class, source=source, column=column)
    X = adata.X
    X = X.tocsr() if sparse.issparse(X) else X
    sample_ids, gene_ids = list(adata.obs_names), list(adata.var_names)
    check_counts(X, cfg.preprocess.transform, (adata.uns.get("sources") or {}).get("expression", "expression"),
                 sample_ids, gene_ids)
    backend = step_backend(cfg, backend)
    result = compare_models(X, y, cfg, candidates=names, task=task, classes=classes, sample_ids=sample_ids,
                            gene_ids=gene_ids, positive_class=positive, backend=backend, source=source)
    cohort = {"n_samples": adata.n_obs, "n_genes": adata.n_vars, "task": task, "classes": classes,
              "positive_class": positive}
    return CompareResult(comparison=result.comparison, agreement=result.agreement,
                         robust_genes=result.robust_genes, gene_rankings=result.gene_rankings,
                         tuning=result.tuning, folds=result.folds, summary=result.summary, oof=result.oof,
                         cohort=cohort, warnings=[warning] if warning else [])
