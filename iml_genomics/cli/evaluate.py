"""`iml-genomics evaluate`."""

from __future__ import annotations

import click

from iml_genomics.cli.common import CommaSeparated, echo_summary, flatten, out_option


@click.command()
@click.option("--truth", required=True, type=click.Path(dir_okay=False),
              help="True genes: a TSV with gene_id (e.g. simulate's *_truth.tsv) or one gene per line.")
@click.option("--ranking", "rankings", multiple=True, type=click.Path(dir_okay=False),
              help="Gene ranking (gene_ranking.tsv: gene_id, rank, ...); repeat for several folds/seeds/methods.")
@click.option("--selection", "selections", multiple=True, type=click.Path(dir_okay=False),
              help="Gene selection (knockoff_selection.tsv: gene_id, selected, ...); repeat for several.")
@out_option
@click.option("--k", "k_values", multiple=True, type=CommaSeparated(click.IntRange(min=1)),
              help="k for precision at k, top-k agreement and prediction gaps: 10,20,50 or repeat the option "
                   "[10,20,50].")
@click.option("--expression", type=click.Path(dir_okay=False), default=None,
              help="Expression matrix: with --labels, computes prediction gaps (refits the model).")
@click.option("--labels", type=click.Path(dir_okay=False), default=None, help="Labels table for prediction gaps.")
@click.option("--label-column", default=None, help="Outcome column [config data.label_column, else 'condition'].")
@click.option("--genes-as-rows", is_flag=True, default=None, help="--expression has genes as rows.")
@click.option("--model", "model_dir", type=click.Path(file_okay=False), default=None,
              help="Model bundle (train --out): its config is refitted for prediction gaps.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="YAML config to refit for prediction gaps (instead of --model).")
@click.option("--n-random", type=click.IntRange(min=1), default=3, show_default=True,
              help="Random removals per k for the random-gene baseline (PGR).")
@click.option("--seed", type=int, default=None, help="Seed of CV folds and random removals [config seed].")
@click.option("--jobs", "n_jobs", type=int, default=None, help="Parallel workers [config n_jobs]; results do not depend on it.")
@click.option("--scheduler", default=None,
              help="dask.distributed scheduler address for the prediction-gap refits [config parallel.scheduler].")
def evaluate(truth, rankings, selections, out, k_values, expression, labels, label_column, genes_as_rows,
             model_dir, config_path, n_random, seed, n_jobs, scheduler):
    """Score rankings and selections against known true genes.

    \b
    Writes to OUT: selection_metrics.tsv (FDP, power), ranking_metrics.tsv
    (AUPRC, R-precision), precision_at_k.tsv, stability.tsv and
    stability_pairs.tsv (with >= 2 rankings or selections; top-k Jaccard,
    Kendall tau), prediction_gaps.tsv (with --expression/--labels and
    --model or --config), provenance.json.
    \b
    Example:
      iml-genomics evaluate --truth sim/simulated_truth.tsv \\
        --ranking explain/gene_ranking.tsv --selection select/knockoff_selection.tsv \\
        --expression sim/simulated_expression.csv.gz --labels sim/simulated_labels.tsv \\
        --model train/ --out eval/
    """
    from pathlib import Path

    from iml_genomics.errors import ConfigError
    from iml_genomics.evaluate import ranking_from_table, selection_from_table, truth_from_table
    from iml_genomics.io import Provenance, read_table, staged_output, write_tsv
    from iml_genomics.io.readers import read_gene_list
    from iml_genomics.steps.evaluate import evaluate as evaluate_step

    if not rankings and not selections:
        raise ConfigError("evaluate: nothing to score; pass --ranking FILE and/or --selection FILE.")
    wants_gaps = expression is not None or labels is not None
    if wants_gaps and (expression is None or (model_dir is None and config_path is None)):
        raise ConfigError("evaluate: prediction gaps need --expression, --labels (or an .h5ad with the label "
                          "column) and --model BUNDLE or --config FILE.")
    if wants_gaps and not rankings:
        raise ConfigError("evaluate: prediction gaps need a --ranking (genes are removed in ranking order).")

    truth_genes = truth_from_table(read_gene_list(truth, "truth"), str(truth))
    ranking_lists = {}
    for path in rankings:
        for name, genes in ranking_from_table(read_table(path, "ranking"), _label(path, rankings)).items():
            ranking_lists[name] = genes
    selection_lists = {_label(p, selections): selection_from_table(read_table(p, "selection"), str(p))
                       for p in selections}

    cfg = _gap_config(model_dir, config_path) if wants_gaps else None
    if cfg is not None:
        for key, value in (("seed", seed), ("n_jobs", n_jobs), ("data.label_column", label_column)):
            cfg.override(key, value)
        if cfg.data.label_column is None:
            cfg.override("data.label_column", "condition")
        if genes_as_rows:
            cfg.override("data.orientation", "genes_x_samples")
        if model_dir is not None and config_path is None:
            cfg.parallel.scheduler = None  # where train ran is not where evaluate runs
        cfg.override("parallel.scheduler", scheduler)
    backend = None
    if cfg is not None:
        from iml_genomics.cli.common import make_backend

        backend = make_backend(cfg)  # before any data is read: an unreachable scheduler is one line, exit 2
    config_dict = cfg.to_dict() if cfg is not None else {"seed": seed if seed is not None else 0, "n_jobs": n_jobs or 1}
    prov = Provenance("evaluate", config_dict, {
        "truth": truth, "expression": expression, "labels": labels, "config": config_path,
        **{f"ranking_{i + 1}": p for i, p in enumerate(rankings)},
        **{f"selection_{i + 1}": p for i, p in enumerate(selections)},
        **({"model": str(Path(model_dir) / "model.json")} if model_dir else {})})
    adata = None
    if cfg is not None:
        from iml_genomics.cli.common import load_cohort_for

        adata = load_cohort_for(cfg, expression, labels)
        prov.mark("read")
    result = evaluate_step(adata, cfg, truth=truth_genes, rankings=ranking_lists, selections=selection_lists,
                           k_values=flatten(k_values) or (10, 20, 50), n_random=n_random, backend=backend)
    prov.mark("evaluate")
    prov.extra["n_true_genes"] = result.n_true_genes
    with staged_output(out) as stage:
        for name, frame in result.tables().items():
            write_tsv(frame, stage / f"{name}.tsv")
        prov.mark("write")
        prov.write(stage)
    for frame, line in ((result.selection_metrics, "{0.source}: {0.n_selected} selected, FDP = {0.fdp:.3f}, "
                                                   "power = {0.power:.3f}"),
                        (result.ranking_metrics, "{0.source}: AUPRC = {0.auprc:.3f}, R-precision = "
                                                 "{0.r_precision:.3f}")):
        for row in (frame.itertuples() if frame is not None else ()):
            echo_summary("evaluate: " + line.format(row))
    echo_summary(f"evaluate: wrote {out}")


def _label(path, paths) -> str:
    """A short source name: the parent directory + file name, unique among ``paths``."""
    from pathlib import Path

    p = Path(path)
    names = [f"{Path(q).parent.name}/{Path(q).name}" for q in paths]
    short = f"{p.parent.name}/{p.name}"
    return short if names.count(short) == 1 else str(p)


def _gap_config(model_dir, config_path):
    from iml_genomics.config import config_from_dict
    from iml_genomics.cli.common import resolve_config

    if model_dir is not None:
        from iml_genomics.models import load_bundle

        _, manifest = load_bundle(model_dir)
        return config_from_dict(manifest["config"], source=f"{model_dir}/model.json")
    return resolve_config(config_path, overrides={})

