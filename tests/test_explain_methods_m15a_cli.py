"""explain --methods surrogate,pdp,map end to end: demo cohort with a decision tree (its own rules exported),
byte-identical outputs with --jobs 1 and 2, the report's sections, bad input in one line, the Python API."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import TEST_DATA, one_line, run_cli, run_cli_inprocess
from iml_genomics.explain.surrogate import apply_rules, parse_rules

CONFIG = """\
seed: 0
task: classification
data:
  label_column: condition
preprocess:
  top_k_variable: 40
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
    """The demo cohort's first 240 samples x 60 genes (small enough for the default suite), trained once."""
    root = tmp_path_factory.mktemp("m15a_cli")
    (root / "cfg.yaml").write_text(CONFIG)
    expr = pd.read_csv(TEST_DATA / "demo_expression.csv.gz", index_col=0).iloc[:240, :60]
    expr.to_csv(root / "demo.tsv", sep="\t")
    labels = pd.read_csv(TEST_DATA / "demo_labels.tsv", sep="\t")
    labels[labels["sample_id"].isin(expr.index)].to_csv(root / "labels.tsv", sep="\t", index=False)
    run_cli_inprocess("train", "--config", root / "cfg.yaml", "--expression", root / "demo.tsv",
                      "--labels", root / "labels.tsv", "--out", root / "train", "--jobs", "1")
    run_cli_inprocess(*_explain_args(root), "--out", root / "j1", "--jobs", "1")
    return root


def _explain_args(root):
    return ["explain", "--model", root / "train", "--config", root / "cfg.yaml", "--expression", root / "demo.tsv",
            "--labels", root / "labels.tsv", "--methods", "surrogate,pdp,map"]


@pytest.mark.slow
def test_cli_outputs_do_not_depend_on_jobs(demo_runs):
    """~25 s on two busy cores (worker start-up), hence slow; the default suite compares 1 and 2 workers
    in-process (test_methods_do_not_depend_on_the_worker_count)."""
    root = demo_runs
    run_cli(*_explain_args(root), "--out", root / "j2", "--jobs", "2")
    names = {p.name for p in (root / "j1").iterdir() if not p.name.startswith(".")}
    assert METHOD_FILES <= names
    for name in sorted(names - {"provenance.json"}):
        assert (root / "j1" / name).read_bytes() == (root / "j2" / name).read_bytes(), name


def test_methods_do_not_depend_on_the_worker_count():
    """surrogate (OOF refits) and pdp (genes) run through Backend.map; map is single-threaded: same bytes."""
    from iml_genomics.io.writers import tsv_text
    from iml_genomics.simulate import simulate_gaussian
    from sklearn.base import clone
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from iml_genomics.config import ExplainConfig
    from iml_genomics.explain.methods import MethodContext, run_methods
    from iml_genomics.models import cv_splits
    from iml_genomics.parallel import Backend

    cohort = simulate_gaussian(90, 12, n_signal=2, effect_size=2.0, rho=0.0, seed=3)
    X = cohort.expression.to_numpy()
    y = cohort.labels["condition"].astype(str).to_numpy(dtype=object)
    classes = sorted(set(y))
    pipe = Pipeline([("scale", StandardScaler()), ("model", RandomForestClassifier(30, random_state=0))])
    fitted = clone(pipe).fit(X, y)
    genes = list(cohort.expression.columns)
    texts = []
    for n_jobs in (1, 2):
        ctx = MethodContext(
            pipeline=fitted, refit_pipeline=clone(pipe), X=X, y=y, gene_ids=genes,
            sample_ids=list(cohort.expression.index), classes=classes, task="classification",
            positive_class=classes[-1], explain_cfg=ExplainConfig(pdp_top_k=2, map_method="tsne"),
            splits=cv_splits(y, "classification", n_splits=3, n_repeats=1, seed=0), random_state=0,
            backend=Backend.local(n_jobs), ranking=pd.DataFrame({"gene_id": genes, "used": True}),
            attributions=np.random.default_rng(0).normal(size=(90, 12)))
        outs = run_methods(["surrogate", "pdp", "map"], ctx)
        texts.append({f: tsv_text(t) for o in outs.values() for f, t in o.tables.items()}
                     | {f: t for o in outs.values() for f, t in o.texts.items()})
    assert texts[0] == texts[1] and len(texts[0]) == 4


def test_outputs_exist_and_say_what_they_explain(demo_runs):
    root = demo_runs
    names = {p.name for p in (root / "j1").iterdir() if not p.name.startswith(".")}
    assert METHOD_FILES <= names
    summary = json.loads((root / "j1" / "explain_summary.json").read_text())["methods"]
    assert set(summary) == {"surrogate", "pdp", "map"}
    for name in ("surrogate.tsv", "partial_dependence.tsv", "attribution_map.tsv"):
        assert set(pd.read_csv(root / "j1" / name, sep="\t")["explains"]) == {"model"}, name

    # the model's own rules are the model: parsed back, they predict what the model predicts
    s = summary["surrogate"]
    assert s["model_rules"]["fidelity"] == 1.0 and s["model_rules"]["threshold_scale"] == "raw expression"
    expr = pd.read_csv(root / "demo.tsv", sep="\t", index_col=0)
    rules = parse_rules((root / "j1" / "model_rules.txt").read_text())["model_tree"]
    written = apply_rules(rules, expr)
    assert (written != None).all() and set(written) <= {"normal", "tumour"}  # noqa: E711
    # the surrogate mimics the out-of-fold predictions (one refit tree per fold): its fidelity is measured,
    # and flagged when low
    assert 0 <= s["fidelity_tree"] <= 1 and 0 <= s["accuracy_tree"] <= 1
    assert ("fidelity_note" in s) == (s["fidelity_tree"] < 0.8)

    pdp = pd.read_csv(root / "j1" / "partial_dependence.tsv", sep="\t")
    assert pdp["gene_id"].nunique() == 3 and set(pdp["class"]) == {summary["pdp"]["classes"][0]}
    # per gene: the average and 5 ICE curves on 8 grid values
    assert (pdp.groupby("gene_id").size() == 6 * 8).all() and pdp.groupby("gene_id")["curve"].nunique().eq(6).all()
    amap = pd.read_csv(root / "j1" / "attribution_map.tsv", sep="\t")
    assert len(amap) == 150 and summary["map"]["method"] == "tsne" and summary["map"]["subsampled"]
    assert set(amap["sample_id"]) <= set(expr.index)


def test_report_shows_one_section_per_method(demo_runs):
    root = demo_runs
    run_cli_inprocess("report", "--inputs", root / "train", "--inputs", root / "j1", "--out", root / "report",
                      "--jobs", "1")
    page = (root / "report" / "report.html").read_text()
    for anchor, words in (("surrogate", "Global surrogate and rules"), ("pdp", "Partial dependence and ICE"),
                          ("map", "Map of samples in attribution space")):
        assert f'<section id="{anchor}">' in page and words in page
    assert "own rules (model_rules.txt)" in page
    assert "predicted probability of class" in page
    # without the methods' files, no section and no "missing" box
    from iml_genomics.report import model_behaviour
    from iml_genomics.report.inputs import ReportInputs

    for make in (model_behaviour.surrogate_section, model_behaviour.pdp_section, model_behaviour.map_section):
        assert make(ReportInputs(explain_summary={"methods": {}})) is None


def test_bad_input_is_one_line_and_writes_nothing(demo_runs, tmp_path):
    """pdp_top_k larger than the matrix's 60 genes: exit 2, one line, nothing written (umap asked for without
    umap-learn: tests/test_explain_map.py)."""
    root = demo_runs
    bad = tmp_path / "bad.yaml"
    bad.write_text(CONFIG.replace("pdp_top_k: 3", "pdp_top_k: 80"))
    base = ["explain", "--model", root / "train", "--config", bad, "--expression", root / "demo.tsv", "--jobs", "1"]
    proc = run_cli_inprocess(*base, "--out", tmp_path / "out", "--methods", "pdp", check=False)
    one_line(proc, 2, "explain.pdp_top_k = 80", "60 genes")
    assert not (tmp_path / "out").exists()
    # refused before SHAP and the refits (explain.methods.validate_methods), not after them
    from iml_genomics.config import ExplainConfig
    from iml_genomics.errors import ConfigError
    from iml_genomics.explain.core import explain_cohort

    with pytest.raises(ConfigError, match="pdp_top_k"):
        explain_cohort(None, np.zeros((3, 60)), gene_ids=[f"G{i}" for i in range(60)], sample_ids=["a", "b", "c"],
                       classes=None, task="regression", explain_cfg=ExplainConfig(pdp_top_k=80, methods=["pdp"]))


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


def test_report_names_the_symbols_of_the_genes_in_the_rules():
    from iml_genomics.report.model_behaviour import _symbols

    text = "[tree]\nIF G1 <= 2.5 AND `G 2` > 1 THEN class = a\nIF G1 > 2.5 THEN class = b\n"
    assert _symbols(text, {"G1": "TP53", "G 2": "MYC", "G3": "CD33"}) == (
        '<p class="note">Genes in these rules: G 2 = MYC, G1 = TP53</p>')
    assert _symbols(text, {}) == "" and _symbols(text, {"G3": "CD33"}) == ""
