"""`iml-genomics simulate`."""

from __future__ import annotations

import click

from iml_genomics.cli.common import CommaSeparated, echo_summary, flatten, out_option

FORMATS = ("csv.gz", "csv", "tsv", "tsv.gz", "parquet", "h5ad")


@click.command()
@click.option("--family", type=click.Choice(["gaussian", "pathway", "semi-synthetic", "single-cell"]), required=True,
              help="Simulation family (docs/simulate.md); single-cell writes sparse counts as .h5ad only.")
@out_option
@click.option("--format", "formats", type=CommaSeparated(click.Choice(FORMATS)), multiple=True,
              default=("csv.gz",), show_default=True,
              help="Expression file format(s): parquet,h5ad or repeat the option.")
@click.option("--prefix", default="simulated", show_default=True, help="File name prefix.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed; same seed, same bytes.")
@click.option("--n-samples", type=click.IntRange(min=4), default=200, show_default=True,
              help="Samples (gaussian, pathway).")
@click.option("--n-genes", type=click.IntRange(min=2), default=500, show_default=True, help="Genes (gaussian, pathway).")
@click.option("--n-signal", type=click.IntRange(min=1), default=10, show_default=True,
              help="Planted genes (gaussian, semi-synthetic).")
@click.option("--effect-size", type=float, default=1.0, show_default=True,
              help="Coefficient magnitude of a planted gene (gaussian, semi-synthetic).")
@click.option("--outcome", type=click.Choice(["binary", "multiclass", "continuous"]), default="binary",
              show_default=True, help="Outcome type (gaussian, semi-synthetic).")
@click.option("--n-classes", type=click.IntRange(min=2), default=None,
              help="Classes: multiclass outcome (default 3) or pathway family (default 2).")
@click.option("--interactions", is_flag=True, help="Add pairwise interactions of planted genes (gaussian, semi-synthetic).")
@click.option("--correlation", type=click.Choice(["block", "factor"]), default="block", show_default=True,
              help="Gene correlation (gaussian).")
@click.option("--rho", type=click.FloatRange(0, 1, max_open=True), default=0.5, show_default=True,
              help="Within-block correlation / factor share of variance (gaussian).")
@click.option("--block-size", type=click.IntRange(min=1), default=20, show_default=True, help="Genes per block (gaussian).")
@click.option("--n-factors", type=click.IntRange(min=1), default=10, show_default=True, help="Factors (gaussian, factor).")
@click.option("--pathway-size", type=click.IntRange(min=1), default=10, show_default=True, help="Genes per pathway (pathway).")
@click.option("--overlap", type=click.IntRange(min=0), default=0, show_default=True,
              help="Genes shared by consecutive pathways (pathway).")
@click.option("--n-characteristic", type=click.IntRange(min=1), default=2, show_default=True,
              help="Characteristic pathways per class (pathway).")
@click.option("--over-weight", type=click.FloatRange(min=0, min_open=True), default=2.0, show_default=True,
              help="Dirichlet weight factor of characteristic pathways (pathway).")
@click.option("--concentration", type=click.FloatRange(min=0, min_open=True), default=4.0, show_default=True,
              help="Dirichlet parameter of an ordinary pathway (pathway).")
@click.option("--gene-concentration", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True,
              help="Dirichlet parameter of gene weights within a pathway (pathway).")
@click.option("--n-reads", type=click.IntRange(min=1), default=1_500_000, show_default=True,
              help="Reads per sample before CPM (pathway).")
@click.option("--class-proportions", default=None, help="Comma-separated class shares, e.g. 0.3,0.7 (pathway).")
@click.option("--expression", type=click.Path(dir_okay=False), default=None,
              help="Real expression matrix to plant an outcome in (semi-synthetic).")
@click.option("--genes-as-rows", is_flag=True, help="--expression has genes as rows (semi-synthetic).")
@click.option("--signal-genes", default=None,
              help="Comma-separated genes, or a file with one gene per line, to plant on (semi-synthetic); random otherwise.")
@click.option("--signal-seed", type=int, default=None, help="Seed of the random planted genes [--seed] (semi-synthetic).")
@click.option("--transform", type=click.Choice(["none", "log1p"]), default="none", show_default=True,
              help="Transform of --expression before planting, for counts (semi-synthetic).")
@click.option("--fold-change", type=click.FloatRange(min=1, min_open=True), default=4.0, show_default=True,
              help="Marker up-regulation in its own cell type (single-cell; --n-signal markers per type).")
@click.option("--n-donors", type=click.IntRange(min=0), default=0, show_default=True,
              help="Donors the cells come from, with a donor effect on every gene; labels column donor, for "
                   "select.pseudobulk_by (single-cell; 0 = no donors).")
@click.option("--donor-sd", type=click.FloatRange(min=0), default=0.3, show_default=True,
              help="SD of a donor's log effect on a gene (single-cell, with --n-donors).")
def simulate(family, out, formats, prefix, seed, **opts):
    """Write a cohort with known truth: expression, labels, true genes and pathways.

    \b
    Writes to OUT: PREFIX_expression.FMT, PREFIX_labels.tsv (sample_id,
    condition), PREFIX_truth.tsv (gene_id, ...), PREFIX_pathways.gmt,
    provenance.json.
    \b
    Examples:
      iml-genomics simulate --family gaussian --n-samples 200 --n-genes 1000 --out sim/
      iml-genomics simulate --family pathway --overlap 3 --format h5ad --out sim_lda/
      iml-genomics simulate --family semi-synthetic \\
        --expression test_data/golub_expression.tsv.gz --n-signal 10 --out sim_golub/
    """
    formats = flatten(formats)  # --format parquet,h5ad and --format parquet --format h5ad alike
    from pathlib import Path

    import pandas as pd

    from iml_genomics.errors import ConfigError, InputDataError
    from iml_genomics.io import Provenance, staged_output
    from iml_genomics.simulate import simulate as run_simulation
    from iml_genomics.simulate import write_cohort

    if family == "single-cell":
        return _simulate_single_cell(out, prefix, seed, opts)
    params = _family_params(family, opts)
    prov = Provenance("simulate", {"seed": seed, "n_jobs": 1, "family": family, "formats": list(formats),
                                   "prefix": prefix, **{k: v for k, v in params.items() if k != "expression"}},
                      {"expression": opts.get("expression")})
    if family == "semi-synthetic":
        from iml_genomics.io import read_expression

        if not opts.get("expression"):
            raise ConfigError("simulate: --family semi-synthetic needs --expression FILE (a real matrix).")
        X, sample_ids, gene_ids, _ = read_expression(opts["expression"], genes_as_rows=opts["genes_as_rows"])
        if hasattr(X, "toarray"):
            X = X.toarray()
        params["expression"] = pd.DataFrame(X, index=sample_ids, columns=gene_ids)
        spec = opts.get("signal_genes")
        if spec:
            path = Path(spec)
            names = path.read_text().split() if path.is_file() else [g.strip() for g in spec.split(",") if g.strip()]
            params["signal_genes"] = names
    try:
        cohort = run_simulation(family, seed=seed, **params)
    except KeyError as exc:
        raise InputDataError(f"{opts.get('expression')}: {exc.args[0]}. Check --signal-genes.") from None
    except ValueError as exc:
        raise ConfigError(f"simulate: {exc}.") from None
    prov.mark("simulate")
    prov.extra["cohort"] = {"n_samples": cohort.expression.shape[0], "n_genes": cohort.expression.shape[1],
                            "n_true_genes": len(cohort.true_genes), "n_pathways": len(cohort.pathways),
                            "class_counts": cohort.labels["condition"].astype(str).value_counts().sort_index().to_dict()
                            if cohort.params.get("outcome") != "continuous" else None}
    prov.extra["simulation"] = {k: v for k, v in cohort.params.items()
                                if k not in ("loadings", "pathway_weights", "gene_weights")}
    with staged_output(out) as stage:
        write_cohort(cohort, stage, prefix, formats=tuple(dict.fromkeys(formats)), detailed_truth=True)
        prov.mark("write")
        prov.write(stage)
    echo_summary(f"simulate: {family}, {cohort.expression.shape[0]} samples x {cohort.expression.shape[1]} genes, "
                 f"{len(cohort.true_genes)} true genes, {len(cohort.pathways)} pathways; wrote {out}")


def _family_params(family: str, o: dict) -> dict:
    """The keyword arguments of the chosen family's simulator."""
    from iml_genomics.errors import ConfigError

    if family == "gaussian":
        return {"n_samples": o["n_samples"], "n_genes": o["n_genes"], "n_signal": o["n_signal"],
                "effect_size": o["effect_size"], "rho": o["rho"], "block_size": o["block_size"],
                "outcome": o["outcome"], "n_classes": o["n_classes"] or 3, "interactions": o["interactions"],
                "correlation": o["correlation"], "n_factors": o["n_factors"]}
    if family == "pathway":
        props = None
        if o.get("class_proportions"):
            try:
                props = [float(v) for v in o["class_proportions"].split(",")]
            except ValueError:
                raise ConfigError(f"simulate: --class-proportions must be comma-separated numbers; "
                                  f"got {o['class_proportions']!r}.") from None
        return {"n_samples": o["n_samples"], "n_genes": o["n_genes"], "pathway_size": o["pathway_size"],
                "overlap": o["overlap"], "n_classes": o["n_classes"] or 2, "n_characteristic": o["n_characteristic"],
                "over_weight": o["over_weight"], "concentration": o["concentration"],
                "gene_concentration": o["gene_concentration"], "n_reads": o["n_reads"], "class_proportions": props}
    return {"n_signal": o["n_signal"], "effect_size": o["effect_size"], "outcome": o["outcome"],
            "n_classes": o["n_classes"] or 3, "interactions": o["interactions"], "signal_seed": o["signal_seed"],
            "transform": o["transform"]}


def _simulate_single_cell(out, prefix, seed, o) -> None:
    """Sparse negative-binomial counts with cell types and marker genes (iml_genomics.single_cell)."""
    from iml_genomics.errors import ConfigError
    from iml_genomics.io import Provenance, staged_output
    from iml_genomics.single_cell import write_single_cell

    params = {"n_cells": o["n_samples"], "n_genes": o["n_genes"], "n_types": o["n_classes"] or 5,
              "n_markers": o["n_signal"], "fold_change": o["fold_change"]}
    if o["n_donors"]:  # only then: the provenance of a cohort without donors reads as before
        params.update(n_donors=o["n_donors"], donor_sd=o["donor_sd"])
    if params["n_types"] * params["n_markers"] > params["n_genes"]:
        raise ConfigError(f"simulate: --n-classes x --n-signal ({params['n_types']} x {params['n_markers']} marker "
                          f"genes) exceeds --n-genes {params['n_genes']}; lower one or raise --n-genes.")
    prov = Provenance("simulate", {"seed": seed, "n_jobs": 1, "family": "single-cell", "formats": ["h5ad"],
                                   "prefix": prefix, **params}, {})
    with staged_output(out) as stage:
        written = write_single_cell(stage, prefix, seed=seed, **params)
        prov.mark("simulate")
        prov.extra["cohort"] = written["summary"]
        prov.extra["simulation"] = {"family": "single-cell", "seed": seed, **params}
        prov.write(stage)
    s = written["summary"]
    click.echo(f"simulate: single-cell, {s['n_samples']} cells x {s['n_genes']} genes ({100 * s['fraction_zero']:.1f}% "
               f"zeros), {s['n_true_genes']} marker genes, {s['n_pathways']} gene sets; wrote {out}", err=True)
