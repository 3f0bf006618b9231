"""Report sections of the local explanation methods lime, anchors and examples (explain.methods).

Each function returns the (anchor, title, inner html) of its section, or None when the method's files are
absent (opt-in methods get no "missing" box). Deterministic: tables in file order, plots seeded by nothing.
"""

from __future__ import annotations

import pandas as pd

from iml_genomics.report import html as H
from iml_genomics.report import page_parts as P
from iml_genomics.report import plots

MAX_SAMPLES = 6  # plots and tables per section: enough to read, short enough to scroll past


def _samples(frame: pd.DataFrame, wanted: list) -> list:
    present = list(dict.fromkeys(frame["sample_id"].astype(str)))
    return [s for s in wanted if s in present] or present[:MAX_SAMPLES]


def lime_section(inputs, samples: list, labels: dict | None):
    """LIME: per-sample fidelity and SHAP agreement, contribution bars, the top genes."""
    lime = inputs.explain_methods.get("lime.tsv")
    if lime is None or not len(lime):
        return None
    shown = _samples(lime, samples)
    cls = str(lime["explained_class"].fillna("").iloc[0])
    scale = str(lime["scale"].iloc[0])
    inner = (f'<p class="note">LIME fits a weighted straight-line model to the model\'s output ({H.esc(scale)} of '
             f'class {H.esc(cls or "the outcome")}) on copies of each chosen sample in which the top genes are '
             f'redrawn from the cohort. It <strong>explains the model</strong> near that sample, not the biology. '
             f'<em>Local fidelity</em> (weighted R\u00b2 on perturbations the line was not fitted to, at most 1; '
             f'0 or below: no better than a constant) says how well a straight line describes the model '
             f'there: below about 0.5 the LIME weights should not be read. <em>Agreement with SHAP</em> is the '
             f'Spearman correlation between LIME\'s per-gene contributions (weight x the sample\'s standardized '
             f'expression) and the sample\'s SHAP values; low agreement means the two explanations disagree on '
             f'which genes drive this prediction.</p>')
    per = (lime[lime["sample_id"].astype(str).isin(shown)]
           .groupby("sample_id", sort=False)
           .agg(local_fidelity=("local_fidelity", "first"), shap_agreement_spearman=("shap_agreement_spearman",
                                                                                     "first"),
                top_genes=("gene_id", lambda g: ", ".join(map(str, list(g)[:3]))))
           .reset_index())
    inner += H.table_html(per, caption="Per sample: how well the straight line fits the model (local_fidelity) "
                                       "and how far LIME agrees with SHAP; the three genes with the largest "
                                       "LIME weights.")
    towards = f"towards {H.esc(cls)}" if cls else "up"
    inner += '<div class="plots">' + "".join(
        H.figure(plots.lime_vs_shap(lime, s, labels),
                 f"Sample {H.esc(s)}: the genes with the largest LIME weights; green bars are LIME contributions "
                 f"(weight x the sample's standardized expression), grey bars the sample's SHAP values. A positive "
                 f"value pushes the model output ({H.esc(scale)}) {towards}.") for s in shown) + "</div>"
    cols = ["sample_id", "rank", "gene_id", "lime_weight", "lime_contribution", "shap_value", "expression",
            "local_fidelity"]
    sub = lime[lime["sample_id"].astype(str).isin(shown)]
    inner += H.table_html(sub[cols], max_rows=10, caption="Every perturbed gene of the samples shown, by rank of "
                                                          "the absolute LIME weight (change of the output per "
                                                          "cohort standard deviation of the gene).")
    inner += P.files_note(P.input_link(inputs, "explain", "lime.tsv"))
    return "lime", "LIME local surrogates", inner


def anchors_section(inputs, samples: list, labels: dict | None):
    """Anchors: each chosen sample's rule with precision and coverage."""
    table = inputs.explain_methods.get("anchors.tsv")
    if table is None or not len(table):
        return None
    shown = _samples(table, samples)
    inner = ('<p class="note">An anchor is a short rule on gene expression thresholds that, when it holds, keeps '
             'the model\'s prediction for this sample. <em>Precision</em>: among perturbed samples that satisfy '
             'the rule (the other genes redrawn from the cohort), the fraction the model assigns to the same class '
             '(with a 95% lower bound). <em>Coverage</em>: the fraction of the cohort that satisfies the rule, i.e. '
             'how general it is. A rule <strong>explains the model</strong>\'s decision, not a biological '
             'mechanism; "precision reached = no" means no rule of the allowed length was precise enough (often '
             'a sample near the decision boundary).</p>')
    cols = ["sample_id", "predicted_class", "rule", "precision", "precision_ci_low", "coverage",
            "precision_reached"]
    inner += H.table_html(table[table["sample_id"].astype(str).isin(shown)][cols],
                          caption="One rule per sample: the model predicts predicted_class for the samples that "
                                  "satisfy the rule, with the precision shown.")
    inner += P.files_note(P.input_link(inputs, "explain", "anchors.tsv"))
    return "anchors", "Anchors (local rules)", inner


def examples_section(inputs, samples: list, labels: dict | None):
    """Explanation by example: nearest cohort samples in both spaces, and the class prototypes."""
    ex = inputs.explain_methods.get("examples.tsv")
    protos = inputs.explain_methods.get("prototypes.tsv")
    if (ex is None or not len(ex)) and (protos is None or not len(protos)):
        return None
    explained = (inputs.explain_summary or {}).get("classes_explained") or [""]
    inner = (f'<p class="note">Samples of the cohort most similar to each chosen sample, in two ways. In '
             f'<em>attribution</em> space (the SHAP values{" of class " + H.esc(explained[0]) if explained[0] else ""}'
             f') neighbours are samples the model reasons about alike: this <strong>explains the model</strong>. '
             f'In <em>expression</em> space (the standardized expression of the genes the model uses) neighbours '
             f'are samples that look alike: this describes the <strong>data</strong>. Neighbours with another true '
             f'label than their prediction, or a chosen sample whose neighbours have another label, point to '
             f'cases the model finds hard. Distances are Euclidean.</p>')
    if ex is not None and len(ex):
        shown = _samples(ex, samples)
        cols = ["sample_id", "space", "neighbour_rank", "neighbour_id", "distance", "neighbour_label",
                "neighbour_prediction", "explains"]
        inner += H.table_html(ex[ex["sample_id"].astype(str).isin(shown)][cols], max_rows=10,
                              caption="Nearest cohort samples of each chosen sample, closest first, in each space.")
    if protos is not None and len(protos):
        inner += ("<h3>Class prototypes</h3><p class=\"note\">The prototype of a class is its most central member "
                  "(the medoid: smallest mean distance to the other members), a typical sample to look at first.</p>")
        inner += H.table_html(protos, caption="One prototype per true class and space; mean_distance is its "
                                              "mean distance to the other members of its class.")
    inner += P.files_note(P.input_link(inputs, "explain", "examples.tsv"),
                          P.input_link(inputs, "explain", "prototypes.tsv"))
    return "examples", "Explanation by example", inner


def local_method_sections(inputs, samples: list, labels: dict | None) -> list:
    """The sections of lime, anchors and examples whose files exist, in that order."""
    out = [f(inputs, samples, labels) for f in (lime_section, anchors_section, examples_section)]
    return [s for s in out if s is not None]
