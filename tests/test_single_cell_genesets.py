"""Real single-cell check of the gene-set directions (issue 12): PBMC cells (10x Genomics pbmc68k,
700 cells x 765 genes as shipped with scanpy, test_data/pbmc68k_reduced.h5ad), one cell type asked about
as --positive-class against all other cells, run as a user would (train, then report with GO BP).

The pathways known for the cell type must lead the list of sets named with it (``higher_in``), and the
pathways of the other cells must not be named with it. This is the failure the issue measured: with the
positive class chosen by sorted order, NK-cell cytotoxicity ranked 81st and MHC class II antigen
presentation (higher in the other cells) described the NK cells.
"""

from __future__ import annotations

import anndata as ad
import pandas as pd
import pytest

from conftest import TEST_DATA, run_cli

H5AD = TEST_DATA / "pbmc68k_reduced.h5ad"
GMT = TEST_DATA / "go_bp_2022-07.gmt.gz"

CONFIG = """seed: 0
task: classification
preprocess:
  transform: none        # log-normalised already (scanpy's .raw)
  standardize: true
model:
  name: l1_logistic
  params:
    C: 0.3
cv:
  n_splits: 3
"""


@pytest.fixture(scope="module")
def pbmc(tmp_path_factory):
    root = tmp_path_factory.mktemp("pbmc")
    cells = ad.read_h5ad(H5AD, backed="r").obs["cell_type"].astype(str)
    labels = pd.DataFrame({"cell_id": cells.index,
                           "nk": ["NK" if c == "CD56+ NK" else "other" for c in cells],
                           "b": ["B" if c == "CD19+ B" else "other" for c in cells]})
    labels.to_csv(root / "labels.tsv", sep="\t", index=False)
    (root / "pbmc.yaml").write_text(CONFIG)
    return root


def _report(pbmc, column, positive, name):
    root = pbmc
    run_cli("train", "--config", root / "pbmc.yaml", "--expression", H5AD, "--labels", root / "labels.tsv",
            "--label-column", column, "--positive-class", positive, "--jobs", "1", "--out", root / f"{name}_train")
    # the report finds expression, labels and the positive class through train's provenance
    run_cli("report", "--inputs", root / f"{name}_train", "--gene-sets", GMT, "--permutations", "300",
            "--out", root / f"{name}_report")
    out = root / f"{name}_report"
    table = pd.read_csv(out / "gene_sets.tsv", sep="\t", keep_default_na=False)
    return table, (out / "report.html").read_text()


def _own_list(table, cls):
    sub = table[table["higher_in"] == cls]
    assert sub["direction_rank"].astype(int).tolist() == list(range(1, len(sub) + 1))  # the tsv reads ranked
    return sub["gene_set"].tolist()


def test_b_cells_lead_with_b_cell_pathways(pbmc):
    table, html = _report(pbmc, "b", "B", "b")
    mine = _own_list(table, "B")
    # the three first sets named B are B-cell activation / proliferation sets, found by the list of genes
    # higher in B cells (CD79A, CD79B, MS4A1, BLK, BANK1, ...)
    assert all("B cell" in s for s in mine[:3]), mine[:5]
    first = table.set_index("gene_set").loc[mine[0]]
    assert float(first["q_value_positive_class"]) < 0.01
    assert {"CD79A", "MS4A1"} <= set(table.set_index("gene_set").loc["B cell activation (GO:0042113)",
                                                                     "overlap_genes_positive_class"].split(";"))
    # the other cells' pathways (myeloid activation) are not named B
    assert "myeloid leukocyte activation (GO:0002274)" in _own_list(table, "other")[:3]
    # the page: "Higher in B (positive class)" comes first and starts with a B-cell set
    head = html.index("Higher in B (positive class)")
    assert head < html.index("B cell", head) < html.index("Higher in other:")


def test_nk_cells_named_with_nk_pathways_not_antigen_presentation(pbmc):
    table, _ = _report(pbmc, "nk", "NK", "nk")
    t = table.set_index("gene_set")
    mine = _own_list(table, "NK")
    # MHC class II antigen presentation is higher in the other cells (dendritic cells, monocytes, B cells):
    # the issue found it describing the NK cells; here it leads the other cells' list
    theirs = _own_list(table, "other")
    assert all("MHC class II" in s or "antigen" in s for s in theirs[:5]), theirs[:5]
    assert not any("MHC class II" in s for s in mine)
    # with 765 genes only 10 members of NK-cell activation are measured (NK-cell-mediated cytotoxicity has 8,
    # below min_set_size): it is in the first ten of the NK list, named NK by its rank test
    assert "natural killer cell activation (GO:0030101)" in mine[:10], mine[:10]
    assert float(t.loc["natural killer cell activation (GO:0030101)", "nes"]) > 0
    # the NK markers lead the genes higher in NK (the split list), not the other cells' genes
    assert {"GNLY", "NKG7", "GZMB", "PRF1"} <= set(t.loc["cell killing (GO:0001906)",
                                                         "overlap_genes_positive_class"].split(";"))
    assert "HLA-DRA" in t.loc["cell killing (GO:0001906)", "overlap_genes_other_class"].split(";")
