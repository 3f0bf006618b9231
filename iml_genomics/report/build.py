"""The report step's core: tables and HTML from in-memory inputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from iml_genomics import __version__
from iml_genomics import genesets as gs
from iml_genomics.report import html as H
from iml_genomics.report import page_parts as P
from iml_genomics.report import plots
from iml_genomics.report.inputs import ReportInputs, measured_genes
from iml_genomics.report.tables import NULL_WORDS, analyse_gene_sets, build_biomarkers, univariate_effects


@dataclass
class ReportResult:
    """Tables, summary and page produced by :func:`build_report`."""

    biomarkers: pd.DataFrame
    gene_sets: pd.DataFrame | None
    group_attributions_per_sample: pd.DataFrame | None
    summary: dict = field(default_factory=dict)
    html: str = ""


def _attr_rows(inputs: ReportInputs, positive_class: str | None,
               classes: tuple[str, str] | None = None) -> pd.DataFrame | None:
    """Samples x genes SHAP values of one class (the positive one when several).

    Two classes whose attributions explain the other class (explain run with another --positive-class):
    the values are negated, which is exactly the positive class's attributions on the log-odds / margin
    scale and on the probability scale (p and 1 - p), so the plot's signs always refer to the positive class.
    """
    attr = inputs.attributions
    if attr is None:
        return None
    if "class" in attr.columns and attr["class"].nunique() > 1:
        cls = positive_class if positive_class in set(attr["class"].astype(str)) else str(attr["class"].iloc[0])
        attr = attr[attr["class"].astype(str) == cls]
    genes = [c for c in attr.columns if c not in ("sample_id", "class", "base_value", "model_output")]
    out = attr.set_index(attr["sample_id"].astype(str))[genes]
    if (classes is not None and "class" in attr.columns and len(attr)
            and set(attr["class"].astype(str)) == {classes[1]}):
        out = -out
    return out


def _explained_class(inputs: ReportInputs) -> str | None:
    """The one class explain explained (two classes), from its summary or its attributions."""
    es = inputs.explain_summary or {}
    if isinstance(es.get("positive_class"), str):
        return es["positive_class"]
    explained = es.get("classes_explained")
    if isinstance(explained, list) and len(explained) == 1 and isinstance(explained[0], str):
        return explained[0]
    return None


def two_classes(positive_class: str | None, *candidates) -> tuple[str, str] | None:
    """(positive, other) from the first list of exactly two class names among ``candidates``."""
    for classes in candidates:
        if classes is not None and len(classes) == 2:
            classes = [str(c) for c in classes]
            pos = positive_class if positive_class in classes else classes[-1]
            return pos, [c for c in classes if c != pos][0]
    return None


@dataclass
class ReportContext:
    """What the report's analyses share: task, (positive, other) class, measured genes, univariate effects."""

    task: str | None
    positive_class: str | None
    classes: tuple[str, str] | None
    gene_ids: list
    univariate: pd.DataFrame | None


def report_context(inputs: ReportInputs, *, adata=None, label_column: str | None = None, task: str | None = None,
                   count_data: bool = False, cpm: bool = False, positive_class: str | None = None) -> ReportContext:
    """Task, classes, genes and univariate effects, as :func:`build_report` and the gene-set step use them.

    Parameters are those of :func:`build_report`.
    """
    model = inputs.model or {}
    task = task or model.get("task")
    positive_class = positive_class or model.get("positive_class")
    gene_ids = [str(g) for g in adata.var_names] if adata is not None else measured_genes(inputs)
    univariate = None
    label_classes = None
    if adata is not None and label_column and label_column in adata.obs.columns:
        if task is None:
            from iml_genomics.io import infer_task

            task = infer_task(adata.obs[label_column])
        if task == "classification":
            label_classes = sorted(set(adata.obs[label_column].astype(str).str.strip()))
        univariate = univariate_effects(adata, label_column=label_column, task=task,
                                        positive_class=positive_class, count_data=count_data, cpm=cpm)
    classes = two_classes(positive_class, label_classes, model.get("classes")) if task != "regression" else None
    return ReportContext(task, positive_class, classes, gene_ids, univariate)


def gene_set_analysis(inputs: ReportInputs, ctx: ReportContext, collection: gs.GeneSetCollection, *, report_cfg,
                      gene_map: pd.Series | None = None, adata=None, label_column: str | None = None,
                      random_state=0, count_data: bool = False, cpm: bool = False):
    """The gene-set analysis of the report (:func:`~iml_genomics.report.tables.analyse_gene_sets`) in context."""
    classes = ctx.classes
    return analyse_gene_sets(
        inputs, collection, gene_map=gene_map, univariate=ctx.univariate, min_size=report_cfg.min_set_size,
        max_size=report_cfg.max_set_size, top_k=report_cfg.top_k, n_permutations=report_cfg.n_permutations,
        ranking_metric=report_cfg.ranking_metric, q_threshold=report_cfg.gene_set_fdr,
        random_state=random_state, gene_ids=ctx.gene_ids, classes=classes, adata=adata,
        label_column=label_column, task=ctx.task, positive_class=classes[0] if classes else ctx.positive_class,
        count_data=count_data, cpm=cpm)


def build_report(inputs: ReportInputs, *, collection: gs.GeneSetCollection | None, report_cfg,
                 gene_map: pd.Series | None = None, adata=None, label_column: str | None = None,
                 task: str | None = None, count_data: bool = False, cpm: bool = False,
                 samples: list[str] | None = None, random_state=0, title: str = "iml-genomics report",
                 own_provenance: dict | None = None, positive_class: str | None = None) -> ReportResult:
    """Build biomarkers.tsv, gene_sets.tsv and report.html contents.

    Parameters
    ----------
    inputs : ReportInputs
        What :func:`~iml_genomics.report.inputs.load_inputs` found.
    collection : GeneSetCollection or None
        Gene sets; gene-set results are skipped when None.
    report_cfg : ReportConfig
        min/max set size, top_k, n_permutations, ranking_metric, gene_set_fdr.
    gene_map : pandas.Series, optional
        Measured id -> symbol (see :func:`iml_genomics.genesets.read_gene_map`).
    adata : anndata.AnnData, optional
        The cohort, for univariate effects and expression-coloured plots.
    label_column, task : str, optional
        Outcome column and task; task defaults to model.json's.
    count_data, cpm : bool
        Passed to :func:`~iml_genomics.report.tables.univariate_effects`.
    samples : list of str, optional
        Samples whose local explanations are shown; all in
        local_explanations.tsv when empty.
    random_state : int
        Seed of the permutation test.
    positive_class : str, optional
        Two classes: the class effects, ``higher_in``, SHAP signs and gene-set directions refer to;
        model.json's ``positive_class`` when None, else the last label in sorted order.
    """
    ctx = report_context(inputs, adata=adata, label_column=label_column, task=task, count_data=count_data, cpm=cpm,
                         positive_class=positive_class)
    task, classes, gene_ids, univariate = ctx.task, ctx.classes, ctx.gene_ids, ctx.univariate
    summary: dict = {"steps": inputs.steps, "task": task, "n_genes": len(gene_ids),
                     "positive_class": classes[0] if classes else None,
                     "univariate_effect": None if univariate is None else str(univariate["effect_type"].iloc[0])}
    analysis = None
    if collection is not None:
        analysis = gene_set_analysis(inputs, ctx, collection, report_cfg=report_cfg, gene_map=gene_map, adata=adata,
                                     label_column=label_column, random_state=random_state, count_data=count_data,
                                     cpm=cpm)
        summary["gene_sets"] = analysis.summary
        keys = analysis.keys
    else:
        keys = gs.map_gene_ids(gene_ids, gene_map)
    if gene_map is not None:
        from iml_genomics.gene_ids import mapping_summary

        summary["gene_ids"] = mapping_summary(gene_ids, keys, gene_map)  # mapping rate (docs/report.md)
    biomarkers = build_biomarkers(inputs, gene_ids=gene_ids, keys=keys, univariate=univariate,
                                  gene_set_table=analysis.table if analysis else None,
                                  sets=analysis.sets if analysis else None)
    explained = _explained_class(inputs)
    if classes is not None and explained == classes[1] and "mean_shap" in biomarkers:
        # explain explained the other class: its signed SHAP is exactly the negative of the positive class's
        biomarkers["mean_shap"] = -pd.to_numeric(biomarkers["mean_shap"], errors="coerce")
        summary["mean_shap_negated"] = f"explain explained '{explained}'; mean_shap is stated for '{classes[0]}'"
    summary["n_biomarker_rows"] = len(biomarkers)
    if inputs.compare_table is not None and len(inputs.compare_table):
        from iml_genomics.report.compare_section import comparison_summary

        summary["model_comparison"] = comparison_summary(inputs)
    if inputs.knockoffs is not None:
        summary["n_knockoff_selected"] = int((biomarkers["knockoff_selected"] == True).sum())  # noqa: E712
    _add_plain_summary(summary, inputs, analysis, keys, adata, label_column, task, len(gene_ids))
    result = ReportResult(biomarkers=biomarkers, gene_sets=analysis.table if analysis else None,
                          group_attributions_per_sample=analysis.group_per_sample if analysis else None,
                          summary=summary)
    result.html = _page(inputs, result, adata=adata, label_column=label_column, keys=keys, samples=samples or [],
                        title=title, own_provenance=own_provenance, seed=random_state, classes=classes,
                        analysis=analysis)
    return result


def _add_plain_summary(summary: dict, inputs: ReportInputs, analysis, keys: pd.Series, adata, label_column,
                       task, n_genes: int) -> None:
    """``plain_summary`` and ``plain_summary_caveats`` of report_summary.json (report/plain_summary.py)."""
    from iml_genomics.report.plain_summary import plain_summary

    counts = None
    if adata is not None and label_column and label_column in adata.obs.columns and task != "regression":
        counts = adata.obs[label_column].astype(str).str.strip().value_counts().sort_index().to_dict()
    plain = plain_summary(inputs, gene_sets=analysis.table if analysis else None,
                          gene_set_summary=summary.get("gene_sets"), symbols={str(g): str(k) for g, k in keys.items()},
                          n_samples=adata.n_obs if adata is not None else None, n_genes=n_genes, class_counts=counts)
    summary["plain_summary"] = plain["text"]
    summary["plain_summary_caveats"] = plain["caveats"]


def _page(inputs: ReportInputs, result: ReportResult, *, adata, label_column, keys: pd.Series, samples, title,
          own_provenance, seed, classes: tuple[str, str] | None = None, analysis=None) -> str:
    model = inputs.model or {}
    labels = {g: k for g, k in keys.items() if str(k).upper() != str(g).upper()}
    sections = []
    if result.summary.get("plain_summary"):
        from iml_genomics.report.plain_summary import summary_html

        sections.append(("summary", "In plain words", summary_html(
            {"text": result.summary["plain_summary"], "caveats": result.summary.get("plain_summary_caveats") or []})))

    # data summary
    info = {"steps found": ", ".join(inputs.steps) or "none",
            "task": result.summary.get("task") or "", "genes measured": result.summary["n_genes"]}
    gid = result.summary.get("gene_ids")
    if gid:
        by = ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in gid["by_source"].items() if k != "measured_id")
        info["ids mapped to symbols"] = (f"{gid['n_mapped']} of {gid['n_measured_ids']} "
                                         f"({100 * gid['mapping_rate']:.1f}%; {by or 'none'}); "
                                         f"{gid['n_unmapped']} unmapped keep their own id")
    if adata is not None:
        info["samples"] = adata.n_obs
        if label_column and label_column in adata.obs.columns and result.summary.get("task") != "regression":
            counts = adata.obs[label_column].astype(str).value_counts().sort_index()
            info[f"classes ({label_column})"] = ", ".join(f"{k}: {v}" for k, v in counts.items())
    if classes is not None:
        info["positive class (AUROC, SHAP signs, higher_in, gene-set directions)"] = classes[0]
    elif inputs.oof is not None:
        info["samples (out-of-fold)"] = inputs.oof["sample_id"].nunique()
    if model:
        info["model"] = model.get("model_name", "")
        counted = P.nonzero_attribution_count(inputs)
        if counted is not None:
            # counted from the attributions: a sparse model is given every gene but uses few
            info["genes with non-zero attribution"] = f"{counted[0]} of {counted[1]} explained"
        else:
            info["genes given to the final model"] = len(model.get("used_genes") or [])
        info["label column"] = model.get("label_column", "")
    info["univariate effect"] = result.summary.get("univariate_effect") or "not computed (no expression/labels)"
    gsum = result.summary.get("gene_sets")
    if gsum:
        info["gene-set file"] = gsum["gene_set_file"]
    sections.append(("data", "Data summary", H.kv_table(info)))

    # CV performance
    if inputs.cv_metrics is not None:
        from iml_genomics.io.interchange import cv_summary_table

        # one row per metric (mean, sd, n_folds) from cv_summary.tsv; an older train directory has none
        summary_table = inputs.cv_summary if inputs.cv_summary is not None else cv_summary_table(inputs.cv_metrics)
        inner = H.table_html(summary_table)
        inner += '<div class="plots">' + P.auc_figure(inputs, model) + "</div>"
        inner += P.files_note(P.input_link(inputs, "train", "cv_summary.tsv"),
                              P.input_link(inputs, "train", "cv_metrics.tsv"),
                              P.input_link(inputs, "train", "oof_predictions.tsv"))
        if model.get("positive_class"):
            inner += (f'<p class="note">auroc and average_precision treat {H.esc(model["positive_class"])} as the '
                      f'positive class.</p>')
        inner += ('<p class="note">Out-of-fold predictions: every sample is predicted by a model that did not see '
                  'it. Preprocessing was fit inside the folds.</p>')
    else:
        inner = H.missing(H._MISSING["train"])
    sections.append(("cv", "Cross-validated performance", inner))

    # model comparison (an `iml-genomics compare` directory among the inputs)
    if inputs.compare_table is not None and len(inputs.compare_table):
        from iml_genomics.report.compare_section import compare_section

        sections.append(("compare", "Model comparison", compare_section(inputs)))

    # top biomarkers
    bm = result.biomarkers
    show = ["rank", "gene_id", "symbol", "knockoff_selected", "explain_rank", "mean_abs_shap", "explain_rank_low",
            "explain_rank_high", "top_k_frequency", "knockoff_w", "effect", "higher_in", "q_value", "gene_sets"]
    shown_bm = bm[show].assign(symbol=P.display_symbols(bm["gene_id"], bm["symbol"]))
    inner = H.table_html(shown_bm, max_rows=25, max_chars=70, source="biomarkers.tsv",
                         caption="All genes, sortable (click a header) and filterable; symbols link to NCBI Gene.")
    inner += ('<p class="note">Sorted: knockoff-selected genes first, then genes with non-zero mean |SHAP| by '
              f'explain rank, then univariate q-value, then |effect|; ties by gene id. Effect: '
              f'{H.esc(result.summary.get("univariate_effect") or "n/a")}. Full table: biomarkers.tsv.</p>')
    sections.append(("biomarkers", "Top biomarkers", inner))

    # SHAP
    if inputs.gene_ranking is not None or inputs.attributions is not None:
        attr = _attr_rows(inputs, classes[0] if classes else model.get("positive_class"), classes)
        if inputs.gene_ranking is not None:
            top = inputs.gene_ranking.sort_values(["rank", "gene_id"])["gene_id"].astype(str).head(20).tolist()
        else:
            top = attr.abs().mean().sort_values(ascending=False).index[:20].tolist()
        expr = None
        if adata is not None and attr is not None:
            cols = [g for g in top if g in set(adata.var_names)]
            sub = adata[:, cols]
            X = sub.X.toarray() if hasattr(sub.X, "toarray") else np.asarray(sub.X)
            expr = pd.DataFrame(X, index=adata.obs_names.astype(str), columns=cols)
        inner = '<div class="plots">' + H.img(plots.shap_beeswarm(attr, expr, top, labels, seed=seed,
                                                                  positive_class=classes[0] if classes else None),
                                              "SHAP beeswarm summary",
                                              P.beeswarm_caption(classes[0] if classes else model.get(
                                                  "positive_class"), classes[1] if classes else None,
                                                  expr is not None))
        inner += H.img(plots.shap_bar(inputs.gene_ranking, labels), "mean |SHAP| bar chart",
                       "Mean |SHAP| over samples of the top genes (error bar: sd across folds or bootstraps): how "
                       "much each gene moves the model's output, whatever the direction.") + "</div>"
        inner += P.permutation_section(inputs, labels)
        inner += P.files_note(P.input_link(inputs, "explain", "gene_ranking.tsv"),
                              P.input_link(inputs, "explain", "local_explanations.tsv"),
                              P.input_link(inputs, "explain", "interactions.tsv"))
        if inputs.interactions is not None and len(inputs.interactions):
            inner += "<h3>Strongest pairwise interactions (Shapley interaction values)</h3>"
            inner += H.table_html(inputs.interactions.sort_values("mean_abs_interaction", ascending=False),
                                  max_rows=10)
        if inputs.explain_summary:
            keep = {k: v for k, v in inputs.explain_summary.items() if not isinstance(v, (dict, list))}
            inner += "<h3>Explain summary</h3>" + H.kv_table(keep)
    else:
        inner = H.missing(H._MISSING["explain"])
    sections.append(("shap", "SHAP attributions", inner))

    # knockoffs
    if inputs.knockoffs is not None:
        ss = inputs.select_summary or {}
        thr = ss.get("threshold")
        try:
            thr = float(thr)
        except (TypeError, ValueError):
            thr = None
        inner = '<div class="plots">' + H.img(
            plots.knockoff_w(inputs.knockoffs, thr, labels), "knockoff W plot",
            "Knockoff statistic W of every tested gene, sorted: W > 0 when the gene beats its knockoff copy. Red "
            "points (W at or above the dashed threshold T) are selected at the target FDR; the mirror -T shows what "
            "null genes look like. W measures importance, not which class a gene is higher in.")
        inner += "</div>"
        keep = {k: v for k, v in ss.items() if not isinstance(v, (dict, list))}
        diag = ss.get("diagnostics") if isinstance(ss.get("diagnostics"), dict) else {}
        keep.update({f"diagnostics.{k}": v for k, v in diag.items() if not isinstance(v, (dict, list))})
        inner += H.kv_table(keep)
        inner += P.files_note(P.input_link(inputs, "select", "knockoff_selection.tsv"))
    else:
        inner = H.missing(H._MISSING["select"])
    sections.append(("knockoffs", "Knockoff selection", inner))

    # gene sets
    if result.gene_sets is not None:
        gsum = result.summary["gene_sets"]
        mapping = {
            "gene-set file": gsum["gene_set_file"], "sets in file": gsum["n_sets_in_file"],
            f"sets tested ({gsum['min_set_size']}-{gsum['max_set_size']} measured genes)": gsum["n_sets_tested"],
            "measured gene ids": gsum["n_measured_ids"],
            "ids mapped through the gene map": gsum["n_ids_mapped_by_table"],
            "ids whose symbol is in the gene-set file": gsum["n_ids_in_gene_set_file"],
            "distinct symbols (background)": gsum["n_keys"],
            "background symbols in a tested set": gsum["n_keys_in_tested_sets"],
            "over-representation query": gsum["query_source"]
            + (f"; counted in groups: {gsum['n_query_units']} selected of {gsum['n_background_units']} "
               f"(a selected group is one discovery)" if gsum.get("ora_unit") == "group" else ""),
            "rank-based test on": gsum["ranking_metric"], "permutations": gsum["n_permutations"],
            "null of the over-representation test": NULL_WORDS.get(gsum.get("null_method"), ""),
            "null of the rank-based test": NULL_WORDS.get(gsum.get("gsea_null_method"), ""),
            f"significant sets (q <= {gsum['q_threshold']})": gsum["n_significant_sets"],
        }
        if classes is not None:
            mapping["direction (higher_in)"] = gsum.get("direction_basis", "")
        inner = H.kv_table(mapping)
        if gsum.get("note"):
            inner += H.missing(H.esc(gsum["note"]))
        scale = P.gene_set_bar_scale(result.gene_sets)
        inner += '<div class="plots">' + H.img(plots.gene_set_bars(result.gene_sets, classes=classes, scale=scale),
                                               f"gene set {scale}-values",
                                               P.gene_set_bars_caption(scale, classes, gsum["ranking_metric"]))
        inner += H.img(plots.group_attribution_bars(result.gene_sets), "group attributions",
                       "Group attribution: mean over samples of the summed |SHAP| of each set's genes, the sets with "
                       "the most. Magnitude only (no class direction); large sets collect more by size alone.")
        inner += "</div>" + P.running_sum_figures(analysis, classes=classes)
        cols = ["rank", "gene_set", "n_measured", "n_overlap", "overlap_genes", "odds_ratio", "p_value", "q_value",
                "nes", "gsea_q_value", "leading_edge", "group_attribution", "significant"]
        table = result.gene_sets
        if classes is not None and (table["higher_in"].astype(str) != "").any():
            # both directions, each ranked and named by its class (never "positive NES")
            for cls, side in zip(classes, ("positive_class", "other_class")):
                sub = table[table["higher_in"].astype(str) == cls].sort_values("direction_rank", kind="mergesort")
                inner += (f"<h3>Higher in {H.esc(cls)}{' (positive class)' if cls == classes[0] else ''}: "
                          f"{len(sub)} sets</h3>")
                # the over-representation of this class's own list (genes higher in it), named by the class
                own = {f"{f}_{side}": f"{f} (genes higher in {cls})"
                       for f in ("n_overlap", "overlap_genes", "q_value")}
                shown = sub[["direction_rank", "higher_in", *cols[:2], *own, *cols[2:]]].rename(columns=own)
                inner += H.table_html(shown, max_rows=15, max_chars=60)
            inner += (f'<p class="note">higher_in: the class with the stronger directional evidence (the '
                      f'over-representation of the genes higher in that class, or the rank-based test pointing '
                      f'to it; then {H.esc(gsum.get("direction_basis", ""))}); direction_rank ranks the sets of '
                      f'one direction by that evidence, q-value first.</p>')
        else:
            inner += H.table_html(table[cols], max_rows=25, max_chars=60)
        inner += P.files_note(P.own_link("gene_sets.tsv"), P.own_link("group_attributions.parquet")
                              if result.group_attributions_per_sample is not None else "")
        inner += ('<p class="note">Only p-values whose null accounts for the correlation between the genes of a '
                  'set (sample-label permutation or the correlation-adjusted test) can mark a set significant; '
                  'q-values are Benjamini-Hochberg over the nominal p-values of the tested sets, not GSEA\'s '
                  'NES-based FDR. Full table: gene_sets.tsv (null_method, gsea_null_method).</p>')
    else:
        inner = H.missing("No gene sets given: pass --gene-sets FILE.gmt[.gz].")
    sections.append(("genesets", "Gene sets", inner))

    # explain.methods surrogate, pdp, map: one section each when their files exist (report/model_behaviour.py)
    from iml_genomics.report import model_behaviour

    for make in (model_behaviour.surrogate_section, model_behaviour.pdp_section, model_behaviour.map_section):
        section = make(inputs, labels)
        if section is not None:
            sections.append(section)
    # integrated gradients (explain.methods: integrated_gradients; mlp models only)
    ig_table = inputs.explain_methods.get("integrated_gradients.tsv")
    if ig_table is not None and len(ig_table):
        igs = ((inputs.explain_summary or {}).get("methods") or {}).get("integrated_gradients") or {}
        scale = {"log_odds": "the log-odds of", "logit": "the logit (before the softmax) of each class:",
                 "raw": "the predicted value", "log_prediction": "the log of the predicted value"}.get(
                     igs.get("scale"), igs.get("scale", ""))
        outputs = ", ".join(str(o) for o in igs.get("outputs") or [] if str(o))
        vs = igs.get("vs_shap") or {}
        info = {"explained output": f"{scale} {outputs}".strip(),
                "baseline": igs.get("baseline_description", igs.get("baseline", "")),
                "path integral": f"{igs.get('steps')} {igs.get('rule', '')} steps",
                "largest completeness gap |sum(IG) - (f(x) - f(baseline))|": igs.get("max_completeness_gap"),
                "tolerance (relative to max(1, |f(x) - f(baseline)|))": igs.get("tolerance"),
                "samples explained": igs.get("n_samples")}
        if "spearman" in vs:
            info["Spearman correlation of mean |IG| and mean |SHAP|"] = vs.get("spearman")
            info[f"top-{vs.get('top_k')} overlap with SHAP"] = vs.get("top_k_overlap")
        else:
            info["comparison with SHAP"] = vs.get("skipped", "not available")
        inner = H.kv_table(info)
        inner += '<div class="plots">' + H.figure(
            plots.integrated_gradients_plot(ig_table, labels),
            f"Mean |integrated gradient| per gene over all samples, on {H.esc(f'{scale} {outputs}'.strip())}: how "
            f"much each gene moves the network's output away from the baseline sample; the model, not the "
            f"biology.") + "</div>"
        inner += H.table_html(ig_table, max_rows=15)
        inner += ('<p class="note">Integrated gradients explain the <b>model</b> (the trained neural network), not '
                  'the biology: each gene\'s value is how much moving that gene from the baseline to the sample\'s '
                  'expression changes the network\'s output, accumulated along the straight path between them; the '
                  'values of one sample add up to its output minus the baseline\'s (checked on every sample). '
                  'Genes ranked high by both integrated gradients and SHAP are ones the model relies on whichever '
                  'way its behaviour is summarised; a gene that moves a lot between the two depends on the '
                  'baseline or on interactions. Full tables: integrated_gradients.tsv, '
                  'integrated_gradients_local.tsv.</p>')
        sections.append(("integrated_gradients", "Integrated gradients (neural network)", inner))
    # conditional importance (explain.methods: conditional); nothing when the method did not run
    cond = inputs.explain_methods.get("conditional_importance.tsv")
    if cond is not None and len(cond):
        csum = ((inputs.explain_summary or {}).get("methods") or {}).get("conditional") or {}
        inner = '<div class="plots">' + H.figure(
            plots.conditional_importance(cond, labels),
            "Conditional importance of the top genes with 95% intervals, one panel per test (LOCO, CPI); red: "
            "q &le; 0.1. Importance is the held-out loss increase without the gene's own information: the data, "
            "not one class.")
        inner += "</div>"
        inner += ('<p class="note">Does a top gene carry information on the outcome <b>beyond the other genes</b>? '
                  "LOCO refits the model without the gene on each CV fold; CPI keeps each fold's model and replaces "
                  "the gene in the held-out samples by a knockoff (a synthetic copy that keeps its correlation with "
                  "the other genes but knows nothing about the outcome). Importance = mean increase of the "
                  f"held-out {H.esc(csum.get('loss', 'loss'))} per sample (all classes, not one class); p-value: "
                  "one-sided paired t-test, q-value: Benjamini-Hochberg over the tested genes. This describes the "
                  "<b>data</b> as far as this kind of model can learn it, not the one fitted model: a gene that only "
                  "stands in for a correlated gene has CPI near 0 even when SHAP ranks it high. Both are small for a gene whose "
                  "information a correlated gene also carries: each can stand in for the other. The tested genes "
                  "are the top of the SHAP ranking of these same samples: the p- and q-values do not account for "
                  "that choice (docs/explain.md).</p>")
        show = [c for c in ["method", "rank", "gene_id", "importance", "ci_low", "ci_high", "p_value", "q_value",
                            "gene_ranking_rank", "n_samples"] if c in cond.columns]
        inner += H.table_html(cond[show], max_rows=40)
        kn = csum.get("knockoffs") or {}
        if kn.get("failing_genes"):
            inner += H.missing("The knockoffs of " + H.esc(", ".join(map(str, kn["failing_genes"])))
                               + " do not reproduce their correlation with neighbouring genes; their CPI p-values "
                                 "may be too small.")
        sections.append(("conditional", "Conditional importance (LOCO and CPI)", inner))
    # explain.methods lime, anchors, examples: one section each when their files exist (report/local_methods.py)
    from iml_genomics.report.local_methods import local_method_sections

    sections.extend(local_method_sections(inputs, samples, labels))

    # local explanations
    if inputs.local is not None and len(inputs.local):
        present = list(dict.fromkeys(inputs.local["sample_id"].astype(str)))
        wanted = [s for s in samples if s in present] or present[:6]
        not_found = [s for s in samples if s not in present]
        inner = ""
        if not_found:
            inner += H.missing("No local explanation for: " + H.esc(", ".join(not_found))
                               + " (run explain with --samples).")
        true_labels = {}
        if adata is not None and label_column and label_column in adata.obs.columns:
            true_labels = dict(zip(adata.obs_names.astype(str), adata.obs[label_column].astype(str)))
        elif inputs.oof is not None:
            true_labels = dict(zip(inputs.oof["sample_id"].astype(str), inputs.oof["y_true"].astype(str)))
        inner += P.local_section(inputs, wanted, labels, true_labels=true_labels, classes=classes)
        inner += P.files_note(P.input_link(inputs, "explain", "local_explanations.tsv"))
    else:
        withheld = (inputs.explain_summary or {}).get("withheld")
        inner = H.missing(H._MISSING["explain"] if inputs.gene_ranking is None else
                          "Per-sample outputs withheld (output.granularity: aggregate)." if withheld else
                          "No local_explanations.tsv in the explain output (run explain with --samples).")
    sections.append(("local", "Local explanations", inner))

    if inputs.audit is not None:
        from iml_genomics.report.audit_section import audit_html

        sections.append(("audit", "Sensitive-attribute audit", audit_html(inputs.audit)))

    sections.append(("meaning", "What these numbers mean, and what they don't", H.MEANING))
    sections.append(("provenance", "Provenance", H.provenance_html(inputs.provenance, own_provenance)))
    # a badge per section: what it explains (model, data, association); report_summary.json: explains_sections
    from iml_genomics.report import badges

    result.summary["explains_sections"] = badges.section_kinds(sections, result.summary.get("gene_sets"))
    sections = badges.with_badges(sections, result.summary["explains_sections"], result.summary.get("gene_sets"))
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    subtitle = f"generated {now} by iml-genomics {__version__} from: " + ", ".join(
        f"{k}={v}" for k, v in sorted(inputs.dirs.items()))
    return H.render(title=title, subtitle=subtitle, sections=sections, version=__version__)
