"""`run --write-h5ad PATH` (issue 13, item 3): the input cohort with every result attached.

The file is read back with anndata; `ig.get.*_df` of it must be the bytes of the run's TSV files, the SHAP
values in obsm those of attributions.parquet. A second run whose steps are all up to date reads the results
back from the step directories and writes the same content. A file at PATH that the run did not write is
never replaced, and the refusal comes before any step runs.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from conftest import one_line, run_cli_inprocess
from test_run_function import fast_config

import iml_genomics as ig
from iml_genomics.io import write_tsv


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("h5ad_run")
    config = fast_config(tmp)
    out, target = tmp / "out", tmp / "cohort.h5ad"
    proc = run_cli_inprocess("run", config, "--out", out, "--write-h5ad", target)  # not -q: the summary line is read
    assert f"wrote the cohort with every result attached to {target}" in proc.stderr
    return config, out, target


def _tables_match_the_run(adata, out, tmp_path):
    pairs = [(ig.get.cv_metrics_df, out / "train" / "cv_metrics.tsv"),
             (ig.get.oof_predictions_df, out / "train" / "oof_predictions.tsv"),
             (ig.get.ranking_df, out / "explain" / "gene_ranking.tsv"),
             (ig.get.local_df, out / "explain" / "local_explanations.tsv"),
             (ig.get.selection_df, out / "select" / "knockoff_selection.tsv"),
             (ig.get.gene_sets_df, out / "report" / "gene_sets.tsv")]
    for getter, path in pairs:
        written = tmp_path / path.name
        write_tsv(getter(adata), written)
        assert written.read_bytes() == path.read_bytes(), path.name


def test_the_h5ad_holds_every_result_of_the_run(first_run, tmp_path):
    _, out, target = first_run
    adata = ad.read_h5ad(target)
    assert adata.n_obs == 400 and adata.n_vars == 400
    _tables_match_the_run(adata, out, tmp_path)
    # per-gene columns agree with the tables, in var order
    ranking = pd.read_csv(out / "explain" / "gene_ranking.tsv", sep="\t", dtype={"gene_id": str}).set_index("gene_id")
    np.testing.assert_allclose(adata.var["mean_abs_shap"], ranking.loc[adata.var_names, "mean_abs_shap"])
    selection = pd.read_csv(out / "select" / "knockoff_selection.tsv", sep="\t", dtype={"gene_id": str})
    assert set(adata.var_names[adata.var["knockoff_selected"].to_numpy(bool)]) == \
        set(selection.loc[selection["selected"], "gene_id"])
    # SHAP values: attributions.parquet, placed on the var axis
    table = pd.read_parquet(out / "explain" / "attributions.parquet")
    genes = [c for c in table.columns if c not in ("sample_id", "class", "base_value", "model_output")]
    position = [list(adata.var_names).index(g) for g in genes]
    np.testing.assert_array_equal(adata.obsm["shap"][:, position], table[genes].to_numpy(np.float32))
    # the model travels with the file and loads through the safe loader
    pipeline, manifest = ig.tl.load_model(adata)
    assert manifest["gene_ids"] == list(adata.var_names)


def test_an_up_to_date_run_rewrites_the_same_content_from_the_step_directories(first_run, tmp_path):
    config, out, target = first_run
    before = ad.read_h5ad(target)
    proc = run_cli_inprocess("--verbose", "run", config, "--out", out, "--write-h5ad", target)
    assert "up to date, skipped" in proc.stderr and "running" not in proc.stderr  # every step read back
    after = ad.read_h5ad(target)
    pd.testing.assert_frame_equal(before.var, after.var)
    np.testing.assert_array_equal(before.obsm["shap"], after.obsm["shap"])
    _tables_match_the_run(after, out, tmp_path)


def test_a_file_the_run_did_not_write_is_never_replaced(first_run, tmp_path):
    config, _, _ = first_run
    users = tmp_path / "mine.h5ad"
    users.write_bytes(b"a user's own file")
    out = tmp_path / "fresh"
    proc = run_cli_inprocess("run", config, "--out", out, "--write-h5ad", users, check=False)
    one_line(proc, 2, str(users), "was not written by")
    assert users.read_bytes() == b"a user's own file"
    assert not (out / "train").exists()  # refused before any step ran
    # a directory, and a path whose directory is missing
    one_line(run_cli_inprocess("run", config, "--out", out, "--write-h5ad", tmp_path, check=False), 2, "directory")
    one_line(run_cli_inprocess("run", config, "--out", out, "--write-h5ad", tmp_path / "no" / "x.h5ad", check=False), 2,
             "does not exist")


def test_a_symbolic_link_is_never_written_through(first_run, tmp_path):
    config, _, _ = first_run
    target = tmp_path / "elsewhere.h5ad"
    target.write_bytes(b"kept")
    link = tmp_path / "link.h5ad"
    link.symlink_to(target)
    proc = run_cli_inprocess("run", config, "--out", tmp_path / "fresh", "--write-h5ad", link, check=False)
    one_line(proc, 2, str(link), "symbolic link")
    assert target.read_bytes() == b"kept" and not (tmp_path / "fresh" / "train").exists()
