"""`iml-genomics explain`."""

from __future__ import annotations

import click

from iml_genomics.cli.common import echo_summary, comma_list, cohort_options, common_overrides, echo_warnings, make_backend, out_option


@click.command()
@click.option("--model", "model_dir", required=True, type=click.Path(file_okay=False),
              help="Model bundle: the --out directory of 'iml-genomics train'.")
@cohort_options
@out_option
@click.option("--method", type=click.Choice(["shap", "permutation", "all"]), default=None,
              help="Attribution methods [config explain.method].")
@click.option("--methods", default=None,
              help="Comma-separated explanation methods beyond SHAP, or 'all': surrogate, pdp, lime, anchors, "
                   "examples, integrated_gradients, conditional, map [config explain.methods].")
@click.option("--samples", default=None, help="Comma-separated sample ids for local explanations [explain.samples].")
@click.option("--shap-mode", type=click.Choice(["tree_path_dependent", "interventional"]), default=None,
              help="Tree SHAP value function [config explain.shap_mode].")
@click.option("--stability", type=click.Choice(["folds", "bootstrap"]), default=None,
              help="Refits for the ranking's uncertainty [config explain.stability].")
def explain(model_dir, config_path, expression, labels, out, method, methods, samples, shap_mode, stability,
            **opts):
    """SHAP and permutation importance of a trained model, with the ranking's uncertainty.

    \b
    Writes to OUT: attributions.parquet, gene_ranking.tsv, local_explanations.tsv,
    interactions.tsv, explain_summary.json, provenance.json (columns: docs/explain.md).
    --methods adds each method's files: surrogate.tsv, surrogate_rules.txt (model_rules.txt
    for a decision tree), partial_dependence.tsv, attribution_map.tsv, lime.tsv, anchors.tsv, examples.tsv,
    prototypes.tsv, ...
    Without labels only SHAP of the final model is computed.
    --methods conditional adds conditional_importance.tsv (LOCO and knockoff CPI, needs labels).
    \b
    Example:
      iml-genomics explain --model results/train --expression test_data/demo_expression.csv.gz \\
        --labels test_data/demo_labels.tsv --out results/explain --samples S0001,S0002
    """
    from pathlib import Path

    from iml_genomics.config import load_config
    from iml_genomics.errors import InputDataError
    from iml_genomics.io import Provenance, detect_format, load_cohort, staged_output
    from iml_genomics.io.step_outputs import attribution_writer, explain_line, write_explain
    from iml_genomics.models import load_bundle
    from iml_genomics.steps.explain import explain as explain_step, explain_config

    pipeline, manifest = load_bundle(model_dir)
    cfg = explain_config(manifest, load_config(config_path) if config_path else None,
                         source=f"{model_dir}/model.json")
    overrides = {**common_overrides(opts), "explain.method": method, "explain.shap_mode": shap_mode,
                 "explain.stability": stability,
                 "explain.methods": comma_list(methods) if methods and methods.strip() != "all" else methods,
                 "explain.samples": comma_list(samples) if samples else None}
    for key, value in overrides.items():
        if key == "data.orientation":
            value = "genes_x_samples" if value else None
        cfg.override(key, value)
    # --scheduler / parallel.scheduler: contacted now (one line, exit 2, nothing written when unreachable),
    # then every SHAP chunk, refit and permutation batch of the step runs on it
    backend = make_backend(cfg)
    label_column = cfg.data.label_column
    if labels is None and Path(expression).is_file() and detect_format(Path(expression)) != "h5ad":
        label_column = None  # an unlabelled matrix: SHAP only
    prov = Provenance("explain", cfg.to_dict(), {"model": Path(model_dir) / "model.skops", "expression": expression,
                                                 "labels": labels, "config": config_path})

    def read(column):
        return load_cohort(expression, labels=labels, label_column=column,
                           sample_id_column=cfg.data.sample_id_column,
                           genes_as_rows=cfg.data.orientation == "genes_x_samples", layer=cfg.data.layer,
                           drop_unmatched=cfg.data.drop_unmatched, require_labels=False,
                           # a model of one class against the rest reads a many-class column the same way
                           positive_class=cfg.data.positive_class or manifest.get("positive_class"))

    try:
        adata = read(label_column)
    except InputDataError:
        # an .h5ad without the training label column in obs (and no --label-column): explain it unlabelled
        if labels is not None or opts.get("label_column") or label_column is None:
            raise
        adata = read(None)
    oof = None
    if cfg.data.sensitive and (Path(model_dir) / "oof_predictions.tsv").is_file():
        from iml_genomics.report.inputs import read_tsv

        # the audit scores train's out-of-fold predictions per group (recomputed when absent)
        oof = read_tsv(Path(model_dir) / "oof_predictions.tsv")
    prov.mark("read")
    with staged_output(out) as stage:
        writer = attribution_writer(stage, adata.obs_names, prov)
        try:
            result = explain_step(adata, cfg, model=(pipeline, manifest), on_chunk=writer,
                                  model_source=f"{model_dir}/model.json", backend=backend, oof=oof)
        finally:
            writer.close()
        echo_warnings(result.warnings)
        prov.mark("explain")
        write_explain(stage, result, prov)
    echo_summary(explain_line(result, adata, out))
