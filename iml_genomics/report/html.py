"""Assemble the self-contained HTML report (plots embedded as base64 PNG)."""

from __future__ import annotations

import html
import json
import re
from importlib import resources
from string import Template

import numpy as np
import pandas as pd

from iml_genomics.report import interactive

_MISSING = {
    "train": "No train output given: pass the --out directory of <code>iml-genomics train</code> to --inputs.",
    "explain": "No explain output given: pass the --out directory of <code>iml-genomics explain</code> to --inputs.",
    "select": "No select output given: pass the --out directory of <code>iml-genomics select</code> to --inputs.",
}


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def fmt(value) -> str:
    """Numbers for people: 4 significant digits, small p-values in e-notation."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if v == 0:
            return "0"
        if abs(v) < 1e-3 or abs(v) >= 1e5:
            return f"{v:.3g}"
        return f"{v:.4g}"
    return str(value)


def table_html(frame: pd.DataFrame, *, max_rows: int | None = None, max_chars: int = 400,
               source: str | None = None, caption: str | None = None) -> str:
    """An interactive table of ALL rows of ``frame`` (sortable, filterable, paged, links on ids).

    ``max_rows`` is the page size shown before the reader pages on (25 when None), never a cut: the
    page holds every row (up to :data:`~iml_genomics.report.interactive.MAX_EMBEDDED_ROWS`).
    ``source``: relative path of the TSV the table comes from, linked under it; ``caption``: what it shows.
    See :func:`iml_genomics.report.interactive.table`.
    """
    return interactive.table(frame, fmt=fmt, page_size=max_rows or 25, max_chars=max(max_chars, 80),
                             source=source, caption=caption)


def kv_table(items: dict) -> str:
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(fmt(v))}</td></tr>" for k, v in items.items())
    return f"<table><tbody>{rows}</tbody></table>"


def img(b64: str | None, alt: str, caption: str | None = None) -> str:
    """An embedded PNG inside a captioned figure (the caption defaults to ``alt``); nothing without an image.

    ``caption`` is HTML: say what the figure shows and, for signed values, which class a positive value
    points to.
    """
    if not b64:
        return ""
    tag = f'<img class="plot" alt="{esc(alt)}" src="data:image/png;base64,{b64}">'
    return interactive.figure(tag, caption if caption is not None else esc(alt) + ".")


def figure(b64: str | None, caption: str, alt: str | None = None) -> str:
    """A captioned figure from a base64 PNG (``caption`` is HTML); the helper for new report sections."""
    return img(b64, alt or re.sub(r"<[^>]+>", "", caption)[:120], caption)


def missing(text: str) -> str:
    return f'<p class="missing">{text}</p>'


MEANING = """
<p><strong>In one sentence:</strong> a model-level explanation is about the fitted model, not necessarily about
biology; a knockoff selection controls the share of false discoveries among the selected genes, it does not prove
any single gene; a gene-set result summarises where the evidence falls in a curated list, it does not show that a
pathway is active.</p>
<dl class="meaning">
<dt>Cross-validated AUROC, balanced accuracy, R&sup2;</dt>
<dd>How well the <em>whole modelling procedure</em> predicts samples it was not fitted on, averaged over folds
(&plusmn; sd across folds). It says nothing about which genes matter, and it is optimistic if samples are not
independent (e.g. several samples per patient) or if the cohort differs from the population you care about.</dd>
<dt>SHAP value, mean |SHAP|</dt>
<dd>How much a gene's value moved <em>this fitted model's</em> output for one sample, relative to the average
prediction; mean |SHAP| averages the size of those moves over samples. It is an explanation of the model, not
of biology: correlated genes share or swap credit, a gene the model ignores can still be strongly associated with
the outcome, and a large attribution is not evidence of causation. The rank interval (rank_low-rank_high) and
top-k frequency show how stable a gene's place is across folds; a wide interval means do not trust the exact
rank.</dd>
<dt>Knockoff W and selection</dt>
<dd>W compares a gene with its synthetic "knockoff" copy, which by construction has no link to the outcome. Genes
with W above the threshold T are selected; the procedure controls the expected <em>fraction</em> of false
discoveries among the selected genes at the target FDR (e.g. 10%) - it does not say which selected gene is a false
one, it assumes the covariance model of the genes is adequate, and it selects genes that carry information
<em>conditional on all other measured genes</em> (a gene redundant with a selected neighbour may not be selected).
An empty selection means the evidence was too weak at this FDR, not that no gene matters.</dd>
<dt>Univariate effect, p-value, q-value</dt>
<dd>The marginal difference of one gene between groups (or its correlation with a continuous outcome), tested
gene by gene (Welch t / Mann-Whitney, or Pearson / Spearman). q-values are Benjamini-Hochberg adjusted over genes.
Marginal association is not what the model uses, and it ignores every other gene.</dd>
<dt>Gene-set over-representation (p_value, q_value, odds_ratio)</dt>
<dd>Whether the query genes (knockoff selection, or the top of the ranking) fall into a set more often than
expected when drawing from the <em>measured</em> genes. Genes of a pathway are co-expressed, so the p-value
comes from a null that keeps their correlation (null_method: the query list rebuilt on permuted sample labels,
or the hypergeometric widened by the set's measured inter-gene correlation); the plain hypergeometric
(hypergeometric_p_value) treats genes as independent and calls co-expressed sets significant by chance. It
depends on the size of the query list and on how the sets were curated; overlapping sets are not independent
tests.</dd>
<dt>Rank-based set test (es, nes, gsea_p_value, gsea_q_value, leading edge)</dt>
<dd>Whether a set's genes sit near the top of the whole ranking rather than anywhere in it (GSEA-style running
sum). NES is the enrichment score scaled by its null mean, so sets of different sizes compare. gsea_p_value comes
from a null that keeps the correlation between genes (gsea_null_method: the ranking recomputed on permuted sample
labels, or CAMERA's correlation-adjusted test); gene permutation (gene_permutation_p_value) treats genes as
independent and makes co-expressed sets look more significant than they are, so it never sets the flag.
gsea_q_value is Benjamini-Hochberg over these p-values, not the FDR of the GSEA software. The leading edge is the
subset of genes driving the score.</dd>
<dt>Group attribution</dt>
<dd>The sum (and mean per gene) of |SHAP| over a set's genes: how much of this model's output moves with that
set. Large sets collect more attribution by size alone; compare the mean column for that.</dd>
<dt>What none of these numbers are</dt>
<dd>Proof of mechanism, of causality, or of clinical usefulness. They are leads to test in independent cohorts
and experiments.</dd>
</dl>
"""


def render(*, title: str, subtitle: str, sections: list[tuple[str, str, str]], version: str) -> str:
    """Fill the template with (anchor, heading, inner html) sections."""
    template = Template(resources.files("iml_genomics.report").joinpath("templates/report.html").read_text())
    nav = "".join(f'<a href="#{a}">{esc(h)}</a>' for a, h, _ in sections)
    body = "\n".join(f'<section id="{a}">\n<h2>{esc(h)}</h2>\n{inner}\n</section>' for a, h, inner in sections)
    return template.substitute(title=esc(title), subtitle=esc(subtitle), nav=nav, body=body, version=esc(version),
                               interactive_style=interactive.STYLE, interactive_script=interactive.SCRIPT)


def provenance_html(provenance: dict[str, dict], own: dict | None) -> str:
    parts = []
    for step, prov in sorted(provenance.items()):
        inputs = prov.get("inputs") or {}
        items = {"step": step, "command line": " ".join(map(str, prov.get("command_line", []))),
                 "started (UTC)": prov.get("started_utc", ""), "wall time (s)": prov.get("wall_time_seconds"),
                 "seed": prov.get("seed"), "n_jobs": prov.get("n_jobs")}
        for role, info in inputs.items():
            if isinstance(info, dict):
                items[f"input {role}"] = f"{info.get('path')} (sha256 {str(info.get('sha256'))[:16]}...)"
        versions = prov.get("versions") or {}
        items["versions"] = ", ".join(f"{k} {v}" for k, v in sorted(versions.items()) if v)
        parts.append(f"<h3>{esc(step)}</h3>" + kv_table(items))
    if own:
        parts.append("<h3>this report</h3>" + kv_table({k: v if not isinstance(v, (dict, list)) else json.dumps(v)
                                                       for k, v in own.items()}))
    return "".join(parts) or '<p class="note">No provenance.json found in the inputs.</p>'
