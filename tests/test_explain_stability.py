"""Ranking stability: per-gene intervals and frequencies, agreement between refits."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import kendalltau

from iml_genomics.explain import bootstrap_splits, ranking_stability


def test_identical_refits_agree_perfectly():
    imp = np.tile([5.0, 4.0, 3.0, 0.0, 1.0], (4, 1))
    table, agree = ranking_stability(imp, gene_ids=list("abcde"), top_k=2)
    assert agree["jaccard_top_k_mean"] == 1.0 and agree["kendall_tau_mean"] == pytest.approx(1.0)
    assert table["top_k_frequency"].tolist() == [1, 1, 0, 0, 0]
    assert table["rank_low"].tolist() == [1, 2, 3, 5, 4] and table["rank_high"].tolist() == [1, 2, 3, 5, 4]
    assert np.all(table["sd"] == 0)


def test_unstable_gene_has_wide_interval_and_kendall_matches_scipy():
    rng = np.random.default_rng(0)
    imp = rng.uniform(0, 1, size=(10, 30))
    imp[:, 0] = 10  # always first
    imp[::2, 1] = 5  # first-or-second in half the refits, random otherwise
    table, agree = ranking_stability(imp, gene_ids=[f"g{j:02d}" for j in range(30)], top_k=3)
    row0, row1 = table.iloc[0], table.iloc[1]
    assert row0["top_k_frequency"] == 1.0 and row0["rank_low"] == row0["rank_high"] == 1
    assert row1["rank_low"] == 2 and row1["rank_high"] > 5 and 0.5 <= row1["top_k_frequency"] < 1
    taus = [kendalltau(imp[a], imp[b]).statistic for a in range(10) for b in range(a + 1, 10)]
    assert agree["kendall_tau_mean"] == pytest.approx(np.mean(taus))
    assert agree["n_pairs"] == 45


def test_zero_importance_is_never_top_k_and_ties_break_by_gene_id():
    imp = np.array([[0.0, 0.0, 2.0, 0.0], [0.0, 1.0, 2.0, 0.0]])
    table, agree = ranking_stability(imp, gene_ids=["d", "c", "b", "a"], top_k=3)
    assert table.set_index("gene_id")["top_k_frequency"].to_dict() == {"d": 0, "c": 0.5, "b": 1, "a": 0}
    assert agree["jaccard_top_k_mean"] == pytest.approx(0.5)


def test_stratified_bootstrap_keeps_every_class_and_oob_is_disjoint():
    y = np.array(["x"] * 30 + ["y"] * 4)
    for _, _, train, oob in bootstrap_splits(len(y), n_bootstraps=5, random_state=1, y=y, stratify=True):
        assert set(y[train]) == {"x", "y"} and len(train) == len(y)
        assert not set(train) & set(oob)
