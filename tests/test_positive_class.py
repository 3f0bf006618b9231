"""data.positive_class / --positive-class: every two-class result refers to the chosen class and names it.

The demo cohort's labels (normal / tumour) are renamed case / control, so the default (the last label in
sorted order) is 'control': the reference-like label, which draws the warning.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from conftest import TEST_DATA, run_cli_inprocess
from iml_genomics.errors import BundleError, InputDataError
from iml_genomics.io.cohort import resolve_positive_class

EXPR = TEST_DATA / "demo_expression.parquet"  # the same numbers as the CSV, read faster
WARNING = ("iml-genomics: warning: positive class is 'control' (the last label in sorted order); "
           "set data.positive_class (--positive-class case) if you meant the other")


@pytest.fixture(scope="module")
def cc(tmp_path_factory):
    """Demo labels as case/control; bundles trained with the default and with --positive-class case."""
    root = tmp_path_factory.mktemp("posclass")
    labels = pd.read_csv(TEST_DATA / "demo_labels.tsv", sep="\t")
    labels["condition"] = labels["condition"].map({"tumour": "case", "normal": "control"})
    labels.to_csv(root / "labels.tsv", sep="\t", index=False)
    common = ["--expression", EXPR, "--labels", root / "labels.tsv", "--label-column", "condition",
              "--cv-folds", "3", "--jobs", "1"]
    default = run_cli_inprocess("train", *common, "--out", root / "train_default")
    chosen = run_cli_inprocess("train", *common, "--out", root / "train_case", "--positive-class", "case")
    return {"root": root, "labels": root / "labels.tsv", "default_stderr": default.stderr,
            "chosen_stderr": chosen.stderr}


def _explain(cc, model, out, *extra):
    # unlabelled: SHAP of the final model only (no refits), which is what the positive class changes
    run_cli_inprocess("explain", "--model", cc["root"] / model, "--expression", EXPR,
                      "--out", cc["root"] / out, "--method", "shap", "--jobs", "1", *extra)
    return cc["root"] / out


def test_train_names_the_class_same_auroc_and_warns_only_for_the_default(cc):
    root = cc["root"]
    m_default = json.loads((root / "train_default" / "model.json").read_text())
    m_case = json.loads((root / "train_case" / "model.json").read_text())
    assert m_default["positive_class"] == "control" and m_case["positive_class"] == "case"
    assert json.loads((root / "train_case" / "provenance.json").read_text())["cohort"]["positive_class"] == "case"
    cv_d = pd.read_csv(root / "train_default" / "cv_metrics.tsv", sep="\t").set_index("split")
    cv_c = pd.read_csv(root / "train_case" / "cv_metrics.tsv", sep="\t").set_index("split")
    # AUROC is symmetric in the two classes; average precision is not, and must be recomputed for 'case'
    np.testing.assert_allclose(cv_d["auroc"], cv_c["auroc"], rtol=0, atol=1e-12)
    assert not np.allclose(cv_d["average_precision"], cv_c["average_precision"])
    from sklearn.metrics import average_precision_score

    oof = pd.read_csv(root / "train_case" / "oof_predictions.tsv", sep="\t")
    fold1 = oof[oof["fold"] == 1]
    assert cv_c.loc["r1_f1", "average_precision"] == pytest.approx(
        average_precision_score(fold1["y_true"] == "case", fold1["prob_case"]), abs=1e-9)  # TSV keeps 10 digits
    assert WARNING in cc["default_stderr"].splitlines()
    assert "warning" not in cc["chosen_stderr"]
    assert "positive class 'case'" in cc["chosen_stderr"]


def test_explain_shap_signs_flip_and_the_bundle_value_is_used_unless_overridden(cc):
    d_default = _explain(cc, "train_default", "explain_default")
    d_case = _explain(cc, "train_case", "explain_case")
    d_override = _explain(cc, "train_default", "explain_override", "--positive-class", "case")
    a = pq.read_table(d_default / "attributions.parquet").to_pandas()
    b = pq.read_table(d_case / "attributions.parquet").to_pandas()
    c = pq.read_table(d_override / "attributions.parquet").to_pandas()
    assert set(a["class"]) == {"control"} and set(b["class"]) == {"case"} and set(c["class"]) == {"case"}
    genes = [g for g in a.columns if g.startswith("G")]
    assert np.abs(a[genes].to_numpy()).max() > 0.1
    np.testing.assert_allclose(b[genes].to_numpy(), -a[genes].to_numpy(), atol=1e-6)
    np.testing.assert_allclose(b["model_output"], -a["model_output"], atol=1e-9)
    np.testing.assert_allclose(c[genes].to_numpy(), b[genes].to_numpy(), atol=0)
    s_default = json.loads((d_default / "explain_summary.json").read_text())
    s_case = json.loads((d_case / "explain_summary.json").read_text())
    assert s_default["positive_class"] == "control" and s_case["positive_class"] == "case"
    assert s_case["classes_explained"] == ["case"]
    r_d = pd.read_csv(d_default / "gene_ranking.tsv", sep="\t")
    r_c = pd.read_csv(d_case / "gene_ranking.tsv", sep="\t")
    assert r_d["gene_id"].tolist() == r_c["gene_id"].tolist()  # |SHAP| ranks the same genes


def test_select_and_report_name_the_chosen_class(cc):
    root = cc["root"]
    run_cli_inprocess("select", "--expression", EXPR, "--labels", cc["labels"], "--label-column", "condition",
                      "--positive-class", "case", "--out", root / "select_case", "--jobs", "1")
    summary = json.loads((root / "select_case" / "select_summary.json").read_text())
    assert summary["positive_class"] == "case"
    explain_default = root / "explain_default"
    if not explain_default.is_dir():
        _explain(cc, "train_default", "explain_default")
    # the bundle (and explain) used 'control'; the report is asked about 'case'
    proc = run_cli_inprocess("report", "--inputs", root / "train_default", explain_default, "--gene-sets",
                             TEST_DATA / "demo_pathways.gmt", "--permutations", "100", "--positive-class", "case",
                             "--out", root / "report_case")
    assert "warning" not in proc.stderr
    bm = pd.read_csv(root / "report_case" / "biomarkers.tsv", sep="\t")
    assert set(bm["higher_in"].dropna()) == {"case", "control"}
    assert (bm.loc[bm["effect"] > 0, "higher_in"] == "case").all()
    assert (bm.loc[bm["effect"] < 0, "higher_in"] == "control").all()
    gsets = pd.read_csv(root / "report_case" / "gene_sets.tsv", sep="\t")
    assert {"higher_in", "direction_score", "direction_rank", "nes", "gsea_q_value"} <= set(gsets.columns)
    assert set(gsets["higher_in"].dropna()) <= {"case", "control"}
    summary = json.loads((root / "report_case" / "report_summary.json").read_text())
    assert summary["positive_class"] == "case" and summary["gene_sets"]["positive_class"] == "case"
    # explain explained 'control': the report states mean_shap for 'case' and says so
    assert "'control'" in summary["mean_shap_negated"]
    html = (root / "report_case" / "report.html").read_text()
    assert "Higher in case (positive class)" in html and "Higher in control:" in html
    assert "positive NES" not in html


def _assert_refused(proc, out, *needles):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not out.exists()


def test_unknown_positive_class_is_one_line_exit_2_nothing_written(cc):
    root = cc["root"]
    long_value = "x" * 5000
    base = ["--expression", EXPR, "--labels", cc["labels"], "--label-column", "condition", "--jobs", "1"]
    out = root / "bad_train"
    proc = run_cli_inprocess("train", *base, "--positive-class", long_value, "--out", out, check=False)
    _assert_refused(proc, out, str(cc["labels"]), "'condition'", "case, control", "5000 characters")
    assert len(proc.stderr) < 600
    # select reads labels through the same check as train (cli.common.load_cohort_for)
    out = root / "bad_explain"
    _assert_refused(run_cli_inprocess("explain", "--model", root / "train_default", *base, "--positive-class", "Case",
                                      "--out", out, check=False), out, "'Case'", "case, control")
    out = root / "bad_report"
    _assert_refused(run_cli_inprocess("report", "--inputs", root / "train_default", "--positive-class", "ctrl",
                                      "--out", out, check=False), out, "'ctrl'", "case, control")


def test_a_positive_class_of_a_many_class_column_is_asked_against_the_rest(cc, tmp_path):
    """--positive-class on a column of three classes: that class against the other two ('rest'), read the same
    way by explain (from the bundle) and report; a class that is not a label is refused in one line."""
    labels = pd.read_csv(cc["labels"], sep="\t")
    labels.loc[labels.index % 3 == 0, "condition"] = "other"
    labels.to_csv(tmp_path / "three.tsv", sep="\t", index=False)
    base = ["--expression", EXPR, "--labels", tmp_path / "three.tsv", "--label-column", "condition"]
    run_cli_inprocess("train", *base, "--positive-class", "case", "--out", tmp_path / "train", "--jobs", "1")
    model = json.loads((tmp_path / "train" / "model.json").read_text())
    assert model["classes"] == ["case", "rest"] and model["positive_class"] == "case"
    oof = pd.read_csv(tmp_path / "train" / "oof_predictions.tsv", sep="\t")
    truth = labels.set_index(labels.columns[0])["condition"]
    expected = truth.where(truth == "case", "rest").loc[oof["sample_id"]].to_numpy()
    assert (oof["y_true"].astype(str).to_numpy() == expected).all()
    run_cli_inprocess("explain", "--model", tmp_path / "train", *base, "--method", "shap", "--out",
                      tmp_path / "explain")
    assert json.loads((tmp_path / "explain" / "explain_summary.json").read_text())["positive_class"] == "case"
    run_cli_inprocess("report", "--inputs", tmp_path / "train", tmp_path / "explain", "--out", tmp_path / "report")
    biomarkers = pd.read_csv(tmp_path / "report" / "biomarkers.tsv", sep="\t")
    assert set(biomarkers["higher_in"].dropna()) <= {"case", "rest"}
    out = tmp_path / "out"
    proc = run_cli_inprocess("train", *base, "--positive-class", "tumour", "--out", out, "--jobs", "1", check=False)
    _assert_refused(proc, out, "not a label", "case, control, other")


def test_bundle_with_a_positive_class_outside_its_classes_is_refused(cc, tmp_path):
    import shutil

    from iml_genomics.models import load_bundle

    bundle = tmp_path / "bundle"
    shutil.copytree(cc["root"] / "train_case", bundle)
    _, manifest = load_bundle(bundle)
    assert manifest["positive_class"] == "case"
    manifest["positive_class"] = "tumour"
    (bundle / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="positive_class"):
        load_bundle(bundle)


@pytest.mark.parametrize("classes, expected_warning", [
    (["case", "control"], True), (["disease", "healthy"], True), (["tumor", "normal"], False),
    (["Tumor", "normal"], True),  # sorted: 'Tumor' < 'normal' (upper case first), so 'normal' is the default
    (["normal", "tumour"], False), (["treated", "untreated"], True), (["control", "patient"], False),
    (["ALL", "AML"], False), (["NK", "other"], False),
])
def test_warning_only_when_the_default_picks_the_reference(classes, expected_warning):
    classes = sorted(classes)
    positive, warning = resolve_positive_class(classes, None, source="labels.tsv", column="y")
    assert positive == classes[-1]
    assert (warning is not None) == expected_warning
    if warning:
        assert warning.startswith(f"iml-genomics: warning: positive class is '{classes[-1]}'")
        assert f"--positive-class {classes[0]}" in warning
    assert resolve_positive_class(classes, classes[0], source="labels.tsv", column="y") == (classes[0], None)
    with pytest.raises(InputDataError, match="not a label of column 'y'"):
        resolve_positive_class(classes, "nope", source="labels.tsv", column="y")
    with pytest.raises(InputDataError, match="continuous outcome"):
        resolve_positive_class(None, "nope", source="labels.tsv", column="y")


@pytest.mark.parametrize("name", ["random_forest", "gradient_boosting", "linear_svm", "decision_tree"])
def test_shap_of_the_other_class_is_the_negative(name):
    """Tree (one and two outputs), margin and probability routes: explaining the other class negates phi."""
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from iml_genomics.explain.shap_values import shap_attributions
    from iml_genomics.models import build_estimator

    rng = np.random.default_rng(1)
    X = rng.normal(size=(80, 6))
    y = np.where(X[:, 0] + 0.5 * rng.normal(size=80) > 0, "b", "a")
    params = {"n_estimators": 20} if name in ("random_forest", "gradient_boosting") else {}
    pipe = Pipeline([("scale", StandardScaler()),
                     ("model", build_estimator(name, "classification", seed=0, params=params, n_classes=2))]).fit(X, y)
    genes = [f"g{i}" for i in range(6)]
    last = shap_attributions(pipe, X, gene_ids=genes, classes=["a", "b"])
    first = shap_attributions(pipe, X, gene_ids=genes, classes=["a", "b"], positive_class="a")
    assert last.outputs == ["b"] and first.outputs == ["a"]
    assert np.abs(last.values).max() > 1e-3
    np.testing.assert_allclose(first.values, -last.values, atol=1e-9)
    if last.scale == "probability":
        np.testing.assert_allclose(first.model_output, 1 - last.model_output, atol=1e-9)
    else:
        np.testing.assert_allclose(first.model_output, -last.model_output, atol=1e-9)
    assert first.max_additivity_error < 1e-6


def test_knockoff_w_does_not_depend_on_the_positive_class():
    from iml_genomics.select.statistics import class_targets, lasso_importance

    rng = np.random.default_rng(3)
    X, Xk = rng.normal(size=(120, 15)), rng.normal(size=(120, 15))
    y = np.where(X[:, :3].sum(axis=1) + rng.normal(size=120) > 0, "case", "control")
    assert class_targets(y, "classification", "case").ravel().tolist() == (y == "case").astype(float).tolist()
    a = lasso_importance(X, Xk, y, task="classification")
    b = lasso_importance(X, Xk, y, task="classification", positive_class="case")
    assert a[0].max() > 0
    np.testing.assert_allclose(a[0], b[0], atol=1e-10)
    np.testing.assert_allclose(a[1], b[1], atol=1e-10)


def test_planted_pathways_land_in_the_list_of_their_class(tmp_path):
    """PW_UP is higher in 'case', PW_DOWN higher in 'control': each is first in its class's list, whichever
    class is positive, and the unsigned-score route (mean univariate statistic) agrees."""
    rng = np.random.default_rng(7)
    n, p = 120, 200
    y = np.array(["case", "control"] * (n // 2))
    X = rng.normal(size=(n, p))
    X[y == "case", 0:20] += 0.8    # PW_UP
    X[y == "control", 20:40] += 0.8  # PW_DOWN
    genes = [f"GENE{j:03d}" for j in range(p)]
    pd.DataFrame(X, index=[f"S{i:03d}" for i in range(n)], columns=genes).rename_axis("sample_id").to_csv(
        tmp_path / "expr.csv")
    pd.DataFrame({"sample_id": [f"S{i:03d}" for i in range(n)], "y": y}).to_csv(tmp_path / "y.tsv", sep="\t",
                                                                                  index=False)
    sets = {"PW_UP": genes[0:20], "PW_DOWN": genes[20:40],
            **{f"PW_NULL_{k}": genes[40 + 20 * k:60 + 20 * k] for k in range(8)}}
    (tmp_path / "sets.gmt").write_text("".join(f"{k}\tna\t" + "\t".join(v) + "\n" for k, v in sets.items()))
    run_cli_inprocess("train", "--expression", tmp_path / "expr.csv", "--labels", tmp_path / "y.tsv",
                      "--label-column", "y",
                      "--cv-folds", "3", "--jobs", "1", "--positive-class", "case", "--out", tmp_path / "train")
    for positive, other in (("case", "control"), ("control", "case")):
        out = tmp_path / f"report_{positive}"
        run_cli_inprocess("report", "--inputs", tmp_path / "train", "--gene-sets", tmp_path / "sets.gmt",
                          "--min-set-size",
                          "5", "--permutations", "100", "--ranking-metric", "univariate", "--positive-class", positive,
                          "--out", out)
        table = pd.read_csv(out / "gene_sets.tsv", sep="\t").set_index("gene_set")
        assert table.loc["PW_UP", "higher_in"] == "case" and table.loc["PW_UP", "direction_rank"] == 1
        assert table.loc["PW_DOWN", "higher_in"] == "control" and table.loc["PW_DOWN", "direction_rank"] == 1
        sign = 1 if positive == "case" else -1
        assert sign * table.loc["PW_UP", "nes"] > 0 and sign * table.loc["PW_DOWN", "nes"] < 0
        html = (out / "report.html").read_text()
        head_pos = html.index(f"Higher in {positive} (positive class)")
        head_other = html.index(f"Higher in {other}:")
        first_pos = "PW_UP" if positive == "case" else "PW_DOWN"
        assert head_pos < html.index(first_pos, head_pos) < head_other

    # the unsigned-score route: the direction comes from the members' univariate statistics
    from iml_genomics.report.tables import set_directions

    keys = pd.Series(genes, index=genes)
    uni = pd.DataFrame({"statistic": np.r_[np.full(20, 3.0), np.full(20, -3.0), np.zeros(p - 40)]}, index=genes)
    table = pd.DataFrame({"gene_set": list(sets), "nes": np.ones(len(sets))})
    out, basis = set_directions(table, sets, keys, uni, "mean_abs_shap", ("case", "control"))
    got = out.set_index("gene_set")
    assert got.loc["PW_UP", "higher_in"] == "case" and got.loc["PW_DOWN", "higher_in"] == "control"
    assert got.loc["PW_NULL_0", "higher_in"] == "" and "univariate" in basis
    none, basis = set_directions(table, sets, keys, uni, "mean_abs_shap", None)
    assert (none["higher_in"] == "").all() and basis == "none"


def test_report_attributions_of_the_other_class_are_negated_for_the_plot():
    from iml_genomics.report.build import _attr_rows
    from iml_genomics.report.inputs import ReportInputs

    attr = pd.DataFrame({"sample_id": ["s1", "s2"], "class": ["control", "control"], "base_value": [0.1, 0.1],
                         "model_output": [1.0, -1.0], "g1": [0.5, -0.25], "g2": [0.0, 2.0]})
    inputs = ReportInputs(attributions=attr)
    same = _attr_rows(inputs, "control", ("control", "case"))
    flipped = _attr_rows(inputs, "case", ("case", "control"))
    np.testing.assert_array_equal(same.to_numpy(), attr[["g1", "g2"]].to_numpy())
    np.testing.assert_array_equal(flipped.to_numpy(), -attr[["g1", "g2"]].to_numpy())


def test_one_vs_rest_never_merges_a_class_already_called_rest():
    from iml_genomics.io.cohort import one_vs_rest

    values = pd.Series(["NK", "rest", "B", "NK", None], name="cell_type")
    recoded = one_vs_rest(values, "NK")
    assert recoded.tolist()[:4] == ["NK", "rest_2", "rest_2", "NK"] and pd.isna(recoded.iloc[4])
    two = pd.Series(["NK", "B"])
    assert one_vs_rest(two, "NK") is two  # two classes: left as they are
    assert one_vs_rest(values, "T") is values  # not a label: the later check names it
