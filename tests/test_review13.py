"""A notebook user's single-cell AnnData as it really comes, through ``ig.tl`` (review of issue 13).

Real h5ad files keep raw counts in ``X`` and log-normalised values in a layer or ``.raw``, have integer or
boolean outcome columns, gaps in them, many cell types, Ensembl ids with symbols in ``var``. Each case below
either gives the same science as the clean file or is refused in one line saying what to do, with nothing
written into the AnnData.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from conftest import ROOT

ad = pytest.importorskip("anndata")

import iml_genomics as ig  # noqa: E402
from iml_genomics.errors import InputDataError  # noqa: E402

DATA = ROOT / "test_data" / "pbmc68k_reduced.h5ad"
pytestmark = pytest.mark.skipif(not DATA.is_file(), reason=f"{DATA.name} is not in test_data/")

# small and fast: a sparse L1 logistic model, SHAP only (exact for linear models)
CONFIG = {"seed": 0, "preprocess": {"transform": "none", "standardize": True},
          "model": {"name": "l1_logistic", "params": {"C": 0.1}}, "cv": {"n_splits": 3},
          "explain": {"method": "shap", "top_k": 10}, "select": {"fdr": 0.1, "statistic": "lasso"}}
NK_MARKERS = {"GNLY", "NKG7", "GZMA", "GZMB", "GZMH", "PRF1", "KLRD1", "CST7", "CTSW", "SPON2", "FGFBP2", "CCL5",
              "CD247", "FCGR3A", "TYROBP", "FCER1G", "HOPX", "KLRB1", "CD7", "XCL2", "CLIC3", "MATK", "TTC38"}

# B cells: B-cell receptor, MHC class II, immunoglobulin genes (Azimuth / PanglaoDB B-cell markers)
B_MARKERS = {"CD74", "CD79A", "CD79B", "MS4A1", "CD19", "CD22", "CD37", "BANK1", "TCL1A", "IGJ", "IGKC", "IGHM",
             "VPREB3", "LINC00926", "HLA-DRA", "HLA-DRB1", "HLA-DQA1", "HLA-DQB1", "HLA-DPA1", "HLA-DPB1"}


@pytest.fixture(scope="module")
def pbmc():
    adata = ad.read_h5ad(DATA)
    adata.obs["is_nk"] = np.where(adata.obs["cell_type"].astype(str).str.contains("NK"), "NK", "other")
    return adata


def as_released(pbmc):
    """The file as a lab releases it: counts in X (int32), log-normalised in a layer and in .raw, Ensembl ids."""
    lognorm = pbmc.X.copy()
    counts = sparse.csr_matrix(np.round(np.expm1(lognorm.toarray()) * 3).astype(np.int32))
    var = pd.DataFrame({"gene_symbols": list(pbmc.var_names)},
                       index=[f"ENSG{i:011d}" for i in range(pbmc.n_vars)])
    adata = ad.AnnData(X=counts, obs=pbmc.obs.copy(), var=var)
    adata.layers["lognorm"] = lognorm
    adata.raw = ad.AnnData(X=lognorm, obs=pbmc.obs.copy(), var=var.copy())
    return adata


def clean(pbmc):
    """The same cells with the log-normalised values in X, Ensembl ids."""
    adata = as_released(pbmc)
    return ad.AnnData(X=adata.layers["lognorm"].copy(), obs=adata.obs.copy(), var=adata.var.copy())


def top_symbols(adata, n=10):
    return list(adata.var.sort_values("explain_rank").head(n)["gene_symbols"])


def test_layer_and_use_raw_give_the_results_of_that_matrix_in_X(pbmc):
    reference = clean(pbmc)
    ig.tl.train(reference, label_column="is_nk", positive_class="NK", config=CONFIG)
    ig.tl.explain(reference)
    assert len(NK_MARKERS & set(top_symbols(reference))) >= 3

    by_layer = as_released(pbmc)
    ig.tl.train(by_layer, label_column="is_nk", positive_class="NK", config=CONFIG, layer="lognorm")
    ig.tl.explain(by_layer)  # no layer given: the one train used, not the counts in X
    by_raw = as_released(pbmc)
    ig.tl.train(by_raw, label_column="is_nk", positive_class="NK", config=CONFIG, use_raw=True)
    ig.tl.explain(by_raw)
    by_config = as_released(pbmc)  # data.layer in the config was ignored: the model was fitted on the counts
    ig.tl.train(by_config, label_column="is_nk", positive_class="NK", config={**CONFIG, "data": {"layer": "lognorm"}})
    ig.tl.explain(by_config)
    for other in (by_layer, by_raw, by_config):
        pd.testing.assert_frame_equal(ig.get.cv_metrics_df(other), ig.get.cv_metrics_df(reference))
        pd.testing.assert_frame_equal(ig.get.ranking_df(other), ig.get.ranking_df(reference))
        np.testing.assert_array_equal(other.obsm["shap"], reference.obsm["shap"])
    assert by_layer.uns["iml_genomics"]["explain"]["params"]["layer"] == "lognorm"
    assert ig.get.config(by_layer, "train").data.layer == "lognorm"
    assert by_raw.uns["iml_genomics"]["train"]["params"]["use_raw"]


def test_counts_in_x_without_a_transform_warn_and_lognormalised_values_do_not(pbmc):
    released = as_released(pbmc)
    with pytest.warns(UserWarning, match=r"adata\.X holds non-negative integers \(raw counts\?\).*layer="):
        ig.tl.train(released, label_column="is_nk", positive_class="NK", config=CONFIG)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*raw counts.*")
        ig.tl.train(released, label_column="is_nk", positive_class="NK", config=CONFIG, layer="lognorm")
        ig.tl.train(released, label_column="is_nk", positive_class="NK",  # counts with a count transform: fine
                    config={**CONFIG, "preprocess": {"transform": "log1p_cpm"}})


@pytest.mark.parametrize("make", ["object_nan", "categorical_nan", "blank"])
def test_missing_labels_are_refused_not_made_a_class(pbmc, make):
    """Before: NaN became a class 'nan' (a 'NK' vs 'nan' model with positive class 'nan', exit fine)."""
    adata = pbmc.copy()
    y = adata.obs["is_nk"].to_numpy().astype(object)
    if make == "object_nan":
        y[:5] = np.nan
    elif make == "categorical_nan":
        y = pd.Categorical(np.where(y == "NK", "NK", None))
    else:
        y[3] = "  "
    adata.obs["y"] = y
    for call in (lambda: ig.tl.train(adata, label_column="y", config=CONFIG),
                 lambda: ig.tl.select(adata, label_column="y", config=CONFIG)):
        with pytest.raises(InputDataError, match=r"^adata\.obs: \d+ sample\(s\) have no value in label column 'y'"):
            call()
    assert "iml_genomics" not in adata.uns


def test_an_absent_or_missing_label_column_lists_the_obs_columns(pbmc):
    adata = pbmc.copy()
    with pytest.raises(InputDataError, match=r"^adata\.obs: label column 'celltype' not found; columns of obs: "
                                             r"cell_type, louvain, is_nk\. .*label_column="):
        ig.tl.train(adata, label_column="celltype", config=CONFIG)
    with pytest.raises(InputDataError, match=r"^adata\.obs: no label column given; columns of obs"):
        ig.tl.train(adata, config=CONFIG)
    assert "iml_genomics" not in adata.uns


@pytest.mark.parametrize("kind", ["int", "bool"])
def test_integer_and_boolean_outcomes_take_their_class_as_itself(pbmc, kind):
    """positive_class=1 on an int column was refused with "1 is not a label ...; its labels are 0, 1"."""
    adata = pbmc.copy()
    is_nk = adata.obs["is_nk"].eq("NK")
    adata.obs["y"] = is_nk.astype(int) if kind == "int" else is_nk
    positive = 1 if kind == "int" else True
    ig.tl.train(adata, label_column="y", positive_class=positive, config=CONFIG)
    assert ig.get.provenance(adata, "train")["positive_class"] == str(positive)
    as_text = adata.copy()
    ig.tl.train(as_text, label_column="y", positive_class=str(positive), config=CONFIG)
    pd.testing.assert_frame_equal(ig.get.cv_metrics_df(adata), ig.get.cv_metrics_df(as_text))


def test_positive_class_on_many_cell_types_asks_it_against_the_rest(pbmc):
    """A cell type of a many-class column is that type against all the others (scanpy's reference='rest'),
    with the same results as a two-class column built by hand; the caller's obs is left as it was."""
    adata = pbmc.copy()
    ig.tl.train(adata, label_column="cell_type", positive_class="CD56+ NK", config=CONFIG)
    assert adata.obs["cell_type"].nunique() == 10  # not recoded in place
    manifest = ig.tl.load_model(adata)[1]
    assert manifest["classes"] == ["CD56+ NK", "rest"] and manifest["positive_class"] == "CD56+ NK"
    ig.tl.explain(adata)
    ig.tl.select(adata)
    assert len(NK_MARKERS & set(adata.var.nsmallest(10, "explain_rank").index)) >= 3
    by_hand = pbmc.copy()
    by_hand.obs["nk_vs_rest"] = np.where(by_hand.obs["cell_type"].astype(str) == "CD56+ NK", "CD56+ NK", "rest")
    ig.tl.train(by_hand, label_column="nk_vs_rest", positive_class="CD56+ NK", config=CONFIG)
    pd.testing.assert_frame_equal(ig.get.cv_metrics_df(adata), ig.get.cv_metrics_df(by_hand))
    # an unknown class on a multiclass column is named as such, with the labels
    with pytest.raises(InputDataError, match="not a label"):
        ig.tl.train(pbmc.copy(), label_column="cell_type", positive_class="NK", config=CONFIG)


def test_matrix_layouts_and_dtypes_give_the_same_model(pbmc):
    """CSC as CSR, float32 as float64, int32 counts as float counts: same tables out.

    (Sparse and dense input differ by design: sparse X is scaled without centring.)
    """
    half = pbmc.X.toarray().astype(np.float16)  # h5ad files written to save space
    for a, b in ((pbmc.X, sparse.csc_matrix(pbmc.X)), (pbmc.X.toarray(), pbmc.X.toarray().astype(np.float64)),
                 (half, half.astype(np.float64))):
        first, second = pbmc.copy(), pbmc.copy()
        first.X, second.X = a, b
        ig.tl.train(first, label_column="is_nk", positive_class="NK", config=CONFIG)
        ig.tl.train(second, label_column="is_nk", positive_class="NK", config=CONFIG)
        pd.testing.assert_frame_equal(ig.get.cv_metrics_df(first), ig.get.cv_metrics_df(second))
    counts = np.round(pbmc.X.toarray() * 3)
    as_int, as_float = pbmc.copy(), pbmc.copy()
    as_int.X, as_float.X = sparse.csc_matrix(counts.astype(np.int32)), sparse.csr_matrix(counts)
    cfg = {**CONFIG, "preprocess": {"transform": "log1p"}}
    ig.tl.train(as_int, label_column="is_nk", positive_class="NK", config=cfg)
    ig.tl.train(as_float, label_column="is_nk", positive_class="NK", config=cfg)
    pd.testing.assert_frame_equal(ig.get.cv_metrics_df(as_int), ig.get.cv_metrics_df(as_float))


def _bad(pbmc, case):
    adata = pbmc.copy()
    if case == "duplicate_genes":
        names = list(adata.var_names)
        names[5] = names[4]
        adata.var_names = names
    elif case == "nan_in_x":
        X = adata.X.tocsr(copy=True)
        X.data[7] = np.nan
        adata.X = X
    elif case == "bool_x":
        adata.X = adata.X.toarray() > 0
    elif case == "malformed_sparse":
        X = adata.X.tocsr(copy=True)
        X.indices[0] = 10**6
        adata.X = X
    return adata


@pytest.mark.parametrize("case, kwargs, needle", [
    ("duplicate_genes", {}, r"^adata\.var_names: duplicate gene id '.+' \(1 duplicated gene ids\)\. .*"
                            r"adata\.var_names_make_unique\(\)"),
    ("nan_in_x", {}, r"^adata\.X: 1 missing \(NaN\) or infinite values; first at sample"),
    ("bool_x", {}, r"^adata: X holds booleans, not expression values; pass layer= with a numeric layer"),
    ("malformed_sparse", {}, r"^adata: sparse X is malformed"),
    ("ok", {"layer": "counts"}, r"^adata\.layers has no 'counts' \(layers: none\); pass layer= one of them"),
    ("ok", {"use_raw": True}, r"^use_raw=True but adata\.raw is not set"),
    ("ok", {"use_raw": True, "layer": "x"}, r"^layer='x' and use_raw=True both given"),
])
def test_bad_matrices_are_refused_in_one_line_and_nothing_is_written(pbmc, case, kwargs, needle):
    adata = _bad(pbmc, case)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anndata's own warning on non-unique names
        with pytest.raises(InputDataError, match=needle) as err:
            ig.tl.train(adata, label_column="is_nk", positive_class="NK", config=CONFIG, **kwargs)
    assert "\n" not in str(err.value)
    assert "iml_genomics" not in adata.uns and "used_by_model" not in adata.var


def test_raw_missing_genes_of_var_is_refused(pbmc):
    adata = as_released(pbmc)
    adata.raw = adata[:, adata.var_names[10:]].copy()
    with pytest.raises(InputDataError, match=r"^adata\.raw\.var_names lacks 10 gene\(s\) of adata\.var_names"):
        ig.tl.train(adata, label_column="is_nk", positive_class="NK", config=CONFIG, use_raw=True)


def test_two_questions_on_one_anndata_survive_h5ad(pbmc, tmp_path):
    """NK-vs-rest and B-vs-rest side by side with key_added; each question's markers in its own columns."""
    adata = as_released(pbmc)
    adata.obs["is_b"] = np.where(adata.obs["cell_type"].astype(str).str.contains("B"), "B", "other")
    ig.tl.train(adata, label_column="is_nk", positive_class="NK", config=CONFIG, layer="lognorm", key_added="nk")
    ig.tl.train(adata, label_column="is_b", positive_class="B", config=CONFIG, layer="lognorm", key_added="b")
    for key in ("nk", "b"):
        ig.tl.explain(adata, key_added=key)
    path = tmp_path / "two.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    nk_top = set(back.var.nsmallest(10, "nk_explain_rank")["gene_symbols"])
    b_top = set(back.var.nsmallest(10, "b_explain_rank")["gene_symbols"])
    assert len(NK_MARKERS & nk_top) >= 3
    assert len(B_MARKERS & b_top) >= 3
    for key in ("nk", "b"):
        pd.testing.assert_frame_equal(ig.get.ranking_df(back, key_added=key), ig.get.ranking_df(adata, key_added=key))
        # explain on the file read back uses the layer train recorded: same ranking as in memory
        again = back.copy()
        ig.tl.explain(again, key_added=key)
        pd.testing.assert_frame_equal(ig.get.ranking_df(again, key_added=key),
                                      ig.get.ranking_df(adata, key_added=key))
    assert back.uns["iml_genomics"]["nk_train"]["params"]["positive_class"] == "NK"
    assert back.uns["iml_genomics"]["b_train"]["params"]["positive_class"] == "B"


def test_duplicate_obs_names_and_a_view_work(pbmc):
    """Concatenated files repeat cell barcodes; notebooks subset with views. Both run and write back."""
    adata = pbmc.copy()
    names = list(adata.obs_names)
    names[1] = names[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anndata's warnings: non-unique names, a view made actual
        adata.obs_names = names
        view = adata[adata.obs["cell_type"].astype(str) != "Dendritic"]
        ig.tl.train(view, label_column="is_nk", positive_class="NK", config=CONFIG)
        ig.tl.explain(view)
    assert view.obsm["shap"].shape == (view.n_obs, view.n_vars)
    assert len(NK_MARKERS & set(view.var.nsmallest(10, "explain_rank").index)) >= 3
    assert "iml_genomics" not in adata.uns  # the parent AnnData is left alone


def test_gene_sets_in_symbols_on_ensembl_ids_say_gene_map_and_then_work(pbmc):
    adata = as_released(pbmc)
    ig.tl.train(adata, label_column="is_nk", positive_class="NK", config=CONFIG, layer="lognorm")
    ig.tl.explain(adata)
    symbols = list(pbmc.var_names)
    sets = {"NK": sorted(NK_MARKERS & set(symbols)), "RIBO": [g for g in symbols if g.startswith("RP")][:25]}
    with pytest.raises(InputDataError, match=r"Pass gene_map= \(e\.g\. adata\.var\['gene_symbols'\]\)"):
        ig.tl.gene_sets(adata, sets)
    ig.tl.gene_sets(adata, sets, gene_map=adata.var["gene_symbols"])
    table = ig.get.gene_sets_df(adata).set_index("gene_set")
    assert table.loc["NK", "p_value"] < table.loc["RIBO", "p_value"]
