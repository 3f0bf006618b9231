"""The `evaluate` step: rankings and selections scored against known true genes, and prediction gaps."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from iml_genomics.steps._common import step_backend, expression_source, label_source, resolved


@dataclass
class EvaluateResult:
    """What :func:`evaluate` produces; each table is the TSV file of the same name (None when not written).

    Attributes
    ----------
    selection_metrics, ranking_metrics, precision_at_k, stability, stability_pairs, prediction_gaps :
        pandas.DataFrame or None
    n_true_genes : int
    warnings : list of str
    """

    selection_metrics: pd.DataFrame | None = None
    ranking_metrics: pd.DataFrame | None = None
    precision_at_k: pd.DataFrame | None = None
    stability: pd.DataFrame | None = None
    stability_pairs: pd.DataFrame | None = None
    prediction_gaps: pd.DataFrame | None = None
    n_true_genes: int = 0
    warnings: list = field(default_factory=list)

    TABLES = ("selection_metrics", "ranking_metrics", "precision_at_k", "stability", "stability_pairs",
              "prediction_gaps")

    def tables(self) -> dict[str, pd.DataFrame]:
        """Table name -> frame for every table the step produced, in the order the CLI writes them."""
        return {name: getattr(self, name) for name in self.TABLES if getattr(self, name) is not None}


def evaluate(adata=None, cfg=None, *, truth, rankings=None, selections=None, k_values=(10, 20, 50),
             n_random: int = 3, n_jobs: int | None = None, random_state: int | None = None,
             backend=None) -> EvaluateResult:
    """Score gene rankings and selections against the true genes; with a cohort, prediction gaps too.

    Parameters
    ----------
    adata : anndata.AnnData, optional
        The cohort with the outcome in ``obs[cfg.data.label_column]``: with ``cfg``, the prediction gaps
        (the configured model refitted in CV without the top-k genes of each ranking) are computed.
    cfg : iml_genomics.config.Config, optional
        The config whose model is refitted (a bundle's or a YAML's); needed with ``adata``.
    truth : iterable of str
        The true genes.
    rankings : mapping of str to list of str, optional
        Source name -> genes, best first.
    selections : mapping of str to iterable of str, optional
        Source name -> selected genes.
    k_values : iterable of int
        k for precision at k, top-k agreement and prediction gaps.
    n_random : int
        Random removals per k for the random-gene baseline of the prediction gaps.
    n_jobs : int, optional
        Parallel refits; None = ``cfg.n_jobs``. Results do not depend on it.
    random_state : int, optional
        Seed of the CV folds and random removals; None = ``cfg.seed``.
    backend : iml_genomics.parallel.Backend, optional
        Where the prediction-gap refits run; None = built from ``cfg.parallel.scheduler`` and ``n_jobs``.
        A given backend decides over ``n_jobs`` and the config's scheduler.

    Returns
    -------
    EvaluateResult

    Raises
    ------
    iml_genomics.errors.ConfigError
        Nothing to score, prediction gaps without a ranking or with every k >= the number of genes.
    """
    from iml_genomics.errors import ConfigError
    from iml_genomics.evaluate import evaluate_against_truth

    rankings, selections = dict(rankings or {}), dict(selections or {})
    if not rankings and not selections:
        raise ConfigError("evaluate: nothing to score; pass --ranking FILE and/or --selection FILE.")
    k_values = sorted(set(k_values))
    truth = list(truth)
    tables = evaluate_against_truth(truth, rankings=rankings, selections=selections, k_values=k_values)
    result = EvaluateResult(n_true_genes=len(truth))
    for name, frame in tables.items():
        if name == "selection_metrics" and not selections:
            continue
        if name in ("ranking_metrics", "precision_at_k") and not rankings:
            continue
        setattr(result, name, frame)
    if adata is not None:
        if cfg is None:
            raise ConfigError("evaluate: prediction gaps need the config whose model is refitted (--model BUNDLE or "
                              "--config FILE).")
        if not rankings:
            raise ConfigError("evaluate: prediction gaps need a --ranking (genes are removed in ranking order).")
        cfg = resolved(cfg, n_jobs, random_state)
        result.prediction_gaps = prediction_gap_table(adata, cfg, rankings, k_values, n_random,
                                                      backend=step_backend(cfg, backend))
    return result


def prediction_gap_table(adata, cfg, rankings, k_values, n_random, *, backend=None) -> pd.DataFrame:
    """``prediction_gaps.tsv``: :func:`iml_genomics.evaluate.prediction_gaps` for every ranking, with ``source``."""
    from scipy import sparse

    from iml_genomics.errors import ConfigError
    from iml_genomics.evaluate import prediction_gaps
    from iml_genomics.io.cohort import infer_task, prepare_target
    from iml_genomics.models import build_pipeline
    from iml_genomics.training import design_matrix

    column = cfg.data.label_column
    task = infer_task(adata.obs[column], cfg.task)
    y, classes = prepare_target(adata.obs[column], task, n_splits=cfg.cv.n_splits, source=label_source(adata),
                                column=column)
    X = design_matrix(adata)
    gene_ids = list(adata.var_names)
    ks = [k for k in k_values if k < len(gene_ids)]
    if not ks:
        raise ConfigError(f"evaluate: every --k is >= the {len(gene_ids)} genes of {expression_source(adata, None)}; "
                          f"prediction gaps need k < number of genes.")
    pipeline = build_pipeline(cfg, task, sparse_input=sparse.issparse(X), n_classes=len(classes) if classes else None)
    from iml_genomics.sparse_input import densify_for

    X = densify_for(X, pipeline, key="model.name", source=expression_source(adata, None))  # HistGradientBoosting
    parts = []
    for name, ranking in rankings.items():
        gaps = prediction_gaps(X, y, gene_ids, ranking, pipeline=pipeline, task=task, classes=classes, k_values=ks,
                               n_splits=cfg.cv.n_splits, n_repeats=cfg.cv.n_repeats, n_random=n_random,
                               cv_seed=cfg.seed, random_state=cfg.seed, n_jobs=cfg.n_jobs, backend=backend)
        parts.append(gaps.assign(source=name))
    frame = pd.concat(parts, ignore_index=True)
    return frame[["source", *[c for c in frame.columns if c != "source"]]]
