"""Every output table reads alike in pandas and R (issue 17 item 3).

One demo ``run`` (train, explain, select, report; a gene map included), then every TSV is read with pandas
using the declared dtypes below and, where ``Rscript`` exists, with R's ``read.delim``: logical columns come
out logical, numbers numeric, NA where missing, and the same values on both sides. The old spelling
(``True``/``False``, empty cells, ``mean``/``sd`` rows in ``cv_metrics.tsv``) is still read by our readers.
"""

import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import run_cli_inprocess
from iml_genomics.io.interchange import cv_fold_rows, cv_summary_table, interchange_frame
from iml_genomics.io.writers import tsv_text

ROOT = Path(__file__).resolve().parents[1]
TEST_DATA = ROOT / "test_data"
RSCRIPT = shutil.which("Rscript")

B, I, F, S = "bool", "int", "float", "str"
# file -> column -> declared type (docs/pipeline.md, "Reading the tables in R and pandas", lists the files)
DTYPES = {
    "train/cv_metrics.tsv": {"split": S, "repeat": I, "fold": I, "n_train": I, "n_test": I,
                             "balanced_accuracy": F, "auroc": F, "average_precision": F, "log_loss": F,
                             "r2": F, "rmse": F, "mae": F},
    "train/cv_summary.tsv": {"metric": S, "mean": F, "sd": F, "n_folds": I},
    "train/oof_predictions.tsv": {"sample_id": S, "repeat": I, "fold": I, "y_true": S, "y_pred": S, "prob_*": F},
    "explain/gene_ranking.tsv": {"gene_id": S, "rank": I, "mean_abs_shap": F, "mean_shap": F, "sd": F,
                                 "rank_low": I, "rank_high": I, "top_k_frequency": F, "permutation_importance": F,
                                 "permutation_importance_sd": F, "used": B, "method": S, "scale": S,
                                 "feature_type": S},
    "explain/interactions.tsv": {"gene_id_1": S, "gene_id_2": S, "mean_abs_interaction": F, "rank": I},
    "explain/local_explanations.tsv": {"sample_id": S, "class": S, "prediction": F, "base_value": F,
                                       "direction": S, "rank": I, "gene_id": S, "shap_value": F,
                                       "expression_value": F},
    "select/knockoff_selection.tsv": {"gene_id": S, "w": F, "selected": B, "selection_frequency": F, "e_value": F,
                                      "rank": I, "group": S, "tested": B, "p_value": F, "q_value": F},
    "report/biomarkers.tsv": {
        "rank": I, "gene_id": S, "symbol": S, "knockoff_selected": B, "explain_rank": I, "mean_abs_shap": F,
        "mean_shap": F, "shap_sd": F, "explain_rank_low": I, "explain_rank_high": I, "top_k_frequency": F,
        "permutation_importance": F, "permutation_importance_sd": F, "used_by_model": B, "knockoff_w": F,
        "knockoff_rank": I, "selection_frequency": F, "e_value": F, "effect": F, "effect_type": S, "higher_in": S,
        "statistic": F, "statistic_type": S, "p_value": F, "rank_test_p_value": F, "q_value": F, "n_gene_sets": I,
        "gene_sets": S},
    "report/gene_sets.tsv": {
        "rank": I, "gene_set": S, "description": S, "source": S, "set_size": I, "n_measured": I, "n_query": I,
        "n_overlap": I, "overlap_genes": S, "expected_overlap": F, "odds_ratio": F, "p_value": F, "q_value": F,
        "es": F, "nes": F, "gsea_p_value": F, "gsea_q_value": F, "leading_edge": S, "n_leading_edge": I,
        "group_attribution": F, "group_attribution_mean": F, "group_attribution_rank": I, "significant": B,
        "null_method": S, "gsea_null_method": S, "inter_gene_correlation": F, "hypergeometric_p_value": F,
        "gene_permutation_p_value": F, "higher_in": S, "direction_score": F, "direction_rank": I,
        "n_query_*": I, "n_overlap_*": I, "overlap_genes_*": S, "odds_ratio_*": F, "p_value_*": F, "q_value_*": F},
}
# every table ends with `explains` (model / data / association, docs/pipeline.md); report adds its column key
for _columns in DTYPES.values():
    _columns["explains"] = S
DTYPES["report/biomarkers_columns.tsv"] = {"column": S, "explains": S, "meaning": S}
PANDAS = {B: "boolean", I: "Int64", F: "float64", S: "string"}
R_CLASSES = {B: {"logical"}, I: {"integer", "numeric"}, F: {"numeric", "integer"}, S: {"character"}}


def declared(file: str, column: str) -> str:
    table = DTYPES[file]
    if column in table:
        return table[column]
    for pattern, kind in table.items():
        if pattern.endswith("*") and column.startswith(pattern[:-1]):
            return kind
    raise AssertionError(f"{file}: column '{column}' has no declared dtype; add it to DTYPES and the docs")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """A small demo run: every step, local explanations, knockoffs, gene sets and a gene map."""
    tmp = tmp_path_factory.mktemp("interchange")
    gene_map = tmp / "gene_map.tsv"
    # half the genes get a symbol, the others a placeholder: NA symbols must stay ids, not words
    genes = [f"G{i:05d}" for i in range(1, 401)]
    gene_map.write_text("gene_id\tsymbol\n" + "".join(
        f"{g}\t{'SYM' + str(i) if i % 2 else '---'}\n" for i, g in enumerate(genes)))
    config = tmp / "demo.yaml"
    config.write_text(f"""
seed: 0
task: classification
data: {{expression: {TEST_DATA / 'demo_expression.csv.gz'}, labels: {TEST_DATA / 'demo_labels.tsv'},
       label_column: condition}}
preprocess: {{transform: none, standardize: true}}
model: {{name: l1_logistic, params: {{C: 0.3}}}}
cv: {{n_splits: 3}}
explain: {{method: all, top_k: 10, samples: [S0001, S0002], permutation_repeats: 1}}
select: {{fdr: 0.1, statistic: lasso, n_draws: 1}}
report: {{gene_sets: {TEST_DATA / 'demo_pathways.gmt'}, gene_map: {gene_map}, min_set_size: 5, top_k: 20,
         n_permutations: 100}}
""")
    out = tmp / "run"
    run_cli_inprocess("run", str(config), "--out", str(out), "--jobs", "2")
    return out


def tables(out: Path) -> list[str]:
    found = sorted(p.relative_to(out).as_posix() for p in out.glob("*/*.tsv"))
    assert set(found) == set(DTYPES), f"outputs {sorted(set(found) ^ set(DTYPES))} differ from the declared ones"
    return found


def read_declared(path: Path, file: str) -> pd.DataFrame:
    header = pd.read_csv(path, sep="\t", nrows=0).columns
    return pd.read_csv(path, sep="\t", dtype={c: PANDAS[declared(file, c)] for c in header})


def test_every_tsv_reads_with_pandas_as_declared(demo_run):
    for file in tables(demo_run):
        path = demo_run / file
        text = path.read_text()
        assert "\tTrue" not in text and "\tFalse" not in text, f"{file}: Python booleans"
        assert "\t\t" not in text and "\t\n" not in text, f"{file}: empty cells (write NA)"
        frame = read_declared(path, file)  # raises if a value does not parse as its declared type
        plain = pd.read_csv(path, sep="\t")  # what a user gets with no options
        for col in frame.columns:
            kind = declared(file, col)
            if kind == B and frame[col].notna().all():
                assert plain[col].dtype == bool, (file, col, plain[col].dtype)
            if kind in (I, F) and frame[col].notna().any():
                assert pd.api.types.is_numeric_dtype(plain[col]), (file, col, plain[col].dtype)
    bm = read_declared(demo_run / "report/biomarkers.tsv", "report/biomarkers.tsv").set_index("gene_id")
    # the gene map's '---' rows keep their id; mapped genes show their symbol
    assert bm.loc["G00002", "symbol"] == "SYM1"
    assert bm.loc["G00001", "symbol"] == "G00001"
    # the mapping rate, in the summary and on the page
    gid = json.loads((demo_run / "report/report_summary.json").read_text())["gene_ids"]
    assert (gid["n_mapped"], gid["n_unmapped"], gid["by_source"]) == (200, 200, {"symbol_column": 200,
                                                                                  "measured_id": 200})
    assert "ids mapped to symbols" in (demo_run / "report/report.html").read_text()
    cv = read_declared(demo_run / "train/cv_metrics.tsv", "train/cv_metrics.tsv")
    summary = read_declared(demo_run / "train/cv_summary.tsv", "train/cv_summary.tsv").set_index("metric")
    # per-fold rows only: a naive column mean is the cross-validated mean
    assert cv["split"].str.match(r"^r\d+_f\d+$").all() and len(cv) == 3
    assert math.isclose(cv["auroc"].mean(), summary.loc["auroc", "mean"], rel_tol=1e-9)
    assert math.isclose(cv["auroc"].std(ddof=1), summary.loc["auroc", "sd"], rel_tol=1e-7)
    assert (summary["n_folds"] == 3).all()
    for doc in demo_run.glob("**/*.json"):
        if doc.name.startswith("."):
            continue
        # strict JSON (no NaN/Infinity tokens, which jsonlite and JavaScript refuse)
        json.loads(doc.read_text(), parse_constant=lambda c: pytest.fail(f"{doc}: {c} is not JSON"))


R_READ = r"""
args <- commandArgs(trailingOnly = TRUE)
x <- read.delim(args[1], check.names = FALSE, stringsAsFactors = FALSE)
cls <- data.frame(column = names(x), class = vapply(x, function(v) class(v)[1], ""),
                  n_na = vapply(x, function(v) sum(is.na(v)), 0L))
write.table(cls, args[2], sep = "\t", quote = FALSE, row.names = FALSE)
write.table(x, args[3], sep = "\t", quote = FALSE, row.names = FALSE, na = "NA")
"""


def r_read(path: Path, tmp: Path):
    script = tmp / "read.R"
    script.write_text(R_READ)
    classes, values = tmp / f"{path.stem}.classes.tsv", tmp / f"{path.stem}.values.tsv"
    proc = subprocess.run([RSCRIPT, "--vanilla", str(script), str(path), str(classes), str(values)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return pd.read_csv(classes, sep="\t", keep_default_na=False).set_index("column"), values


@pytest.mark.skipif(RSCRIPT is None, reason="Rscript not installed (Debian package r-base-core)")
def test_every_tsv_reads_alike_in_r(demo_run, tmp_path):
    for file in tables(demo_run):
        path = demo_run / file
        frame = read_declared(path, file)
        classes, values = r_read(path, tmp_path)
        assert list(classes.index) == list(frame.columns), file
        for col in frame.columns:
            kind, r_class = declared(file, col), classes.loc[col, "class"]
            n_na = int(frame[col].isna().sum())
            # a column with no value at all (p_value of knockoffs) is logical NA in R, whatever it would hold
            allowed = R_CLASSES[kind] | ({"logical"} if n_na == len(frame) else set())
            assert r_class in allowed, f"{file}: R reads '{col}' as {r_class}, declared {kind}"
            assert int(classes.loc[col, "n_na"]) == n_na, f"{file}: '{col}' NA count differs between R and pandas"
        # the values R read, written back by R, equal the values pandas read
        if len(frame):
            again = read_declared(values, file)
            pd.testing.assert_frame_equal(again, frame, check_exact=False, rtol=1e-12, obj=file)


@pytest.mark.skipif(RSCRIPT is None, reason="Rscript not installed (Debian package r-base-core)")
def test_r_check_fails_on_the_old_spelling(tmp_path):
    # negative control: what earlier versions wrote (Python booleans, empty text) is character in R
    old = tmp_path / "old.tsv"
    old.write_text("gene_id\tselected\tgroup\nG1\tTrue\t\nG2\tFalse\tg2\n")
    classes, _ = r_read(old, tmp_path)
    assert classes.loc["selected", "class"] == "character"
    assert int(classes.loc["group", "n_na"]) == 0  # the empty cell is "" in R, not NA
    new = tmp_path / "new.tsv"
    new.write_text(tsv_text(pd.DataFrame({"gene_id": ["G1", "G2"], "selected": [True, False],
                                          "group": ["", "g2"]})))
    classes, _ = r_read(new, tmp_path)
    assert classes.loc["selected", "class"] == "logical" and int(classes.loc["group", "n_na"]) == 1


def test_writer_spelling():
    frame = pd.DataFrame({"flag": [True, False, True], "mixed": [True, None, False],
                          "nullable": pd.array([True, pd.NA, False], dtype="boolean"),
                          "text": ["a", "", None], "x": [1.5, np.nan, 2.0], "n": pd.array([1, None, 3], dtype="Int64"),
                          "label": ["True", "b", "c"]})
    text = tsv_text(frame)
    assert text.splitlines() == ["flag\tmixed\tnullable\ttext\tx\tn\tlabel",
                                 "TRUE\tTRUE\tTRUE\ta\t1.5\t1\tTrue",
                                 "FALSE\tNA\tNA\tNA\tNA\tNA\tb",
                                 "TRUE\tFALSE\tFALSE\tNA\t2\t3\tc"]
    # text that merely reads 'True' (a class label) is data, not a boolean: left as written
    assert interchange_frame(frame)["label"].tolist() == ["True", "b", "c"]


def test_old_cv_metrics_with_summary_rows_still_read(tmp_path):
    from iml_genomics.report.inputs import load_inputs

    train = tmp_path / "train"
    train.mkdir()
    # the layout of earlier versions: folds, then mean and sd rows with empty repeat/fold
    (train / "cv_metrics.tsv").write_text(
        "split\trepeat\tfold\tn_train\tn_test\tauroc\n"
        "r1_f1\t1\t1\t8\t2\t0.9\nr1_f2\t1\t2\t8\t2\t0.7\nmean\t\t\t\t\t0.8\nsd\t\t\t\t\t0.1414213562\n")
    inputs = load_inputs([train])
    assert inputs.cv_metrics["split"].tolist() == ["r1_f1", "r1_f2"]
    assert inputs.cv_metrics["repeat"].dtype == np.int64
    s = inputs.cv_summary.set_index("metric")
    assert math.isclose(s.loc["auroc", "mean"], 0.8) and math.isclose(s.loc["auroc", "sd"], 0.1414213562,
                                                                       rel_tol=1e-9)
    assert s.loc["auroc", "n_folds"] == 2
    # the naive mean over the old file is what the issue saw go wrong: the split removes it
    naive = pd.read_csv(train / "cv_metrics.tsv", sep="\t")["auroc"].mean()
    assert not math.isclose(naive, 0.8) and math.isclose(cv_fold_rows(
        pd.read_csv(train / "cv_metrics.tsv", sep="\t"))["auroc"].mean(), 0.8)
    # undefined fold metrics are not counted
    t = cv_summary_table(pd.DataFrame({"split": ["r1_f1", "r1_f2"], "auroc": [0.9, np.nan]}))
    assert t.loc[0, "n_folds"] == 1 and math.isclose(t.loc[0, "mean"], 0.9)


def test_evaluate_reads_both_boolean_spellings(tmp_path):
    truth = tmp_path / "truth.tsv"
    truth.write_text("gene_id\nG1\nG2\n")
    for spelling in (("True", "False"), ("TRUE", "FALSE")):
        sel = tmp_path / f"sel_{spelling[0]}.tsv"
        sel.write_text(f"gene_id\tw\tselected\tp_value\nG1\t1\t{spelling[0]}\tNA\nG3\t0.5\t{spelling[0]}\t\n"
                       f"G2\t0\t{spelling[1]}\tNA\n")
        out = tmp_path / f"eval_{spelling[0]}"
        run_cli_inprocess("evaluate", "--truth", str(truth), "--selection", str(sel), "--out", str(out))
        res = pd.read_csv(out / "selection_metrics.tsv", sep="\t")
        assert res["n_selected"].tolist() == [2] and res["false_positives"].tolist() == [1], res
