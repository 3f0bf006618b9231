"""`iml-genomics compare`."""

from __future__ import annotations

import click

from iml_genomics.cli.common import (cohort_options, echo_summary, comma_list, common_overrides, echo_warnings, load_cohort_for,
                                     make_backend, out_option, resolve_config)


@click.command()
@cohort_options
@out_option
@click.option("--models", "models", default=None,
              help="Comma-separated registry models to compare, at least two [config model.candidates].")
@click.option("--cv-folds", type=int, default=None, help="Number of outer CV folds [config cv.n_splits].")
@click.option("--cv-repeats", type=int, default=None, help="Repeats of the outer k-fold CV [config cv.n_repeats].")
@click.option("--top-k", type=int, default=None, help="k of the top-k gene sets compared [config explain.top_k].")
def compare(config_path, expression, labels, out, models, cv_folds, cv_repeats, top_k, **opts):
    """Compare several models on the same CV folds: accuracy beside explainability.

    \b
    Models with a tuning grid are tuned by an inner CV inside each outer
    training fold (nested CV), so the outer metrics are leakage-free.
    Writes to OUT: model_comparison.tsv, model_agreement.tsv,
    robust_genes.tsv, model_gene_rankings.tsv, model_tuning.tsv,
    cv_folds.tsv, compare_summary.json, provenance.json (docs/compare.md).
    \b
    Example:
      iml-genomics compare --config configs/demo.yaml \\
        --expression test_data/demo_expression.csv.gz --labels test_data/demo_labels.tsv \\
        --models l1_logistic,random_forest,gradient_boosting --out results/compare
    """
    from iml_genomics.errors import ConfigError

    cfg = resolve_config(config_path, overrides={
        **common_overrides(opts), "cv.n_splits": cv_folds, "cv.n_repeats": cv_repeats, "explain.top_k": top_k})
    if models is not None:
        names = comma_list(models)
        if len(names) < 2:
            raise ConfigError(f"option --models: lists {len(names)} model(s); a comparison needs at least two "
                              f"(for example --models l1_logistic,random_forest).")
        cfg.override("model.candidates", names, source="option --models")
    if not cfg.model.candidates:
        raise ConfigError(f"{config_path or 'config'}: key 'model.candidates' is empty; a comparison needs at least "
                          f"two models: set model.candidates or pass --models l1_logistic,random_forest.")
    from iml_genomics.compare import check_tuning

    try:
        check_tuning(cfg, cfg.task)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("config:", f"{config_path or 'config'}:", 1)) from None
    backend = make_backend(cfg)  # an unreachable scheduler fails here, before the data are read
    from iml_genomics.io import Provenance, staged_output
    from iml_genomics.io.step_outputs import compare_line, write_compare

    prov = Provenance("compare", cfg.to_dict(), {"expression": expression, "labels": labels, "config": config_path})
    adata = load_cohort_for(cfg, expression, labels, check_cv=True)
    prov.mark("read")
    from iml_genomics.steps.compare import compare as compare_step  # scikit-learn: once the inputs are valid

    result = compare_step(adata, cfg, backend=backend)
    echo_warnings(result.warnings)
    prov.mark("cross_validate_models")
    with staged_output(out) as stage:
        write_compare(stage, result, prov)
    echo_summary(compare_line(result, out))
