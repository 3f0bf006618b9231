"""Matplotlib figures of the report, returned as base64 PNG strings.

Every function returns None when its data is missing, so the report shows
whatever exists. matplotlib runs on the Agg backend (no display needed).
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd

from iml_genomics.io.readers import tested_rows, truthy

PALETTE = {"blue": "#1f6fb4", "red": "#c0392b", "grey": "#8c8c8c", "green": "#2e8b57"}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.spines.top": False, "axes.spines.right": False,
                         "svg.hashsalt": "iml-genomics"})
    return plt


def to_base64_png(fig) -> str:
    """Encode a figure as base64 PNG (no timestamp metadata) and close it."""
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def roc_curves(oof: pd.DataFrame | None, model: dict | None) -> str | None:
    """ROC curves of the out-of-fold predictions, one per CV repeat (binary)
    or one-vs-rest per class (multiclass); observed vs predicted for regression."""
    if oof is None or not len(oof):
        return None
    from sklearn.metrics import auc, roc_curve

    plt = _plt()
    prob_cols = [c for c in oof.columns if c.startswith("prob_")]
    classes = [c[len("prob_"):] for c in prob_cols]
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    if not prob_cols:  # regression
        y, p = pd.to_numeric(oof["y_true"]), pd.to_numeric(oof["y_pred"])
        ax.scatter(y, p, s=10, alpha=0.6, color=PALETTE["blue"])
        lo, hi = float(min(y.min(), p.min())), float(max(y.max(), p.max()))
        ax.plot([lo, hi], [lo, hi], color=PALETTE["grey"], lw=1, ls="--")
        ax.set(xlabel="observed", ylabel="out-of-fold prediction", title="Out-of-fold predictions")
        return to_base64_png(fig)
    y_true = oof["y_true"].astype(str)
    if len(classes) == 2:
        pos = (model or {}).get("positive_class") or classes[-1]
        pos = str(pos) if f"prob_{pos}" in oof.columns else classes[-1]
        repeats = sorted(oof["repeat"].unique()) if "repeat" in oof.columns else [None]
        for r in repeats:
            sub = oof if r is None else oof[oof["repeat"] == r]
            fpr, tpr, _ = roc_curve(sub["y_true"].astype(str) == pos, sub[f"prob_{pos}"])
            label = f"repeat {r}: AUC {auc(fpr, tpr):.3f}" if r is not None else f"AUC {auc(fpr, tpr):.3f}"
            ax.plot(fpr, tpr, lw=1.5, label=label)
        ax.set_title(f"ROC, out-of-fold (positive class: {pos})")
    else:
        for cls in classes:
            fpr, tpr, _ = roc_curve(y_true == cls, oof[f"prob_{cls}"])
            ax.plot(fpr, tpr, lw=1.5, label=f"{cls} vs rest: AUC {auc(fpr, tpr):.3f}")
        ax.set_title("ROC one-vs-rest, out-of-fold (all repeats pooled)")
    ax.plot([0, 1], [0, 1], color=PALETTE["grey"], lw=1, ls="--")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=7, frameon=False)
    return to_base64_png(fig)


def shap_beeswarm(attr: pd.DataFrame | None, expression: pd.DataFrame | None, genes: list[str],
                  labels: dict[str, str] | None = None, *, seed: int = 0,
                  positive_class: str | None = None) -> str | None:
    """Beeswarm-style summary: one row per gene, one dot per sample at its SHAP
    value, coloured by the gene's expression (standardised) when available.
    With ``positive_class`` (two classes) the axis says which class positive values push towards."""
    if attr is None or not genes:
        return None
    plt = _plt()
    rng = np.random.default_rng(seed)
    genes = [g for g in genes if g in attr.columns][:20]
    if not genes:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 0.32 * len(genes) + 1.2))
    scatter = None
    for row, gene in enumerate(reversed(genes)):
        phi = attr[gene].to_numpy(dtype=float)
        # jitter grows with local density so overlapping points spread out, like a beeswarm
        order = np.argsort(phi)
        dens = np.zeros(len(phi))
        if len(phi) > 1:
            spread = np.ptp(phi) or 1.0
            bins = np.floor((phi - phi.min()) / spread * 50).astype(int)
            counts = np.bincount(bins)
            dens = counts[bins] / counts.max()
        jitter = (rng.random(len(phi)) - 0.5) * 0.7 * np.sqrt(dens)
        color = PALETTE["grey"]
        if expression is not None and gene in expression.columns:
            x = expression[gene].reindex(attr.index).to_numpy(dtype=float)
            sd = np.nanstd(x) or 1.0
            color = np.clip((x - np.nanmean(x)) / sd, -2.5, 2.5)
        scatter = ax.scatter(phi[order], row + jitter[order], s=9, c=color if np.ndim(color) == 0 else color[order],
                             cmap="coolwarm", vmin=-2.5, vmax=2.5, linewidths=0, alpha=0.85)
    ax.axvline(0, color=PALETTE["grey"], lw=0.8)
    ax.set_yticks(range(len(genes)))
    ax.set_yticklabels([_label(g, labels) for g in reversed(genes)], fontsize=8)
    ax.set_xlabel("SHAP value (contribution to the model output)" if positive_class is None else
                  f"SHAP value (> 0: towards {_short(positive_class, 40)})")
    ax.set_title("SHAP summary: top genes by mean |SHAP|")
    if expression is not None and scatter is not None:
        cb = fig.colorbar(scatter, ax=ax, fraction=0.04, pad=0.02)
        cb.set_label("expression (z-score)")
    return to_base64_png(fig)


def _label(gene: str, labels: dict[str, str] | None) -> str:
    sym = (labels or {}).get(gene)
    return f"{gene} ({sym})" if sym and sym.upper() != str(gene).upper() else str(gene)


def shap_bar(ranking: pd.DataFrame | None, labels: dict[str, str] | None = None, n: int = 20) -> str | None:
    """Mean |SHAP| of the top genes, with the across-fold sd as error bars."""
    if ranking is None or not len(ranking):
        return None
    plt = _plt()
    top = ranking.sort_values(["rank", "gene_id"]).head(n)
    fig, ax = plt.subplots(figsize=(6.0, 0.28 * len(top) + 1.2))
    y = np.arange(len(top))[::-1]
    err = pd.to_numeric(top["sd"], errors="coerce").fillna(0).to_numpy() if "sd" in top.columns else None
    ax.barh(y, top["mean_abs_shap"].astype(float), xerr=err, color=PALETTE["blue"], error_kw={"lw": 0.8})
    ax.set_yticks(y)
    ax.set_yticklabels([_label(g, labels) for g in top["gene_id"].astype(str)], fontsize=8)
    ax.set_xlabel("mean |SHAP|")
    ax.set_title("Global importance (error bar: sd)")
    return to_base64_png(fig)


def knockoff_w(knockoffs: pd.DataFrame | None, threshold: float | None, labels: dict[str, str] | None = None
               ) -> str | None:
    """Knockoff W of every gene, sorted, with the selection threshold."""
    if knockoffs is not None:
        knockoffs = tested_rows(knockoffs)  # genes the preprocessing removed have no W
    if knockoffs is None or not len(knockoffs):
        return None
    plt = _plt()
    w = pd.to_numeric(knockoffs["w"], errors="coerce").fillna(0.0).to_numpy()
    sel = truthy(knockoffs["selected"]).to_numpy()
    order = np.lexsort((knockoffs["gene_id"].astype(str).to_numpy(), -w))
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    x = np.arange(len(w))
    ax.scatter(x, w[order], s=8, c=np.where(sel[order], PALETTE["red"], PALETTE["grey"]), linewidths=0)
    if threshold is not None and np.isfinite(threshold):
        ax.axhline(threshold, color=PALETTE["red"], lw=1, ls="--", label=f"threshold T = {threshold:.3g}")
        ax.axhline(-threshold, color=PALETTE["grey"], lw=1, ls=":", label="-T (mirror: null W are symmetric)")
        ax.legend(fontsize=7, frameon=False)
    else:
        ax.text(0.98, 0.95, "no finite threshold: no set of genes reaches the target FDR",
                transform=ax.transAxes, ha="right", va="top", fontsize=7, color=PALETTE["red"])
    ax.axhline(0, color="black", lw=0.6)
    # label the first selected genes, stepping the labels right and down so they do not overlap
    for i in range(min(int(sel.sum()), 8)):
        g = str(knockoffs["gene_id"].iloc[order[i]])
        ax.annotate(_label(g, labels), (i, w[order][i]), fontsize=6, xytext=(8 + 4 * i, -9 * i),
                    textcoords="offset points", arrowprops={"arrowstyle": "-", "lw": 0.4, "color": PALETTE["grey"]})
    ax.set(xlabel="genes sorted by W", ylabel="knockoff statistic W",
           title=f"Knockoff W ({int(sel.sum())} selected, red)")
    return to_base64_png(fig)


def gene_set_bars(table: pd.DataFrame | None, n: int = 15, classes: tuple[str, str] | None = None,
                  scale: str = "q") -> str | None:
    """-log10 q (or -log10 p with ``scale="p"``) of the best gene sets (over-representation and rank-based).

    With two ``classes`` and the direction-split over-representation columns, a third bar is the
    q-value of the list of genes higher in the class each set is named with (``higher_in``).
    ``scale="p"`` plots the nominal p-values of the same columns: when every set has the same q-value
    (BH gives the largest ones a common value), q bars would all have one height and say nothing.
    """
    if table is None or not len(table):
        return None
    plt = _plt()
    top = table.head(n)
    if scale == "p":
        top = top.drop(columns=[c for c in ("q_value", "gsea_q_value", "q_value_positive_class",
                                            "q_value_other_class") if c in top.columns]).rename(columns={
            "p_value": "q_value", "gsea_p_value": "gsea_q_value", "p_value_positive_class": "q_value_positive_class",
            "p_value_other_class": "q_value_other_class"})
    fig, ax = plt.subplots(figsize=(6.8, 0.36 * len(top) + 1.3))
    y = np.arange(len(top))[::-1]

    def mlog(col):
        return -np.log10(pd.to_numeric(col, errors="coerce").clip(lower=1e-300).fillna(1.0))

    split = (classes is not None and {"q_value_positive_class", "q_value_other_class", "higher_in"} <= set(top)
             and top[["q_value_positive_class", "q_value_other_class"]].notna().any().any())
    h = 0.27 if split else 0.4
    ax.barh(y + h / 2 + (h / 2 if split else 0), mlog(top["q_value"]), height=h, color=PALETTE["blue"],
            label="over-representation (all query genes)")
    ax.barh(y - h / 2 + (h / 2 if split else 0), mlog(top["gsea_q_value"]), height=h, color=PALETTE["green"],
            label="rank-based (GSEA-style)")
    if split:
        own = np.where(top["higher_in"].astype(str) == classes[0], top["q_value_positive_class"],
                       np.where(top["higher_in"].astype(str) == classes[1], top["q_value_other_class"], np.nan))
        ax.barh(y - h, mlog(pd.Series(own)), height=h, color=PALETTE["grey"],
                label="over-representation (genes higher in the set's class)")
    ax.set_yticks(y)
    names = [_short(s) for s in top["gene_set"]]
    if "higher_in" in top.columns:
        # the class each set is higher in, by name (two classes; empty otherwise)
        names = [f"{n} [higher in {_short(c, 25)}]" if isinstance(c, str) and c else n
                 for n, c in zip(names, top["higher_in"])]
    ax.set_yticklabels(names, fontsize=7)
    if scale == "p":
        ax.set_xlabel("-log10 nominal p (q-values all equal: see the table)")
    else:
        ax.axvline(1, color=PALETTE["grey"], lw=0.8, ls="--")
        ax.set_xlabel("-log10 q (dashed: q = 0.1)")
    # right of the axes: inside them the legend hid the longest bars
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title("Gene sets")
    return to_base64_png(fig)


def _short(text: str, n: int = 60) -> str:
    text = str(text)
    return text if len(text) <= n else text[:n - 1] + "\u2026"


def group_attribution_bars(table: pd.DataFrame | None, n: int = 15) -> str | None:
    """Sets with the largest summed |SHAP| of their member genes."""
    if table is None or "group_attribution" not in table or table["group_attribution"].isna().all():
        return None
    plt = _plt()
    top = table.sort_values(["group_attribution_rank", "gene_set"]).head(n)
    fig, ax = plt.subplots(figsize=(6.8, 0.3 * len(top) + 1.3))
    y = np.arange(len(top))[::-1]
    ax.barh(y, top["group_attribution"].astype(float), color=PALETTE["blue"])
    ax.set_yticks(y)
    ax.set_yticklabels([_short(s) for s in top["gene_set"]], fontsize=7)
    ax.set_xlabel("mean over samples of sum |SHAP| of member genes")
    ax.set_title("Group attributions")
    return to_base64_png(fig)


def local_explanation(local: pd.DataFrame, sample_id: str, labels: dict[str, str] | None = None,
                      n: int = 12) -> str | None:
    """Largest contributions to one sample's prediction (red pushes up, blue down)."""
    sub = local[local["sample_id"].astype(str) == str(sample_id)]
    if not len(sub):
        return None
    if "class" in sub.columns and sub["class"].nunique() > 1:
        sub = sub[sub["class"] == sub["class"].iloc[0]]
    sub = sub.reindex(sub["shap_value"].abs().sort_values(ascending=False).index).head(n)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.8, 0.3 * len(sub) + 1.2))
    y = np.arange(len(sub))[::-1]
    vals = sub["shap_value"].astype(float).to_numpy()
    ax.barh(y, vals, color=np.where(vals > 0, PALETTE["red"], PALETTE["blue"]))
    ax.set_yticks(y)
    ax.set_yticklabels([_label(g, labels) for g in sub["gene_id"].astype(str)], fontsize=8)
    ax.axvline(0, color="black", lw=0.6)
    title = f"Sample {sample_id}"
    if "prediction" in sub.columns and "base_value" in sub.columns:
        title += f": base {float(sub['base_value'].iloc[0]):.3g} -> output {float(sub['prediction'].iloc[0]):.3g}"
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("SHAP value")
    return to_base64_png(fig)


# --- explain.methods pdp and map (issue 15; report/model_behaviour.py places them) ---------------------------

def _pdp_ylabel(scale: str, cls: str) -> str:
    if scale == "probability":
        return f"P({cls})"
    if scale == "decision_function":
        return f"decision function ({cls})"
    return "prediction"


def pdp_curves(table: pd.DataFrame | None, labels: dict[str, str] | None = None, max_genes: int = 12) -> str | None:
    """Small multiples of partial dependence (thick) and ICE curves (thin), one panel per gene and class.

    The y axis names the explained class's probability (or the decision function / the prediction).
    """
    if table is None or not len(table):
        return None
    plt = _plt()
    table = table.copy()
    table["class"] = table["class"].fillna("").astype(str)
    genes = list(dict.fromkeys(table["gene_id"].astype(str)))[:max_genes]
    classes = list(dict.fromkeys(table["class"]))
    panels = [(g, c) for g in genes for c in classes]
    ncol = min(4, len(panels))
    nrow = int(np.ceil(len(panels) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(2.7 * ncol, 2.3 * nrow), squeeze=False)
    scale = str(table["scale"].iloc[0]) if "scale" in table.columns else "prediction"
    for ax, (g, c) in zip(axes.ravel(), panels):
        sub = table[(table["gene_id"].astype(str) == g) & (table["class"] == c)]
        for curve, s in sub.groupby("curve", sort=True):
            if curve == "average":
                continue
            ax.plot(s["grid_value"], s["value"], color=PALETTE["grey"], lw=0.6, alpha=0.5)
        avg = sub[sub["curve"] == "average"]
        ax.plot(avg["grid_value"], avg["value"], color=PALETTE["red"], lw=2.2)
        ax.set_title(_label(g, labels) + (f" - class {c}" if len(classes) > 1 else ""), fontsize=8)
        ax.set_xlabel("expression (raw)", fontsize=7)
        ax.set_ylabel(_pdp_ylabel(scale, c), fontsize=7)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(panels):]:
        ax.set_visible(False)
    fig.suptitle("Partial dependence (red: average over samples) and ICE curves (grey: single samples)", fontsize=9)
    fig.tight_layout()
    return to_base64_png(fig)


def attribution_map(table: pd.DataFrame | None) -> str | None:
    """The samples' 2-D map in SHAP space, twice: coloured by true class (left) and by the model's prediction."""
    if table is None or not len(table):
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 4.0), squeeze=False)
    method = str(table["method"].iloc[0]).upper().replace("TSNE", "t-SNE")
    colours = ["#1f6fb4", "#c0392b", "#2e8b57", "#e67e22", "#8e44ad", "#16a085", "#7f8c8d", "#d35400"]
    for ax, col, title in zip(axes[0], ("label", "prediction"), ("true class", "model prediction")):
        values = table[col]
        numeric = pd.to_numeric(values, errors="coerce")
        if values.isna().all():
            ax.scatter(table["x"], table["y"], s=8, color=PALETTE["grey"])
            title += " (no labels)"
        elif numeric.notna().all() and values.astype(str).nunique() > 8:
            sc = ax.scatter(table["x"], table["y"], s=8, c=numeric, cmap="viridis")
            fig.colorbar(sc, ax=ax, fraction=0.046)
        else:
            for i, cls in enumerate(sorted(values.astype(str).unique())):
                m = values.astype(str) == cls
                ax.scatter(table.loc[m, "x"], table.loc[m, "y"], s=8, color=colours[i % len(colours)], label=cls)
            ax.legend(fontsize=7, frameon=False, markerscale=2)
        ax.set(title=f"coloured by {title}", xlabel=f"{method} 1", ylabel=f"{method} 2")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return to_base64_png(fig)


def integrated_gradients_plot(table: pd.DataFrame | None, labels: dict[str, str] | None = None, n: int = 15
                              ) -> str | None:
    """Mean |integrated gradients| of the top genes and, when SHAP ran on the same model, IG's rank against
    SHAP's rank for every gene (integrated_gradients.tsv)."""
    if table is None or not len(table):
        return None
    plt = _plt()
    top = table.sort_values(["rank", "gene_id"]).head(n)
    shap_rank = pd.to_numeric(table["shap_rank"], errors="coerce")
    panels = 2 if shap_rank.notna().any() else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 0.28 * len(top) + 1.6), squeeze=False)
    ax = axes[0, 0]
    y = np.arange(len(top))[::-1]
    ax.barh(y, top["mean_abs_ig"].astype(float), color=PALETTE["blue"])
    ax.set_yticks(y)
    ax.set_yticklabels([_label(g, labels) for g in top["gene_id"].astype(str)], fontsize=8)
    ax.set_xlabel("mean |integrated gradients| (model output scale)")
    ax.set_title("Integrated gradients: global importance")
    if panels == 2:
        ax = axes[0, 1]
        ok = shap_rank.notna().to_numpy()
        ax.scatter(shap_rank[ok], table["rank"].to_numpy()[ok], s=10, color=PALETTE["grey"], linewidths=0)
        m = int(max(shap_rank[ok].max(), table["rank"].max()))
        ax.plot([1, m], [1, m], color=PALETTE["red"], lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("rank by mean |SHAP|")
        ax.set_ylabel("rank by mean |IG|")
        ax.set_title("Same model, two attribution methods")
    fig.tight_layout()
    return to_base64_png(fig)


def conditional_importance(table: pd.DataFrame | None, labels: dict[str, str] | None = None, n: int = 20,
                           q_level: float = 0.1) -> str | None:
    """LOCO and CPI importance of the tested genes with their 95% intervals, one panel per method.

    Genes in the order of the first method present (best first); red: q <= ``q_level``.
    """
    if table is None or not len(table):
        return None
    plt = _plt()
    methods = [m for m in ("loco", "cpi") if m in set(table["method"].astype(str))]
    first = table[table["method"].astype(str) == methods[0]].sort_values(["rank", "gene_id"])
    genes = first["gene_id"].astype(str).head(n).tolist()
    fig, axes = plt.subplots(1, len(methods), figsize=(3.6 * len(methods) + 1.2, 0.28 * len(genes) + 1.4),
                             sharey=True, squeeze=False)
    y = np.arange(len(genes))[::-1]
    for ax, method in zip(axes[0], methods):
        sub = table[table["method"].astype(str) == method]
        sub = sub.set_index(sub["gene_id"].astype(str)).reindex(genes)
        imp = pd.to_numeric(sub["importance"], errors="coerce").to_numpy()
        lo = pd.to_numeric(sub["ci_low"], errors="coerce").to_numpy()
        hi = pd.to_numeric(sub["ci_high"], errors="coerce").to_numpy()
        called = pd.to_numeric(sub["q_value"], errors="coerce").to_numpy() <= q_level
        ax.axvline(0.0, color=PALETTE["grey"], lw=0.8)
        ax.hlines(y, lo, hi, color=np.where(called, PALETTE["red"], PALETTE["grey"]), lw=1.2)
        ax.scatter(imp, y, s=18, c=np.where(called, PALETTE["red"], PALETTE["grey"]), zorder=3, linewidths=0)
        ax.set_title({"loco": "LOCO (refit without the gene)", "cpi": "CPI (gene -> knockoff)"}[method], fontsize=9)
        ax.set_xlabel(f"held-out loss increase\n(bar: 95% CI; red: q <= {q_level:g})", fontsize=8)
    axes[0][0].set_yticks(y)
    axes[0][0].set_yticklabels([_label(g, labels) for g in genes], fontsize=8)
    return to_base64_png(fig)


def lime_vs_shap(lime: pd.DataFrame, sample_id: str, labels: dict[str, str] | None = None,
                 n: int = 10) -> str | None:
    """explain.methods lime: one sample's LIME contributions next to its SHAP values, top ``n`` LIME genes."""
    sub = lime[lime["sample_id"].astype(str) == str(sample_id)].sort_values("rank").head(n)
    if not len(sub):
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.8, 0.34 * len(sub) + 1.3))
    y = np.arange(len(sub))[::-1]
    ax.barh(y + 0.2, sub["lime_contribution"].astype(float), height=0.4, color=PALETTE["green"],
            label="LIME contribution")
    shap = sub["shap_value"].astype(float)
    if shap.notna().any():
        ax.barh(y - 0.2, shap.fillna(0.0), height=0.4, color=PALETTE["grey"], label="SHAP value")
    ax.set_yticks(y)
    ax.set_yticklabels([_label(g, labels) for g in sub["gene_id"].astype(str)], fontsize=8)
    ax.axvline(0, color="black", lw=0.6)
    fid = float(sub["local_fidelity"].iloc[0])
    ax.set_title(f"Sample {sample_id}: class {sub['explained_class'].iloc[0]}, local fidelity R\u00b2 = {fid:.2f}",
                 fontsize=9)
    ax.set_xlabel(f"contribution to the model output ({sub['scale'].iloc[0]})")
    ax.legend(fontsize=7, frameon=False, loc="best")
    return to_base64_png(fig)
