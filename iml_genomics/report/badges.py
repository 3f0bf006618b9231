"""A badge under each report section's heading saying what it explains (the model, the data, or marginal
association; :mod:`iml_genomics.explains`)."""

from __future__ import annotations

import html

from iml_genomics import explains as E

# section anchor -> kind; sections not listed (data summary, plain summary, meaning, provenance) describe no result
SECTION_KINDS = {
    "cv": "model", "compare": "model", "biomarkers": E.MIXED, "shap": "model", "knockoffs": "data",
    "surrogate": "model", "pdp": "model", "map": "model", "integrated_gradients": "model", "conditional": "data",
    "local": "model",
}

_COLOURS = {"model": "#1f5fa8", "data": "#2a7d3b", "association": "#8a5a00", E.MIXED: "#555"}


def section_kinds(sections, gene_set_summary: dict | None = None) -> dict:
    """Section anchor -> what it explains, for the sections present (``report_summary.json: explains_sections``).

    The gene-set section's kind follows its two tests: the over-representation query's kind and the rank-based
    test's (``mixed`` when they differ; gene_sets.tsv says it per row).
    """
    out = {}
    for anchor, _heading, _inner in sections:
        if anchor == "genesets" and gene_set_summary:
            kind = E.combined_kind([E.query_kind(gene_set_summary.get("query_source")),
                                    E.ranking_kind(gene_set_summary.get("ranking_metric"))])
            if kind:
                out[anchor] = kind
        elif anchor in SECTION_KINDS:
            out[anchor] = SECTION_KINDS[anchor]
    return out


def badge(kind: str, detail: str | None = None) -> str:
    """The badge HTML of one kind (``detail``: words after it, e.g. which test is which)."""
    colour = _COLOURS.get(kind, "#555")
    text = E.BADGE.get(kind, kind) + (f": {detail}" if detail else "")
    return (f'<p class="explains-badge" data-explains="{html.escape(kind)}"><span style="display:inline-block;'
            f'padding:1px 8px;border-radius:9px;font-size:0.8em;color:#fff;background:{colour}" '
            f'title="{html.escape(E.MEANING.get(kind, ""))}">{html.escape(text)}</span></p>')


def with_badges(sections, kinds: dict, gene_set_summary: dict | None = None):
    """``sections`` with a badge prepended to the inner HTML of every section in ``kinds``."""
    out = []
    for anchor, heading, inner in sections:
        if anchor in kinds:
            detail = None
            if anchor == "genesets" and gene_set_summary:
                q, r = (E.query_kind(gene_set_summary.get("query_source")),
                        E.ranking_kind(gene_set_summary.get("ranking_metric")))
                detail = "; ".join(f"{test} {E.BADGE[k]}" for test, k in (("over-representation", q),
                                                                         ("rank-based test", r)) if k)
            elif anchor == "biomarkers":
                detail = "each column's kind in biomarkers_columns.tsv"
            inner = badge(kinds[anchor], detail) + inner
        out.append((anchor, heading, inner))
    return out
