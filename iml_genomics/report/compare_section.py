"""The report's "Model comparison" section, from the files of an ``iml-genomics compare`` directory."""

from __future__ import annotations

import math

import pandas as pd

from iml_genomics.report import html as H


def comparison_words(table: pd.DataFrame, robust: pd.DataFrame | None, summary: dict | None) -> str:
    """The comparison in words, rebuilt from the tables' numbers (not copied from the summary's text).

    Parameters
    ----------
    table : pandas.DataFrame
        model_comparison.tsv.
    robust : pandas.DataFrame or None
        robust_genes.tsv.
    summary : dict or None
        compare_summary.json (primary metric, folds, top k).

    Returns
    -------
    str
    """
    from iml_genomics.compare import comparison_text

    summary = summary or {}
    metric = summary.get("primary_metric") or ("auroc" if "auroc_mean" in table.columns else "r2")
    ranked = table.sort_values("rank", kind="mergesort").to_dict(orient="records")
    best = ranked[0]
    second = ranked[1] if len(ranked) > 1 else None
    mean, sd = float(best[f"{metric}_mean"]), float(best[f"{metric}_sd"])
    within = None
    if second is not None and all(math.isfinite(v) for v in (mean, sd, float(second[f"{metric}_mean"]))):
        within = bool(mean - float(second[f"{metric}_mean"]) <= sd)
    in_all = [] if robust is None else robust.loc[robust["in_all_models"].astype(str) == "True", "gene_id"].tolist()
    top_k = summary.get("top_k") or (int(table["top_k"].iloc[0]) if "top_k" in table.columns else "k")
    return comparison_text({
        "primary_metric": metric, "best_model": best["model"], "best_metric_mean": mean, "best_metric_sd": sd,
        "n_splits": summary.get("n_splits", "?"), "n_repeats": summary.get("n_repeats", "?"),
        "candidates": [r["model"] for r in ranked], "runner_up": second["model"] if second else None,
        "runner_up_metric_mean": float(second[f"{metric}_mean"]) if second else None,
        "best_within_one_sd_of_runner_up": within, "robust_genes_all_models": [str(g) for g in in_all],
        "top_k": top_k})


def comparison_summary(inputs) -> dict:
    """The ``model_comparison`` block of report_summary.json: the ranking, the best model and the words."""
    table = inputs.compare_table.sort_values("rank", kind="mergesort")
    robust = inputs.compare_robust
    return {"ranking": [str(m) for m in table["model"]], "best_model": str(table["model"].iloc[0]),
            "robust_genes_all_models": [] if robust is None else
            [str(g) for g in robust.loc[robust["in_all_models"].astype(str) == "True", "gene_id"]],
            "text": comparison_words(inputs.compare_table, robust, inputs.compare_summary), "explains": "model"}


def compare_section(inputs) -> str:
    """HTML of the section: the words, the ranking table, the robust genes and the pairwise agreement."""
    table = inputs.compare_table
    summary = inputs.compare_summary or {}
    metric = summary.get("primary_metric") or ("auroc" if "auroc_mean" in table.columns else "r2")
    inner = f"<p>{H.esc(comparison_words(table, inputs.compare_robust, summary))}</p>"
    cols = [c for c in ["rank", "model", "kind", "tuned", f"{metric}_mean", f"{metric}_sd", "n_genes_used",
                        "jaccard_top_k_mean", "kendall_tau_mean", "surrogate_fidelity",
                        "mean_jaccard_top_k_other_models", "importance", "top_genes"] if c in table.columns]
    inner += H.table_html(table.sort_values("rank", kind="mergesort")[cols], max_chars=60)
    inner += (f'<p class="note">Every model was cross-validated on the same folds; tuned models were tuned by an '
              f'inner CV inside each outer training fold (nested CV). Ranked by {H.esc(metric)}; stability is the '
              f'agreement of the per-fold gene rankings (top-k Jaccard, Kendall tau), surrogate_fidelity how well a '
              f'depth-3 tree reproduces the model\'s out-of-fold predictions, n_genes_used the genes with non-zero '
              f'importance in the final fit. These describe the fitted models, not the data. Full tables: '
              f'model_comparison.tsv, model_agreement.tsv, robust_genes.tsv (docs/compare.md).</p>')
    if inputs.compare_robust is not None and len(inputs.compare_robust):
        inner += "<h3>Genes in the top k of most models</h3>"
        inner += H.table_html(inputs.compare_robust[[c for c in ["rank", "gene_id", "n_models", "n_candidates",
                                                                 "in_all_models", "mean_rank_in_top_k", "models"]
                                                     if c in inputs.compare_robust.columns]], max_rows=25)
    if inputs.compare_agreement is not None and len(inputs.compare_agreement):
        inner += "<h3>Agreement of the models' top genes</h3>"
        inner += H.table_html(inputs.compare_agreement[[c for c in ["model_a", "model_b", "top_k_jaccard",
                                                                    "spearman_union", "n_shared", "n_union"]
                                                        if c in inputs.compare_agreement.columns]])
    return inner
