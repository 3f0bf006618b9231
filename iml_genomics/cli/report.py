"""`iml-genomics report`."""

from __future__ import annotations

import click

from iml_genomics.cli.common import echo_summary, echo_warnings, out_option, resolve_config


class _MultiValueOption(click.Option):
    """An option that takes every following argument up to the next option:
    ``--inputs DIR [DIR ...]`` (``--inputs a --inputs b`` works too)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("multiple", True)
        super().__init__(*args, **kwargs)

    def add_to_parser(self, parser, ctx):
        super().add_to_parser(parser, ctx)
        for name in self.opts:
            our = parser._long_opt.get(name) or parser._short_opt.get(name)
            if our is None:
                continue
            previous = our.process

            def process(value, state, _previous=previous, _parser=parser):
                values = [value]
                while state.rargs and not _is_option(state.rargs[0], _parser):
                    values.append(state.rargs.pop(0))
                for v in values:
                    _previous(v, state)

            our.process = process


def _is_option(arg: str, parser) -> bool:
    return arg.startswith("-") and (arg.split("=", 1)[0] in parser._long_opt or arg in parser._short_opt
                                    or arg == "--")


@click.command()
@click.option("--inputs", "input_dirs", cls=_MultiValueOption, required=True, type=click.Path(file_okay=False),
              help="Output directories of train, explain and/or select (any subset; recognised by their files).")
@click.option("--gene-sets", type=click.Path(dir_okay=False), default=None,
              help="GMT file (plain or .gz) [config report.gene_sets].")
@click.option("--gene-map", type=click.Path(dir_okay=False), default=None,
              help="TSV/CSV mapping measured ids (probes, Ensembl) to symbols [config report.gene_map].")
@out_option
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="YAML config; when omitted, the config recorded by train (else select, explain) in provenance.json.")
@click.option("--expression", type=click.Path(dir_okay=False), default=None,
              help="Expression matrix for univariate effects [path recorded by train].")
@click.option("--labels", type=click.Path(dir_okay=False), default=None,
              help="Labels table [path recorded by train].")
@click.option("--label-column", default=None, help="Outcome column [config data.label_column].")
@click.option("--positive-class", default=None,
              help="Two classes: the class higher_in, effects, SHAP signs and gene-set directions refer to "
                   "[config data.positive_class, else explain's / train's, else the last label in sorted order].")
@click.option("--sample-id-column", default=None, help="Sample id column of --labels [first column].")
@click.option("--genes-as-rows", is_flag=True, default=None, help="Matrix has genes as rows.")
@click.option("--samples", default=None,
              help="Comma-separated sample ids whose local explanations are shown [config report.samples].")
@click.option("--top-k", type=int, default=None,
              help="Top genes of the ranking used for over-representation when no selection exists "
                   "[config report.top_k].")
@click.option("--min-set-size", type=int, default=None, help="Smallest gene set tested [config report.min_set_size].")
@click.option("--max-set-size", type=int, default=None, help="Largest gene set tested [config report.max_set_size].")
@click.option("--permutations", type=int, default=None,
              help="Permutations of the rank-based set test [config report.n_permutations].")
@click.option("--ranking-metric", default=None,
              help="auto, mean_abs_shap, univariate or knockoff_w [config report.ranking_metric].")
@click.option("--title", default=None, help="Report title [config report.title].")
@click.option("--seed", type=int, default=None, help="Seed of the permutation test [config seed].")
@click.option("--jobs", "n_jobs", type=int, default=None, help="Accepted for symmetry; the report is single-process.")
def report(input_dirs, gene_sets, gene_map, out, config_path, expression, labels, label_column, positive_class,
           sample_id_column, genes_as_rows, samples, top_k, min_set_size, max_set_size, permutations, ranking_metric, title, seed,
           n_jobs):
    """Biomarker table, gene-set results and a self-contained HTML report.

    \b
    Writes to OUT: biomarkers.tsv, gene_sets.tsv (when gene sets are given),
    group_attributions.parquet (per sample x set sum |SHAP|, when explain attributions exist),
    report.html, report_summary.json, provenance.json.
    \b
    Example (Golub, after train/explain/select into results/golub/*):
      iml-genomics report --inputs results/golub/train results/golub/explain results/golub/select \\
        --gene-sets test_data/go_bp_2022-07.gmt.gz --gene-map test_data/golub_probes.tsv \\
        --out results/golub/report
    """
    import sys
    from pathlib import Path

    from iml_genomics import genesets as gs
    from iml_genomics.config import config_from_dict
    from iml_genomics.errors import InputDataError
    from iml_genomics.io import Provenance, load_cohort, staged_output
    from iml_genomics.io.step_outputs import report_line, write_report
    from iml_genomics.report import cohort_paths, load_inputs, measured_genes
    from iml_genomics.steps.report import report as report_step

    inputs = load_inputs(input_dirs)
    overrides = {
        "data.label_column": label_column, "data.positive_class": positive_class,
        "data.sample_id_column": sample_id_column,
        "data.orientation": genes_as_rows, "report.gene_sets": gene_sets, "report.gene_map": gene_map,
        "report.top_k": top_k, "report.min_set_size": min_set_size, "report.max_set_size": max_set_size,
        "report.n_permutations": permutations, "report.ranking_metric": ranking_metric, "report.title": title,
        "seed": seed, "n_jobs": n_jobs,
        "report.samples": [s.strip() for s in samples.split(",") if s.strip()] if samples else None,
    }
    recorded_step = next((s for s in ("train", "select", "explain", "compare")
                          if isinstance((inputs.provenance.get(s) or {}).get("config"), dict)), None)
    if config_path is None and recorded_step is not None:
        # the earlier step's resolved config: same data section (label column, orientation) without retyping it
        cfg = config_from_dict(inputs.provenance[recorded_step]["config"],
                               source=f"{inputs.dirs[recorded_step] / 'provenance.json'}")
        for key, value in overrides.items():
            if key == "data.orientation":
                value = "genes_x_samples" if value else None
            cfg.override(key, value)
    else:
        cfg = resolve_config(config_path, overrides=overrides)
    rc = cfg.report
    if config_path:
        # paths written in a config file may be relative to the file rather than to the working directory
        for key in ("gene_sets", "gene_map", "alias_map"):
            value = getattr(rc, key)
            if value and not Path(value).exists() and (Path(config_path).parent / value).exists() \
                    and overrides.get(f"report.{key}") is None:
                setattr(rc, key, str(Path(config_path).parent / value))
    # the report runs in this process: a scheduler named by the config (or by the train run it was read from)
    # is neither contacted nor recorded
    cfg.parallel.scheduler = None
    recorded = cohort_paths(inputs)
    expression = expression or recorded["expression"]
    labels = labels or recorded["labels"]
    prov = Provenance("report", cfg.to_dict(), {
        **{f"inputs_{step}": str(d) for step, d in inputs.dirs.items()}, "gene_sets": rc.gene_sets,
        "gene_map": rc.gene_map, "expression": expression, "labels": labels, "config": config_path})
    prov.mark("read_inputs")
    adata = None
    if expression:
        if not Path(expression).is_file():
            raise InputDataError(f"{expression}: expression file (recorded by train) not found. Pass --expression "
                                 f"and --labels to point at the cohort.")
        adata = load_cohort(expression, labels=labels,
                            label_column=cfg.data.label_column or (inputs.model or {}).get("label_column"),
                            sample_id_column=cfg.data.sample_id_column,
                            genes_as_rows=cfg.data.orientation == "genes_x_samples", layer=cfg.data.layer,
                            drop_unmatched=cfg.data.drop_unmatched, require_labels=False,
                            positive_class=positive_class or cfg.data.positive_class
                            or (inputs.explain_summary or {}).get("positive_class")
                            or (inputs.model or {}).get("positive_class"))
    collection = gs.read_gmt(rc.gene_sets) if rc.gene_sets else None
    genes = [str(g) for g in adata.var_names] if adata is not None else measured_genes(inputs)
    from iml_genomics.gene_ids import load_gene_map

    gene_table = load_gene_map(rc.gene_map, genes, id_column=rc.gene_map_id_column,
                               symbol_column=rc.gene_map_symbol_column, alias_map=rc.alias_map)
    prov.mark("read_cohort_and_gene_sets")
    explicit = positive_class is not None or (config_path is not None and cfg.data.positive_class is not None)
    result = report_step(adata, cfg, inputs=inputs, collection=collection, gene_map=gene_table,
                         positive_class=cfg.data.positive_class if explicit else None,
                         own_provenance={"command line": " ".join(sys.argv), "seed": cfg.seed,
                                         "gene sets": rc.gene_sets, "gene map": rc.gene_map,
                                         "expression": expression, "labels": labels})
    echo_warnings(result.warnings)
    prov.mark("analyse")
    with staged_output(out) as stage:
        write_report(stage, result, prov)
    echo_summary(report_line(result, out))
