"""Defects found by the review of issue 15's explanation methods (surrogate, pdp, lime, anchors, examples,
integrated gradients, conditional, map) looked at together: each test fails on the code before its fix."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from iml_genomics.explain.surrogate import apply_rules, condition_text, parse_rules

# ids the readers accept (no tab, newline or control character) that are hard for a rule text
HOSTILE_GENE_IDS = ["a` b", "` x", "a`", "`", "x`` y`", "a b", "g\u00e9ne\"q", "THEN", "A AND", "n\u00a0b", "1e5"]


@pytest.mark.parametrize("gene", HOSTILE_GENE_IDS)
def test_rule_text_reads_back_any_accepted_gene_id(gene):
    """A gene id with a backtick and a space ('a` b') was written as `a` b` and parse_rules refused the line."""
    text = ("[rule_list]\n"
            f"IF {condition_text([(gene, '<=', 1.5), ('B', '>', 2.0)])} THEN class = yes\n"
            "ELSE THEN class = no\n")
    rules = parse_rules(text)["rule_list"]
    assert rules[0][0] == [(gene, "<=", 1.5), ("B", ">", 2.0)]
    frame = pd.DataFrame({gene: [1.0, 1.0, 2.0], "B": [3.0, 1.0, 3.0]})
    assert apply_rules(rules, frame).tolist() == ["yes", "no", "no"]


def test_report_names_the_symbols_of_quoted_ids():
    """The report's 'Genes in these rules' note reads the same quoting back."""
    from iml_genomics.report.model_behaviour import _symbols

    text = f"[tree]\nIF {condition_text([('a` b', '<=', 1.0), ('G2', '>', 0.5)])} THEN class = x\n"
    note = _symbols(text, {"a` b": "SYM1", "G2": "SYM2", "other": "NO"})
    assert "a` b = SYM1" in note and "G2 = SYM2" in note and "NO" not in note
