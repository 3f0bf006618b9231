"""A plain-language paragraph from this run's numbers: the report's first section, ``report_summary.json:
plain_summary`` and ``summary.txt``.

:func:`plain_summary` is a pure function of the report's inputs (no HTML, no I/O): the model and its
cross-validated accuracy, the genes it relies on and how stable that is across folds, what select selected at
which FDR, the strongest gene sets, and the caveats that apply to this run. Each caveat has a code (listed in
``report_summary.json: plain_summary_caveats``) and a condition on the numbers (:data:`THRESHOLDS`,
docs/report.md); the text states only what the inputs hold.
"""

from __future__ import annotations

import math

import pandas as pd

from iml_genomics.io.readers import truthy

# caveat conditions (docs/report.md, "Plain-language summary")
THRESHOLDS = {
    # fewer samples: CV estimates and rankings vary much between cohorts of this size
    "small_n": 100,
    # mean top-k Jaccard of the per-fold rankings below this: the order of the top genes is not reproducible
    "unstable_jaccard": 0.5,
    # smallest class below this fraction of the largest (1:4; with two classes, under 20% of the samples)
    "imbalance_ratio": 0.25,
    # more than this many genes per sample
    "genes_per_sample": 10,
    # cross-validated accuracy at or below these: the model does little better than guessing (AUROC 0.5, R2 0)
    "chance_auroc": 0.6,
    "chance_r2": 0.05,
}

CAVEAT_CODES = ("near_chance", "small_n", "unstable_ranking", "empty_selection", "failed_diagnostic", "diagnostic_not_run",
                "class_imbalance", "many_genes_few_samples")


def _num(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def f3(value) -> str:
    """How the paragraph prints a metric (3 decimals), so a test can compare it with the tables."""
    return f"{value:.3f}"


def cv_accuracy(inputs) -> tuple[str, float, float | None] | None:
    """(metric, mean, sd) of the primary CV metric: auroc (classification) or r2, from the train tables.

    Read from cv_summary.tsv (one row per metric: ``metric``, ``mean``, ``sd``), else the ``mean`` / ``sd``
    rows of an older cv_metrics.tsv, else model.json's ``cv_summary``, else computed from the per-fold rows
    (sd with ddof = 1, as train does).
    """
    summary = getattr(inputs, "cv_summary", None)
    if summary is not None and {"metric", "mean"} <= set(summary.columns):
        rows = summary.set_index(summary["metric"].astype(str))
        metric = next((m for m in ("auroc", "r2") if m in rows.index), None)
        if metric is not None and _num(rows.loc[metric, "mean"]) is not None:
            return metric, _num(rows.loc[metric, "mean"]), _num(rows.loc[metric, "sd"]) if "sd" in rows else None
    for frame in (inputs.cv_metrics,):
        if frame is None or "split" not in frame.columns:
            continue
        metric = next((m for m in ("auroc", "r2") if m in frame.columns), None)
        if metric is None:
            continue
        rows = frame.set_index(frame["split"].astype(str))
        if "mean" in rows.index:
            mean = _num(rows.loc["mean", metric])
            sd = _num(rows.loc["sd", metric]) if "sd" in rows.index else None
            if mean is not None:
                return metric, mean, sd
    cv = (inputs.model or {}).get("cv_summary")
    if isinstance(cv, dict) and isinstance(cv.get("mean"), dict):
        metric = next((m for m in ("auroc", "r2") if m in cv["mean"]), None)
        if metric is not None and _num(cv["mean"][metric]) is not None:
            return metric, _num(cv["mean"][metric]), _num((cv.get("sd") or {}).get(metric))
    frame = inputs.cv_metrics
    if frame is not None:
        metric = next((m for m in ("auroc", "r2") if m in frame.columns), None)
        if metric is not None:
            folds = pd.to_numeric(frame.loc[~frame["split"].astype(str).isin(["mean", "sd"]), metric],
                                  errors="coerce").dropna()
            if len(folds):
                return metric, float(folds.mean()), float(folds.std(ddof=1)) if len(folds) > 1 else None
    return None


def _class_counts(inputs, class_counts) -> dict | None:
    if class_counts is not None:
        return {str(k): int(v) for k, v in dict(class_counts).items()}
    oof = inputs.oof
    if oof is not None and "y_true" in oof.columns and (inputs.model or {}).get("task") != "regression":
        per_sample = oof.drop_duplicates("sample_id")
        return {str(k): int(v) for k, v in per_sample["y_true"].astype(str).value_counts().sort_index().items()}
    return None


def _n_samples(inputs, n_samples) -> int | None:
    if n_samples is not None:
        return int(n_samples)
    if inputs.oof is not None:
        return int(inputs.oof["sample_id"].nunique())
    for summary in (inputs.explain_summary, inputs.select_summary):
        if summary and _num(summary.get("n_samples")) is not None:
            return int(summary["n_samples"])
    return None


def _names(genes, symbols: dict) -> str:
    return ", ".join(f"{g} ({symbols[g]})" if symbols.get(g) and symbols[g].upper() != g.upper() else g
                     for g in genes)


def plain_summary(inputs, *, gene_sets: pd.DataFrame | None = None, gene_set_summary: dict | None = None,
                  symbols: dict | None = None, n_samples: int | None = None, n_genes: int | None = None,
                  class_counts: dict | None = None, n_top_genes: int = 5, n_top_sets: int = 3) -> dict:
    """The report's plain-language paragraph and the caveats that apply, from this run's numbers.

    Parameters
    ----------
    inputs : iml_genomics.report.ReportInputs
        The train / explain / select results the report read (any subset).
    gene_sets : pandas.DataFrame, optional
        ``gene_sets.tsv`` of this report (ranked; ``significant``, ``q_value``, ``gsea_q_value``).
    gene_set_summary : dict, optional
        ``report_summary.json: gene_sets`` (``q_threshold``).
    symbols : dict, optional
        Gene id -> symbol, named beside the id when it differs.
    n_samples, n_genes : int, optional
        Cohort size; by default from the out-of-fold predictions / step summaries and the measured genes.
    class_counts : dict, optional
        Class -> number of samples; by default from the out-of-fold predictions (classification).
    n_top_genes, n_top_sets : int
        Genes and gene sets named.

    Returns
    -------
    dict
        ``text`` (the paragraph), ``caveats`` (list of ``{"code", "text"}`` in :data:`CAVEAT_CODES` order) and
        ``numbers`` (the values the text states, unrounded).
    """
    symbols = symbols or {}
    sentences: list[str] = []
    caveats: dict[str, str] = {}
    numbers: dict = {}
    n = _n_samples(inputs, n_samples)
    p = n_genes if n_genes is not None else (len((inputs.model or {}).get("gene_ids") or []) or None)
    numbers.update(n_samples=n, n_genes=p)

    # the model and its accuracy
    model = inputs.model or {}
    acc = cv_accuracy(inputs)
    if model.get("model_name") or acc:
        name = model.get("model_name") or "the model"
        where = f" on {n} samples x {p} genes" if n and p else ""
        if acc:
            metric, mean, sd = acc
            numbers.update(cv_metric=metric, cv_mean=mean, cv_sd=sd)
            pos = f" for '{model['positive_class']}'" if metric == "auroc" and model.get("positive_class") else ""
            spread = f" +/- {f3(sd)}" if sd is not None else ""
            sentences.append(f"The {name} model, fitted{where}, reaches a cross-validated "
                             f"{metric.upper() if metric == 'auroc' else 'R2'}{pos} of {f3(mean)}{spread} (mean +/- sd "
                             f"over folds).")
            chance = THRESHOLDS["chance_auroc"] if metric == "auroc" else THRESHOLDS["chance_r2"]
            if mean is not None and mean <= chance:
                label = "AUROC" if metric == "auroc" else "R2"
                caveats["near_chance"] = (
                    f"the model is close to chance (cross-validated {label} {f3(mean)}, at or below {chance:g}; "
                    f"chance is {'0.5' if metric == 'auroc' else '0'}): the genes it relies on, and any ranking of "
                    f"them, may describe noise; the selection and gene-set results do not depend on the model")
        else:
            sentences.append(f"The {name} model was fitted{where}; no cross-validated accuracy was found.")
    else:
        sentences.append("No train output was given, so the model's accuracy is not known here.")

    # the genes it relies on, and how stable that is
    ranking = inputs.gene_ranking
    if ranking is not None and len(ranking):
        gr = ranking.sort_values(["rank", "gene_id"], kind="mergesort")
        if "feature_type" in gr.columns:  # data.covariates rank beside the genes; the sentence is about genes
            gr = gr[gr["feature_type"].astype(str) != "covariate"]
        used = gr[pd.to_numeric(gr["mean_abs_shap"], errors="coerce") > 0]
        top = used["gene_id"].astype(str).head(n_top_genes).tolist()
        numbers.update(top_genes=top, n_genes_with_attribution=int(len(used)))
        if top:
            sentences.append(f"It relies most on {_names(top, symbols)} (largest mean |SHAP|; {len(used)} genes "
                             f"have a non-zero attribution).")
        else:
            sentences.append("No gene has a non-zero mean |SHAP|: the model uses no gene.")
        agreement = (inputs.explain_summary or {}).get("fold_agreement")
        jac = _num(agreement.get("jaccard_top_k_mean")) if isinstance(agreement, dict) else None
        if jac is not None:
            k = agreement.get("top_k")
            refits = agreement.get("n_refits")
            numbers.update(jaccard_top_k_mean=jac, top_k=k)
            stable = jac >= THRESHOLDS["unstable_jaccard"]
            sentences.append(f"Across {refits} refits on the CV folds the top {k} genes agree with a mean Jaccard "
                             f"index of {f3(jac)} ({'fairly stable' if stable else 'unstable'}).")
            if not stable:
                caveats["unstable_ranking"] = (
                    f"the ranking is unstable: the top {k} genes of different folds overlap by a mean Jaccard index "
                    f"of {f3(jac)} (below {THRESHOLDS['unstable_jaccard']}), so do not read much into the exact "
                    f"order of the top genes")
    else:
        sentences.append("No explain output was given, so the genes the model relies on are not known here.")

    # the selection
    ss = inputs.select_summary or {}
    if inputs.knockoffs is not None:
        selected = inputs.knockoffs[truthy(inputs.knockoffs["selected"])]["gene_id"].astype(str).tolist()
        q = _num(ss.get("target_fdr"))
        method = "the dCRT" if ss.get("method") == "dcrt" else "knockoffs"
        at = f" at a target FDR of {q:g}" if q is not None else ""
        numbers.update(n_selected=len(selected), target_fdr=q)
        if selected:
            more = f" and {len(selected) - 10} more" if len(selected) > 10 else ""
            sentences.append(f"Conditional on all other genes, {method} select {len(selected)} "
                             f"gene{'s' if len(selected) != 1 else ''}{at}: {_names(selected[:10], symbols)}{more}.")
        else:
            reason = ""
            if ss.get("method", "knockoffs") == "knockoffs" and ss.get("offset") == 1 and q:
                need = math.ceil(1 / q)
                reason = (f"; knockoff+ selects nothing unless at least {need} genes clearly beat their knockoffs, "
                          f"so a handful of real signals can go unselected")
            sentences.append(f"Conditional on all other genes, {method} select no gene{at}.")
            caveats["empty_selection"] = (f"the selection is empty{at}: the evidence was too weak for the "
                                          f"FDR guarantee{reason}; this is not evidence that no gene matters")
        diag = ss.get("diagnostics") if isinstance(ss.get("diagnostics"), dict) else {}
        failed, not_run = [], []
        for key, label in (("swap_check", "the knockoff swap check"),
                           ("exchangeability", "the knockoff exchangeability check")):
            check = diag.get(key)
            if not isinstance(check, dict):
                continue
            if check.get("passed") is False:
                failed.append(label)
            elif "skipped" in check and str(check["skipped"]) != "disabled":
                not_run.append(f"{label} ({str(check['skipped'])[:120]})")
        if failed:
            caveats["failed_diagnostic"] = (f"{' and '.join(failed)} failed: the knockoffs do not reproduce the "
                                            f"genes' correlation, so the FDR guarantee may not hold")
        if not_run:
            caveats["diagnostic_not_run"] = (f"{' and '.join(not_run)} could not run, so the knockoffs' fit to the "
                                             f"genes' correlation is unchecked")
    else:
        sentences.append("No select output was given, so no gene was tested conditionally on the others.")

    # the strongest pathways
    if gene_sets is not None and len(gene_sets):
        qthr = _num((gene_set_summary or {}).get("q_threshold"))
        sig = gene_sets[gene_sets["significant"].map(lambda v: v is True or str(v).lower() == "true")]
        sig = sig.sort_values("rank", kind="mergesort") if "rank" in sig.columns else sig
        numbers.update(n_significant_sets=int(len(sig)), top_sets=sig["gene_set"].astype(str).head(n_top_sets).tolist())
        if len(sig):
            parts = []
            for _, row in sig.head(n_top_sets).iterrows():
                qs = [v for v in (_num(row.get("q_value")), _num(row.get("gsea_q_value"))) if v is not None]
                parts.append(f"{row['gene_set']} (q = {min(qs):.3g})" if qs else str(row["gene_set"]))
            sentences.append(f"{len(sig)} of {len(gene_sets)} gene sets are significant"
                             f"{f' at q <= {qthr:g}' if qthr is not None else ''}; the strongest: "
                             f"{', '.join(parts)}.")
        else:
            sentences.append(f"None of the {len(gene_sets)} gene sets tested is significant"
                             f"{f' at q <= {qthr:g}' if qthr is not None else ''}.")

    # caveats on the cohort
    if n is not None and n < THRESHOLDS["small_n"]:
        caveats["small_n"] = (f"the cohort is small ({n} samples, fewer than {THRESHOLDS['small_n']}): accuracy and "
                              f"rankings can change much in another cohort")
    counts = _class_counts(inputs, class_counts)
    if counts and len(counts) >= 2:
        total = sum(counts.values())
        smallest = min(counts, key=lambda c: (counts[c], c))
        frac = counts[smallest] / total if total else 0.0
        numbers.update(class_counts=counts)
        if counts[smallest] < THRESHOLDS["imbalance_ratio"] * max(counts.values()):
            caveats["class_imbalance"] = (f"the classes are imbalanced ('{smallest}' is {counts[smallest]} of {total} "
                                          f"samples, {frac:.0%}): accuracy is driven by the larger class; read "
                                          f"AUROC and balanced accuracy, not accuracy")
    if n and p and p > THRESHOLDS["genes_per_sample"] * n:
        caveats["many_genes_few_samples"] = (f"there are many more genes than samples ({p} genes, {n} samples): many "
                                             f"gene lists fit the data about equally well")

    ordered = [{"code": c, "text": caveats[c]} for c in CAVEAT_CODES if c in caveats]
    text = " ".join(sentences)
    if ordered:
        text += " Caveats: " + "; ".join(c["text"] for c in ordered) + "."
    else:
        text += " No caveat applies to this run."
    return {"text": text, "caveats": ordered, "numbers": numbers}


def summary_html(summary: dict) -> str:
    """The paragraph as the report's first section."""
    import html

    body = f"<p>{html.escape(summary['text'].split(' Caveats: ')[0])}</p>"
    if summary["caveats"]:
        items = "".join(f"<li>{html.escape(c['text'])}</li>" for c in summary["caveats"])
        body += f'<p><strong>Caveats for this run:</strong></p><ul class="caveats">{items}</ul>'
    else:
        body += '<p class="note">No caveat applies to this run.</p>'
    body += ('<p class="note">Written from this run\'s numbers (report_summary.json: plain_summary, summary.txt); '
             'each caveat and its condition: docs/report.md.</p>')
    return body


__all__ = ["CAVEAT_CODES", "THRESHOLDS", "cv_accuracy", "plain_summary", "summary_html"]
