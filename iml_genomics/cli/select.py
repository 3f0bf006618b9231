"""`iml-genomics select`."""

from __future__ import annotations

import click

from iml_genomics.cli.common import (echo_summary, cohort_options, common_overrides, echo_warnings, load_cohort_for, make_backend,
                                     out_option, resolve_config)


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
    from iml_genomics.io import Provenance, staged_output
    from iml_genomics.io.step_outputs import select_line, write_select
    from iml_genomics.steps.select import check_select_config

    cfg = resolve_config(config_path, overrides={
        **common_overrides(opts), "select.fdr": fdr, "select.n_draws": n_draws, "select.statistic": statistic,
        "select.s_method": s_method, "select.covariance": covariance, "select.strict": strict,
        "select.method": method})
    sc = cfg.select
    check_select_config(cfg, source=config_path or "config")  # fail before reading a large matrix
    backend = make_backend(cfg)  # an unreachable scheduler fails here too
    group_file = sc.group_file if sc.groups == "file" else None
    prov = Provenance("select", cfg.to_dict(), {"expression": expression, "labels": labels, "config": config_path,
                                                "group_file": group_file})
    adata = load_cohort_for(cfg, expression, labels)
    groups = None
    if group_file:
        from iml_genomics.io.readers import read_gene_groups

        groups = read_gene_groups(group_file)
    prov.mark("read")
    from iml_genomics.steps.select import select as select_step

    result = select_step(adata, cfg, groups=groups, groups_source=group_file, backend=backend)
    echo_warnings(result.warnings)
    prov.mark("knockoffs")
    with staged_output(out) as stage:
        write_select(stage, result, prov)
    echo_summary(select_line(result, out))
