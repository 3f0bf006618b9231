"""`iml-genomics explain --methods lime,anchors,examples` end to end on the demo cohort: files and columns,
byte-identical with --jobs 1 and 2, the report shows them, bad input is one line with exit 2; ig.tl.explain."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
from conftest import ROOT, TEST_DATA, one_line, run_cli_inprocess

from iml_genomics.explain.anchors import ANCHOR_COLUMNS
from iml_genomics.explain.examples import EXAMPLE_COLUMNS, PROTOTYPE_COLUMNS
from iml_genomics.explain.lime import LIME_COLUMNS

FILES = {"lime.tsv": LIME_COLUMNS, "anchors.tsv": ANCHOR_COLUMNS, "examples.tsv": EXAMPLE_COLUMNS,
         "prototypes.tsv": PROTOTYPE_COLUMNS}
CONFIG = """\
cv:
  n_splits: 2
explain:
  method: shap
  samples: [S0001, S0002]
  methods: [lime, anchors, examples]
  lime_n_samples: 300
  anchors_n_samples: 200
  anchors_top_genes: 8
  anchors_max_predicates: 3
  examples_k: 4
"""


@pytest.fixture(scope="module")
def explained(demo_train_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("local_methods")
    (root / "cfg.yaml").write_text(CONFIG)
    common = ["explain", "--model", demo_train_dir, "--config", root / "cfg.yaml",
              "--expression", TEST_DATA / "demo_expression.csv.gz", "--labels", TEST_DATA / "demo_labels.tsv"]
    for jobs in (1, 2):
        run_cli_inprocess(*common, "--out", root / f"j{jobs}", "--jobs", jobs)
    return root, common


def test_outputs_columns_and_jobs_invariance(explained):
    root, _ = explained
    for name, columns in FILES.items():
        a, b = (root / "j1" / name).read_bytes(), (root / "j2" / name).read_bytes()
        assert a == b, name
        table = pd.read_csv(root / "j1" / name, sep="\t")
        assert list(table.columns) == columns, name
        assert set(table["explains"]) <= {"model", "data"}
    lime = pd.read_csv(root / "j1" / "lime.tsv", sep="\t")
    assert set(lime["sample_id"]) == {"S0001", "S0002"} and set(lime["scale"]) == {"log_odds"}
    # the demo model is an L1 logistic regression: LIME on the log-odds is (almost) exact and agrees with SHAP
    assert (lime["local_fidelity"] > 0.99).all() and (lime["shap_agreement_spearman"] > 0.9).all()
    anchors = pd.read_csv(root / "j1" / "anchors.tsv", sep="\t")
    assert anchors["sample_id"].tolist() == ["S0001", "S0002"] and anchors["coverage"].between(0, 1).all()
    examples = pd.read_csv(root / "j1" / "examples.tsv", sep="\t")
    assert len(examples) == 2 * 2 * 4
    summary = json.loads((root / "j1" / "explain_summary.json").read_text())["methods"]
    assert set(summary) == {"lime", "anchors", "examples"}
    assert sorted(summary["examples"]["files"]) == ["examples.tsv", "prototypes.tsv"]


def test_report_shows_the_three_methods(explained, tmp_path):
    root, _ = explained
    run_cli_inprocess("report", "--inputs", root / "j1", "--out", tmp_path / "report")
    html = (tmp_path / "report" / "report.html").read_text()
    sections = {}
    for name in ("lime", "anchors", "examples"):
        m = re.search(rf'<section id="{name}"(.*?)</section>', html, re.S)
        assert m, name
        sections[name] = m.group(1)
        assert f'/{name}.tsv"' in sections[name]  # the section links its TSV
    # one captioned LIME figure per chosen sample, naming the class a positive value points to
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", sections["lime"], re.S)
    assert sum("pushes the model output (log_odds) towards tumour" in c for c in captions) == 2
    assert "explains the model" in sections["lime"] and "describes the <strong>data</strong>" in sections["examples"]
    assert "S0001" in sections["anchors"] and "Class prototypes" in sections["examples"]


def test_too_many_lime_genes_is_one_line_exit_2(explained, tmp_path):
    root, common = explained
    bad = tmp_path / "bad.yaml"
    bad.write_text(CONFIG + "  lime_top_genes: 100000\n")
    args = [a if a != root / "cfg.yaml" else bad for a in common]
    proc = run_cli_inprocess(*args, "--out", tmp_path / "out", check=False)
    one_line(proc, 2, "explain.lime_top_genes (100000)", "400 genes")
    assert not (tmp_path / "out").exists()


def test_python_api_runs_the_methods():
    import iml_genomics as ig
    from iml_genomics.io import load_cohort

    adata = load_cohort(TEST_DATA / "demo_expression.csv.gz", labels=TEST_DATA / "demo_labels.tsv",
                        label_column="condition")
    ig.tl.train(adata, label_column="condition", config=ROOT / "configs" / "demo.yaml", n_jobs=1)
    ig.tl.explain(adata, config={"explain": {"method": "shap", "samples": ["S0003"], "lime_n_samples": 200,
                                             "methods": ["lime", "examples"], "examples_k": 3}}, n_jobs=1)
    lime = ig.get.explain_method_df(adata, "lime.tsv")
    assert set(lime["sample_id"]) == {"S0003"} and (lime["explains"] == "model").all()
    ex = ig.get.explain_method_df(adata, "examples.tsv")
    assert len(ex) == 2 * 3
