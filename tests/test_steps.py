"""The steps floor (iml_genomics.steps): the CLI is a thin shell over it.

1. ``run configs/demo.yaml`` and the same steps as separate subcommands write identical bytes (timings and
   the recorded command line aside), checked with benchmarks/compare_outputs.py, which is itself shown to fail
   on a changed byte and a missing file.
2. Each step function, called on an AnnData with no file in between (the fitted model handed over in memory),
   returns the tables and summaries the CLI writes, byte for byte once written by the same writers.
3. Steps raise our one-line errors on bad in-memory input.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import CONFIGS, ROOT, TEST_DATA, run_cli_inprocess

STEP_DIRS = ("train", "explain", "select", "report")


def _compare_module():
    spec = importlib.util.spec_from_file_location("compare_outputs", ROOT / "benchmarks" / "compare_outputs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(run's OUT, OUT of the four subcommands run one by one with the arguments `run` gives them)."""
    base = tmp_path_factory.mktemp("steps")
    by_run, by_steps = base / "by_run", base / "by_steps"
    run_cli_inprocess("run", "configs/demo.yaml", "--out", by_run)  # relative, as the subcommands get it
    config = ["--config", "configs/demo.yaml"]
    cohort = ["--expression", "test_data/demo_expression.csv.gz", "--labels", "test_data/demo_labels.tsv"]
    run_cli_inprocess("train", *config, *cohort, "--out", by_steps / "train")
    run_cli_inprocess("explain", *config, *cohort, "--model", by_steps / "train", "--out", by_steps / "explain")
    run_cli_inprocess("select", *config, *cohort, "--out", by_steps / "select")
    run_cli_inprocess("report", *config, "--inputs", *(by_steps / s for s in ("train", "explain", "select")),
                      "--out", by_steps / "report", "--gene-sets", "test_data/demo_pathways.gmt")
    return by_run, by_steps


def test_run_and_separate_subcommands_write_identical_bytes(runs):
    by_run, by_steps = runs
    compare = _compare_module()
    for step in STEP_DIRS:
        files = sorted(p.name for p in (by_run / step).iterdir())
        assert files == sorted(p.name for p in (by_steps / step).iterdir()), step
        assert compare.compare_trees(by_run / step, by_steps / step, ignore_command_line=True,
                                     roots=(by_run, by_steps)) == [], step
    # the command lines differ, so without masking them the comparison must object (it can fail)
    assert any("provenance.json" in p for p in compare.compare_trees(by_run / "train", by_steps / "train",
                                                                     roots=(by_run, by_steps)))


def test_compare_outputs_names_the_differing_file(runs, tmp_path):
    by_run, _ = runs
    script = ROOT / "benchmarks" / "compare_outputs.py"
    dup = tmp_path / "copy"
    shutil.copytree(by_run, dup)
    # a copy still records the original paths: --roots names them
    script = [script, "--roots", by_run, by_run]
    ok = subprocess.run([sys.executable, *script, by_run, dup], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr  # the same run (paths and timings masked) agrees with itself
    # a timing is not a difference ...
    prov = json.loads((dup / "select" / "provenance.json").read_text())
    prov["wall_time_seconds"] += 1.0
    (dup / "select" / "provenance.json").write_text(json.dumps(prov))
    assert subprocess.run([sys.executable, *script, by_run, dup], capture_output=True).returncode == 0
    # ... one changed value is
    table = dup / "select" / "knockoff_selection.tsv"
    table.write_bytes(table.read_bytes().replace(b"\t", b"\t ", 1))
    bad = subprocess.run([sys.executable, *script, by_run, dup], capture_output=True, text=True)
    assert bad.returncode == 1 and "select/knockoff_selection.tsv: differs" in bad.stderr, bad.stderr
    # ... and so is a missing file
    (dup / "explain" / "interactions.tsv").unlink()
    bad = subprocess.run([sys.executable, *script, by_run, dup], capture_output=True, text=True)
    assert bad.returncode == 1 and "explain/interactions.tsv: only in" in bad.stderr, bad.stderr


def _written(tmp_path, name, frame=None, obj=None) -> bytes:
    """The bytes the CLI's writers produce for ``frame`` (TSV) or ``obj`` (JSON)."""
    from iml_genomics.io import staged_output, write_json, write_tsv

    out = tmp_path / name.replace(".", "_")
    with staged_output(out) as stage:
        if frame is not None:
            write_tsv(frame, stage / name)
        else:
            write_json(obj, stage / name)
    return (out / name).read_bytes()


@pytest.fixture(scope="module")
def in_memory():
    """train -> explain (model in memory) -> select -> report on the demo cohort, no file written."""
    from iml_genomics import genesets as gs
    from iml_genomics import steps
    from iml_genomics.config import load_config
    from iml_genomics.io import load_cohort

    cfg = load_config(CONFIGS / "demo.yaml")
    before = cfg.to_dict()
    adata = load_cohort(TEST_DATA / "demo_expression.csv.gz", labels=TEST_DATA / "demo_labels.tsv",
                        label_column="condition")
    tr = steps.train(adata, cfg)
    ex = steps.explain(adata, cfg, model=tr)
    se = steps.select(adata, cfg)
    collection = gs.read_gmt(TEST_DATA / "demo_pathways.gmt")
    rep = steps.report(adata, cfg, train=tr, explain=ex, select=se, collection=collection)
    return {"cfg": cfg, "config_before": before, "adata": adata, "train": tr, "explain": ex, "select": se, "report": rep,
            "collection": collection}


def test_step_functions_return_what_the_cli_writes(runs, in_memory, tmp_path):
    from iml_genomics.explains import step_summary_with_explains, with_explains
    from iml_genomics.io.step_outputs import report_tables_with_explains

    by_run, _ = runs
    m = in_memory
    # the writers append each table's `explains` column and each summary's `explains` key (docs/pipeline.md)
    report_tables, report_summary = report_tables_with_explains(m["report"])
    expected = {
        ("train", "cv_metrics.tsv"): with_explains(m["train"].cv_metrics, "model"),
        ("train", "cv_summary.tsv"): with_explains(m["train"].cv_summary, "model"),
        ("train", "oof_predictions.tsv"): with_explains(m["train"].oof_predictions, "model"),
        ("explain", "gene_ranking.tsv"): with_explains(m["explain"].ranking, "model"),
        ("explain", "local_explanations.tsv"): with_explains(m["explain"].local, "model"),
        ("explain", "interactions.tsv"): with_explains(m["explain"].interactions, "model"),
        ("select", "knockoff_selection.tsv"): with_explains(m["select"].selection, "data"),
        **{("report", name): table for name, table in report_tables.items()},
    }
    for (step, name), frame in expected.items():
        assert _written(tmp_path, name, frame=frame) == (by_run / step / name).read_bytes(), f"{step}/{name}"
    for step, name, obj in (("explain", "explain_summary.json", step_summary_with_explains(m["explain"].summary,
                                                                                             "model")),
                            ("select", "select_summary.json", step_summary_with_explains(m["select"].summary, "data")),
                            ("report", "report_summary.json", report_summary)):
        assert _written(tmp_path, name, obj=obj) == (by_run / step / name).read_bytes(), f"{step}/{name}"
    manifest = json.loads((by_run / "train" / "model.json").read_text())
    for key in ("model_file", "model_sha256"):
        manifest.pop(key)
    assert json.loads(json.dumps(m["train"].manifest)) == manifest
    # group attributions: the same frame as the Parquet file
    pd.testing.assert_frame_equal(m["report"].group_attributions,
                                  pd.read_parquet(by_run / "report" / "group_attributions.parquet"))


def test_explain_step_keeps_the_attributions_without_on_chunk(runs, in_memory):
    by_run, _ = runs
    ex = in_memory["explain"]
    written = pd.read_parquet(by_run / "explain" / "attributions.parquet")
    pd.testing.assert_frame_equal(ex.attribution_table(), written)
    # two classes: one explained class, so samples x genes
    assert ex.attributions.shape == (in_memory["adata"].n_obs, len(ex.attribution_genes))
    assert ex.attribution_classes == [ex.positive_class] == ["tumour"]
    genes = written.columns[4:]
    np.testing.assert_array_equal(ex.attributions.astype(np.float32), written[genes].to_numpy())
    # additivity of what the user gets: base value + sum of SHAP = model output (the model's own check, kept)
    np.testing.assert_allclose(ex.base_values + ex.attributions.sum(axis=1), ex.model_output, atol=1e-6)


def test_report_page_in_memory_equals_the_cli_page(runs, in_memory, tmp_path):
    """What `run` needs to go in memory: the page from in-memory results equals the CLI's when told where
    the results were written and what their provenance says (timings and command line masked)."""
    import sys as _sys

    from iml_genomics import steps

    by_run, _ = runs
    m = in_memory
    recorded = {s: (by_run / s, json.loads((by_run / s / "provenance.json").read_text()))
                for s in ("train", "explain", "select")}
    cli_prov = json.loads((by_run / "report" / "provenance.json").read_text())
    own = {"command line": " ".join(_sys.argv), "seed": m["cfg"].seed, "gene sets": "test_data/demo_pathways.gmt",
           "gene map": None, "expression": cli_prov["inputs"]["expression"]["path"],
           "labels": cli_prov["inputs"]["labels"]["path"]}
    rep = steps.report(m["adata"], m["cfg"], train=m["train"], explain=m["explain"], select=m["select"],
                       collection=m["collection"], recorded=recorded, own_provenance=own)
    compare = _compare_module()
    page = tmp_path / "report.html"
    # written as the CLI writes it into by_run/report: links to the input TSVs relative to that directory
    from iml_genomics.report.interactive import relative_links

    page.write_text(relative_links(rep.html, by_run / "report"), encoding="utf-8")
    assert compare.normalise(page, page.read_bytes(), by_run, ignore_command_line=True) == compare.normalise(
        page, (by_run / "report" / "report.html").read_bytes(), by_run, ignore_command_line=True)
    # without `recorded` the page says the results came from memory: the comparison sees it
    assert b"(in memory: train)" in m["report"].html.encode()


def test_report_from_loaded_directories_equals_report_in_memory(runs, in_memory, tmp_path):
    from iml_genomics import steps
    from iml_genomics.report import load_inputs

    by_run, _ = runs
    m = in_memory
    loaded = steps.report(m["adata"], m["cfg"], inputs=load_inputs([by_run / s for s in ("train", "explain",
                                                                                          "select")]),
                          collection=m["collection"])
    from iml_genomics.explains import gene_sets_with_explains
    from iml_genomics.io.step_outputs import report_tables_with_explains

    assert _written(tmp_path, "biomarkers.tsv", frame=report_tables_with_explains(loaded)[0]["biomarkers.tsv"]) == \
        (by_run / "report" / "biomarkers.tsv").read_bytes()
    sets = steps.gene_sets(m["adata"], m["cfg"], collection=m["collection"], train=m["train"],
                           explain=m["explain"], select=m["select"])
    assert _written(tmp_path, "gene_sets.tsv", frame=gene_sets_with_explains(sets.table, sets.summary)) == \
        (by_run / "report" / "gene_sets.tsv").read_bytes()
    assert sets.summary == m["report"].summary["gene_sets"]


def test_evaluate_step_returns_what_the_cli_writes(runs, tmp_path):
    from iml_genomics import steps
    from iml_genomics.evaluate import ranking_from_table, selection_from_table, truth_from_table
    from iml_genomics.io import read_table

    by_run, _ = runs
    ranking, selection = by_run / "explain" / "gene_ranking.tsv", by_run / "select" / "knockoff_selection.tsv"
    out = tmp_path / "eval"
    run_cli_inprocess("evaluate", "--truth", TEST_DATA / "demo_truth.tsv", "--ranking", ranking, "--selection",
                      selection,
                      "--out", out)
    result = steps.evaluate(truth=truth_from_table(read_table(TEST_DATA / "demo_truth.tsv", "truth"), "truth"),
                            rankings=ranking_from_table(read_table(ranking, "ranking"), "explain/gene_ranking.tsv"),
                            selections={"select/knockoff_selection.tsv":
                                        selection_from_table(read_table(selection, "selection"), "selection")})
    assert sorted(result.tables()) == sorted(p.stem for p in out.glob("*.tsv"))
    for name, frame in result.tables().items():
        assert _written(tmp_path, f"{name}.tsv", frame=frame) == (out / f"{name}.tsv").read_bytes(), name


def test_steps_raise_one_line_errors_on_bad_input(in_memory):
    from iml_genomics import steps
    from iml_genomics.errors import ConfigError, InputDataError

    m = in_memory
    cfg = m["cfg"]
    unlabelled = m["adata"][:, :50].copy()
    del unlabelled.obs["condition"]
    with pytest.raises(InputDataError, match="label column 'condition' not found"):
        steps.train(unlabelled, cfg)
    grouped = copy.deepcopy(cfg)
    grouped.select.groups, grouped.select.group_file = "file", "groups.tsv"
    small = m["adata"][:, :50].copy()
    with pytest.raises(InputDataError, match="no gene of the group file is a gene of the analysis"):
        steps.select(small, grouped, groups={"NOT_A_GENE": "g1"}, groups_source="groups.tsv")
    with pytest.raises(ConfigError, match="no gene -> group mapping"):
        steps.select(small, grouped)
    with pytest.raises(ConfigError, match="nothing to score"):
        steps.evaluate(truth=["G00001"])
    # explain refuses a cohort that lacks genes of the model, naming them
    with pytest.raises(InputDataError, match="gene\\(s\\) the model was trained on are missing"):
        steps.explain(small, cfg, model=m["train"])
    # the caller's config is never changed by a step (explain swaps in the bundle's model, select its n_jobs)
    assert cfg.to_dict() == m["config_before"]


def test_steps_run_on_an_anndata_built_in_python_dense_and_sparse():
    """No reader involved: a seeded cohort with two planted genes, as a notebook user would build it."""
    import anndata as ad
    from scipy import sparse

    from iml_genomics import steps
    from iml_genomics.config import load_config

    rng = np.random.default_rng(7)
    n, p = 160, 30
    X = rng.normal(size=(n, p))
    labels = np.where(X[:, 0] - X[:, 1] + 0.5 * rng.normal(size=n) > 0, "responder", "non_responder")
    obs = pd.DataFrame({"condition": labels}, index=[f"cell{i}" for i in range(n)])
    var = pd.DataFrame(index=[f"gene{j}" for j in range(p)])
    cfg = load_config(CONFIGS / "demo.yaml")
    cfg.explain.samples = ["cell3"]
    cfg.explain.method = "shap"
    cfg.n_jobs = 1
    # sparse input gets a sparse-safe pipeline (scaling without centring), so the two fits differ by design
    for kind, matrix in (("dense", X), ("sparse", sparse.csr_matrix(X))):
        adata = ad.AnnData(matrix, obs=obs.copy(), var=var.copy())
        tr = steps.train(adata, cfg, random_state=3)
        ex = steps.explain(adata, cfg, model=tr, random_state=3)
        se = steps.select(adata, cfg, random_state=3)
        assert set(ex.ranking["gene_id"].head(2)) == {"gene0", "gene1"}, kind
        assert ex.attributions.shape == (n, p) and ex.positive_class == "responder"
        assert list(ex.local["sample_id"].unique()) == ["cell3"]
        # knockoff+ cannot select with 2 true genes at q = 0.1 (it needs >= 10 positive W); their W lead
        assert len(se.selection) == p
        assert set(se.selection.nlargest(2, "w")["gene_id"]) == {"gene0", "gene1"}, kind
