"""explain --methods surrogate,pdp,map end to end: demo cohort with a decision tree (its own rules exported),
byte-identical outputs with --jobs 1 and 2, the report's sections, bad input in one line, the Python API."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import TEST_DATA, one_line, run_cli
from iml_genomics.explain.attribution_map import umap_available
from iml_genomics.explain.surrogate import apply_rules, parse_rules

CONFIG = """\
seed: 0
task: classification
data:
  label_column: condition
preprocess:
  top_k_variable: 60
model:
  name: decision_tree
  params: {max_depth: 3, min_samples_leaf: 5}
cv:
  n_splits: 3
explain:
  method: shap
  top_k: 5
  pdp_top_k: 3
  pdp_grid_points: 8
  pdp_ice_samples: 5
  map_method: tsne
  map_max_samples: 150
"""
METHOD_FILES = {"surrogate.tsv", "surrogate_rules.txt", "model_rules.txt", "partial_dependence.tsv",
                "attribution_map.tsv"}


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("m15a_cli")
    (root / "cfg.yaml").write_text(CONFIG)
    run_cli("train", "--config", root / "cfg.yaml", "--expression", TEST_DATA / "demo_expression.csv.gz",
            "--labels", TEST_DATA / "demo_labels.tsv", "--out", root / "train", "--jobs", "1")
    common = ["explain", "--model", root / "train", "--config", root / "cfg.yaml", "--expression",
              TEST_DATA / "demo_expression.csv.gz", "--labels", TEST_DATA / "demo_labels.tsv",
              "--methods", "surrogate,pdp,map"]
    run_cli(*common, "--out", root / "j1", "--jobs", "1")
    run_cli(*common, "--out", root / "j2", "--jobs", "2")
    return root


def test_outputs_exist_say_what_they_explain_and_do_not_depend_on_jobs(demo_runs):
    root = demo_runs
    names = {p.name for p in (root / "j1").iterdir() if not p.name.startswith(".")}
    assert METHOD_FILES <= names
    for name in sorted(names - {"provenance.json"}):
        assert (root / "j1" / name).read_bytes() == (root / "j2" / name).read_bytes(), name
    summary = json.loads((root / "j1" / "explain_summary.json").read_text())["methods"]
    assert set(summary) == {"surrogate", "pdp", "map"}
    for name in ("surrogate.tsv", "partial_dependence.tsv", "attribution_map.tsv"):
        assert set(pd.read_csv(root / "j1" / name, sep="\t")["explains"]) == {"model"}, name

    # the model's own rules are the model: parsed back, they predict what the model predicts
    s = summary["surrogate"]
    assert s["model_rules"]["fidelity"] == 1.0 and s["model_rules"]["threshold_scale"] == "raw expression"
    expr = pd.read_csv(TEST_DATA / "demo_expression.csv.gz", index_col=0)
    rules = parse_rules((root / "j1" / "model_rules.txt").read_text())["model_tree"]
    written = apply_rules(rules, expr)
    assert (written != None).all() and set(written) <= {"normal", "tumour"}  # noqa: E711
    # the surrogate of a depth-3 tree with a depth-3 tree: near-perfect held-out fidelity
    assert s["fidelity_tree"] > 0.9 and 0 <= s["accuracy_tree"] <= 1

    pdp = pd.read_csv(root / "j1" / "partial_dependence.tsv", sep="\t")
    assert pdp["gene_id"].nunique() == 3 and set(pdp["class"]) == {summary["pdp"]["classes"][0]}
    assert (pdp["curve"] != "average").sum() == 3 * 5 * 8 or pdp.groupby("gene_id")["curve"].nunique().eq(6).all()
    amap = pd.read_csv(root / "j1" / "attribution_map.tsv", sep="\t")
    assert len(amap) == 150 and summary["map"]["method"] == "tsne" and summary["map"]["subsampled"]
    assert set(amap["sample_id"]) <= set(expr.index)


def test_report_shows_one_section_per_method(demo_runs):
    root = demo_runs
    run_cli("report", "--inputs", root / "train", "--inputs", root / "j1", "--out", root / "report",
            "--jobs", "1")
    page = (root / "report" / "report.html").read_text()
    for anchor, words in (("surrogate", "Global surrogate and rules"), ("pdp", "Partial dependence and ICE"),
                          ("map", "Map of samples in attribution space")):
        assert f'<section id="{anchor}">' in page and words in page
    assert "The model&#x27;s own rules (model_rules.txt)" in page and "P(" not in page.split('id="pdp"')[0][-10:]
    assert "predicted probability of class" in page
    # without the methods' files, no section and no "missing" box
    run_cli("report", "--inputs", root / "train", "--out", root / "report_plain", "--jobs", "1")
    plain = (root / "report_plain" / "report.html").read_text()
    assert '<section id="surrogate">' not in plain and '<section id="map">' not in plain


def test_bad_input_is_one_line_and_writes_nothing(tmp_path):
    """pdp_top_k larger than the matrix's genes (a 40-gene cohort), and umap asked for without umap-learn."""
    expr = pd.read_csv(TEST_DATA / "demo_expression.csv.gz", index_col=0).iloc[:120, :40]
    expr.to_csv(tmp_path / "small.tsv", sep="\t")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(CONFIG.replace("top_k_variable: 60", "top_k_variable: 30"))
    run_cli("train", "--config", cfg, "--expression", tmp_path / "small.tsv", "--labels",
            TEST_DATA / "demo_labels.tsv", "--out", tmp_path / "train", "--jobs", "1")
    bad = tmp_path / "bad.yaml"
    bad.write_text(CONFIG.replace("pdp_top_k: 3", "pdp_top_k: 50"))
    base = ["explain", "--model", tmp_path / "train", "--config", bad, "--expression", tmp_path / "small.tsv",
            "--jobs", "1"]
    proc = run_cli(*base, "--out", tmp_path / "out", "--methods", "pdp", check=False)
    one_line(proc, 2, "explain.pdp_top_k = 50", "40 genes")
    assert not (tmp_path / "out").exists()
    if not umap_available():
        bad.write_text(CONFIG.replace("map_method: tsne", "map_method: umap"))
        proc = run_cli(*base, "--out", tmp_path / "out2", "--methods", "map", check=False)
        one_line(proc, 2, "explain.map_method", "umap-learn is not installed")
        assert not (tmp_path / "out2").exists()


def test_python_api_runs_the_methods():
    import iml_genomics as ig
    from iml_genomics.io import load_cohort

    adata = load_cohort(TEST_DATA / "demo_expression.csv.gz", labels=TEST_DATA / "demo_labels.tsv",
                        label_column="condition")
    adata = adata[:120, :50].copy()
    config = {"seed": 0, "task": "classification", "data": {"label_column": "condition"},
              "model": {"name": "decision_tree", "params": {"max_depth": 2}}, "cv": {"n_splits": 3},
              "explain": {"method": "shap", "methods": ["surrogate", "pdp", "map"], "pdp_top_k": 2,
                          "map_method": "tsne"}}
    ig.tl.train(adata, config=config, n_jobs=1)
    ig.tl.explain(adata, config=config, n_jobs=1)
    sur = ig.get.explain_method_df(adata, "surrogate.tsv")
    assert {"surrogate_tree", "surrogate_rule_list", "model_tree"} <= set(sur["source"])
    pdp = ig.get.explain_method_df(adata, "partial_dependence.tsv")
    assert pdp["gene_id"].nunique() == 2
    amap = ig.get.explain_method_df(adata, "attribution_map.tsv")
    assert len(amap) == 120 and np.isfinite(amap[["x", "y"]].to_numpy()).all()
