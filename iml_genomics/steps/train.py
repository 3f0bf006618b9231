"""The `train` step: cross-validate the configured pipeline on a cohort and fit it on all samples."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from iml_genomics.steps._common import label_source, require_label_column, resolved, step_backend


@dataclass
class TrainResult:
    """What :func:`train` produces.

    Attributes
    ----------
    cv_metrics : pandas.DataFrame
        ``cv_metrics.tsv``: one row per fold (``cv_summary`` has the mean and sd per metric).
    oof_predictions : pandas.DataFrame
        ``oof_predictions.tsv``: out-of-fold predictions.
    model : sklearn.pipeline.Pipeline
        Preprocessing + model refit on all samples (``model.skops``).
    manifest : dict
        ``model.json`` without the two keys the writer adds (``model_file``, ``model_sha256``); with
        :attr:`model` it is what :func:`iml_genomics.models.load_bundle` returns, so it can be handed to
        :func:`iml_genomics.steps.explain` directly.
    task : str
    classes : list of str or None
    positive_class : str or None
        Two classes: the class AUROC / average precision refer to.
    gene_ids, used_genes : list of str
        Input genes in matrix order; genes that reach the model after the final fit's filters.
    cohort : dict
        Provenance's ``cohort`` block.
    warnings : list of str
        One-line warnings for stderr (e.g. a reference-like default positive class).
    cv : iml_genomics.models.CVResult
        Fold models and the raw CV result.
    """

    cv_metrics: pd.DataFrame
    oof_predictions: pd.DataFrame
    model: object
    manifest: dict
    task: str
    classes: list | None
    positive_class: str | None
    gene_ids: list
    used_genes: list
    cohort: dict
    warnings: list = field(default_factory=list)
    cv: object = None

    def __post_init__(self):
        # a table read from an older run (file or AnnData) may still end with mean/sd rows
        if self.cv_metrics is not None:
            from iml_genomics.io.interchange import cv_fold_rows

            self.cv_metrics = cv_fold_rows(self.cv_metrics)

    @property
    def cv_summary(self) -> pd.DataFrame:
        """``cv_summary.tsv``: one row per metric with mean, sd and n_folds."""
        from iml_genomics.io.interchange import cv_summary_table

        return cv_summary_table(self.cv_metrics)


def train(adata, cfg, *, n_jobs: int | None = None, random_state: int | None = None,
          backend=None) -> TrainResult:
    """Cross-validate and fit the configured model on a cohort.

    Parameters
    ----------
    adata : anndata.AnnData
        Samples x genes with the outcome in ``obs[cfg.data.label_column]``
        (:func:`iml_genomics.io.load_cohort`).
    cfg : iml_genomics.config.Config
        Resolved config (model, preprocess, cv, data.label_column, data.positive_class).
    n_jobs : int, optional
        Parallel folds; None = ``cfg.n_jobs``. Results do not depend on it.
    random_state : int, optional
        Seed of the folds and the model; None = ``cfg.seed``.
    backend : iml_genomics.parallel.Backend, optional
        Where the parallel work runs; None = built from ``cfg.parallel.scheduler`` and ``n_jobs``
        (:meth:`~iml_genomics.parallel.Backend.from_config`). A given backend decides over ``n_jobs`` and
        the config's scheduler.

    Returns
    -------
    TrainResult

    Raises
    ------
    iml_genomics.errors.InputDataError
        A missing or unusable label column, a class smaller than ``cv.n_splits``, an unknown positive class,
        negative values under a count transform.
    """
    from iml_genomics.io.cohort import resolve_positive_class
    from iml_genomics.training import train_model

    cfg = resolved(cfg, n_jobs, random_state)
    source = label_source(adata)
    column = cfg.data.label_column
    require_label_column(adata, column, source)
    from iml_genomics.single_cell import subsample_cohort

    # single-cell scale: CV and the final fit on a stratified subsample (cv.max_samples); min one cell per fold
    adata, subsample = subsample_cohort(adata, cfg.cv.max_samples, label_column=column, seed=cfg.seed,
                                        min_per_class=cfg.cv.n_splits, task=cfg.task)
    result = train_model(adata, cfg, source=source, backend=step_backend(cfg, backend))
    _, warning = resolve_positive_class(result.classes, cfg.data.positive_class, source=source, column=column)
    manifest = result.manifest(cfg)
    cohort = {"n_samples": adata.n_obs, "n_genes": adata.n_vars, "task": result.task,
              "classes": result.classes, "n_genes_used": len(result.used_genes),
              # what cv_metrics.tsv's auroc / average_precision treat as the positive label
              "positive_class": result.positive_class}
    if subsample is not None:
        cohort["subsample"] = subsample
    return TrainResult(cv_metrics=result.cv.metrics, oof_predictions=result.cv.oof, model=result.model,
                       manifest=manifest, task=result.task, classes=result.classes,
                       positive_class=result.positive_class, gene_ids=result.gene_ids,
                       used_genes=result.used_genes, cohort=cohort, warnings=[warning] if warning else [],
                       cv=result.cv)
