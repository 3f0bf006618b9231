"""`iml-genomics explain`."""

from __future__ import annotations

import click

from iml_genomics.cli.common import cohort_options, common_overrides, out_option


class _AttributionWriter:
    """Streams SHAP chunks to attributions.parquet (one row group per chunk, float32 genes)."""

    def __init__(self, path, sample_ids):
        self.path, self.sample_ids = path, sample_ids
        self.writer = None
        self.schema = None

    def __call__(self, chunk, plan):
        import numpy as np
        import pyarrow as pa
        import pyarrow.parquet as pq

        n, q, k = chunk.values.shape
        if self.writer is None:
            fields = [pa.field("sample_id", pa.string()), pa.field("class", pa.string()),
                      pa.field("base_value", pa.float64()), pa.field("model_output", pa.float64())]
            fields += [pa.field(g, pa.float32()) for g in plan.gene_ids]
            self.schema = pa.schema(fields)
            self.writer = pq.ParquetWriter(self.path, self.schema, compression="zstd")
            self.outputs = plan.outputs
        # rows: sample-major, then class, so a sample's classes are adjacent
        ids = np.repeat(np.asarray(self.sample_ids[chunk.start:chunk.stop], dtype=object), k)
        cls = np.tile(np.asarray(self.outputs, dtype=object), n)
        vals = chunk.values.transpose(0, 2, 1).reshape(n * k, q).astype(np.float32)
        cols = [pa.array(ids, pa.string()), pa.array(cls, pa.string()),
                pa.array(chunk.base_values.reshape(-1)), pa.array(chunk.model_output.reshape(-1))]
        cols += [pa.array(vals[:, j]) for j in range(q)]
        self.writer.write_table(pa.Table.from_arrays(cols, schema=self.schema))

    def close(self):
        if self.writer is not None:
            self.writer.close()


@click.command()
@click.option("--model", "model_dir", required=True, type=click.Path(file_okay=False),
              help="Model bundle: the --out directory of 'iml-genomics train'.")
@cohort_options
@out_option
@click.option("--method", type=click.Choice(["shap", "permutation", "all"]), default=None,
              help="Attribution methods [config explain.method].")
@click.option("--samples", default=None, help="Comma-separated sample ids for local explanations [explain.samples].")
@click.option("--shap-mode", type=click.Choice(["tree_path_dependent", "interventional"]), default=None,
              help="Tree SHAP value function [config explain.shap_mode].")
@click.option("--stability", type=click.Choice(["folds", "bootstrap"]), default=None,
              help="Refits for the ranking's uncertainty [config explain.stability].")
def explain(model_dir, config_path, expression, labels, out, method, samples, shap_mode, stability, **opts):
    """SHAP and permutation importance of a trained model, with the ranking's uncertainty.

    \b
    Writes to OUT: attributions.parquet, gene_ranking.tsv, local_explanations.tsv,
    interactions.tsv, explain_summary.json, provenance.json (columns: docs/explain.md).
    Without labels only SHAP of the final model is computed.
    \b
    Example:
      iml-genomics explain --model results/train --expression test_data/demo_expression.csv.gz \\
        --labels test_data/demo_labels.tsv --out results/explain --samples S0001,S0002
    """
    from pathlib import Path

    from iml_genomics.config import config_from_dict, load_config
    from iml_genomics.errors import InputDataError
    from iml_genomics.explain import explain_cohort
    from iml_genomics.io import Provenance, detect_format, load_cohort, prepare_target, staged_output, \
        write_json, write_tsv
    from iml_genomics.models import build_pipeline, load_bundle
    from iml_genomics.training import align_genes, design_matrix

    pipeline, manifest = load_bundle(model_dir)
    bundle_cfg = config_from_dict(manifest.get("config") or {}, source=f"{model_dir}/model.json")
    cfg = load_config(config_path) if config_path else config_from_dict(manifest.get("config") or {},
                                                                         source=f"{model_dir}/model.json")
    # the model and its preprocessing are the bundle's, whatever --config says: they define what is explained
    cfg.model, cfg.preprocess = bundle_cfg.model, bundle_cfg.preprocess
    overrides = {**common_overrides(opts), "explain.method": method, "explain.shap_mode": shap_mode,
                 "explain.stability": stability,
                 "explain.samples": [s.strip() for s in samples.split(",") if s.strip()] if samples else None}
    for key, value in overrides.items():
        if key == "data.orientation":
            value = "genes_x_samples" if value else None
        cfg.override(key, value)
    if cfg.data.label_column is None:
        cfg.data.label_column = manifest.get("label_column")
    label_column = cfg.data.label_column
    if labels is None and Path(expression).is_file() and detect_format(Path(expression)) != "h5ad":
        label_column = None  # an unlabelled matrix: SHAP only
    prov = Provenance("explain", cfg.to_dict(), {"model": Path(model_dir) / "model.skops", "expression": expression,
                                                 "labels": labels, "config": config_path})
    def read(column):
        return load_cohort(expression, labels=labels, label_column=column,
                           sample_id_column=cfg.data.sample_id_column,
                           genes_as_rows=cfg.data.orientation == "genes_x_samples", layer=cfg.data.layer,
                           drop_unmatched=cfg.data.drop_unmatched, require_labels=False)

    try:
        adata = read(label_column)
    except InputDataError:
        # an .h5ad without the training label column in obs (and no --label-column): explain it unlabelled
        if labels is not None or opts.get("label_column") or label_column is None:
            raise
        label_column = None
        adata = read(None)
    adata = align_genes(adata, manifest["gene_ids"], str(expression))
    X = design_matrix(adata)
    task, classes = manifest["task"], manifest.get("classes")
    y = None
    if label_column is not None and label_column in adata.obs:
        src = str(labels or expression)
        y, cohort_classes = prepare_target(adata.obs[label_column], task, n_splits=cfg.cv.n_splits, source=src,
                                           column=label_column)
        if classes is not None and cohort_classes != list(classes):
            raise InputDataError(f"{src}: classes of '{label_column}' ({', '.join(cohort_classes)}) differ from the "
                                 f"model's ({', '.join(classes)}); use the labels the model was trained on.")
    positive = _positive_class(cfg, manifest, classes, source=str(labels or expression),
                               column=label_column or manifest.get("label_column"))
    prov.mark("read")
    from scipy import sparse

    refit = build_pipeline(cfg, task, sparse_input=sparse.issparse(X), n_classes=len(classes) if classes else None)
    sample_ids = list(adata.obs_names)
    with staged_output(out) as stage:
        writer = _AttributionWriter(stage / "attributions.parquet", sample_ids)
        try:
            result = explain_cohort(pipeline, X, gene_ids=list(adata.var_names), sample_ids=sample_ids,
                                    classes=classes, task=task, explain_cfg=cfg.explain, refit_pipeline=refit, y=y,
                                    n_splits=cfg.cv.n_splits, n_repeats=cfg.cv.n_repeats, random_state=cfg.seed,
                                    n_jobs=cfg.n_jobs, on_chunk=writer, positive_class=positive)
        finally:
            writer.close()
        prov.mark("explain")
        if writer.writer is None:  # permutation only: keep the file set fixed with an empty table
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.table({"sample_id": pa.array([], pa.string()), "class": pa.array([], pa.string()),
                                     "base_value": pa.array([], pa.float64()),
                                     "model_output": pa.array([], pa.float64())}),
                           stage / "attributions.parquet", compression="zstd")
        write_tsv(result.ranking, stage / "gene_ranking.tsv")
        write_tsv(result.local, stage / "local_explanations.tsv")
        write_tsv(result.interactions, stage / "interactions.tsv")
        write_json(result.summary, stage / "explain_summary.json")
        prov.extra["cohort"] = {"n_samples": adata.n_obs, "n_genes": adata.n_vars, "task": task,
                                "classes": classes, "labels_used": y is not None,
                                "positive_class": positive}
        prov.mark("write")
        prov.write(stage)
    s = result.summary
    top = ", ".join(result.ranking["gene_id"].head(5))
    click.echo(f"explain: {adata.n_obs} samples x {adata.n_vars} genes ({s['n_genes_used']} used), "
               f"{s.get('shap_method') or 'permutation'}; top genes: {top}; wrote {out}", err=True)


def _positive_class(cfg, manifest, classes, *, source, column):
    """The class SHAP explains: --positive-class / the config's data.positive_class, else the bundle's.

    Checked against the model's classes before anything is written. The default warning (case/control
    and the like) is repeated here when the bundle itself used the default.
    """
    from iml_genomics.cli.common import check_positive_class
    from iml_genomics.io.cohort import resolve_positive_class

    if cfg.data.positive_class is not None or classes is None or len(classes) != 2:
        return check_positive_class(cfg, classes, source=source)
    recorded = manifest.get("positive_class")
    default, _ = resolve_positive_class(classes, None, source=source, column=column)
    if recorded is None or recorded == default:
        return check_positive_class(cfg, classes, source=source)
    return recorded
