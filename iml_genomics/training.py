"""The `train` step as a plain function: cohort + config -> CV results and a fitted model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import sparse

from iml_genomics.io.cohort import infer_task, prepare_target, resolve_positive_class
from iml_genomics.models import CVResult, build_pipeline, cross_validate
from iml_genomics.parallel import fixed_blas_threads
from iml_genomics.preprocess import check_counts, used_gene_mask


@dataclass
class TrainResult:
    """What `train` produces.

    Attributes
    ----------
    cv : CVResult
        Per-fold metrics, out-of-fold predictions and fold models.
    model : sklearn.pipeline.Pipeline
        Preprocessing + model refit on all samples.
    task : str
    classes : list of str or None
    gene_ids : list of str
        Input genes, in matrix order.
    used_genes : list of str
        Genes that reach the model after the final fit's filters.
    positive_class : str or None
        Two classes: the class AUROC / average precision (and, downstream, SHAP signs) refer to
        (``data.positive_class``, else the last label in sorted order); None otherwise.
    covariates : list of dict or None
        How ``data.covariates`` were encoded as model inputs (:func:`iml_genomics.covariates.fit_encoding`);
        None without covariates.
    """

    cv: CVResult
    model: object
    task: str
    classes: list | None
    gene_ids: list
    used_genes: list
    positive_class: str | None = None
    covariates: list | None = None

    def manifest(self, cfg) -> dict:
        """Bundle metadata (everything explain/select need besides the model)."""
        out = {
            "task": self.task,
            "classes": self.classes,
            "positive_class": self.positive_class,
            "gene_ids": self.gene_ids,
            "used_genes": self.used_genes,
            "label_column": cfg.data.label_column,
            "model_name": cfg.model.name,
            # n_jobs is how the run was executed, not what the model is: leaving it out
            # keeps the bundle byte-identical whatever --jobs was
            # (nor the Dask scheduler: a later explain must not inherit an address that may be gone)
            "config": {**{k: v for k, v in cfg.to_dict().items() if k != "n_jobs"}, "parallel": {"scheduler": None}},
            "cv_summary": {stat: dict(zip(self.cv.summary["metric"], self.cv.summary[stat].astype(float)))
                           for stat in ("mean", "sd")},
        }
        if self.covariates:
            # explain/evaluate append these columns (encoded the same way) after the genes
            out["covariates"] = self.covariates
        return out


# the written results must not depend on the BLAS threads of the calling process (parallel.py)
@fixed_blas_threads()
def train_model(adata, cfg, *, n_jobs: int | None = None, source: str = "labels", backend=None) -> TrainResult:
    """Cross-validate and fit the configured pipeline on a cohort.

    Parameters
    ----------
    adata : anndata.AnnData
        Cohort from :func:`iml_genomics.io.load_cohort` with the label column in obs.
    cfg : iml_genomics.config.Config
    n_jobs : int, optional
        Parallel folds; defaults to ``cfg.n_jobs``. Results do not depend on it. Used only when ``backend``
        is None.
    source : str
        Name of the labels file, for error messages.
    backend : iml_genomics.parallel.Backend, optional
        Runs the folds; None = ``Backend.local(n_jobs)`` (``cfg.parallel.scheduler`` is the steps' and the
        CLI's business, not read here).
    """
    label_column = cfg.data.label_column
    y_raw = adata.obs[label_column]
    task = infer_task(y_raw, cfg.task)
    y, classes = prepare_target(y_raw, task, n_splits=cfg.cv.n_splits, source=source, column=label_column)
    positive, _ = resolve_positive_class(classes, cfg.data.positive_class, source=source, column=label_column)
    X = adata.X
    sample_ids, gene_ids = list(adata.obs_names), list(adata.var_names)
    check_counts(X, cfg.preprocess.transform, adata.uns.get("sources", {}).get("expression", "expression"),
                 sample_ids, gene_ids)
    encoding = None
    if cfg.data.covariates:
        from iml_genomics.covariates import apply_encoding, fit_encoding, with_covariates

        encoding = fit_encoding(adata.obs, cfg.data.covariates, source=source, gene_ids=gene_ids)
        X = with_covariates(X, apply_encoding(adata.obs, encoding, source=source))
    n_cov = X.shape[1] - len(gene_ids)
    pipeline = build_pipeline(cfg, task, sparse_input=sparse.issparse(X), n_classes=len(classes) if classes else None,
                              n_covariates=n_cov)
    from iml_genomics.sparse_input import densify_for

    # a model without sparse input (HistGradientBoosting) gets a dense copy of the cells it trains on only
    # (the step's cv.max_samples subsample); the scaler above was still chosen for the sparse matrix
    X = densify_for(X, pipeline, key="cv.max_samples",
                    source=adata.uns.get("sources", {}).get("expression", "expression"))
    n_jobs = cfg.n_jobs if n_jobs is None else n_jobs
    cv = cross_validate(pipeline, X, y, sample_ids=sample_ids, classes=classes, task=task,
                        positive_class=positive, n_splits=cfg.cv.n_splits, n_repeats=cfg.cv.n_repeats, seed=cfg.seed,
                        n_jobs=n_jobs, backend=backend)
    from iml_genomics.progress import phase

    with phase("final model on all samples", total=1, unit="fit") as progress:
        final = pipeline.fit(X, y)
        progress.update(1)
    used = used_gene_mask(final, len(gene_ids) + n_cov)[:len(gene_ids)]
    return TrainResult(cv, final, task, classes, gene_ids, [g for g, u in zip(gene_ids, used) if u], positive,
                       encoding)


def model_input(adata, manifest: dict, source: str):
    """The model's input matrix of a cohort: its genes (in the cohort's order) and, when the bundle was
    trained with covariates, their columns encoded as recorded in ``manifest['covariates']``.

    Returns
    -------
    X : ndarray or CSR matrix
    feature_ids : list of str
        Gene ids, then covariate feature ids (``covariate:...``).
    """
    from iml_genomics.covariates import apply_encoding, features, with_covariates

    X = design_matrix(adata)
    encoding = manifest.get("covariates") or []
    if not encoding:
        return X, list(adata.var_names)
    return (with_covariates(X, apply_encoding(adata.obs, encoding, source=source)),
            list(adata.var_names) + features(encoding))


def design_matrix(adata) -> np.ndarray | sparse.csr_matrix:
    """The cohort's X as float64 (dense stays dense, sparse stays CSR)."""
    X = adata.X
    return X.tocsr() if sparse.issparse(X) else np.asarray(X, dtype=np.float64)


def align_genes(adata, gene_ids: list[str], source: str):
    """Reorder a cohort's genes to a model's gene list; fail naming missing genes."""
    from iml_genomics.errors import InputDataError
    from iml_genomics.io.ids import show_id

    present = set(adata.var_names)
    missing = [g for g in gene_ids if g not in present]
    if missing:
        raise InputDataError(f"{source}: {len(missing)} gene(s) the model was trained on are missing "
                             f"(first: {', '.join(show_id(g, 100) for g in missing[:5])}). Use the same genes as in training.")
    return adata[:, pd.Index(gene_ids)].copy()
