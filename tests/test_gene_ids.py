"""Gene identifier harmonisation (issue 17 item 2): descriptions, Ensembl versions, aliases, mapping rate."""

from pathlib import Path

import pandas as pd
import pytest

from iml_genomics import genesets as gs
from iml_genomics.errors import InputDataError
from iml_genomics.gene_ids import (is_symbol, load_gene_map, mapping_summary, read_alias_map,
                                   strip_ensembl_version, symbol_from_description)
from iml_genomics.report.inputs import ReportInputs
from iml_genomics.report.tables import build_biomarkers

ROOT = Path(__file__).resolve().parents[1]
GOLUB_MAP = ROOT / "test_data" / "golub_probes.tsv"
# words the issue saw in the symbol column of the Golub report, and their kin
DESCRIPTION_WORDS = {"GB", "DEF", "PUTATIVE", "PROTEIN", "X-LINKED", "CLONE", "TRANSCRIPTION", "PROBABLE",
                     "ZINC", "NUCLEAR", "MRNA", "DNA", "RNA", "T-CELL", "KERATIN,", "UNKNOWN", "HISTONE", "ATP"}


@pytest.fixture(scope="module")
def golub():
    table = pd.read_csv(GOLUB_MAP, sep="\t", dtype=str)
    ids = table["probe"].tolist()
    return table, ids, gs.read_gene_map(GOLUB_MAP, ids)


def test_golub_file_has_the_description_words_a_naive_parser_picks(golub):
    # the negative control: taking the first word (the old behaviour) does produce these words,
    # so the test below would fail on a parser that did it
    table, _, _ = golub
    first = set(table["description"].str.split(n=1).str[0].str.upper())
    assert {"GB", "PUTATIVE", "PROTEIN", "CLONE", "TRANSCRIPTION"} <= first


def test_golub_never_maps_a_description_word(golub):
    table, ids, m = golub
    assert m.attrs["symbol_column"] == "description"
    assert not set(m.to_numpy()) & DESCRIPTION_WORDS
    assert all(is_symbol(s) for s in m.to_numpy())
    keys = gs.map_gene_ids(ids, m)
    bm = build_biomarkers(ReportInputs(), gene_ids=ids, keys=keys, univariate=None, gene_set_table=None,
                          sets=None).set_index("gene_id")
    assert not set(bm["symbol"]) & DESCRIPTION_WORDS
    desc = table.set_index("probe")["description"]
    # every probe whose description is a GenBank 'GB DEF =' line or an all-capitals protein name keeps its id
    # ('GB DEF = Proliferating cell nuclear antigen (PCNA) gene' gives PCNA from the parenthesis)
    gb = desc.index[desc.str.startswith("GB DEF =")]
    src = m.attrs["sources"]
    assert {src[p] for p in gb if p in m.index} == {"description_parenthesis"}
    plain = [p for p in gb if p not in m.index]
    assert len(plain) > 150 and (bm.loc[plain, "symbol"] == plain).all()
    caps = desc.index[desc.str.upper() == desc]
    caps = [p for p in caps if not p.startswith("AFFX")]
    assert len(caps) > 100 and (bm.loc[caps, "symbol"] == caps).all()
    # the Hu6800 'SYMBOL Name' rows map to their symbol
    rows = {d: p for p, d in desc.items()}
    assert m[rows["GYS1 Glycogen synthase 1 (muscle)"]] == "GYS1"
    assert m[rows["HLA-C Major histocompatibility complex, class I, C"]] == "HLA-C"
    assert m[rows["GRO2 GRO2 oncogene"]] == "GRO2"
    assert m[rows["Interleukin 10 (IL10) gene"]] == "IL10"
    s = mapping_summary(ids, keys, m)
    assert s["n_measured_ids"] == 3051 and s["n_mapped"] + s["n_unmapped"] == 3051
    assert 0.40 < s["mapping_rate"] < 0.60, s
    assert s["by_source"]["description_leading"] > 1000 and s["by_source"]["description_parenthesis"] > 100


def test_golub_mapped_symbols_meet_go_better_than_first_words(golub):
    table, ids, m = golub
    go = gs.read_gmt(ROOT / "test_data" / "go_bp_2022-07.gmt.gz")
    members = set(gs.normalise_ids(g for genes in go.sets.values() for g in genes))
    parsed = set(m.to_numpy())
    naive = set(table["description"].str.split(n=1).str[0].str.upper())
    # fewer keys, yet at least as many found in GO: what was dropped was noise
    assert len(parsed & members) >= len(naive & members) and len(parsed) < len(naive)
    assert len(parsed & members) / len(parsed) > 0.45


@pytest.mark.parametrize("text, symbol", [
    ("CD33 CD33 antigen (differentiation antigen)", "CD33"),
    ("GB DEF = Topoisomerase type II (Topo II) mRNA, partial cds", None),
    ("GB DEF = Kazal-type serine proteinase (HUSI-II) gene", "HUSI-II"),
    ("PUTATIVE SERINE/THREONINE-PROTEIN KINASE", None),
    ("X-LINKED HELICASE II", None),
    ("X-LINKED helicase ii", None),
    ("PROTEASOME COMPONENT C8", None),
    ("Protein tyrosine phosphatase mRNA", None),
    ("FX protein mRNA", None),
    ("Insulin-like growth factor binding protein (hIGFBP1) gene", "IGFBP1"),
    ("AFFX-HUMISGF3A/M97935_MA_at (endogenous control)", None),
    ("ATP binding protein associated with cell differentiation", None),
])
def test_symbol_from_description(text, symbol):
    assert symbol_from_description(text)[0] == symbol


def test_symbol_column_cells_and_ensembl_versions(tmp_path):
    table = tmp_path / "map.tsv"
    table.write_text("gene_id\tsymbol\n"
                     "ENSG00000141510\ttp53\nENSG00000012048\tBRCA1 /// BRCA1P1\nENSG00000000003\t---\n"
                     "ENSG00000000005\tPUTATIVE\n")
    measured = ["ENSG00000141510.17", "ENSG00000012048.23", "ENSG00000000003.15", "ENSG00000000005.6",
                "ENSG00000002586.20_PAR_Y"]
    m = gs.read_gene_map(table, [strip_ensembl_version(g) for g in measured])
    keys = gs.map_gene_ids(measured, m)
    # versions dropped for the lookup; '---' and a description word are not symbols, so those keep their id
    assert keys.tolist() == ["TP53", "BRCA1", "ENSG00000000003", "ENSG00000000005", "ENSG00000002586_PAR_Y"]
    assert gs.normalise_ids(["ensg00000141510.17", "ENSMUSG00000059552.9", "TP53.1"]).tolist() == \
        ["ENSG00000141510", "ENSMUSG00000059552", "TP53.1"]
    s = mapping_summary(measured, keys, m)
    assert (s["n_mapped"], s["n_unmapped"]) == (2, 3) and s["by_source"] == {"symbol_column": 2, "measured_id": 3}


def test_alias_map(tmp_path):
    gene_map = tmp_path / "map.tsv"
    gene_map.write_text("probe\tdescription\np1\tANX1 Annexin I (lipocortin I)\np2\tCD33 CD33 antigen\n"
                        "p3\tGB DEF = something\n")
    aliases = tmp_path / "aliases.tsv"
    aliases.write_text("alias\tsymbol\nANX1\tANXA1\nold9\tnew9\n")
    m = load_gene_map(gene_map, ["p1", "p2", "p3"], alias_map=aliases)
    keys = gs.map_gene_ids(["p1", "p2", "p3"], m)
    assert keys.tolist() == ["ANXA1", "CD33", "P3"]
    assert mapping_summary(["p1", "p2", "p3"], keys, m)["by_source"] == {
        "description_leading": 1, "alias": 1, "measured_id": 1}
    # without a gene map: measured ids that are old symbols
    only = load_gene_map(None, ["Old9", "CD33"], alias_map=aliases)
    assert gs.map_gene_ids(["Old9", "CD33"], only).tolist() == ["NEW9", "CD33"]
    assert load_gene_map(None, ["x"]) is None


def test_alias_map_refuses_ambiguous_and_bad_rows(tmp_path):
    bad = tmp_path / "a.tsv"
    bad.write_text("alias\tsymbol\nANX1\tANXA1\nANX1\tANXA2\n")
    with pytest.raises(InputDataError, match=r"row 3: alias 'ANX1' maps to both 'ANXA1' and 'ANXA2'"):
        read_alias_map(bad)
    bad.write_text("alias\tsymbol\nANX1\tannexin A1 protein\n")
    with pytest.raises(InputDataError, match=r"row 2: 'annexin A1 protein' is not a gene symbol"):
        read_alias_map(bad)
    bad.write_text("alias\nANX1\n")
    with pytest.raises(InputDataError, match="needs two columns"):
        read_alias_map(bad)
