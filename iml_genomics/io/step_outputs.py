"""The files each step writes, in one place: the subcommands and `run` both write through these.

A step's directory is the same bytes whichever path produced it (``iml-genomics train`` or ``run``)
because both call the same writer here, with the same result object and the same
:class:`~iml_genomics.io.writers.Provenance`. Each ``write_*`` writes into a staging directory
(:func:`iml_genomics.io.staged_output`), marks the ``write`` timing and writes ``provenance.json``
last. The ``*_line`` functions give the one-line summary a step prints on stderr.
"""

from __future__ import annotations

from pathlib import Path

from iml_genomics.explains import step_summary_with_explains
from iml_genomics.granularity import WITHHELD_REASON  # output.granularity: aggregate (docs/pipeline.md)
from iml_genomics.io.writers import write_json, write_tsv


class _Explains:
    """``write_tsv`` / ``write_json`` of one step that say what every table and summary explains.

    Each table gets an ``explains`` column appended last unless it has one (explain methods' tables say it per
    table); the step's summary JSON gets ``explains`` (the step's kind, see :mod:`iml_genomics.explains`). A
    writer rebinds its ``write_tsv`` / ``write_json`` to these, so a table added later is labelled without more
    code. :mod:`iml_genomics.get` labels the same tables the same way (``get.*_df`` are the files' bytes).
    """

    def __init__(self, kind: str):
        self.kind = kind

    def tsv(self, frame, path, **kwargs) -> None:
        from iml_genomics.explains import with_explains

        write_tsv(with_explains(frame, self.kind), path, **kwargs)

    def json(self, document: dict, path) -> None:
        write_json(step_summary_with_explains(document, self.kind), path)


def _granularity(prov) -> str:
    """``output.granularity`` of the step's resolved config (recorded in its provenance)."""
    output = (getattr(prov, "config", None) or {}).get("output") or {}
    return output.get("granularity", "full") if isinstance(output, dict) else "full"


def aggregate(prov) -> bool:
    """Whether the step writes aggregate outputs only (``output.granularity: aggregate``)."""
    return _granularity(prov) == "aggregate"


def write_train(stage: str | Path, result, prov) -> None:
    """cv_metrics.tsv, oof_predictions.tsv, model.skops, model.json, provenance.json.

    With ``output.granularity: aggregate`` oof_predictions.tsv is not written (provenance.json says so).

    Parameters
    ----------
    stage : path
        Staging directory of the step.
    result : iml_genomics.steps.TrainResult
    prov : iml_genomics.io.Provenance
        The step's provenance; its ``cohort`` entry is set from the result.
    """
    from iml_genomics.models import save_bundle

    write_tsv, write_json = (lab := _Explains("model")).tsv, lab.json  # every table says what it explains
    stage = Path(stage)
    prov.extra["cohort"] = result.cohort
    write_tsv(result.cv_metrics, stage / "cv_metrics.tsv")
    write_tsv(result.cv_summary, stage / "cv_summary.tsv")
    if aggregate(prov):
        prov.extra["withheld"] = {"files": ["oof_predictions.tsv"], "reason": WITHHELD_REASON}
    else:
        write_tsv(result.oof_predictions, stage / "oof_predictions.tsv")
    save_bundle(stage, result.model, result.manifest)
    write_json({"step": "train", "model_name": result.manifest.get("model_name")}, stage / "train_summary.json")
    prov.mark("write")
    prov.write(stage)


class _Discard:
    """The sink of ``output.granularity: aggregate``: SHAP chunks are not written anywhere."""

    def __call__(self, chunk, plan) -> None:
        return None

    def set_sample_ids(self, sample_ids) -> None:  # explain.max_samples: nothing is written either way
        return None

    def close(self) -> None:
        return None


def attribution_writer(stage: str | Path, sample_ids, prov=None):
    """The sink explain streams its SHAP chunks to (``attributions.parquet`` in ``stage``); close it after.

    With ``output.granularity: aggregate`` in ``prov``'s config the chunks are discarded (no file).
    """
    from iml_genomics.io.attributions import AttributionWriter

    if prov is not None and aggregate(prov):
        return _Discard()
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
    write_tsv, write_json = (lab := _Explains("model")).tsv, lab.json  # every table says what it explains
    stage = Path(stage)
    if aggregate(prov):
        from iml_genomics.granularity import aggregate_copy

        # generic: any method table with a sample_id column, any method text naming a sample is withheld
        result = aggregate_copy(result)
    else:
        write_tsv(result.local, stage / "local_explanations.tsv")
    tables, texts, summary = result.method_tables(), result.method_texts(), result.summary
    audit = getattr(result, "audit", None)
    write_tsv(result.ranking, stage / "gene_ranking.tsv")
    write_tsv(result.interactions, stage / "interactions.tsv")
    if audit is not None:
        write_tsv(audit, stage / "audit.tsv")
    # explain.methods: surrogate.tsv, surrogate_rules.txt, partial_dependence.tsv, ... (docs/explain.md)
    for name, table in tables.items():
        write_tsv(table, stage / name)
    for name, text in texts.items():
        (stage / name).write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    write_json(summary, stage / "explain_summary.json")
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
    write_tsv, write_json = (lab := _Explains("data")).tsv, lab.json  # every table says what it explains
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
    tables, summary = report_tables_with_explains(result)  # what each row / column explains (explains.py)
    for name, table in tables.items():
        write_tsv(table, stage / name)
    if result.group_attributions is not None:
        result.group_attributions.to_parquet(stage / "group_attributions.parquet", index=False)
    write_json(summary, stage / "report_summary.json")
    if summary.get("plain_summary"):
        (stage / "summary.txt").write_text(summary["plain_summary"] + "\n", encoding="utf-8")
    from iml_genomics.report.interactive import relative_links

    # links to the input directories' TSVs, relative to where report.html lands (the staging dir's parent)
    (stage / "report.html").write_text(relative_links(result.html, stage.parent), encoding="utf-8")
    prov.mark("write")
    prov.write(stage)


def report_tables_with_explains(result) -> tuple[dict, dict]:
    """The report's TSVs with their ``explains`` statements, and report_summary.json with ``explains_files``.

    biomarkers.tsv mixes evidence of every kind: each row says which kind placed it at its rank, and
    biomarkers_columns.tsv says what each column explains. gene_sets.tsv says per row which test ranks the set
    (the over-representation query's kind or the rank-based test's, docs/report.md).

    Returns
    -------
    tables : dict
        File name -> table, in writing order.
    summary : dict
        ``result.summary`` with ``explains`` (``mixed``) and ``explains_files``.
    """
    from iml_genomics import explains as E

    bm = result.biomarkers
    if "explains" not in bm.columns:
        bm = bm.assign(explains=E.biomarker_row_kinds(bm).to_numpy())
    tables = {"biomarkers.tsv": bm}
    gene_set_kind = None
    if result.gene_sets is not None:
        gs_table = result.gene_sets
        gs_table = E.gene_sets_with_explains(gs_table, result.summary.get("gene_sets"))
        tables["gene_sets.tsv"] = gs_table
        significant = gs_table["significant"].map(lambda v: v is True or str(v).lower() == "true")
        gene_set_kind = E.combined_kind(gs_table.loc[significant.to_numpy(dtype=bool), "explains"])
    tables["biomarkers_columns.tsv"] = E.biomarker_columns(list(bm.columns), gene_set_kind)
    files = {name: E.describe_table(t) for name, t in tables.items()}
    summary = {**result.summary, "explains": result.summary.get("explains", E.MIXED),
               "explains_files": dict(sorted(files.items()))}
    return tables, summary


def write_compare(stage: str | Path, result, prov) -> None:
    """model_comparison.tsv, model_agreement.tsv, robust_genes.tsv, model_gene_rankings.tsv,
    model_tuning.tsv, cv_folds.tsv, compare_summary.json, provenance.json.

    Parameters
    ----------
    stage : path
    result : iml_genomics.steps.CompareResult
    prov : iml_genomics.io.Provenance
    """
    write_tsv, write_json = (lab := _Explains("model")).tsv, lab.json  # every table says what it explains
    stage = Path(stage)
    prov.extra["cohort"] = result.cohort
    write_tsv(result.comparison, stage / "model_comparison.tsv")
    write_tsv(result.agreement, stage / "model_agreement.tsv")
    write_tsv(result.robust_genes, stage / "robust_genes.tsv")
    write_tsv(result.gene_rankings, stage / "model_gene_rankings.tsv")
    write_tsv(result.tuning, stage / "model_tuning.tsv")
    write_tsv(result.folds, stage / "cv_folds.tsv")
    write_json(result.summary, stage / "compare_summary.json")
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


def compare_line(result, out) -> str:
    """``compare: N samples x P genes, M models; best MODEL auroc = m +/- sd; R robust gene(s); wrote OUT``."""
    s = result.summary
    return (f"compare: {result.cohort['n_samples']} samples x {result.cohort['n_genes']} genes, "
            f"{len(s['candidates'])} models on the same folds; best {s['best_model']} {s['primary_metric']} = "
            f"{s['best_metric_mean']:.3f} +/- {s['best_metric_sd']:.3f}; {len(s['robust_genes_all_models'])} gene(s) "
            f"in the top {s['top_k']} of every model; wrote {out}")
