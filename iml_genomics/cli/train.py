"""`iml-genomics train`."""

from __future__ import annotations

import click

from iml_genomics.cli.common import (echo_summary, cohort_options, common_overrides, echo_warnings, load_cohort_for, make_backend,
                                     out_option, resolve_config)


@click.command()
@cohort_options
@out_option
@click.option("--model", "model_name", default=None, help="Model from the registry [config model.name].")
@click.option("--cv-folds", type=int, default=None, help="Number of CV folds [config cv.n_splits].")
@click.option("--cv-repeats", type=int, default=None, help="Repeats of k-fold CV [config cv.n_repeats].")
def train(config_path, expression, labels, out, model_name, cv_folds, cv_repeats, **opts):
    """Cross-validate a model on a cohort and save the model bundle.

    \b
    Writes to OUT: cv_metrics.tsv, cv_summary.tsv, oof_predictions.tsv, model.skops,
    model.json, provenance.json.
    \b
    Example:
      iml-genomics train --config configs/demo.yaml \\
        --expression test_data/demo_expression.csv.gz \\
        --labels test_data/demo_labels.tsv --label-column condition --out results/train
    """
    cfg = resolve_config(config_path, overrides={
        **common_overrides(opts), "cv.n_splits": cv_folds, "cv.n_repeats": cv_repeats})
    if model_name is not None and model_name != cfg.model.name:
        # the config's model.params belong to the config's model, not to the one named here
        cfg.model.params = {}
        cfg.override("model.name", model_name)
    backend = make_backend(cfg)  # an unreachable scheduler fails here, before the data are read
    from iml_genomics.io import Provenance, staged_output  # pandas: once the config is valid
    from iml_genomics.io.step_outputs import train_line, write_train

    prov = Provenance("train", cfg.to_dict(), {"expression": expression, "labels": labels, "config": config_path})
    adata = load_cohort_for(cfg, expression, labels, check_cv=True)
    prov.mark("read")
    from iml_genomics.steps.train import train as train_step  # scikit-learn: imported once the inputs are valid

    result = train_step(adata, cfg, backend=backend)
    echo_warnings(result.warnings)
    prov.mark("cross_validate_and_fit")
    with staged_output(out) as stage:
        write_train(stage, result, prov)
    echo_summary(train_line(result, cfg, out))
