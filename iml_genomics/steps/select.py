"""The `select` step: genes selected at a target FDR with model-X knockoffs or the dCRT."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from iml_genomics.steps._common import expression_source, label_source, require_label_column, resolved, step_backend


@dataclass
class SelectResult:
    """What :func:`select` produces.

    Attributes
    ----------
    selection : pandas.DataFrame
        ``knockoff_selection.tsv``: every input gene (genes removed by the preprocessing filters with
        ``tested`` False).
    summary : dict
        ``select_summary.json``.
    task : str
    classes : list of str or None
    positive_class : str or None
    gene_ids : list of str
        The cohort's genes, in matrix order.
    tested_genes : list of str
        Genes left after the preprocessing filters (the genes the knockoff filter saw).
    cohort : dict
        Provenance's ``cohort`` block.
    warnings : list of str
        One-line warnings for stderr (a failed exchangeability check, a reference-like positive class).
    """

    selection: pd.DataFrame
    summary: dict
    task: str
    classes: list | None
    positive_class: str | None
    gene_ids: list
    tested_genes: list
    cohort: dict
    warnings: list = field(default_factory=list)


def select(adata, cfg, *, groups=None, n_jobs: int | None = None, random_state: int | None = None,
           groups_source: str | None = None, backend=None) -> SelectResult:
    """Select genes at the target FDR ``cfg.select.fdr``.

    The configured preprocessing is fitted on all samples (select has no CV folds to leak across); the
    knockoff filter (``select.method: knockoffs``) or the distilled conditional randomization test
    (``dcrt``) then runs on the genes the filters keep.

    Parameters
    ----------
    adata : anndata.AnnData
        Samples x genes with the outcome in ``obs[cfg.data.label_column]``.
    cfg : iml_genomics.config.Config
        Resolved config (``select``, ``preprocess``, ``data``, ``model`` for the ``model`` statistic).
    groups : mapping of str to str, optional
        Gene id -> group label for group knockoffs (``select.groups: file``); genes not in the mapping are
        groups of their own. None with ``select.groups: file`` is an error; ignored otherwise.
    n_jobs : int, optional
        Parallel workers; None = ``cfg.n_jobs``. Results do not depend on it.
    random_state : int, optional
        Seed of the knockoff draws; None = ``cfg.seed``.
    groups_source : str, optional
        Where ``groups`` came from (the group file), for error messages.
    backend : iml_genomics.parallel.Backend, optional
        Where the parallel work runs; None = built from ``cfg.parallel.scheduler`` and ``n_jobs``
        (:meth:`~iml_genomics.parallel.Backend.from_config`). A given backend decides over ``n_jobs`` and
        the config's scheduler.

    Returns
    -------
    SelectResult

    Raises
    ------
    iml_genomics.errors.ConfigError
        ``select.groups`` incompatible with the method, or ``file`` without ``groups``.
    iml_genomics.errors.InputDataError
        Unusable labels, no gene left after preprocessing, a group mapping sharing no gene with the cohort.
    iml_genomics.errors.ExchangeabilityError
        ``select.strict`` and the exchangeability check failed.
    """
    import numpy as np
    from sklearn.pipeline import Pipeline

    from iml_genomics.errors import ConfigError, InputDataError
    from iml_genomics.io.cohort import infer_task, prepare_target, resolve_positive_class
    from iml_genomics.preprocess import check_counts, make_preprocessing_steps, used_gene_mask
    from iml_genomics.select import knockoff_select, with_untested_genes
    from iml_genomics.training import design_matrix

    cfg = resolved(cfg, n_jobs, random_state)
    sc = cfg.select
    check_select_config(cfg, source="config")
    backend = step_backend(cfg, backend)  # before any work: an unreachable scheduler fails at once
    expression, source = expression_source(adata, None), label_source(adata)
    column = cfg.data.label_column
    require_label_column(adata, column, source)
    from iml_genomics.single_cell import subsample_cohort

    # single-cell scale: the dense knockoff design [X, X~] of a subsample only (select.max_samples)
    adata, subsample = subsample_cohort(adata, sc.max_samples, label_column=column, seed=cfg.seed,
                                        min_per_class=2, task=cfg.task)
    pseudobulk = None
    if sc.pseudobulk_by is not None:
        from iml_genomics.pseudobulk import pseudobulk_config, pseudobulk_cohort

        # the cells become one profile per (donor, class): summed raw counts -> log1p CPM (pseudobulk.py)
        adata, pseudobulk = pseudobulk_cohort(adata, cfg, task=infer_task(adata.obs[column], cfg.task),
                                              source=source, expression=expression)
        cfg = pseudobulk_config(cfg)
    y_raw = adata.obs[column]
    task = infer_task(y_raw, cfg.task)
    y, classes = prepare_target(y_raw, task, n_splits=2, source=source, column=column)
    positive, warning = resolve_positive_class(classes, cfg.data.positive_class, source=source, column=column)
    warnings = [warning] if warning else []
    X = design_matrix(adata)
    was_sparse = hasattr(X, "toarray")
    gene_ids = list(adata.var_names)
    check_counts(X, cfg.preprocess.transform, expression, list(adata.obs_names), gene_ids)
    if hasattr(X, "toarray"):
        X = X.toarray()  # the knockoff model is dense; centring needs dense input
    steps = make_preprocessing_steps(cfg.preprocess)
    input_gene_ids = gene_ids
    if steps:
        X = Pipeline(steps).fit_transform(X)
        keep = used_gene_mask(Pipeline([*steps, ("model", None)]), len(gene_ids))
        gene_ids = [g for g, k in zip(gene_ids, keep) if k]
    if hasattr(X, "toarray"):
        X = X.toarray()
    X = np.asarray(X, dtype=np.float64)
    if subsample is not None or was_sparse:
        from iml_genomics.sparse_input import drop_constant_genes

        # sparse counts (and a subsample of cells) leave genes with no count at all: untested, not a refusal
        X, gene_ids, dropped = drop_constant_genes(X, gene_ids)
        if dropped:
            warnings.append(f"iml-genomics: warning: select: {len(dropped)} gene(s) constant across the "
                            f"{X.shape[0]} cells used (first '{dropped[0]}') are not tested (W = NaN); "
                            f"raise select.max_samples or filter genes (preprocess.min_expression) to test them.")
    if cfg.data.covariates:
        from iml_genomics.covariates import require_column

        # an AnnData handed over in Python skipped the reader's checks: absent or blank -> one line
        for column in cfg.data.covariates:
            require_column(adata.obs, column, source=label_source(adata))
    covariates = adata.obs[cfg.data.covariates] if cfg.data.covariates else None
    group_labels = None
    if sc.groups == "clusters":
        group_labels = "clusters"
    elif sc.groups == "file":
        if groups is None:
            raise ConfigError("config: select.groups is 'file' but no gene -> group mapping was given; give a TSV "
                              "with columns gene_id and group as select.group_file.")
        group_labels = gene_groups(groups, gene_ids, source=groups_source or sc.group_file or "groups")
    if not gene_ids:
        raise InputDataError(f"{expression}: no genes left after preprocessing; relax the preprocess filters.")
    if sc.method == "dcrt":
        from iml_genomics.select.dcrt import dcrt_select

        result = dcrt_select(X, y, gene_ids, task=task, fdr=sc.fdr, covariance=sc.covariance,
                             factor_rank=sc.factor_rank, covariates=covariates, random_state=cfg.seed,
                             backend=backend, fdr_procedure=sc.fdr_procedure, positive_class=positive)
    else:
        result = knockoff_select(
            X, y, gene_ids, task=task, fdr=sc.fdr, offset=sc.offset, statistic=sc.statistic, s_method=sc.s_method,
            covariance=sc.covariance, factor_rank=sc.factor_rank, n_draws=sc.n_draws, groups=group_labels,
            covariates=covariates, random_state=cfg.seed, backend=backend, cluster_correlation=sc.cluster_correlation,
            derandomize_fdr=sc.derandomize_fdr, model=cfg.model.name, model_params=cfg.model.params,
            max_pairs=sc.max_pairs, positive_class=positive)
    if result.table.empty:
        raise InputDataError(f"{expression}: no genes left after preprocessing; relax the preprocess filters.")
    verdict = exchangeability_verdict(result.summary["diagnostics"]["exchangeability"], strict=sc.strict)
    if verdict:
        warnings.append(verdict)
    result.summary["n_genes_not_tested"] = len(input_gene_ids) - len(gene_ids)
    cohort = {"n_samples": adata.n_obs, "n_genes": adata.n_vars, "n_genes_tested": len(gene_ids), "task": task}
    if subsample is not None:
        cohort["subsample"] = subsample
    if pseudobulk is not None:
        cohort["pseudobulk"] = pseudobulk
        result.summary["pseudobulk"] = pseudobulk
    return SelectResult(selection=with_untested_genes(result.table, input_gene_ids), summary=result.summary,
                        task=task, classes=classes, positive_class=positive, gene_ids=input_gene_ids,
                        tested_genes=gene_ids, cohort=cohort, warnings=warnings)


def check_select_config(cfg, *, source: str) -> None:
    """Refuse select options that cannot go together, before any data is read.

    Raises
    ------
    iml_genomics.errors.ConfigError
        ``select.groups`` with the dCRT (single genes only), or ``select.groups: file`` without
        ``select.group_file``.
    """
    from iml_genomics.errors import ConfigError

    sc = cfg.select
    if sc.method == "dcrt" and sc.groups != "none":
        raise ConfigError(f"{source}: select.groups is {sc.groups!r} but select.method dcrt tests "
                          f"single genes; set select.groups: none or select.method: knockoffs.")
    if sc.groups == "file" and not sc.group_file:
        raise ConfigError(f"{source}: select.groups is 'file' but select.group_file is not set; "
                          f"give a TSV with columns gene_id and group.")
    if sc.method == "knockoffs" and sc.statistic == "model":
        from iml_genomics.sparse_input import check_model_statistic

        check_model_statistic(cfg, source=source)  # before hours of training, not after them


def gene_groups(groups, gene_ids, *, source: str) -> list:
    """Group labels in ``gene_ids`` order from a gene -> group mapping (None: a group of its own).

    Raises
    ------
    iml_genomics.errors.InputDataError
        No gene of the mapping is a gene of the analysis: every gene would be its own group, and plain
        knockoffs would run under the name of group knockoffs.
    """
    from iml_genomics.errors import InputDataError
    from iml_genomics.io.ids import show_id

    mapping = {str(g): (None if v is None else str(v)) for g, v in dict(groups).items()}
    if not set(mapping) & set(gene_ids):
        example = next(iter(mapping), "")
        raise InputDataError(f"{source}: no gene of the group file is a gene of the analysis (file: "
                             f"'{show_id(example, 60)}', ...; matrix: '{show_id(gene_ids[0], 60)}', ...). Use the "
                             f"matrix's gene ids in column gene_id.")
    return [mapping.get(g) or None for g in gene_ids]  # None: not in the file, a group of its own


def exchangeability_verdict(check: dict, *, strict: bool) -> str | None:
    """The one-line warning when the exchangeability check fails (None when it passed).

    Raises
    ------
    iml_genomics.errors.ExchangeabilityError
        With ``strict``, instead of the warning: the selection is refused (exit 3).
    """
    from iml_genomics.errors import ExchangeabilityError

    if check.get("passed", False):
        return None
    if "skipped" in check:
        what = f"the exchangeability check could not run ({check['skipped']})"
    else:
        worst = check["worst_pairs"][0] if check["worst_pairs"] else None
        what = (f"the covariance model failed the knockoff exchangeability check: {check['fraction_exceeding']:.1%} of "
                f"{check['n_pairs']} neighbour pairs exceed the limit (at most {check['max_fraction']:.0%})"
                + (f"; worst pair {worst['gene_j']}, {worst['gene_k']}: corr {worst['corr_x_x']:.2f} between the "
                   f"genes, {worst['corr_xk_x']:.2f} between the knockoff of {worst['gene_j']} and "
                   f"{worst['gene_k']}, {worst['corr_xk_xk']:.2f} between their knockoffs" if worst else "")
                + f"; the {check['covariance_model']} covariance model misses correlation between neighbouring genes")
    if strict:
        raise ExchangeabilityError(f"{what}; select --strict refuses to report this selection. Try another "
                                   f"select.covariance or fewer genes (preprocess.top_k_variable), or drop --strict.")
    return (f"select: warning: {what}; the FDR guarantee may not hold (see select_summary.json "
            f"diagnostics.exchangeability).")
