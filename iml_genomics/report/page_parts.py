"""Pieces of the report page that explain themselves: figure captions naming the class a sign points to,
the AUC wording, local explanations in both directions, permutation importance, running-sum plots,
links to the run's own TSVs.

Kept apart from :mod:`iml_genomics.report.build` so that its sections stay short; every function
returns HTML (empty when its data is missing).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from iml_genomics.report import html as H
from iml_genomics.report import plots
from iml_genomics.report.interactive import _SYMBOL_RE

# the class named in local explanations and in SHAP signs
EXPLAINED_CLASS = "explained class"



def input_link(inputs, step: str, name: str) -> str:
    """A link to one of the run's own files (``name`` in the ``step`` input directory), or ''."""
    d = (inputs.dirs or {}).get(step)
    if d is None or not (Path(d) / name).is_file():
        return ""
    path = Path(d).resolve() / name
    return f'<a class="tsv" href="{H.esc(path.as_posix())}">{H.esc(step)}/{H.esc(name)}</a>'


def own_link(name: str) -> str:
    """A link to a file the report writes next to report.html."""
    return f'<a href="{H.esc(name)}">{H.esc(name)}</a>'


def files_note(*links: str) -> str:
    """One note line listing the given links (empty ones skipped); '' when none is left."""
    links = [link for link in links if link]
    return f'<p class="note">Files: {", ".join(links)}.</p>' if links else ""


def display_symbols(gene_ids: pd.Series, symbols: pd.Series) -> pd.Series:
    """The symbol shown on the page: the mapped symbol, else the measured id itself.

    A key that is only the upper-cased id (no mapping) or that does not look like a gene symbol
    (spaces, punctuation from a description) is replaced by the id, so the column never shows
    words that are not a gene's name.
    """
    ids = gene_ids.astype(str)
    sym = symbols.astype(str).where(symbols.notna(), "")
    mapped = (sym.str.upper() != ids.str.strip().str.upper()) & (sym.str.strip() != "")
    looks = sym.map(lambda s: bool(_SYMBOL_RE.match(s)))
    return ids.where(~(mapped & looks), sym)


def nonzero_attribution_count(inputs) -> tuple[int, int] | None:
    """(genes with non-zero mean |SHAP|, genes explained), from the ranking or the attributions."""
    if inputs.gene_ranking is not None and "mean_abs_shap" in inputs.gene_ranking:
        v = pd.to_numeric(inputs.gene_ranking["mean_abs_shap"], errors="coerce").fillna(0.0)
        return int((v.abs() > 0).sum()), len(v)
    attr = inputs.attributions
    if attr is not None:
        genes = [c for c in attr.columns if c not in ("sample_id", "class", "base_value", "model_output")]
        v = attr[genes].abs().mean()
        return int((v > 0).sum()), len(genes)
    return None


def auc_figure(inputs, model: dict) -> str:
    """ROC figure with a caption that says why its AUC differs from the table's."""
    b64 = plots.roc_curves(inputs.oof, model)
    if not b64:
        return ""
    oof = inputs.oof
    prob_cols = [c for c in oof.columns if c.startswith("prob_")]
    if not prob_cols:
        return H.img(b64, "observed vs predicted", "Observed outcome against its out-of-fold prediction; the "
                     "dashed line is a perfect prediction.")
    if len(prob_cols) != 2:
        return H.img(b64, "ROC curves", "ROC curve of each class against the rest, from the out-of-fold "
                     "predictions of all repeats pooled; the AUC in the legend is that pooled AUC, while the table "
                     "gives the mean (and sd) of the per-fold values, which differ for the reason given below.")
    classes = [c[len("prob_"):] for c in prob_cols]
    pos = str((model or {}).get("positive_class") or classes[-1])
    pos = pos if f"prob_{pos}" in oof.columns else classes[-1]
    pooled, folds = pooled_and_fold_auc(oof, pos)
    words = (f"ROC curve of the out-of-fold predictions, positive class <strong>{H.esc(pos)}</strong> (a curve "
             "above the diagonal ranks its samples above the others), one curve per CV repeat. The AUC in the "
             "legend is computed once on <em>all</em> out-of-fold predictions of a repeat pooled; the table's "
             "auroc is the <em>mean of the per-fold AUCs</em>. Pooling compares scores of models fitted on "
             "different folds, whose scales differ, so the pooled AUC is usually a little lower")
    if pooled is not None and folds is not None:
        words += f" (here pooled {pooled:.3f} vs mean of folds {folds:.3f})"
    return H.img(b64, "ROC curves", words + ".")


def pooled_and_fold_auc(oof: pd.DataFrame, positive: str) -> tuple[float | None, float | None]:
    """AUC of the pooled out-of-fold predictions (mean over repeats) and mean of the per-fold AUCs."""
    from sklearn.metrics import roc_auc_score

    y = oof["y_true"].astype(str) == positive
    p = pd.to_numeric(oof[f"prob_{positive}"], errors="coerce")
    rep = oof["repeat"] if "repeat" in oof.columns else pd.Series(1, index=oof.index)
    pooled, per_fold = [], []
    for _, idx in oof.groupby(rep).groups.items():
        if y[idx].nunique() == 2:
            pooled.append(roc_auc_score(y[idx], p[idx]))
        if "fold" in oof.columns:
            for _, fidx in oof.loc[idx].groupby("fold").groups.items():
                if y[fidx].nunique() == 2:
                    per_fold.append(roc_auc_score(y[fidx], p[fidx]))
    return (float(np.mean(pooled)) if pooled else None, float(np.mean(per_fold)) if per_fold else None)


def beeswarm_caption(positive: str | None, other: str | None, has_expression: bool) -> str:
    """Caption of the SHAP beeswarm naming the class a positive value pushes towards."""
    sign = (f"a positive SHAP value pushes the prediction towards <strong>{H.esc(positive)}</strong>, a negative "
            f"one towards <strong>{H.esc(other)}</strong>" if positive and other else
            f"a positive SHAP value pushes the model output up (towards <strong>{H.esc(positive)}</strong>)"
            if positive else "a positive SHAP value pushes the model output up")
    colour = ("; colour: the gene's expression in that sample (z-score, red high, blue low)" if has_expression
              else "")
    return (f"SHAP summary of the top genes by mean |SHAP|: one dot per sample at its SHAP value for the gene; "
            f"{sign}{colour}. An explanation of the fitted model, not of biology.")


def local_section(inputs, wanted: list[str], labels: dict, *, true_labels: dict[str, str],
                  classes: tuple[str, str] | None) -> str:
    """Local explanations of the chosen samples: a plot and a table of BOTH directions per sample."""
    local = inputs.local
    out = []
    for s in wanted:
        sub = local[local["sample_id"].astype(str) == s].copy()
        if "class" in sub.columns and sub["class"].nunique() > 1:
            sub = sub[sub["class"] == sub["class"].iloc[0]]
        raw = sub["class"].iloc[0] if "class" in sub.columns and len(sub) else None
        # regression has no class: the explanation is of the predicted value itself
        explained = None if raw is None or pd.isna(raw) or str(raw).strip() == "" else str(raw)
        other = None
        if classes is not None and explained in classes:
            other = classes[1] if explained == classes[0] else classes[0]
        label = true_labels.get(s)
        head = f"Sample {H.esc(s)}"
        if label is not None:
            head += f" (label: {H.esc(label)})"
        if explained:
            head += f": explained class {H.esc(explained)}"
        out.append(f"<h3>{head}</h3>")
        towards = f"towards {H.esc(explained)}" if explained else "raises the prediction"
        away = ((f"towards {H.esc(other)}" if other else f"away from {H.esc(explained)}") if explained
                else "lowers the prediction")
        about = f", explained for class <strong>{H.esc(explained)}</strong>" if explained else ""
        cap = (f"Largest SHAP values of sample {H.esc(s)}'s prediction{about}"
               f"{'' if label is None else f' (its label is {H.esc(label)})'}: red bars "
               f"{'push the model output ' + towards if explained else 'raise the prediction'}, blue bars "
               f"{away if explained else 'lower it'}. Base value: the average output; the bars add up to output - base.")
        out.append('<div class="plots">' + H.img(plots.local_explanation(local, s, labels),
                                                 f"local explanation {s}", cap) + "</div>")
        if "direction" in sub.columns:
            sub["direction"] = sub["direction"].astype(str).map(
                {"up": f"up ({towards})", "down": f"down ({away})"}).fillna(sub["direction"].astype(str))
            # both directions in the table, each by its own rank: up first, then down
            sub["_d"] = sub["direction"].str.startswith("down").astype(int)
            sub = sub.sort_values(["_d", "rank"] if "rank" in sub.columns else ["_d"], kind="mergesort")
        sub = sub.rename(columns={"class": EXPLAINED_CLASS})
        if label is not None:
            sub.insert(1, "label", label)
        sub.insert(sub.columns.get_loc("gene_id") + 1, "symbol",
                   display_symbols(sub["gene_id"], sub["gene_id"].map(lambda g: labels.get(str(g), g))).to_numpy())
        cols = [c for c in ["sample_id", "label", EXPLAINED_CLASS, "prediction", "base_value", "direction", "rank",
                            "gene_id", "symbol", "shap_value", "expression_value"] if c in sub.columns]
        out.append(H.table_html(sub[cols], max_rows=25))
    return "".join(out)


def permutation_section(inputs, labels: dict) -> str:
    """Permutation importance next to SHAP: bar chart with sd and a table, or a note saying how to get it."""
    rk = inputs.gene_ranking
    if rk is None:
        return ""
    pi = pd.to_numeric(rk.get("permutation_importance"), errors="coerce") if "permutation_importance" in rk else None
    if pi is None or pi.isna().all():
        return ('<h3>Permutation importance</h3><p class="note">Not computed: run explain with '
                '<code>--method all</code> (or <code>permutation</code>) to add it.</p>')
    frame = rk.assign(permutation_importance=pi).dropna(subset=["permutation_importance"])
    frame = frame.sort_values(["permutation_importance", "gene_id"], ascending=[False, True], kind="mergesort")
    sd = pd.to_numeric(frame.get("permutation_importance_sd"), errors="coerce") if \
        "permutation_importance_sd" in frame else None
    b64 = _permutation_bar(frame.head(20), sd.head(20) if sd is not None else None, labels)
    scoring = (inputs.explain_summary or {}).get("permutation_scoring") or "the held-out score"
    from scipy import stats

    both = frame[["mean_abs_shap", "permutation_importance"]].apply(pd.to_numeric, errors="coerce").dropna()
    rho = stats.spearmanr(both.iloc[:, 0], both.iloc[:, 1]).statistic if len(both) > 2 else float("nan")
    cap = (f"Permutation importance of the top genes: the drop in {H.esc(str(scoring))} on held-out samples when "
           f"the gene's values are shuffled (error bar: sd over repeats). It measures magnitude, not direction; "
           f"its Spearman correlation with mean |SHAP| over the genes is {rho:.2f}.")
    table = frame.assign(symbol=display_symbols(frame["gene_id"], frame["gene_id"].map(
        lambda g: labels.get(str(g), g))))
    cols = [c for c in ["gene_id", "symbol", "permutation_importance", "permutation_importance_sd", "mean_abs_shap",
                        "rank"] if c in table.columns]
    return ("<h3>Permutation importance</h3>" + '<div class="plots">' + H.img(b64, "permutation importance", cap)
            + "</div>" + H.table_html(table[cols].rename(columns={"rank": "shap_rank"}), max_rows=15,
                                      caption="Genes by permutation importance (largest first)."))


def _permutation_bar(top: pd.DataFrame, sd: pd.Series | None, labels: dict) -> str | None:
    if not len(top):
        return None
    plt = plots._plt()
    fig, ax = plt.subplots(figsize=(6.0, 0.28 * len(top) + 1.2))
    y = np.arange(len(top))[::-1]
    err = sd.fillna(0).to_numpy() if sd is not None else None
    ax.barh(y, top["permutation_importance"].astype(float), xerr=err, color=plots.PALETTE["green"],
            error_kw={"lw": 0.8})
    ax.set_yticks(y)
    ax.set_yticklabels([plots._label(g, labels) for g in top["gene_id"].astype(str)], fontsize=8)
    ax.axvline(0, color="black", lw=0.6)
    ax.set_xlabel("permutation importance (drop in held-out score)")
    ax.set_title("Permutation importance (error bar: sd)")
    return plots.to_base64_png(fig)


def gene_set_bar_scale(table: pd.DataFrame) -> str:
    """'p' when every q-value column shown by the bars holds one value only (bars of equal height), else 'q'."""
    cols = [c for c in ("q_value", "gsea_q_value", "q_value_positive_class", "q_value_other_class") if c in table]
    top = table.head(15)
    values = [pd.to_numeric(top[c], errors="coerce").dropna().round(12) for c in cols]
    values = [v for v in values if len(v)]
    return "p" if values and all(v.nunique() <= 1 for v in values) else "q"


def gene_set_bars_caption(scale: str, classes, metric: str) -> str:
    """Caption of the gene-set bars saying what is plotted (-log10 q or p, see :func:`gene_set_bar_scale`)."""
    what = ("-log10 of the nominal p-values (every set has the same q-value here, so q bars would all be one "
            "height)" if scale == "p" else "-log10 of the BH q-values (dashed line: q = 0.1)")
    direction = (f"; each set is named by the class it is higher in, [higher in {H.esc(classes[0])}] or "
                 f"[higher in {H.esc(classes[1])}]" if classes else "")
    return (f"Leading gene sets: {what} of the over-representation test (blue) and of the rank-based test on "
            f"{H.esc(metric)} (green){direction}. Longer bars mean stronger evidence.")


def running_sum_figures(analysis, n: int = 4, classes: tuple[str, str] | None = None) -> str:
    """Running-sum plots of the ``n`` leading sets that have an enrichment score."""
    from iml_genomics.report.enrichment_plot import running_sum_plot

    if analysis is None or analysis.ranking is None or not len(analysis.ranking):
        return ""
    metric = (analysis.summary or {}).get("ranking_metric", "the ranking score")
    table = analysis.table
    rows = table[pd.to_numeric(table["es"], errors="coerce").notna()].head(n)
    figs = []
    for _, row in rows.iterrows():
        name = str(row["gene_set"])
        b64 = running_sum_plot(analysis.ranking, name, analysis.sets.get(name, []), metric=metric, row=row)
        order = ""
        if (analysis.summary or {}).get("ranking_signed") and classes is not None and metric == "univariate":
            order = (f" The ranking runs from the genes most higher in {H.esc(classes[0])} (left) to those most "
                     f"higher in {H.esc(classes[1])} (right): a positive ES points to {H.esc(classes[0])}, a "
                     f"negative one to {H.esc(classes[1])}.")
        else:
            order = " A peak near the left means the members sit high in the ranking."
        higher = row.get("higher_in")
        towards = f" The set is named higher in {H.esc(higher)}." if isinstance(higher, str) and higher else ""
        cap = (f"Running sum of <em>{H.esc(name)}</em> down the genes ranked by {H.esc(metric)} (GSEA-style): it "
               f"steps up at each member (ticks below) and down at every other gene; its largest deviation "
               f"(dashed line) is the enrichment score ES of gene_sets.tsv, and the members between it and the nearer end "
               f"of the ranking are the leading edge.{order}{towards}")
        figs.append(H.img(b64, f"running sum {name}", cap))
    if not figs:
        return ""
    return "<h3>Running-sum plots of the leading sets</h3>" + '<div class="plots">' + "".join(figs) + "</div>"
