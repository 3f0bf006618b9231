"""The scanpy-style API (``ig.tl``, ``ig.get``): results written into the AnnData, read back as the CLI's files.

1. ``import iml_genomics`` (and ``iml_genomics.tl`` / ``.get``) imports no heavy library; the check is shown
   to see one when it is imported.
2. ``ig.tl.train/explain/select/gene_sets`` on the demo cohort give, through ``ig.get.*_df`` and
   ``io.write_tsv``, the bytes ``iml-genomics run configs/demo.yaml`` writes; the var columns are the tables'
   columns in var_names order; every call leaves an h5ad-writable AnnData that reads back equal.
3. The model survives h5ad and is loaded only by the safe loader: altered bytes are refused in one line.
4. key_added prefixes, config as path / dict / Config, n_jobs independence, multiclass layout, errors.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, TEST_DATA, run_cli

HEAVY = ("sklearn", "scipy", "pandas", "anndata", "shap", "matplotlib", "click", "numba", "skops")


def _imported_heavy(code: str) -> list[str]:
    probe = (f"{code}\nimport sys\nprint(' '.join(sorted(m for m in {HEAVY!r} if m in sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_import_iml_genomics_is_light():
    assert _imported_heavy("import iml_genomics") == []
    assert _imported_heavy("import iml_genomics as ig; ig.tl; ig.get; import iml_genomics.tl, iml_genomics.get") == []
    # the probe sees a heavy import when there is one (the steps floor imports pandas at import time)
    assert "pandas" in _imported_heavy("import iml_genomics.steps")


def test_lazy_attributes_resolve_and_unknown_names_fail():
    import iml_genomics as ig

    assert ig.tl.train is sys.modules["iml_genomics.tl"].train
    assert ig.get.ranking_df is sys.modules["iml_genomics.get"].ranking_df
    assert "tl" in dir(ig) and "get" in dir(ig)
    with pytest.raises(AttributeError, match="no attribute 'pl'"):
        ig.pl  # noqa: B018


def test_public_functions_take_at_most_three_positional_parameters():
    import iml_genomics.get as get
    import iml_genomics.tl as tl

    checked = 0
    for module in (tl, get):
        for name, fn in inspect.getmembers(module, inspect.isfunction):
            if name.startswith("_") or fn.__module__ != module.__name__:
                continue
            positional = [p for p in inspect.signature(fn).parameters.values()
                          if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            assert len(positional) <= 3, (module.__name__, name, [p.name for p in positional])
            assert fn.__doc__, (module.__name__, name)
            checked += 1
    assert checked >= 12


def _cohort():
    from iml_genomics.io import load_cohort

    return load_cohort(TEST_DATA / "demo_expression.csv.gz", labels=TEST_DATA / "demo_labels.tsv",
                       label_column="condition")


def _same(a: ad.AnnData, b: ad.AnnData) -> None:
    """Two AnnData hold the same var columns, obsm and recorded tables (as get returns them)."""
    import iml_genomics as ig

    pd.testing.assert_frame_equal(a.var, b.var, check_index_type=False)
    assert sorted(a.obsm) == sorted(b.obsm)
    for key in a.obsm:
        np.testing.assert_array_equal(np.asarray(a.obsm[key]), np.asarray(b.obsm[key]))
    for name, entry in a.uns["iml_genomics"].items():
        other = b.uns["iml_genomics"][name]
        for key in ("params", "config", "provenance", "summary"):
            assert (key in entry) == (key in other)
        assert entry.get("config") == other.get("config") and entry.get("summary") == other.get("summary")
        assert dict(entry["params"]) == dict(other["params"])
        for table in entry["tables"]:
            np.testing.assert_array_equal(entry["tables"][table], other["tables"][table])
    if "train" in a.uns["iml_genomics"]:
        pd.testing.assert_frame_equal(ig.get.cv_metrics_df(a), ig.get.cv_metrics_df(b))


DOC = ROOT / "docs" / "api.md"


def _doc_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """The CLI's run of configs/demo.yaml, and the session of docs/api.md run block by block.

    After every block the AnnData is written to h5ad and read back; ``read[step]`` is the copy read back
    right after the block that added ``uns["iml_genomics"][step]``.
    """
    base = tmp_path_factory.mktemp("api")
    run_cli("run", "configs/demo.yaml", "--out", base / "cli")
    namespace: dict = {}
    read = {}
    cwd = os.getcwd()
    os.chdir(ROOT)  # the page runs from the repository root
    try:
        for i, code in enumerate(_doc_blocks()):
            exec(compile(code, f"{DOC}:block{i + 1}", "exec"), namespace)  # noqa: S102 - our own documentation
            adata = namespace["adata"]
            path = base / f"block{i + 1}.h5ad"
            adata.write_h5ad(path)
            back = ad.read_h5ad(path)
            for step in set(adata.uns.get("iml_genomics", {})) - set(read):
                read[step] = back
    finally:
        os.chdir(cwd)
    return {"cli": base / "cli", "adata": namespace["adata"], "read": read, "base": base}


def test_the_doc_session_ran_every_step(session):
    assert set(session["read"]) == {"train", "explain", "select", "gene_sets", "sparse_train", "sparse_explain"}
    import iml_genomics.get as get
    import iml_genomics.tl as tl

    doc = DOC.read_text()
    for _, column, _ in (*tl.EXPLAIN_VAR, *tl.SELECT_VAR):
        assert f"`{column}`" in doc, column
    for name in dir(get):
        if name.endswith("_df"):
            assert f"`{name}(" in doc, name


TABLES = (("cv_metrics_df", "train/cv_metrics.tsv"), ("cv_summary_df", "train/cv_summary.tsv"),
          ("oof_predictions_df", "train/oof_predictions.tsv"),
          ("ranking_df", "explain/gene_ranking.tsv"), ("local_df", "explain/local_explanations.tsv"),
          ("interactions_df", "explain/interactions.tsv"), ("selection_df", "select/knockoff_selection.tsv"),
          ("gene_sets_df", "report/gene_sets.tsv"))


@pytest.mark.parametrize("which", ["memory", "h5ad"])
def test_get_tables_are_the_cli_files_byte_for_byte(session, which, tmp_path):
    import iml_genomics as ig
    from iml_genomics.io.writers import write_tsv

    adata = session["adata"] if which == "memory" else session["read"]["gene_sets"]
    for fn, relative in TABLES:
        out = tmp_path / f"{fn}.tsv"
        write_tsv(getattr(ig.get, fn)(adata), out)
        assert out.read_bytes() == (session["cli"] / relative).read_bytes(), (fn, relative)
    # attributions.parquet: the same rows and float32 values as the CLI's file
    cli = pd.read_parquet(session["cli"] / "explain" / "attributions.parquet")
    pd.testing.assert_frame_equal(ig.get.attributions_df(adata).reset_index(drop=True), cli)
    assert ig.get.summary(adata, "select") == json.loads(
        (session["cli"] / "select" / "select_summary.json").read_text())
    assert ig.get.summary(adata, "explain") == json.loads(
        (session["cli"] / "explain" / "explain_summary.json").read_text())


def test_var_columns_follow_the_tables_in_var_names_order(session):
    import iml_genomics as ig

    adata = session["adata"]
    ranking = ig.get.ranking_df(adata).set_index("gene_id").loc[adata.var_names]
    np.testing.assert_array_equal(adata.var["mean_abs_shap"].to_numpy(), ranking["mean_abs_shap"].to_numpy())
    np.testing.assert_array_equal(adata.var["shap_sd"].to_numpy(), ranking["sd"].to_numpy())
    np.testing.assert_array_equal(adata.var["explain_rank"].to_numpy(), ranking["rank"].to_numpy())
    assert adata.var["explain_rank"].idxmin() == ig.get.ranking_df(adata)["gene_id"].iloc[0]
    selection = ig.get.selection_df(adata).set_index("gene_id").loc[adata.var_names]
    np.testing.assert_array_equal(adata.var["knockoff_w"].to_numpy(), selection["w"].to_numpy())
    np.testing.assert_array_equal(adata.var["knockoff_selected"].to_numpy(), selection["selected"].to_numpy())
    assert adata.var["knockoff_selected"].dtype == bool and adata.var["knockoff_selected"].sum() > 0
    assert adata.var["dcrt_p_value"].isna().all()  # knockoffs give no p-values
    # the planted genes of the demo lead the ranking
    truth = set(pd.read_csv(TEST_DATA / "demo_truth.tsv", sep="\t").iloc[:, 0].astype(str))
    top = adata.var.sort_values("explain_rank").index[:10]
    assert len(truth.intersection(top)) >= 5


def test_recorded_parameters_and_provenance(session):
    import iml_genomics as ig

    store = session["adata"].uns["iml_genomics"]
    assert {"explain", "gene_sets", "select", "train"} <= set(store)
    assert store["train"]["params"]["label_column"] == "condition"
    assert store["train"]["params"]["config"] == "configs/demo.yaml"
    assert store["select"]["params"]["fdr"] == 0.1
    prov = ig.get.provenance(session["adata"], "explain")
    assert prov["positive_class"] == "tumour" and prov["versions"]["scikit-learn"]
    assert ig.get.config(session["adata"]).model.name == "l1_logistic"


def test_every_call_leaves_an_h5ad_that_reads_back_equal(session):
    adata = session["adata"]
    for step in ("train", "explain", "select", "gene_sets"):
        back = session["read"][step]
        assert step in back.uns["iml_genomics"]
    _same(adata, session["read"]["sparse_explain"])
    # the check compares something: an altered column is seen
    changed = session["read"]["sparse_explain"].copy()
    changed.var["mean_abs_shap"] = changed.var["mean_abs_shap"] * 2
    with pytest.raises(AssertionError):
        _same(adata, changed)


def test_shap_in_obsm_adds_up_to_the_model_output(session):
    adata = session["adata"]
    shap = adata.obsm["shap"]
    assert shap.shape == adata.shape and shap.dtype == np.float32
    att = adata.uns["iml_genomics"]["explain"]["attributions"]
    assert list(att["classes"]) == ["tumour"]
    np.testing.assert_allclose(shap.sum(axis=1) + att["base_values"], att["model_output"], atol=1e-4)
    assert adata.var["used_by_model"].all()  # no gene filter in the demo config (genes outside: next tests)


def test_explain_after_h5ad_equals_explain_in_memory(session):
    import iml_genomics as ig

    back = session["read"]["train"].copy()
    ig.tl.explain(back)
    pd.testing.assert_frame_equal(ig.get.ranking_df(back), ig.get.ranking_df(session["adata"]))
    np.testing.assert_array_equal(back.obsm["shap"], session["adata"].obsm["shap"])


def test_altered_model_bytes_are_refused_in_one_line(session):
    import iml_genomics as ig
    from iml_genomics.errors import BundleError, InputDataError

    tampered = session["read"]["train"].copy()
    model = tampered.uns["iml_genomics"]["train"]["model"]
    data = np.array(model["skops"], dtype=np.uint8)
    data[len(data) // 2] ^= 0xFF
    model["skops"] = data
    with pytest.raises(BundleError) as err:
        ig.tl.explain(tampered)
    message = str(err.value)
    assert "\n" not in message and "adata.uns['iml_genomics']['train']['model']['skops']" in message
    assert "sha256" in message and "/tmp" not in message and "mean_abs_shap" not in tampered.var
    # whoever edits the bytes can edit the manifest's hash too: the schema/zip check still refuses
    manifest = json.loads(model["manifest"])
    import hashlib

    manifest["model_sha256"] = hashlib.sha256(data.tobytes()).hexdigest()
    model["manifest"] = json.dumps(manifest)
    with pytest.raises(BundleError, match=r"adata.uns\['iml_genomics'\]\['train'\]\['model'\]"):
        ig.tl.explain(tampered)
    model["manifest"] = "{not json"
    with pytest.raises(BundleError, match=r"\['manifest'\]"):
        ig.tl.explain(tampered)
    del tampered.uns["iml_genomics"]["train"]["model"]
    with pytest.raises(BundleError, match="no model bundle"):
        ig.tl.explain(tampered)
    with pytest.raises(InputDataError, match=r"run ig.tl.train\(adata\) first"):
        ig.tl.explain(_cohort())


def test_genes_outside_the_model_get_nan_and_false(session):
    import iml_genomics as ig

    adata = session["read"]["train"]
    extra = ad.AnnData(X=np.ones((adata.n_obs, 1), dtype=adata.X.dtype), obs=adata.obs.copy(),
                       var=pd.DataFrame(index=["EXTRA"]))
    wider = ad.concat([adata, extra], axis=1, merge="first")
    wider.obs = adata.obs.copy()
    wider.uns["iml_genomics"] = {"train": adata.uns["iml_genomics"]["train"]}
    ig.tl.explain(wider, n_jobs=1)
    row = wider.var.loc["EXTRA"]
    assert np.isnan(row["mean_abs_shap"]) and pd.isna(row["explain_rank"]) and not row["used_by_model"]
    assert not wider.obsm["shap"][:, -1].any()
    # n_jobs does not change a byte
    np.testing.assert_array_equal(wider.obsm["shap"][:, :-1], session["adata"].obsm["shap"])
    pd.testing.assert_frame_equal(ig.get.ranking_df(wider), ig.get.ranking_df(session["adata"]))
    wider.write_h5ad(session["base"] / "wider.h5ad")
    assert pd.isna(ad.read_h5ad(session["base"] / "wider.h5ad").var.loc["EXTRA", "explain_rank"])


def test_key_added_keeps_two_analyses_apart_and_config_may_be_a_dict_or_config(session):
    import iml_genomics as ig
    from iml_genomics.config import load_config

    adata = session["adata"]  # the doc's second analysis: a dict config, key_added="sparse"
    assert "sparse_mean_abs_shap" in adata.var and "sparse_shap" in adata.obsm
    assert adata.uns["iml_genomics"]["sparse_train"]["params"]["key_added"] == "sparse"
    # the unprefixed analysis is untouched; the stronger penalty gives fewer genes any attribution
    pd.testing.assert_series_equal(adata.var["mean_abs_shap"], session["read"]["gene_sets"].var["mean_abs_shap"])
    assert 0 < (adata.var["sparse_mean_abs_shap"] > 0).sum() < (adata.var["mean_abs_shap"] > 0).sum()
    assert len(ig.get.cv_metrics_df(adata, key_added="sparse")) == 3
    assert ig.get.config(adata, "train", key_added="sparse").model.params["C"] == 0.05
    assert ig.get.config(adata, "train").model.params["C"] == 0.3
    # an explicit Config replaces the recorded one for explain, but the model stays the stored one
    other = session["read"]["sparse_explain"].copy()
    ig.tl.explain(other, key_added="sparse", config=load_config(ROOT / "configs" / "demo.yaml"))
    assert ig.get.config(other, "explain", key_added="sparse").model.params["C"] == 0.05
    assert ig.get.config(other, "explain", key_added="sparse").explain.method == "all"
    pd.testing.assert_series_equal(other.var["sparse_mean_abs_shap"], adata.var["sparse_mean_abs_shap"])


def test_bad_config_and_arguments_raise_specific_errors():
    import iml_genomics as ig
    from iml_genomics.errors import ConfigError, InputDataError

    adata = _cohort()
    with pytest.raises(ConfigError, match="modle"):
        ig.tl.train(adata, label_column="condition", config={"modle": {"name": "l1_logistic"}})
    with pytest.raises(ConfigError, match="no_such.yaml"):
        ig.tl.train(adata, label_column="condition", config="no_such.yaml")
    with pytest.raises(TypeError, match="config must be"):
        ig.tl.train(adata, label_column="condition", config=3)
    with pytest.raises(InputDataError, match="label column 'subtype' not found"):
        ig.tl.train(adata, label_column="subtype")
    with pytest.raises(InputDataError, match="run ig.tl.explain or ig.tl.select first"):
        ig.tl.gene_sets(adata, {"S": ["G00001", "G00002"]})
    with pytest.raises(InputDataError, match=r"\['select'\] not found"):
        ig.get.selection_df(adata)
    assert "iml_genomics" not in adata.uns and len(adata.var.columns) == 0  # nothing written on failure


def test_multiclass_attributions_are_samples_by_genes_by_classes(tmp_path):
    import iml_genomics as ig

    rng = np.random.default_rng(0)
    n, p = 150, 12
    X = rng.normal(size=(n, p)).astype(np.float32)
    y = np.array(["a", "b", "c"])[np.argmax(X[:, :3] * 2 + rng.normal(size=(n, 3)), axis=1)]
    # a categorical label column, as scanpy leaves them
    adata = ad.AnnData(X=X, obs=pd.DataFrame({"group": pd.Categorical(y)}, index=[f"c{i}" for i in range(n)]),
                       var=pd.DataFrame(index=[f"g{j}" for j in range(p)]))
    config = {"seed": 1, "model": {"name": "random_forest", "params": {"n_estimators": 20, "max_depth": 3}},
              "cv": {"n_splits": 3}, "explain": {"method": "shap"}}
    ig.tl.train(adata, label_column="group", config=config)
    ig.tl.explain(adata)
    shap = adata.obsm["shap"]
    att = adata.uns["iml_genomics"]["explain"]["attributions"]
    assert shap.shape == (n, p, 3) and list(att["classes"]) == ["a", "b", "c"]
    np.testing.assert_allclose(shap.sum(axis=1) + att["base_values"], att["model_output"], atol=1e-4)
    assert set(adata.var.sort_values("explain_rank").index[:3]) == {"g0", "g1", "g2"}
    adata.write_h5ad(tmp_path / "multi.h5ad")
    back = ad.read_h5ad(tmp_path / "multi.h5ad")
    np.testing.assert_array_equal(back.obsm["shap"], shap)
    pd.testing.assert_frame_equal(ig.get.attributions_df(back), ig.get.attributions_df(adata))


def test_attach_results_refuses_results_of_another_anndata(session):
    import iml_genomics as ig
    from iml_genomics import steps
    from iml_genomics.errors import InputDataError

    adata = session["read"]["train"]
    result = steps.explain(adata, model=ig.tl.load_model(adata))
    fewer_cells = adata[:50].copy()
    with pytest.raises(InputDataError, match="samples differ from adata.obs_names"):
        ig.tl.attach_results(fewer_cells, explain=result)
    fewer_genes = adata[:, 1:].copy()
    with pytest.raises(InputDataError, match=f"gene '{adata.var_names[0]}' is not in adata.var_names"):
        ig.tl.attach_results(fewer_genes, explain=result)
    assert "mean_abs_shap" not in fewer_cells.var and "shap" not in fewer_genes.obsm
    # the same result on its own AnnData is what tl.explain writes
    own = adata.copy()
    ig.tl.attach_results(own, explain=result)
    np.testing.assert_array_equal(own.obsm["shap"], session["adata"].obsm["shap"])
    pd.testing.assert_frame_equal(ig.get.ranking_df(own), ig.get.ranking_df(session["adata"]))


def test_explained_class_and_gene_sets_as_a_dict(session):
    import iml_genomics as ig
    from iml_genomics.genesets import read_gmt

    adata = session["read"]["gene_sets"].copy()
    ig.tl.explain(adata, positive_class="normal", key_added=None)
    att = adata.uns["iml_genomics"]["explain"]["attributions"]
    assert list(att["classes"]) == ["normal"]
    # two classes, log-odds: the other class's attributions are the negatives
    np.testing.assert_allclose(adata.obsm["shap"], -session["adata"].obsm["shap"], atol=1e-5)
    assert ig.get.provenance(adata, "explain")["positive_class"] == "normal"
    sets = read_gmt(TEST_DATA / "demo_pathways.gmt").sets
    ig.tl.gene_sets(adata, dict(sets), positive_class="tumour")
    from_dict, from_gmt = ig.get.gene_sets_df(adata), ig.get.gene_sets_df(session["adata"])
    assert list(from_dict["gene_set"]) == list(from_gmt["gene_set"])
    np.testing.assert_array_equal(from_dict["p_value"], from_gmt["p_value"])
    with pytest.raises(TypeError, match="gene_sets must be"):
        ig.tl.gene_sets(adata, 5)
