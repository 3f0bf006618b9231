"""The report's section on ``audit.tsv`` (the sensitive-attribute audit of `explain`)."""

from __future__ import annotations

import pandas as pd

from iml_genomics.report import html as H

CAPTION = (
    "Per attribute (data.sensitive): <b>performance</b> is the model's out-of-fold metric in each group with a "
    "bootstrap 95% interval and the group's n (explains = model: a group far below the others is served worse by "
    "this model); <b>predictability</b> is how well a balanced logistic regression on the model's top genes "
    "predicts the attribute in cross-validation, against chance (explains = data: the genes the model relies on "
    "carry the attribute); <b>attribution_share</b> is the share of the model's total mean |SHAP| on genes "
    "associated with the attribute by a per-gene ANOVA F-test at Benjamini-Hochberg q &lt;= 0.05 (explains = "
    "model). A high predictability with a large share means the model's explanation is partly an explanation of "
    "the attribute. Full table: audit.tsv.")


def audit_html(audit: pd.DataFrame) -> str:
    """Tables of performance per group and of predictability / attribution share, with the caption."""
    perf = audit[audit["quantity"] == "performance"]
    rest = audit[audit["quantity"] != "performance"]
    inner = ""
    if len(perf):
        inner += "<h3>Performance per group</h3>" + H.table_html(
            perf[["attribute", "group", "metric", "value", "ci_low", "ci_high", "n", "explains"]])
    inner += "<h3>Predictability from the top genes and attribution share</h3>" + H.table_html(
        rest[["attribute", "quantity", "metric", "value", "chance", "n_genes", "n", "explains"]])
    return inner + f'<p class="note">{CAPTION}</p>'
