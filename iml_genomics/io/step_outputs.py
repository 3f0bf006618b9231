"""The files each step writes, in one place: the subcommands and `run` both write through these.

A step's directory is the same bytes whichever path produced it (``iml-genomics train`` or ``run``)
because both call the same writer here, with the same result object and the same
:class:`~iml_genomics.io.writers.Provenance`. Each ``write_*`` writes into a staging directory
(:func:`iml_genomics.io.staged_output`), marks the ``write`` timing and writes ``provenance.json``
last. The ``*_line`` functions give the one-line summary a step prints on stderr.
"""

from __future__ import annotations

from pathlib import Path

from iml_genomics.io.writers import write_json, write_tsv


def write_train(stage: str | Path, result, prov) -> None:
    """cv_metrics.tsv, oof_predictions.tsv, model.skops, model.json, provenance.json.

    Parameters
    ----------
    stage : path
        Staging directory of the step.
    result : iml_genomics.steps.TrainResult
    prov : iml_genomics.io.Provenance
        The step's provenance; its ``cohort`` entry is set from the result.
    """
    from iml_genomics.models import save_bundle

    stage = Path(stage)
    prov.extra["cohort"] = result.cohort
    write_tsv(result.cv_metrics, stage / "cv_metrics.tsv")
    write_tsv(result.cv_summary, stage / "cv_summary.tsv")
    write_tsv(result.oof_predictions, stage / "oof_predictions.tsv")
    save_bundle(stage, result.model, result.manifest)
    prov.mark("write")
    prov.write(stage)


def attribution_writer(stage: str | Path, sample_ids):
    """The sink explain streams its SHAP chunks to (``attributions.parquet`` in ``stage``); close it after."""
    from iml_genomics.io.attributions import AttributionWriter

    return AttributionWriter(Path(stage) / "attributions.parquet", list(sample_ids))


def write_explain(stage: str | Path, result, prov) -> None:
    """gene_ranking.tsv, local_explanations.tsv, interactions.tsv, explain_summary.json, provenance.json.

    ``attributions.parquet`` is streamed during the step by :func:`attribution_writer`.

    Parameters
    ----------
    stage : path
    result : iml_genomics.steps.ExplainResult
    prov : iml_genomics.io.Provenance
    """
    stage = Path(stage)
    write_tsv(result.ranking, stage / "gene_ranking.tsv")
    write_tsv(result.local, stage / "local_explanations.tsv")
    write_tsv(result.interactions, stage / "interactions.tsv")
    # explain.methods: surrogate.tsv, surrogate_rules.txt, partial_dependence.tsv, ... (docs/explain.md)
    for name, table in result.method_tables().items():
        write_tsv(table, stage / name)
    for name, text in result.method_texts().items():
        (stage / name).write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    write_json(result.summary, stage / "explain_summary.json")
    prov.extra["cohort"] = result.cohort
    prov.mark("write")
    prov.write(stage)


def write_select(stage: str | Path, result, prov) -> None:
    """knockoff_selection.tsv, select_summary.json, provenance.json.

    Parameters
    ----------
    stage : path
    result : iml_genomics.steps.SelectResult
    prov : iml_genomics.io.Provenance
    """
    stage = Path(stage)
    prov.extra["cohort"] = result.cohort
    write_tsv(result.selection, stage / "knockoff_selection.tsv")
    write_json(result.summary, stage / "select_summary.json")
    prov.mark("write")
    prov.write(stage)


def write_report(stage: str | Path, result, prov) -> None:
    """biomarkers.tsv, gene_sets.tsv, group_attributions.parquet (when present), report_summary.json,
    report.html, provenance.json.

    Parameters
    ----------
    stage : path
    result : iml_genomics.steps.ReportResult
    prov : iml_genomics.io.Provenance
    """
    stage = Path(stage)
    prov.extra["report"] = result.summary
    write_tsv(result.biomarkers, stage / "biomarkers.tsv")
    if result.gene_sets is not None:
        write_tsv(result.gene_sets, stage / "gene_sets.tsv")
    if result.group_attributions is not None:
        result.group_attributions.to_parquet(stage / "group_attributions.parquet", index=False)
    write_json(result.summary, stage / "report_summary.json")
    from iml_genomics.report.interactive import relative_links

    # links to the input directories' TSVs, relative to where report.html lands (the staging dir's parent)
    (stage / "report.html").write_text(relative_links(result.html, stage.parent), encoding="utf-8")
    prov.mark("write")
    prov.write(stage)


# ---------------------------------------------------------------------------
# The one line each step prints on stderr when it is done
# ---------------------------------------------------------------------------

def train_line(result, cfg, out) -> str:
    """``train: N samples x P genes, MODEL, auroc = m +/- sd (k-fold x r); wrote OUT``."""
    from iml_genomics.io.interchange import cv_summary_value

    summary = result.cv_summary
    key = "auroc" if result.classes else "r2"
    named = f" (positive class '{result.positive_class}')" if result.positive_class is not None else ""
    return (f"train: {result.cohort['n_samples']} samples x {result.cohort['n_genes']} genes, {cfg.model.name}, "
            f"{key}{named} = {cv_summary_value(summary, key):.3f} +/- {cv_summary_value(summary, key, 'sd'):.3f} "
            f"({cfg.cv.n_splits}-fold x {cfg.cv.n_repeats}); wrote {out}")


def explain_line(result, adata, out) -> str:
    """``explain: N samples x P genes (U used), METHOD; top genes: ...; wrote OUT``."""
    s = result.summary
    top = ", ".join(result.ranking["gene_id"].head(5))
    return (f"explain: {adata.n_obs} samples x {adata.n_vars} genes ({s['n_genes_used']} used), "
            f"{s.get('shap_method') or 'permutation'}; top genes: {top}; wrote {out}")


def select_line(result, out) -> str:
    """``select: P genes, ... N selected at FDR q; wrote OUT``."""
    s = result.summary
    n_genes = len(result.tested_genes)
    rank = f" (k = {s['factor_rank']})" if s['factor_rank'] else ""
    if s["method"] == "dcrt":
        return (f"select: {n_genes} genes, {s['covariance_model']} covariance{rank}, dCRT on "
                f"{s['n_screened']} screened gene(s), {s['fdr_procedure'].upper()}: {s['n_selected']} selected at "
                f"FDR {s['target_fdr']:g}; wrote {out}")
    return (f"select: {n_genes} genes, {s['covariance_model']} covariance{rank}, {s['s_method']} S, "
            f"{s['statistic']} W, {s['n_draws']} draw(s): {s['n_selected']} selected at FDR {s['target_fdr']:g}; "
            f"wrote {out}")


def report_line(result, out) -> str:
    """``report: N genes, S gene sets tested (k significant), inputs: ...; wrote OUT``."""
    gsum = result.summary.get("gene_sets") or {}
    return (f"report: {len(result.biomarkers)} genes, {gsum.get('n_sets_tested', 0)} gene sets tested "
            f"({gsum.get('n_significant_sets', 0)} significant), inputs: {', '.join(result.steps)}; wrote {out}")
