"""Gene-set statistics against scipy, hand-computed cases, a brute-force
running sum, gseapy (when installed) and planted enrichment."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from iml_genomics import genesets as gs
from iml_genomics.errors import InputDataError

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ GMT
def _write(path, text, gz=False):
    data = text.encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def test_read_gmt_plain_and_gz_agree(tmp_path):
    text = "SET_A\tdesc a\tG1\tG2\tg3 \t\nSET_B\thttp://x\tG2\tG4\tG2\n\n# comment\n"
    a = gs.read_gmt(_write(tmp_path / "s.gmt", text))
    b = gs.read_gmt(_write(tmp_path / "s.gmt.gz", text, gz=True))
    assert a.sets == b.sets == {"SET_A": ["G1", "G2", "g3"], "SET_B": ["G2", "G4"]}
    assert a.descriptions == {"SET_A": "desc a", "SET_B": "http://x"}
    assert a.source == "s.gmt" and b.source == "s.gmt.gz"


@pytest.mark.parametrize("text, line, what", [
    ("SET_A\tdesc\tG1\nBROKEN_LINE_WITHOUT_TABS\n", 2, "not a GMT record"),
    ("SET_A\tdesc\tG1\nSET_B\tdesc\t\t\n", 2, "not a GMT record"),
    ("SET_A\tdesc\tG1\n\nSET_A\tdesc\tG2\n", 3, "already defined at line 1"),
])
def test_read_gmt_bad_line_names_file_and_line(tmp_path, text, line, what):
    path = _write(tmp_path / "bad.gmt", text)
    with pytest.raises(InputDataError) as err:
        gs.read_gmt(path)
    msg = str(err.value)
    assert str(path) in msg and f"line {line}" in msg and what in msg and "\n" not in msg


def test_read_gmt_missing_empty_and_not_gzip(tmp_path):
    with pytest.raises(InputDataError, match="not found"):
        gs.read_gmt(tmp_path / "nope.gmt")
    with pytest.raises(InputDataError, match="empty GMT"):
        gs.read_gmt(_write(tmp_path / "empty.gmt", "\n"))
    with pytest.raises(InputDataError, match="cannot read gene-set file"):
        gs.read_gmt(_write(tmp_path / "fake.gmt.gz", "SET\td\tG1\n"))
    (tmp_path / "latin.gmt").write_bytes(b"SET\td\tG\xe91\n")
    with pytest.raises(InputDataError, match="line 1: not UTF-8"):
        gs.read_gmt(tmp_path / "latin.gmt")


def test_golub_probe_map_and_harmonisation():
    probes = pd.read_csv(ROOT / "test_data" / "golub_probes.tsv", sep="\t", dtype=str)["probe"].tolist()
    gene_map = gs.read_gene_map(ROOT / "test_data" / "golub_probes.tsv", probes)
    assert gene_map.attrs["id_column"] == "probe" and gene_map.attrs["symbol_column"] == "description"
    keys = gs.map_gene_ids(probes, gene_map)
    assert keys["M27891_at"] == "CST3" and keys["M23197_at"] == "CD33" and keys["M92287_at"] == "CCND3"
    # several probes of one gene share one key
    assert (keys == "CST3").sum() >= 1 and keys.duplicated().any()
    # ids absent from the map fall back to their own harmonised id (case, whitespace)
    mixed = gs.map_gene_ids([" cst3 ", "Zyx"], None)
    assert mixed.tolist() == ["CST3", "ZYX"]


def test_restrict_gene_sets_background_and_size_limits():
    coll = gs.GeneSetCollection({"A": ["g1", "G2", "G3", "X9"], "B": ["G1"], "C": [f"G{i}" for i in range(1, 8)]})
    kept, table = gs.restrict_gene_sets(coll, ["G1", "G2", "G3", "G4", "G5"], min_size=2, max_size=4)
    assert kept == {"A": ["G1", "G2", "G3"]}  # X9 is not measured; B too small; C (5 measured) too large
    assert table.set_index("gene_set")["n_measured"].to_dict() == {"A": 3, "B": 1, "C": 5}
    assert table.set_index("gene_set")["set_size"].to_dict() == {"A": 4, "B": 1, "C": 7}


# ------------------------------------------------------------------------------------------ statistics
def test_benjamini_hochberg_hand_computed():
    # sorted p: 0.01, 0.03, 0.04, 0.20 (m = 4) -> m p / i = 0.04, 0.06, 0.0533, 0.20
    # step-up minimum from the largest: 0.20, 0.0533, 0.0533, 0.04
    q = gs.benjamini_hochberg([0.04, 0.01, 0.20, 0.03, np.nan])
    np.testing.assert_allclose(q[:4], [0.16 / 3, 0.04, 0.20, 0.16 / 3], rtol=1e-12)
    assert np.isnan(q[4])
    p = np.random.default_rng(1).random(200) ** 2
    np.testing.assert_allclose(gs.benjamini_hochberg(p), stats.false_discovery_control(p, method="bh"), rtol=1e-12)


def test_hypergeometric_matches_scipy_and_fisher():
    rng = np.random.default_rng(0)
    universe = [f"G{i:04d}" for i in range(1000)]
    sets = {f"S{j}": sorted(rng.choice(universe, size=int(rng.integers(10, 120)), replace=False)) for j in range(30)}
    selected = list(rng.choice(universe, size=60, replace=False)) + sets["S3"][:8]
    res = gs.over_representation(selected + ["NOT_MEASURED"], universe, sets).set_index("gene_set")
    chosen = set(selected)
    for name, members in sets.items():
        x = len(chosen & set(members))
        expect = stats.hypergeom.sf(x - 1, len(universe), len(members), len(chosen))
        assert res.loc[name, "n_overlap"] == x
        assert res.loc[name, "p_value"] == pytest.approx(expect, rel=1e-10, abs=1e-300)
        table = [[x, len(chosen) - x], [len(members) - x, len(universe) - len(members) - len(chosen) + x]]
        assert res.loc[name, "p_value"] == pytest.approx(stats.fisher_exact(table, alternative="greater")[1],
                                                         rel=1e-8)
        if min(min(r) for r in table) > 0:
            assert res.loc[name, "odds_ratio"] == pytest.approx(stats.contingency.odds_ratio(
                table, kind="sample").statistic, rel=1e-12)
        assert res.loc[name, "overlap_genes"] == ";".join(sorted(chosen & set(members)))
    assert res["n_selected"].iloc[0] == len(chosen)
    np.testing.assert_allclose(res["q_value"], gs.benjamini_hochberg(res["p_value"]))
    assert res["p_value"].idxmin() == "S3"


def _reference_es(ranked_scores: np.ndarray, member: np.ndarray, weight: float = 1.0) -> float:
    """Plain O(N) running sum of Subramanian et al. 2005, for checking."""
    w = np.abs(ranked_scores) ** weight
    hit = np.where(member, w / w[member].sum(), 0.0)
    miss = np.where(member, 0.0, 1.0 / (~member).sum())
    run = np.cumsum(hit - miss)
    return run.max() if abs(run.max()) >= abs(run.min()) else run.min()


def test_prerank_es_equals_brute_force_running_sum():
    rng = np.random.default_rng(3)
    genes = [f"G{i:04d}" for i in range(500)]
    scores = pd.Series(rng.standard_normal(500), index=genes)
    sets = {f"S{j}": list(rng.choice(genes, size=int(rng.integers(5, 60)), replace=False)) for j in range(40)}
    res = gs.prerank(scores, sets, n_permutations=50, random_state=0).set_index("gene_set")
    order = np.argsort(-scores.to_numpy(), kind="mergesort")
    ranked = scores.to_numpy()[order]
    ranked_genes = np.array(genes)[order]
    for name, members in sets.items():
        es = _reference_es(ranked, np.isin(ranked_genes, members))
        assert res.loc[name, "es"] == pytest.approx(es, abs=1e-12)
        lead = res.loc[name, "leading_edge"].split(";")
        assert set(lead) <= set(members) and res.loc[name, "n_leading_edge"] == len(lead)
        # the leading edge is the set's genes up to (ES > 0) or from (ES < 0) the peak
        pos = sorted(np.flatnonzero(np.isin(ranked_genes, lead)))
        if res.loc[name, "es"] > 0:
            assert pos[0] == min(np.flatnonzero(np.isin(ranked_genes, members)))
        else:
            assert pos[-1] == max(np.flatnonzero(np.isin(ranked_genes, members)))


def test_prerank_planted_set_ranks_first_and_null_is_calibrated():
    rng = np.random.default_rng(11)
    genes = [f"G{i:05d}" for i in range(3000)]
    sets = {f"SET_{j:03d}": list(rng.choice(genes, size=40, replace=False)) for j in range(150)}
    scores = pd.Series(rng.standard_normal(3000), index=genes)
    null = gs.prerank(scores, sets, n_permutations=200, random_state=1)
    # under the null (no planted signal) permutation p-values are ~uniform
    assert stats.kstest(null["p_value"], "uniform").pvalue > 0.001
    assert 0.0 < (null["p_value"] <= 0.05).mean() < 0.15
    scores[sets["SET_077"]] += 1.2
    res = gs.prerank(scores, sets, n_permutations=500, random_state=1)
    best = res.sort_values(["p_value", "nes"], ascending=[True, False]).iloc[0]
    # p is at its floor 1 / (1 + #null ES >= 0): no random 40-subset scored as high
    assert best["gene_set"] == "SET_077" and best["nes"] > 1.5 and best["p_value"] < 0.01
    assert best["q_value"] == res["q_value"].min()
    assert res.set_index("gene_set")["nes"].idxmax() == "SET_077"
    # the same planted set is first for over-representation of the top 200 genes
    top = scores.sort_values(ascending=False).index[:200]
    ora = gs.over_representation(top, genes, sets)
    assert ora.sort_values("p_value").iloc[0]["gene_set"] == "SET_077"


def test_prerank_is_seeded():
    rng = np.random.default_rng(5)
    genes = [f"G{i}" for i in range(400)]
    scores = pd.Series(rng.standard_normal(400), index=genes)
    sets = {f"S{j}": list(rng.choice(genes, size=25, replace=False)) for j in range(10)}
    a = gs.prerank(scores, sets, n_permutations=100, random_state=7)
    b = gs.prerank(scores, sets, n_permutations=100, random_state=7)
    c = gs.prerank(scores, sets, n_permutations=100, random_state=8)
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a["p_value"], c["p_value"])
    np.testing.assert_array_equal(a["es"], c["es"])  # ES does not depend on permutations


def test_prerank_against_gseapy():
    gseapy = pytest.importorskip("gseapy")
    rng = np.random.default_rng(2)
    genes = [f"GENE{i:04d}" for i in range(1500)]
    scores = pd.Series(rng.standard_normal(1500), index=genes)
    sets = {f"S{j:02d}": list(rng.choice(genes, size=int(rng.integers(15, 80)), replace=False)) for j in range(40)}
    for j in range(0, 40, 5):
        scores[sets[f"S{j:02d}"]] += 0.5
    ours = gs.prerank(scores, sets, n_permutations=500, random_state=0).set_index("gene_set")
    pre = gseapy.prerank(rnk=scores.sort_values(ascending=False), gene_sets=sets, min_size=1, max_size=1000,
                         permutation_num=500, weight=1.0, threads=1, seed=0, outdir=None, no_plot=True)
    theirs = pre.res2d.set_index("Term")
    both = ours.join(theirs, how="inner")
    assert len(both) == 40
    np.testing.assert_allclose(both["es"], both["ES"].astype(float), atol=1e-10)
    assert np.corrcoef(both["nes"], both["NES"].astype(float))[0, 1] > 0.99
    lead_ours = both["leading_edge"].str.split(";").map(set)
    lead_theirs = both["Lead_genes"].str.split(";").map(set)
    assert (lead_ours == lead_theirs).mean() > 0.95


def test_collapse_scores_keeps_largest_absolute_score():
    scores = pd.Series({"p1": 0.5, "p2": -2.0, "p3": 1.0, "p4": 1.0})
    keys = pd.Series({"p1": "A", "p2": "A", "p3": "B", "p4": "B"})
    out = gs.collapse_scores(scores, keys)
    assert out.to_dict() == {"A": -2.0, "B": 1.0}


def test_group_attributions_hand_computed():
    attr = pd.DataFrame({"p1": [1.0, -3.0], "p2": [2.0, 0.0], "p3": [-1.0, 1.0]}, index=["s1", "s2"])
    keys = pd.Series({"p1": "A", "p2": "A", "p3": "B"})  # two probes of gene A
    overall, per = gs.group_attributions(attr, keys, {"SET_AB": ["A", "B"], "SET_B": ["B"], "SET_C": ["C"]})
    # per sample sums of |SHAP|: SET_AB: s1 1+2+1 = 4, s2 3+0+1 = 4; SET_B: 1, 1; SET_C: no measured member
    assert per.loc["s1"].to_dict() == {"SET_AB": 4.0, "SET_B": 1.0, "SET_C": 0.0}
    o = overall.set_index("gene_set")
    assert o.loc["SET_AB", "sum_abs_shap"] == 4.0 and o.loc["SET_AB", "mean_abs_shap"] == pytest.approx(4 / 3)
    assert o.loc["SET_AB", "rank"] == 1 and o.loc["SET_B", "rank"] == 2 and np.isnan(o.loc["SET_C", "mean_abs_shap"])


def test_read_gene_map_columns_and_errors(tmp_path):
    table = tmp_path / "map.tsv"
    table.write_text("ensembl\tgene_symbol\tother\nENSG1\t tp53 \tx\nENSG2\tBRCA1 extra words\ty\nENSG3\t\tz\n")
    m = gs.read_gene_map(table, ["ENSG1", "ENSG2", "ENSG9"])
    assert m.attrs["id_column"] == "ensembl" and m.attrs["symbol_column"] == "gene_symbol"
    assert m.to_dict() == {"ENSG1": "TP53", "ENSG2": "BRCA1"}  # empty symbol left out, first word kept
    assert gs.map_gene_ids(["ENSG1", "ENSG3"], m).tolist() == ["TP53", "ENSG3"]
    m2 = gs.read_gene_map(table, ["ENSG1"], id_column="ensembl", symbol_column="other")
    assert m2["ENSG1"] == "X"
    with pytest.raises(InputDataError, match="no column of the gene map holds the measured gene ids"):
        gs.read_gene_map(table, ["PROBE_1"])
    with pytest.raises(InputDataError, match="symbol column 'sym' not found"):
        gs.read_gene_map(table, ["ENSG1"], symbol_column="sym")
