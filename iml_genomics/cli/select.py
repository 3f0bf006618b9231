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
@click.option("--covariance", default=None, help="auto, ledoit_wolf, factor or factor_blocks [config select.covariance].")
@click.option("--strict/--no-strict", default=None,
              help="Refuse (exit 3, nothing written) when the exchangeability check fails [config select.strict].")
@click.option("--method", default=None,
              help="knockoffs, or dcrt (distilled conditional randomization test: a p-value per gene, "
                   "Benjamini-Hochberg) [config select.method].")
def select(config_path, expression, labels, out, fdr, n_draws, statistic, s_method, covariance, strict, method,
           **opts):
    """Select genes at a target FDR with model-X knockoffs or the dCRT.

    \b
    Writes to OUT: knockoff_selection.tsv (every gene: w, selected,
    selection_frequency, e_value, rank, group, tested, p_value, q_value),
    select_summary.json, provenance.json.
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
        "select.s_method": s_method, "select.covariance": covariance, "select.strict": strict,
        "select.method": method})
    sc = cfg.select
    if sc.method == "dcrt" and sc.groups != "none":  # fail before reading a large matrix
        from iml_genomics.errors import ConfigError

        raise ConfigError(f"{config_path or 'config'}: select.groups is {sc.groups!r} but select.method dcrt tests "
                          f"single genes; set select.groups: none or select.method: knockoffs.")
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
    if not gene_ids:
        raise InputDataError(f"{expression}: no genes left after preprocessing; relax the preprocess filters.")
    if sc.method == "dcrt":
        from iml_genomics.select.dcrt import dcrt_select

        result = dcrt_select(X, y, gene_ids, task=task, fdr=sc.fdr, covariance=sc.covariance,
                             factor_rank=sc.factor_rank, covariates=covariates, random_state=cfg.seed,
                             n_jobs=n_jobs, fdr_procedure=sc.fdr_procedure, positive_class=positive)
    else:
        result = knockoff_select(
            X, y, gene_ids, task=task, fdr=sc.fdr, offset=sc.offset, statistic=sc.statistic, s_method=sc.s_method,
            covariance=sc.covariance, factor_rank=sc.factor_rank, n_draws=sc.n_draws, groups=groups,
            covariates=covariates, random_state=cfg.seed, n_jobs=n_jobs, cluster_correlation=sc.cluster_correlation,
            derandomize_fdr=sc.derandomize_fdr, model=cfg.model.name, model_params=cfg.model.params,
            max_pairs=sc.max_pairs, positive_class=positive)
    if result.table.empty:
        raise InputDataError(f"{expression}: no genes left after preprocessing; relax the preprocess filters.")
    prov.mark("knockoffs")
    _exchangeability_verdict(result.summary["diagnostics"]["exchangeability"], strict=sc.strict)
    prov.extra["cohort"] = {"n_samples": adata.n_obs, "n_genes": adata.n_vars, "n_genes_tested": len(gene_ids),
                            "task": task}
    result.summary["n_genes_not_tested"] = len(input_gene_ids) - len(gene_ids)
    with staged_output(out) as stage:
        write_tsv(with_untested_genes(result.table, input_gene_ids), stage / "knockoff_selection.tsv")
        write_json(result.summary, stage / "select_summary.json")
        prov.mark("write")
        prov.write(stage)
    s = result.summary
    if s["method"] == "dcrt":
        click.echo(f"select: {len(gene_ids)} genes, {s['covariance_model']} covariance"
                   f"{' (k = ' + str(s['factor_rank']) + ')' if s['factor_rank'] else ''}, dCRT on "
                   f"{s['n_screened']} screened gene(s), {s['fdr_procedure'].upper()}: {s['n_selected']} selected at "
                   f"FDR {s['target_fdr']:g}; wrote {out}", err=True)
        return
    click.echo(f"select: {len(gene_ids)} genes, {s['covariance_model']} covariance"
               f"{' (k = ' + str(s['factor_rank']) + ')' if s['factor_rank'] else ''}, {s['s_method']} S, "
               f"{s['statistic']} W, {s['n_draws']} draw(s): {s['n_selected']} selected at FDR {s['target_fdr']:g}; "
               f"wrote {out}", err=True)


def _read_groups(path, gene_ids):
    """gene_id -> group labels for ``select.groups: file``; genes missing from the file are their own group."""
    import pandas as pd

    from iml_genomics.errors import ConfigError, InputDataError
    from iml_genomics.io import read_table

    if not path:
        raise ConfigError("config: select.groups is 'file' but select.group_file is not set; give a TSV with "
                          "columns gene_id and group.")
    table = read_table(path, what="group file")
    if "gene_id" not in table.columns or "group" not in table.columns:
        raise InputDataError(f"{path}: group file needs columns 'gene_id' and 'group'; found "
                             f"{', '.join(map(str, table.columns))}.")
    mapping = {g: str(v).strip() for g, v in zip(table["gene_id"].astype(str).str.strip(), table["group"])
               if not pd.isna(v)}
    if not set(mapping) & set(gene_ids):
        # every gene would be its own group: plain knockoffs run under the name of group knockoffs
        from iml_genomics.io.ids import show_id

        example = next(iter(mapping), "")
        raise InputDataError(f"{path}: no gene of the group file is a gene of the analysis (file: "
                             f"'{show_id(example, 60)}', ...; matrix: '{show_id(gene_ids[0], 60)}', ...). Use the "
                             f"matrix's gene ids in column gene_id.")
    return [mapping.get(g) or None for g in gene_ids]  # None: not in the file, a group of its own


def _exchangeability_verdict(check: dict, *, strict: bool) -> None:
    """One warning line on stderr when the exchangeability check fails; with ``strict``, refuse (exit 3)."""
    from iml_genomics.errors import ExchangeabilityError

    if check.get("passed", False):
        return
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
    click.echo(f"select: warning: {what}; the FDR guarantee may not hold (see select_summary.json "
               f"diagnostics.exchangeability).", err=True)
