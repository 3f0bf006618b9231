"""The `report` step (biomarker table, gene-set results, HTML) and the gene-set analysis on its own."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from iml_genomics.steps._common import resolved


@dataclass
class GeneSetResult:
    """What :func:`gene_sets` produces.

    Attributes
    ----------
    table : pandas.DataFrame
        ``gene_sets.tsv``.
    group_attributions : pandas.DataFrame or None
        ``group_attributions.parquet`` (``sample_id`` then one column per set: sum of |SHAP|); None without
        per-sample attributions.
    summary : dict
        The ``gene_sets`` block of ``report_summary.json``.
    keys : pandas.Series
        Measured gene id -> the key matched against the sets (symbol through the gene map, else the id).
    positive_class : str or None
        Two classes: the class set directions refer to.
    warnings : list of str
    """

    table: pd.DataFrame
    group_attributions: pd.DataFrame | None
    summary: dict
    keys: pd.Series
    positive_class: str | None = None
    warnings: list = field(default_factory=list)


@dataclass
class ReportResult:
    """What :func:`report` produces.

    Attributes
    ----------
    biomarkers : pandas.DataFrame
        ``biomarkers.tsv``.
    gene_sets : pandas.DataFrame or None
        ``gene_sets.tsv`` (None without gene sets).
    group_attributions : pandas.DataFrame or None
        ``group_attributions.parquet`` (None without gene sets or attributions).
    summary : dict
        ``report_summary.json``.
    html : str
        ``report.html``.
    steps : list of str
        The steps whose results the report used.
    task : str or None
    positive_class : str or None
    warnings : list of str
        One-line warnings for stderr.
    """

    biomarkers: pd.DataFrame
    gene_sets: pd.DataFrame | None
    group_attributions: pd.DataFrame | None
    summary: dict
    html: str
    steps: list
    task: str | None
    positive_class: str | None
    warnings: list = field(default_factory=list)


def report_inputs(inputs=None, *, train=None, explain=None, select=None, input_dirs=None, input_provenance=None):
    """One :class:`~iml_genomics.report.ReportInputs` from loaded directories and/or in-memory step results.

    Parameters
    ----------
    inputs : ReportInputs or list of path, optional
        What :func:`iml_genomics.report.load_inputs` read (or the directories to read; the CLI reads them).
    train, explain, select : TrainResult, ExplainResult, SelectResult, optional
        Results of the steps in this process; each replaces the same step's loaded directory.
    input_dirs : mapping of str to path, optional
        Step -> the directory its in-memory result was (or will be) written to, as the page names it; by
        default ``(in memory: STEP)``.
    input_provenance : mapping of str to dict, optional
        Step -> its provenance record, shown on the page (as read from ``provenance.json``).

    Returns
    -------
    ReportInputs
    """
    from iml_genomics.report import ReportInputs, load_inputs

    if inputs is None:
        inputs = ReportInputs()
    elif not isinstance(inputs, ReportInputs):
        inputs = load_inputs(inputs)
    else:
        inputs = copy.copy(inputs)
        inputs.dirs, inputs.provenance = dict(inputs.dirs), dict(inputs.provenance)
    for step, result in (("train", train), ("explain", explain), ("select", select)):
        if result is None:
            continue
        inputs.dirs[step] = Path((input_dirs or {}).get(step) or f"(in memory: {step})")
        inputs.provenance.pop(step, None)
        if (input_provenance or {}).get(step) is not None:
            inputs.provenance[step] = input_provenance[step]
        # tables and documents as a reader of the written files sees them (floats to 10 digits, key order,
        # dtypes), so the report from memory is byte for byte the report from the directories
        if step == "train":
            inputs.cv_metrics, inputs.oof = _as_tsv(result.cv_metrics), _as_tsv(result.oof_predictions)
            inputs.cv_summary = _as_tsv(result.cv_summary)
            inputs.model = _as_json(result.manifest)
        elif step == "explain":
            inputs.gene_ranking, inputs.local = _as_tsv(result.ranking), _as_tsv(result.local)
            inputs.interactions = _as_tsv(result.interactions)
            inputs.audit = _as_tsv(getattr(result, "audit", None))
            inputs.explain_summary, inputs.attributions = _as_json(result.summary), result.attribution_table()
        else:
            inputs.knockoffs, inputs.select_summary = _as_tsv(result.selection), _as_json(result.summary)
    from iml_genomics.report.inputs import without_writer_explains

    return without_writer_explains(inputs)  # results rebuilt from an AnnData carry the files' explains column


def _as_tsv(frame: pd.DataFrame | None) -> pd.DataFrame | None:
    import io

    if frame is None:  # output.granularity aggregate: a per-sample table withheld
        return None

    from iml_genomics.io.writers import tsv_text
    from iml_genomics.report.inputs import TSV_DTYPES

    return pd.read_csv(io.StringIO(tsv_text(frame)), sep="\t", keep_default_na=True, dtype=TSV_DTYPES)


def _as_json(document: dict) -> dict:
    from iml_genomics.io.writers import json_document

    return json_document(document)


def _classes_and_task(inputs, adata, label_column, cfg):
    task = (inputs.model or {}).get("task") or (None if cfg.task == "auto" else cfg.task)
    if task == "regression":
        return task, None
    if adata is not None and label_column and label_column in adata.obs.columns:
        return task, sorted(set(adata.obs[label_column].astype(str).str.strip()))
    classes = (inputs.model or {}).get("classes")
    return task, [str(c) for c in classes] if isinstance(classes, list) else None


def report_positive_class(inputs, adata, cfg, *, positive_class=None, source: str = "labels"):
    """The report's class of interest, checked against the labels.

    ``positive_class`` (the user's explicit choice) wins; else what explain explained (so SHAP signs read as
    computed), else train's model.json, else select's summary, else the last label in sorted order (with the
    case/control-style warning).

    Returns
    -------
    positive_class : str or None
    warning : str or None

    Raises
    ------
    iml_genomics.errors.InputDataError
        An explicit class that is not a label.
    """
    from iml_genomics.io.cohort import resolve_positive_class

    label_column = cfg.data.label_column or (inputs.model or {}).get("label_column")
    task, classes = _classes_and_task(inputs, adata, label_column, cfg)
    if classes is None and task != "regression":
        return positive_class, None  # no labels to check it against (nor to warn about)
    requested = positive_class
    if requested is None:
        recorded = [(inputs.explain_summary or {}).get("positive_class"), (inputs.model or {}).get("positive_class"),
                    (inputs.select_summary or {}).get("positive_class")]
        chosen = next((r for r in recorded if isinstance(r, str)), None)
        # a recorded default stays a default: the case/control warning is repeated for it
        requested = chosen if classes is not None and len(classes) == 2 and chosen != classes[-1] else None
    return resolve_positive_class(classes, requested, source=source, column=label_column)


def _setup(adata, cfg, inputs, train, explain, select, positive_class, n_jobs, random_state, recorded=None):
    cfg = resolved(cfg, n_jobs, random_state)
    recorded = recorded or {}
    inputs = report_inputs(inputs, train=train, explain=explain, select=select,
                           input_dirs={k: v[0] for k, v in recorded.items()},
                           input_provenance={k: v[1] for k, v in recorded.items()})
    sources = (adata.uns.get("sources") or {}) if adata is not None else {}
    source = str(sources.get("labels") or sources.get("expression") or inputs.dirs.get("train", "model.json"))
    positive, warning = report_positive_class(inputs, adata, cfg, positive_class=positive_class, source=source)
    label_column = cfg.data.label_column or (inputs.model or {}).get("label_column")
    task = (inputs.model or {}).get("task") or (None if cfg.task == "auto" else cfg.task)
    return cfg, inputs, positive, [warning] if warning else [], label_column, task


def _subsample(adata, cfg, label_column, task):
    """The cohort's seeded stratified subsample for the per-gene tests and the permutation null
    (report.max_samples; iml_genomics.single_cell), keeping the samples whose local explanations are shown."""
    if adata is None:
        return None, None
    from iml_genomics.single_cell import subsample_cohort

    return subsample_cohort(adata, cfg.report.max_samples, label_column=label_column, seed=cfg.seed,
                            min_per_class=2, task=task or cfg.task, keep=cfg.report.samples or cfg.explain.samples)


def _count_options(cfg) -> dict:
    return {"count_data": cfg.preprocess.transform in ("log1p", "log1p_cpm"),
            "cpm": cfg.preprocess.transform == "log1p_cpm"}


def gene_sets(adata, cfg, *, collection, inputs=None, train=None, explain=None, select=None, gene_map=None,
              positive_class: str | None = None, n_jobs: int | None = None,
              random_state: int | None = None, backend=None) -> GeneSetResult:
    """Gene-set analysis (over-representation, rank test, group attributions) without building a report.

    Parameters
    ----------
    adata : anndata.AnnData or None
        The cohort (expression and ``obs[cfg.data.label_column]``) for univariate effects and
        sample-permutation nulls; None = genes-independent nulls only.
    cfg : iml_genomics.config.Config
        Resolved config (``report`` section: set sizes, top_k, n_permutations, ranking_metric, gene_set_fdr).
    collection : iml_genomics.genesets.GeneSetCollection
        The gene sets (:func:`iml_genomics.genesets.read_gmt`).
    inputs : ReportInputs or list of path, optional
        Loaded train/explain/select directories.
    train, explain, select : step results, optional
        In-memory results (they replace the same step's directory).
    gene_map : pandas.Series, optional
        Measured id -> symbol (:func:`iml_genomics.genesets.read_gene_map`).
    positive_class : str, optional
        Two classes: the class set directions refer to; None = the class explain / train / select used.
    n_jobs : int, optional
        Accepted for symmetry; the analysis is single-process.
    backend : iml_genomics.parallel.Backend, optional
        Accepted for symmetry with the other steps; the analysis runs in this process.
    random_state : int, optional
        Seed of the permutation tests; None = ``cfg.seed``.

    Returns
    -------
    GeneSetResult
    """
    from iml_genomics.report.build import gene_set_analysis, report_context

    cfg, inputs, positive, warnings, label_column, task = _setup(adata, cfg, inputs, train, explain, select,
                                                                 positive_class, n_jobs, random_state)
    adata, subsample = _subsample(adata, cfg, label_column, task)
    ctx = report_context(inputs, adata=adata, label_column=label_column, task=task, positive_class=positive,
                         **_count_options(cfg))
    analysis = gene_set_analysis(inputs, ctx, collection, report_cfg=cfg.report, gene_map=gene_map, adata=adata,
                                 label_column=label_column, random_state=cfg.seed, **_count_options(cfg))
    if subsample is not None:
        analysis.summary["subsample"] = subsample
    return GeneSetResult(table=analysis.table, group_attributions=_per_sample(analysis.group_per_sample),
                         summary=analysis.summary, keys=analysis.keys,
                         positive_class=ctx.classes[0] if ctx.classes else positive, warnings=warnings)


def _per_sample(frame):
    return None if frame is None else frame.rename_axis("sample_id").reset_index()


def report(adata, cfg, *, inputs=None, train=None, explain=None, select=None, collection=None, gene_map=None,
           positive_class: str | None = None, n_jobs: int | None = None, random_state: int | None = None,
           own_provenance: dict | None = None, recorded: dict | None = None, backend=None) -> ReportResult:
    """Biomarker table, gene-set results and a self-contained HTML page from the other steps' results.

    Parameters
    ----------
    adata : anndata.AnnData or None
        The cohort, for univariate effects and expression-coloured plots; None = tables from the step results
        only.
    cfg : iml_genomics.config.Config
        Resolved config (``report``, ``data.label_column``, ``preprocess.transform``, ``explain.samples``).
    inputs : ReportInputs or list of path, optional
        Loaded train/explain/select directories (:func:`iml_genomics.report.load_inputs`).
    train, explain, select : TrainResult, ExplainResult, SelectResult, optional
        In-memory results of the steps; each replaces the same step's directory. Any subset.
    collection : iml_genomics.genesets.GeneSetCollection, optional
        Gene sets; without them gene-set results are skipped.
    gene_map : pandas.Series, optional
        Measured id -> symbol.
    positive_class : str, optional
        Two classes: the class effects, ``higher_in``, SHAP signs and set directions refer to (the user's
        explicit choice); None = what explain explained, else train's, else select's, else the last label.
    n_jobs : int, optional
        Accepted for symmetry; the report is single-process.
    backend : iml_genomics.parallel.Backend, optional
        Accepted so that ``run`` can hand every step the same backend; the report runs in this process and
        sends nothing to a scheduler (so none is contacted or recorded).
    random_state : int, optional
        Seed of the permutation tests; None = ``cfg.seed``.
    own_provenance : dict, optional
        This report's provenance rows shown on the page (command line, inputs).
    recorded : mapping of str to (path, dict), optional
        Step -> (directory, provenance record) of an in-memory result that was also written out (``run``):
        the page then names that directory and shows that provenance, as if it had been read from it.

    Returns
    -------
    ReportResult

    Raises
    ------
    iml_genomics.errors.InputDataError
        A positive class that is not a label; inconsistent inputs.
    """
    from iml_genomics.report import build_report

    cfg, inputs, positive, warnings, label_column, task = _setup(adata, cfg, inputs, train, explain, select,
                                                                 positive_class, n_jobs, random_state, recorded)
    adata, subsample = _subsample(adata, cfg, label_column, task)
    rc = cfg.report
    result = build_report(inputs, collection=collection, report_cfg=rc, gene_map=gene_map, adata=adata,
                          label_column=label_column, task=task, samples=rc.samples or cfg.explain.samples,
                          random_state=cfg.seed, title=rc.title, own_provenance=own_provenance,
                          positive_class=positive, **_count_options(cfg))
    if subsample is not None:
        result.summary["subsample"] = subsample
    return ReportResult(biomarkers=result.biomarkers, gene_sets=result.gene_sets,
                        group_attributions=_per_sample(result.group_attributions_per_sample),
                        summary=result.summary, html=result.html, steps=inputs.steps, task=result.summary.get("task"),
                        positive_class=result.summary.get("positive_class"), warnings=warnings)
