"""Issue 16 items 5 and 6: every table and summary says what it explains (model, data, association), the
report badges each section, and a plain-language paragraph is written from the run's numbers."""

from __future__ import annotations

import copy
import json
import re

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import CONFIGS, ROOT, run_cli_inprocess
from iml_genomics import explains as E
from iml_genomics.report.inputs import load_inputs
from iml_genomics.report.plain_summary import CAVEAT_CODES, THRESHOLDS, plain_summary
from iml_genomics.report.tables import BIOMARKER_COLUMNS


def _fast_config(tmp_path, name: str, **data) -> str:
    """configs/demo.yaml with few permutations (the report's cost) and optionally other data."""
    cfg = yaml.safe_load((CONFIGS / "demo.yaml").read_text())
    for key in ("expression", "labels", "gene_sets"):
        value = cfg["data"].get(key) if key != "gene_sets" else cfg["report"]["gene_sets"]
        value = data[key] if key in data else str(ROOT / value) if value else None
        if key == "gene_sets":
            cfg["report"]["gene_sets"] = value
        else:
            cfg["data"][key] = value
    cfg["report"]["n_permutations"] = 300  # enough for the planted pathways to reach q <= 0.1
    cfg["n_jobs"] = 1
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("explains_demo")
    out = base / "run"
    run_cli_inprocess("run", _fast_config(base, "demo"), "--out", out)
    return out


@pytest.fixture(scope="module")
def null_run(tmp_path_factory):
    """A cohort whose outcome is independent of every gene (effect size 0)."""
    base = tmp_path_factory.mktemp("explains_null")
    run_cli_inprocess("simulate", "--family", "gaussian", "--n-samples", "80", "--n-genes", "100", "--effect-size", "0",
                      "--seed", "3", "--out", base / "sim")
    out = base / "run"
    cfg = _fast_config(base, "null", expression=str(base / "sim" / "simulated_expression.csv.gz"),
                       labels=str(base / "sim" / "simulated_labels.tsv"), gene_sets=None)  # sets: the report's cost
    run_cli_inprocess("run", cfg, "--out", out)
    return out


# ---------------------------------------------------------------------------------------------------------
# item 5: explains everywhere
# ---------------------------------------------------------------------------------------------------------

def test_every_table_and_summary_of_a_run_says_what_it_explains(demo_run):
    expected = {"train/cv_metrics.tsv": {"model"}, "train/cv_summary.tsv": {"model"},
                "train/oof_predictions.tsv": {"model"},
                "explain/gene_ranking.tsv": {"model"}, "explain/local_explanations.tsv": {"model"},
                "select/knockoff_selection.tsv": {"data"}}
    tables = sorted(p for p in demo_run.rglob("*.tsv"))
    assert len(tables) >= 9
    for path in tables:
        rel = path.relative_to(demo_run).as_posix()
        frame = pd.read_csv(path, sep="\t", keep_default_na=False, dtype=str)
        if rel == "report/biomarkers_columns.tsv":
            assert list(frame.columns) == ["column", "explains", "meaning"]
            continue
        assert frame.columns[-1] == "explains", rel  # appended last: existing positions unchanged
        values = set(frame["explains"])
        assert values <= {*E.KINDS, "NA"}, (rel, values)  # NA: a row nothing ranks (biomarkers, gene sets)
        if rel in expected:
            assert values == expected[rel], rel
    for step, kind in (("train", "model"), ("explain", "model"), ("select", "data"), ("report", "mixed")):
        summary = json.loads(next((demo_run / step).glob("*_summary.json")).read_text())
        assert summary["explains"] == kind, step
    # gene_sets.tsv per row: the demo queries the knockoff selection (data) and ranks on the univariate
    # statistic (association): each row names the test with the smaller q-value
    gsets = pd.read_csv(demo_run / "report" / "gene_sets.tsv", sep="\t")
    ora = gsets[["q_value", "q_value_positive_class", "q_value_other_class"]].min(axis=1)
    want = np.where(gsets["gsea_q_value"] < ora, "association", "data")
    assert (gsets["explains"].to_numpy() == want).all()


def test_biomarkers_rows_and_columns_say_what_they_explain(demo_run):
    bm = pd.read_csv(demo_run / "report" / "biomarkers.tsv", sep="\t", keep_default_na=False, dtype=str)
    cols = pd.read_csv(demo_run / "report" / "biomarkers_columns.tsv", sep="\t", keep_default_na=False, dtype=str)
    assert cols["column"].tolist() == bm.columns.tolist()
    assert E.UNDOCUMENTED not in set(cols["explains"])  # a new biomarkers column must say what it explains
    kinds = dict(zip(cols["column"], cols["explains"]))
    assert kinds["mean_abs_shap"] == "model" and kinds["knockoff_w"] == "data" and kinds["q_value"] == "association"
    assert kinds["gene_id"] == kinds["symbol"] == E.IDENTIFIER
    # rows follow the sort rule: selected genes (data) first, then non-zero SHAP (model), then univariate
    n_sel = (bm["knockoff_selected"].str.upper() == "TRUE").sum()
    assert n_sel > 0 and set(bm["explains"].head(n_sel)) == {"data"}
    rest = bm.iloc[n_sel:]
    shap = pd.to_numeric(rest["mean_abs_shap"]) > 0
    assert set(rest.loc[shap, "explains"]) == {"model"} and set(rest.loc[~shap, "explains"]) == {"association"}
    assert rest["explains"].tolist() == sorted(rest["explains"], key=["model", "association"].index)


def test_undocumented_biomarker_column_is_flagged():
    table = E.biomarker_columns([*BIOMARKER_COLUMNS, "explains", "brand_new"])
    assert table.set_index("column").loc["brand_new", "explains"] == E.UNDOCUMENTED
    assert (table["explains"].iloc[:-1] != E.UNDOCUMENTED).all()


def test_gene_set_row_kinds_follow_the_smaller_q_value():
    table = pd.DataFrame({"q_value": [0.01, 0.5, np.nan, np.nan, 0.2], "gsea_q_value": [0.2, 0.01, 0.3, np.nan, 0.2],
                          "group_attribution": [1.0, 1.0, 1.0, 2.0, np.nan]})
    kinds = E.gene_set_row_kinds(table, "top 20 genes of the explain ranking with mean |SHAP| > 0", "univariate")
    assert kinds.tolist() == ["model", "association", "association", "model", "model"]
    kinds = E.gene_set_row_kinds(table, "knockoff selection (3 genes)", "knockoff_w")
    assert kinds.tolist() == ["data", "data", "data", "model", "data"]
    assert E.gene_set_row_kinds(table.drop(columns="group_attribution"), "none", "none").tolist() == [""] * 5
    # an unsigned ranking (mean |SHAP|): a depleted set (NES < 0) is not ranked by its rank-based q-value
    depleted = table.assign(nes=[1.0, -1.0, 1.0, np.nan, -1.0])
    kinds = E.gene_set_row_kinds(depleted, "top 20 genes by univariate p-value", "mean_abs_shap", ranking_signed=False)
    assert kinds.tolist() == ["association", "association", "model", "model", "association"]


def test_with_explains_refuses_an_unknown_kind_and_keeps_a_table_s_own():
    frame = pd.DataFrame({"a": [1]})
    with pytest.raises(ValueError, match="explains"):
        E.with_explains(frame, "biology")
    own = frame.assign(explains="data")
    assert E.with_explains(own, "model") is own
    assert E.with_explains(frame, "model").columns.tolist() == ["a", "explains"] and "explains" not in frame


def test_report_has_a_badge_per_result_section(demo_run):
    page = (demo_run / "report" / "report.html").read_text()
    summary = json.loads((demo_run / "report" / "report_summary.json").read_text())
    sections = summary["explains_sections"]
    assert sections["cv"] == "model" and sections["shap"] == "model" and sections["knockoffs"] == "data"
    for anchor, kind in sections.items():
        block = page.split(f'<section id="{anchor}">', 1)[1].split("</section>", 1)[0]
        assert f'data-explains="{kind}"' in block, anchor
    assert 'data-explains' not in page.split('<section id="provenance">', 1)[1].split("</section>", 1)[0]


# ---------------------------------------------------------------------------------------------------------
# item 6: the plain-language summary
# ---------------------------------------------------------------------------------------------------------

def test_plain_summary_numbers_equal_the_tables(demo_run):
    summary = json.loads((demo_run / "report" / "report_summary.json").read_text())
    text = summary["plain_summary"]
    assert (demo_run / "report" / "summary.txt").read_text() == text + "\n"
    cv = pd.read_csv(demo_run / "train" / "cv_summary.tsv", sep="\t").set_index("metric")
    assert f"AUROC for 'tumour' of {cv.loc['auroc', 'mean']:.3f} +/- {cv.loc['auroc', 'sd']:.3f}" in text
    ranking = pd.read_csv(demo_run / "explain" / "gene_ranking.tsv", sep="\t")
    assert f"relies most on {', '.join(ranking['gene_id'].head(5))} " in text
    assert f"{int((ranking['mean_abs_shap'] > 0).sum())} genes have a non-zero attribution" in text
    jac = json.loads((demo_run / "explain" / "explain_summary.json").read_text())["fold_agreement"]
    assert f"mean Jaccard index of {jac['jaccard_top_k_mean']:.3f}" in text
    sel = pd.read_csv(demo_run / "select" / "knockoff_selection.tsv", sep="\t")
    n_sel = int(sel["selected"].sum())
    assert f"knockoffs select {n_sel} genes at a target FDR of 0.1" in text
    gsets = pd.read_csv(demo_run / "report" / "gene_sets.tsv", sep="\t")
    sig = gsets[gsets["significant"]]
    assert f"{len(sig)} of {len(gsets)} gene sets are significant at q <= 0.1" in text
    assert len(sig) > 0
    first = sig.iloc[0]
    assert f"the strongest: {first['gene_set']} (q = {min(first['q_value'], first['gsea_q_value']):.3g})" in text
    assert text.endswith("No caveat applies to this run.") and summary["plain_summary_caveats"] == []
    page = (demo_run / "report" / "report.html").read_text()
    assert page.index('<section id="summary">') < page.index('<section id="data">')


def test_two_runs_give_different_summaries(demo_run, null_run):
    demo = json.loads((demo_run / "report" / "report_summary.json").read_text())
    null = json.loads((null_run / "report" / "report_summary.json").read_text())
    assert demo["plain_summary"] != null["plain_summary"]
    codes = [c["code"] for c in null["plain_summary_caveats"]]
    # no gene carries signal: nothing is selected, and the cohort is small
    assert "empty_selection" in codes and "small_n" in codes
    # and the model is no better than guessing, which the paragraph says first
    assert codes[0] == "near_chance" and "close to chance" in null["plain_summary"]
    assert "select no gene at a target FDR of 0.1" in null["plain_summary"]
    assert "knockoff+ selects nothing unless at least 10 genes" in null["plain_summary"]


# each caveat appears exactly when its condition holds: the demo's inputs are clean; each edit below breaks
# exactly one condition
@pytest.fixture(scope="module")
def clean(demo_run):
    inputs = load_inputs([demo_run / s for s in ("train", "explain", "select")])
    gene_sets = pd.read_csv(demo_run / "report" / "gene_sets.tsv", sep="\t")
    return inputs, gene_sets


def _codes(inputs, gene_sets, **kwargs):
    kwargs = {"n_samples": 400, "n_genes": 400, "class_counts": {"normal": 200, "tumour": 200}, **kwargs}
    out = plain_summary(inputs, gene_sets=gene_sets, gene_set_summary={"q_threshold": 0.1}, **kwargs)
    return [c["code"] for c in out["caveats"]], out["text"]


def _edited(inputs, **attrs):
    new = copy.copy(inputs)
    for name, value in attrs.items():
        setattr(new, name, value)
    return new


def test_no_caveat_on_a_clean_run(clean):
    codes, text = _codes(*clean)
    assert codes == [] and "No caveat applies" in text


def test_each_caveat_exactly_when_its_condition_holds(clean):
    inputs, gene_sets = clean
    ss = inputs.select_summary
    es = inputs.explain_summary

    def select_with(**diag):
        return _edited(inputs, select_summary={**ss, "diagnostics": {**ss["diagnostics"], **diag}})

    cv = inputs.cv_summary

    def cv_at(value):
        return _edited(inputs, cv_summary=cv.assign(mean=np.where(cv["metric"] == "auroc", value, cv["mean"])))

    cases = {
        "near_chance": (cv_at(THRESHOLDS["chance_auroc"]), {}),
        "small_n": (inputs, {"n_samples": THRESHOLDS["small_n"] - 1}),
        "unstable_ranking": (_edited(inputs, explain_summary={**es, "fold_agreement": {
            **es["fold_agreement"], "jaccard_top_k_mean": THRESHOLDS["unstable_jaccard"] - 0.01}}), {}),
        "empty_selection": (_edited(inputs, knockoffs=inputs.knockoffs.assign(selected=False)), {}),
        "failed_diagnostic": (select_with(swap_check={**ss["diagnostics"]["swap_check"], "passed": False}), {}),
        "diagnostic_not_run": (select_with(exchangeability={"skipped": "too few samples (8) or genes (3)"}), {}),
        "class_imbalance": (inputs, {"class_counts": {"normal": 330, "tumour": 70}}),
        "many_genes_few_samples": (inputs, {"n_genes": 400 * THRESHOLDS["genes_per_sample"] + 1}),
    }
    assert set(cases) == set(CAVEAT_CODES)
    for code, (edited, kwargs) in cases.items():
        codes, text = _codes(edited, gene_sets, **kwargs)
        assert codes == [code], (code, codes)
        assert "Caveats: " in text
    # just inside each boundary: no caveat
    assert _codes(cv_at(THRESHOLDS["chance_auroc"] + 0.001), gene_sets)[0] == []
    assert _codes(inputs, gene_sets, n_samples=THRESHOLDS["small_n"], n_genes=400)[0] == []
    assert _codes(inputs, gene_sets, class_counts={"normal": 300, "tumour": 75})[0] == []  # 1:4 exactly
    assert _codes(inputs, gene_sets, n_genes=400 * THRESHOLDS["genes_per_sample"])[0] == []
    # a disabled check is the user's choice, not a failure to run
    assert _codes(select_with(swap_check={"skipped": "disabled"}), gene_sets)[0] == []


def test_summary_states_what_is_missing(clean):
    inputs, _ = clean
    text = plain_summary(_edited(inputs, knockoffs=None, select_summary=None, gene_ranking=None))["text"]
    assert "No explain output was given" in text and "No select output was given" in text
    assert re.search(r"AUROC for 'tumour' of \d\.\d{3} \+/- \d\.\d{3}", text)
