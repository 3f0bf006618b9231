"""Over-representation split by direction (issue 12, item 4): the query genes higher in the positive
class and those higher in the other class, each tested against the same background under the same null.

Planted pathways in each direction must land in the list of their class (and not in the other), a mixed
set is named by its stronger half, and under the global null with correlated sets neither list flags
beyond the nominal rate (where the genes-independent hypergeometric on the same lists does)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from iml_genomics import genesets as gs
from iml_genomics.report import ReportInputs
from iml_genomics.report.tables import (ORA_DIRECTION_COLUMNS, _direction_queries, analyse_gene_sets,
                                        univariate_effects)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import genesets_null as study  # noqa: E402


def _planted(seed=5, n=80, effect=1.5):
    """SET_000/001 higher in 'case', SET_002/003 higher in 'control', SET_004 half up / half down
    (50 genes up in each class: all of them fit in a top-60 list)."""
    adata, sets, _ = study.simulate_sets(n=n, n_sets=20, set_size=20, rho=0.3, seed=seed)
    X = adata.X
    y = adata.obs["condition"].to_numpy()
    cols = {name: [adata.var_names.get_loc(g) for g in members] for name, members in sets.items()}
    for name in ("SET_000", "SET_001"):
        X[np.ix_(y == "case", cols[name])] += effect
    for name in ("SET_002", "SET_003"):
        X[np.ix_(y == "control", cols[name])] += effect
    X[np.ix_(y == "case", cols["SET_004"][:10])] += effect
    X[np.ix_(y == "control", cols["SET_004"][10:])] += 0.6 * effect
    return adata, sets


def _analyse(adata, sets, *, positive="case", null="auto", n_permutations=200, top_k=60, seed=0):
    classes = (positive, "control" if positive == "case" else "case")
    uni = univariate_effects(adata, label_column="condition", task="classification", positive_class=positive)
    return analyse_gene_sets(
        ReportInputs(), gs.GeneSetCollection(sets, source="sim"), gene_map=None, univariate=uni, min_size=5,
        max_size=500, top_k=top_k, n_permutations=n_permutations, ranking_metric="univariate", q_threshold=0.1,
        random_state=seed, gene_ids=list(adata.var_names), classes=classes, adata=adata,
        label_column="condition", task="classification", positive_class=positive, null=null)


@pytest.mark.parametrize("null", ["auto", "correlation_adjusted"])
def test_planted_pathways_are_found_in_the_list_of_their_direction(null):
    adata, sets = _planted()
    res = _analyse(adata, sets, null=null)
    t = res.table.set_index("gene_set")
    assert set(ORA_DIRECTION_COLUMNS) <= set(t.columns)
    assert set(t["null_method"]) == {"phenotype_permutation" if null == "auto" else "correlation_adjusted"}
    # each list is the top_k genes of its own direction, so both have top_k genes here
    assert t["n_query_positive_class"].iloc[0] == 60 and t["n_query_other_class"].iloc[0] == 60
    assert res.summary["n_query_ids_positive_class"] == 60
    for up in ("SET_000", "SET_001"):
        assert t.loc[up, "q_value_positive_class"] <= 0.05 and t.loc[up, "q_value_other_class"] > 0.5
        assert t.loc[up, "higher_in"] == "case"
    for down in ("SET_002", "SET_003"):
        assert t.loc[down, "q_value_other_class"] <= 0.05 and t.loc[down, "q_value_positive_class"] > 0.5
        assert t.loc[down, "higher_in"] == "control"
    # the overlap columns list only genes of that direction
    up_genes = set(t.loc["SET_000", "overlap_genes_positive_class"].split(";"))
    assert up_genes <= set(sets["SET_000"]) and len(up_genes) >= 10
    assert t.loc["SET_002", "n_overlap_positive_class"] <= 2
    # the mixed set: each half over-represented in its own list (the unsigned list cannot say this)
    assert t.loc["SET_004", "n_overlap_positive_class"] >= 8 and t.loc["SET_004", "n_overlap_other_class"] >= 8
    if null == "auto":  # CAMERA's VIF (rho 0.3, 20 genes) is too conservative for half a set at this n
        assert max(t.loc["SET_004", "p_value_positive_class"], t.loc["SET_004", "p_value_other_class"]) < 0.05
    assert t.loc["SET_004", "higher_in"] in ("case", "control")
    # null sets stay out of both lists
    nulls = [s for s in sets if s >= "SET_005"]
    assert (t.loc[nulls, ["q_value_positive_class", "q_value_other_class"]] > 0.1).all().all()
    # each direction's list reads best first: planted sets lead their class, in gene_sets.tsv order
    for cls, first in (("case", {"SET_000", "SET_001"}), ("control", {"SET_002", "SET_003"})):
        sub = res.table[res.table["higher_in"] == cls]
        assert set(sub["gene_set"].head(2)) == first
        assert sub["direction_rank"].tolist() == list(range(1, len(sub) + 1))
        assert sub["rank"].is_monotonic_increasing


def test_swapping_the_positive_class_swaps_the_two_lists():
    adata, sets = _planted()
    a = _analyse(adata, sets, positive="case").table.set_index("gene_set")
    b = _analyse(adata, sets, positive="control").table.set_index("gene_set").loc[a.index]
    for f in ("n_overlap", "overlap_genes", "p_value"):
        pd.testing.assert_series_equal(a[f"{f}_positive_class"], b[f"{f}_other_class"], check_names=False)
    assert (a["higher_in"] == b["higher_in"]).all()


def test_fixed_query_is_split_by_the_sign_of_its_statistic():
    uni = pd.DataFrame({"statistic": [3.0, -2.0, 0.0, np.nan, 1.0], "p_value": [0.01, 0.02, 1.0, np.nan, 0.2]},
                       index=["a", "b", "c", "d", "e"])
    # a knockoff selection / SHAP list: split, not extended
    assert _direction_queries(["a", "b", "c", "d"], "knockoff selection (4 genes)", uni, ("x", "y"), 50) == (
        ["a"], ["b"])
    # the univariate list: the top_k of each direction by p-value
    assert _direction_queries([], "top 2 genes by univariate p-value", uni, ("x", "y"), 1) == (["a"], ["b"])
    assert _direction_queries(["a"], "top 1 genes by univariate p-value", uni, None, 1) is None


def _split_flags(adata, sets, *, q=0.1, n_permutations=200, top_k=50):
    """Any set with q <= q in each direction's list: under the report's null, and under the hypergeometric
    (genes independent) on the very same two lists."""
    res = _analyse(adata, sets, n_permutations=n_permutations, top_k=top_k)
    t = res.table
    uni = univariate_effects(adata, label_column="condition", task="classification", positive_class="case")
    split = _direction_queries([], f"top {top_k} genes by univariate p-value", uni, ("case", "control"), top_k)
    out = {}
    for side, half in zip(("positive_class", "other_class"), split):
        hyper = gs.over_representation(half, list(adata.var_names), sets)
        out[side] = bool((t[f"q_value_{side}"] <= q).any())
        out[f"{side}_hypergeometric"] = bool((hyper["q_value"] <= q).any())
    return out


def test_direction_split_is_calibrated_under_correlated_global_null():
    """Global null, within-set correlation 0.6: each list flags a set in at most q + 2 MC SE of the
    replicates; the hypergeometric on the same lists exceeds that bound (so the check can fail)."""
    reps, q = 30, 0.1
    hits = {}
    for r in range(reps):
        adata, sets, _ = study.simulate_sets(n=60, n_sets=30, set_size=20, rho=0.6, seed=500 + r)
        for k, v in _split_flags(adata, sets, q=q).items():
            hits[k] = hits.get(k, 0) + v
    rate = {k: v / reps for k, v in hits.items()}
    bound = q + 2 * np.sqrt(q * (1 - q) / reps)
    assert rate["positive_class"] <= bound and rate["other_class"] <= bound, rate
    assert max(rate["positive_class_hypergeometric"], rate["other_class_hypergeometric"]) > bound, rate


def test_direction_rule_strong_evidence_names_weak_evidence_does_not():
    """One side at q <= 0.1 names the set; both: the smaller p; neither: the sign of direction_score, however
    small one side's p-value (the longer of two unequal lists wins such comparisons by size alone)."""
    from iml_genomics.report.tables import set_directions

    genes = [f"G{i}" for i in range(8)]
    keys = pd.Series(genes, index=genes)
    uni = pd.DataFrame({"statistic": [3.0, 3.0, -3.0, -3.0, 3.0, -3.0, -3.0, -3.0]}, index=genes)
    sets = {"ONLY_OTHER_STRONG": genes[0:2], "BOTH_STRONG": genes[2:4], "WEAK": genes[5:8], "NONE": genes[4:5]}
    table = pd.DataFrame({
        "gene_set": list(sets), "nes": [1.0, -1.0, 1.0, 1.0], "gsea_p_value": 0.5, "gsea_q_value": 0.9,
        # ONLY_OTHER_STRONG: the positive list has the smaller p but only the other list reaches q <= 0.1
        "p_value_positive_class": [0.001, 0.01, 0.004, np.nan], "q_value_positive_class": [0.3, 0.05, 0.4, np.nan],
        "p_value_other_class": [0.002, 0.001, 0.5, np.nan], "q_value_other_class": [0.05, 0.02, 0.9, np.nan]})
    got = set_directions(table, sets, keys, uni, "mean_abs_shap", ("case", "control"), 0.1)[0].set_index("gene_set")
    assert got.loc["ONLY_OTHER_STRONG", "higher_in"] == "control"
    assert got.loc["BOTH_STRONG", "higher_in"] == "control"  # p 0.001 < 0.01
    # WEAK: p 0.004 in the positive list, q 0.4: the members' mean t (-3) decides
    assert got.loc["WEAK", "higher_in"] == "control" and got.loc["WEAK", "direction_score"] < 0
    assert got.loc["NONE", "higher_in"] == "case"
    # the rank test on an unsigned score points by direction_score when NES > 0, and counts when strong:
    # ONLY_OTHER_STRONG (members' t = +3) then has strong evidence on both sides, the rank test's p is smaller
    table2 = table.assign(gsea_q_value=[0.01, 0.9, 0.9, 0.9], gsea_p_value=[0.0001, 0.5, 0.5, 0.5])
    got2 = set_directions(table2, sets, keys, uni, "mean_abs_shap", ("case", "control"), 0.1)[0]
    assert got2.set_index("gene_set").loc["ONLY_OTHER_STRONG", "higher_in"] == "case"
    table3 = table2.assign(nes=[-1.0, -1.0, 1.0, 1.0])  # NES < 0 on an unsigned score: no direction from it
    got3 = set_directions(table3, sets, keys, uni, "mean_abs_shap", ("case", "control"), 0.1)[0]
    assert got3.set_index("gene_set").loc["ONLY_OTHER_STRONG", "higher_in"] == "control"
