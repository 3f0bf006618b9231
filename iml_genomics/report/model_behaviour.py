"""Report sections of the explain methods `surrogate`, `pdp` and `map` (explain.methods, docs/explain.md).

Each function returns ``(anchor, title, inner_html)`` or None when the method's files are absent (the methods
are opt-in: no "missing" box). They read only ``inputs.explain_methods`` / ``explain_texts`` / the summary.
"""

from __future__ import annotations

import pandas as pd

from iml_genomics.report import html as H
from iml_genomics.report import plots


def _method_summary(inputs, name: str) -> dict:
    methods = (inputs.explain_summary or {}).get("methods")
    info = methods.get(name) if isinstance(methods, dict) else None
    return info if isinstance(info, dict) else {}


def _pre(text: str, max_lines: int = 60, max_chars: int = 400) -> str:
    lines = text.splitlines()
    more = f"\n... ({len(lines) - max_lines} more lines in the file)" if len(lines) > max_lines else ""
    # a rule line is ~100 characters; a longer one (a crafted file) is cut so the page stays readable
    shown = [ln if len(ln) <= max_chars else ln[:max_chars] + f" ... ({len(ln) - max_chars} more characters)"
             for ln in lines[:max_lines]]
    return f'<pre class="rules">{H.esc(chr(10).join(shown) + more)}</pre>'


def _symbols(text: str, labels: dict | None) -> str:
    """'Genes in these rules: id = symbol, ...' for the ids of the rules that the gene map names."""
    if not labels:
        return ""
    import re

    # quoted ids double their backticks (explain.surrogate._quote)
    words = set(re.findall(r"`((?:[^`]|``)*)` (?:<=|>) |(\S+) (?:<=|>) ", text))
    ids = sorted({a.replace("``", "`") if a else b for a, b in words} & set(labels))
    if not ids:
        return ""
    return ('<p class="note">Genes in these rules: ' + H.esc(", ".join(f"{g} = {labels[g]}" for g in ids))
            + "</p>")


def surrogate_section(inputs, labels: dict | None = None):
    """Global surrogate: fidelity, accuracy, the rules; the decision-tree model's own rules."""
    table = inputs.explain_methods.get("surrogate.tsv")
    if table is None:
        return None
    s = _method_summary(inputs, "surrogate")
    metric = s.get("metric", "agreement")
    items = {"the surrogate imitates": s.get("target", ""),
             f"fidelity of the tree (held-out {metric} with the model)": s.get("fidelity_tree"),
             f"fidelity of the rule list (held-out {metric} with the model)": s.get("fidelity_rule_list")}
    if s.get("accuracy_tree") is not None:
        items[f"accuracy of the tree on the true labels (held-out {metric})"] = s.get("accuracy_tree")
        items[f"accuracy of the model itself (out-of-fold {metric})"] = s.get("accuracy_model_oof")
    else:
        items["accuracy on the true labels"] = "not computed (no labels)"
    items.update({"tree depth / leaves": f"{s.get('max_depth', '')} / {s.get('n_leaves', '')}",
                  "rules in the list (+ default)": s.get("n_rules"), "thresholds on": s.get("threshold_scale", "")})
    inner = H.kv_table(items)
    if s.get("fidelity_note"):
        inner += H.missing(H.esc(s["fidelity_note"]))
    text = inputs.explain_texts.get("surrogate_rules.txt")
    if text:
        inner += "<h3>Rules (surrogate_rules.txt)</h3>" + _pre(text) + _symbols(text, labels)
    rows = table[table["source"].astype(str).isin(["surrogate_tree", "surrogate_rule_list"])]
    cols = ["source", "row_type", "rule_id", "rule", "prediction", "n_samples", "fidelity", "accuracy",
            "evaluated_on"]
    inner += H.table_html(rows[[c for c in cols if c in rows.columns]], max_rows=40, max_chars=120)
    model_text = inputs.explain_texts.get("model_rules.txt")
    if model_text:
        m = s.get("model_rules") or {}
        inner += (f"<h3>The model's own rules (model_rules.txt): {H.esc(m.get('n_leaves', ''))} leaves, fidelity "
                  f"{H.esc(H.fmt(m.get('fidelity')))}</h3>" + _pre(model_text) + _symbols(model_text, labels))
    inner += ('<p class="note">A global surrogate is a small decision tree (and a short list of if-then rules) '
              'trained to <em>imitate the fitted model</em>, not the outcome: its rules describe how the model '
              'behaves, in gene thresholds on the raw expression scale of the input matrix. Fidelity says how often '
              'the surrogate agrees with the model on samples it was not fitted on; below about 0.8 (classes) the '
              'rules are only a rough sketch of the model. Accuracy compares the surrogate with the true labels. '
              'Rules are not evidence that a gene causes the outcome. Full table: surrogate.tsv.</p>')
    return ("surrogate", "Global surrogate and rules", inner)


def pdp_section(inputs, labels: dict | None = None):
    """Partial dependence and ICE curves of the top genes."""
    table = inputs.explain_methods.get("partial_dependence.tsv")
    if table is None:
        return None
    s = _method_summary(inputs, "pdp")
    scale = s.get("scale") or (str(table["scale"].iloc[0]) if len(table) else "")
    classes = [c for c in s.get("classes") or [] if c]
    what = {"probability": f"the model's predicted probability of class {', '.join(map(str, classes))}",
            "decision_function": f"the model's decision function for class {', '.join(map(str, classes))}",
            "prediction": "the model's prediction"}.get(scale, scale)
    caption = (f'Each panel shows {H.esc(what)} (y axis) as one gene is set to each value of its observed range '
               f'(x axis, raw expression, 5th to 95th percentile) in every sample while the other genes keep their '
               f'values. Red: the average over {H.esc(s.get("n_samples_averaged", ""))} samples (partial '
               f'dependence); grey: single samples (ICE). It describes the fitted model, not biology; with '
               f'correlated genes it includes expression combinations that real samples may not show. Crossing grey '
               f'curves mean the gene\'s effect depends on the rest of the sample.')
    inner = '<div class="plots">' + H.figure(plots.pdp_curves(table, labels), caption) + "</div>"
    shapes = s.get("shapes") or {}
    rows = [{"gene_id": g, "class": c, "shape": v.get("shape"), "range": v.get("range"),
             "spearman_with_expression": v.get("spearman")}
            for g, per in shapes.items() if isinstance(per, dict) for c, v in per.items() if isinstance(v, dict)]
    if rows:
        inner += H.table_html(pd.DataFrame(rows), max_rows=40)
    inner += '<p class="note">Full table: partial_dependence.tsv.</p>'
    return ("pdp", "Partial dependence and ICE", inner)


def map_section(inputs, labels: dict | None = None):
    """The samples' map in attribution space, by class and by prediction."""
    table = inputs.explain_methods.get("attribution_map.tsv")
    if table is None:
        return None
    s = _method_summary(inputs, "map")
    method = str(s.get("method") or table["method"].iloc[0])
    name = "UMAP" if method == "umap" else "t-SNE"
    items = {"embedding": f"{name} of each sample's SHAP values" + (" (umap-learn not installed)"
                                                                    if s.get("note") else ""),
             "samples shown": f"{s.get('n_samples', len(table))} of {s.get('n_samples_total', len(table))}",
             "SHAP values of": s.get("attributions_of") or "the prediction"}
    inner = H.kv_table(items)
    of = s.get("attributions_of") or ""
    values = f"SHAP values of class {H.esc(of)}" if of else "SHAP values of the prediction"
    if of:
        colours = ("Left: coloured by the true class; right: by the model\'s predicted class. Groups of one class "
                   "apart from the rest are samples the model reasons about in the same way; a sample sitting among "
                   "the other class is explained like them.")
    else:  # regression: colour scales of the outcome
        colours = ("Left: coloured by the true value of the outcome; right: by the model\'s prediction. Samples "
                   "of similar value apart from the rest are samples the model reasons about in the same way.")
    caption = (f'Each dot is a sample, placed by {name} of its {values} so that samples whose predictions the model '
               f'explains alike (the same genes pushing in the same direction by similar amounts) lie close '
               f'together. {colours} Distances between distant groups and the axes have no meaning. It explains '
               f'the model, not the biology.')
    inner += '<div class="plots">' + H.figure(plots.attribution_map(table), caption) + "</div>"
    inner += '<p class="note">Full table: attribution_map.tsv.</p>'
    return ("map", "Map of samples in attribution space", inner)
