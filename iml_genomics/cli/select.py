"""`iml-genomics select`."""

from __future__ import annotations

import click

from iml_genomics.cli.common import cohort_options, common_overrides, load_cohort_for, out_option, resolve_config


@click.command()
@cohort_options
@out_option
@click.option("--fdr", type=float, default=None, help="Target false discovery rate q [config select.fdr].")
@click.option("--draws", "n_draws", type=int, default=None,
              help="Knockoff draws aggregated with e-values [config select.n_draws].")
@click.option("--statistic", default=None, help="lasso, random_forest or model [config select.statistic].")
@click.option("--s-method", default=None, help="mvr, sdp or equicorrelated [config select.s_method].")
@click.option("--covariance", default=None, help="auto, ledoit_wolf or factor [config select.covariance].")
def select(config_path, expression, labels, out, fdr, n_draws, statistic, s_method, covariance, **opts):
    """Select genes with model-X knockoffs at a target FDR.

    \b
    Writes to OUT: knockoff_selection.tsv (every gene: w, selected,
    selection_frequency, e_value, rank, group, tested), select_summary.json,
    provenance.json.
    \b
    Example:
      iml-genomics select --config configs/demo.yaml \\
        --expression test_data/demo_expression.csv.gz \\
        --labels test_data/demo_labels.tsv --label-column condition --out results/select
    """
    import numpy as np

    from iml_genomics.errors import InputDataError
    from iml_genomics.io import Provenance, staged_output, write_json, write_tsv
    from iml_genomics.io.cohort import infer_task, prepare_target
    from iml_genomics.parallel import effective_n_jobs
    from iml_genomics.preprocess import check_counts, make_preprocessing_steps, used_gene_mask
    from iml_genomics.select import knockoff_select, with_untested_genes
    from iml_genomics.training import design_matrix

    cfg = resolve_config(config_path, overrides={
        **common_overrides(opts), "select.fdr": fdr, "select.n_draws": n_draws, "select.statistic": statistic,
        "select.s_method": s_method, "select.covariance": covariance})
    sc = cfg.select
    if sc.groups == "file" and not sc.group_file:  # fail before reading a large matrix
        from iml_genomics.errors import ConfigError

        raise ConfigError(f"{config_path or 'config'}: select.groups is 'file' but select.group_file is not set; "
                          f"give a TSV with columns gene_id and group.")
    prov = Provenance("select", cfg.to_dict(), {"expression": expression, "labels": labels, "config": config_path,
                                                "group_file": sc.group_file if sc.groups == "file" else None})
    adata = load_cohort_for(cfg, expression, labels)
    prov.mark("read")
    source = str(labels or expression)
    y_raw = adata.obs[cfg.data.label_column]
    task = infer_task(y_raw, cfg.task)
    y, classes = prepare_target(y_raw, task, n_splits=2, source=source, column=cfg.data.label_column)
    from iml_genomics.cli.common import check_positive_class

    positive = check_positive_class(cfg, classes, source=source)
    X = design_matrix(adata)
    gene_ids = list(adata.var_names)
    check_counts(X, cfg.preprocess.transform, str(expression), list(adata.obs_names), gene_ids)
    # the configured preprocessing, fitted on all samples (select has no CV folds to leak across)
    from sklearn.pipeline import Pipeline

    if hasattr(X, "toarray"):
        X = X.toarray()  # the knockoff model is dense; centring needs dense input
    steps = make_preprocessing_steps(cfg.preprocess)
    input_gene_ids = gene_ids
    if steps:
        pipe = Pipeline(steps)
        X = pipe.fit_transform(X)
        keep = used_gene_mask(Pipeline([*steps, ("model", None)]), len(gene_ids))
        gene_ids = [g for g, k in zip(gene_ids, keep) if k]
    if hasattr(X, "toarray"):
        X = X.toarray()
    X = np.asarray(X, dtype=np.float64)
    covariates = adata.obs[cfg.data.covariates] if cfg.data.covariates else None
    groups = None
    if sc.groups == "clusters":
        groups = "clusters"
    elif sc.groups == "file":
        groups = _read_groups(sc.group_file, gene_ids)
    prov.mark("preprocess")
    n_jobs = effective_n_jobs(cfg.n_jobs)
    result = knockoff_select(
        X, y, gene_ids, task=task, fdr=sc.fdr, offset=sc.offset, statistic=sc.statistic, s_method=sc.s_method,
        covariance=sc.covariance, factor_rank=sc.factor_rank, n_draws=sc.n_draws, groups=groups,
        covariates=covariates, random_state=cfg.seed, n_jobs=n_jobs, cluster_correlation=sc.cluster_correlation,
        derandomize_fdr=sc.derandomize_fdr, model=cfg.model.name, model_params=cfg.model.params,
        max_pairs=sc.max_pairs, positive_class=positive)
    if result.table.empty:
        raise InputDataError(f"{expression}: no genes left after preprocessing; relax the preprocess filters.")
    prov.mark("knockoffs")
    prov.extra["cohort"] = {"n_samples": adata.n_obs, "n_genes": adata.n_vars, "n_genes_tested": len(gene_ids),
                            "task": task}
    result.summary["n_genes_not_tested"] = len(input_gene_ids) - len(gene_ids)
    with staged_output(out) as stage:
        write_tsv(with_untested_genes(result.table, input_gene_ids), stage / "knockoff_selection.tsv")
        write_json(result.summary, stage / "select_summary.json")
        prov.mark("write")
        prov.write(stage)
    s = result.summary
    click.echo(f"select: {len(gene_ids)} genes, {s['covariance_model']} covariance"
               f"{' (k = ' + str(s['factor_rank']) + ')' if s['factor_rank'] else ''}, {s['s_method']} S, "
               f"{s['statistic']} W, {s['n_draws']} draw(s): {s['n_selected']} selected at FDR {s['target_fdr']:g}; "
               f"wrote {out}", err=True)


def _read_groups(path, gene_ids):
    """gene_id -> group labels for ``select.groups: file``; genes missing from the file are their own group."""
    from iml_genomics.errors import ConfigError, InputDataError
    from iml_genomics.io import read_table

    if not path:
        raise ConfigError("config: select.groups is 'file' but select.group_file is not set; give a TSV with "
                          "columns gene_id and group.")
    table = read_table(path, what="group file")
    if "gene_id" not in table.columns or "group" not in table.columns:
        raise InputDataError(f"{path}: group file needs columns 'gene_id' and 'group'; found "
                             f"{', '.join(map(str, table.columns))}.")
    mapping = dict(zip(table["gene_id"].astype(str), table["group"].astype(str)))
    return [mapping.get(g, f"__single__{g}") for g in gene_ids]
