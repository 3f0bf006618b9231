"""evaluate: metrics against hand computations and independent references; the CLI end to end."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from iml_genomics.evaluate import (
    average_precision,
    complete_ranking,
    evaluate_against_truth,
    jaccard,
    kendall_tau,
    precision_at_k,
    prediction_gaps,
    ranking_agreement,
    ranking_from_table,
    ranking_metrics,
    selection_from_table,
    selection_metrics,
)


def _invoke(*args):
    from click.testing import CliRunner

    from iml_genomics.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


# ---------------------------------------------------------------------------
# hand-computed values
# ---------------------------------------------------------------------------


def test_selection_fdp_and_power_by_hand():
    m = selection_metrics(["a", "b", "c", "d"], ["a", "b", "x"])
    # 4 selected, 2 true among them: FDP = 2/4; 2 of 3 true genes found: power = 2/3
    assert m == {"n_selected": 4, "n_true": 3, "true_positives": 2, "false_positives": 2, "false_negatives": 1,
                 "fdp": 0.5, "power": pytest.approx(2 / 3)}
    empty = selection_metrics([], ["a", "b"])
    assert empty["fdp"] == 0.0 and empty["power"] == 0.0  # FDP of an empty selection is 0 by convention
    perfect = selection_metrics(["a", "b"], ["b", "a"])
    assert perfect["fdp"] == 0.0 and perfect["power"] == 1.0
    # duplicates do not count twice
    assert selection_metrics(["a", "a", "z"], ["a"])["fdp"] == 0.5


def test_precision_at_k_by_hand():
    ranking = ["a", "x1", "b", "x2", "c", "x3"]
    truth = ["a", "b", "c", "d"]
    t = precision_at_k(ranking, truth, [1, 2, 3, 5, 10]).set_index("k")
    assert t.loc[1, "precision_at_k"] == 1.0
    assert t.loc[2, "precision_at_k"] == 0.5
    assert t.loc[3, "precision_at_k"] == pytest.approx(2 / 3)
    assert t.loc[5, "precision_at_k"] == pytest.approx(3 / 5)
    assert t.loc[5, "recall_at_k"] == pytest.approx(3 / 4)
    assert t.loc[5, "fdp_at_k"] == pytest.approx(2 / 5)
    # k beyond the ranking uses all 6 genes
    assert t.loc[10, "n_in_top_k"] == 6 and t.loc[10, "precision_at_k"] == 0.5


def test_average_precision_by_hand_and_against_sklearn():
    from sklearn.metrics import average_precision_score

    ranking = ["a", "x1", "b", "x2", "c", "x3"]
    # hits at ranks 1, 3, 5: (1/1 + 2/3 + 3/5) / 4 true genes (d never ranked)
    assert average_precision(ranking, ["a", "b", "c", "d"]) == pytest.approx((1 + 2 / 3 + 3 / 5) / 4)
    rng = np.random.default_rng(0)
    genes = [f"g{i}" for i in range(200)]
    for _ in range(5):
        order = list(rng.permutation(genes))
        truth = set(rng.choice(genes, size=15, replace=False))
        labels = np.array([g in truth for g in order])
        ref = average_precision_score(labels, -np.arange(len(order)))
        assert average_precision(order, truth) == pytest.approx(ref, abs=1e-12)


def test_ranking_summary_by_hand():
    m = ranking_metrics(["a", "b", "x", "c", "y"], ["a", "b", "c"])
    assert m["first_false_rank"] == 3 and m["last_true_rank"] == 4
    assert m["r_precision"] == pytest.approx(2 / 3)
    assert m["n_true_ranked"] == 3


def test_jaccard_and_kendall_against_scipy():
    from scipy.stats import kendalltau

    assert jaccard({"a", "b", "c"}, {"b", "c", "d"}) == 0.5
    assert jaccard([], []) == 1.0
    rng = np.random.default_rng(1)
    a = [f"g{i}" for i in rng.permutation(30)]
    b = [f"g{i}" for i in rng.permutation(30)]
    ref = kendalltau([a.index(g) for g in a], [b.index(g) for g in a]).statistic
    assert kendall_tau(a, b) == pytest.approx(ref)
    assert kendall_tau(a, a) == pytest.approx(1.0)
    assert kendall_tau(a, a[::-1]) == pytest.approx(-1.0)
    pairs, summary = ranking_agreement({"r1": ["a", "b", "c", "d"], "r2": ["b", "a", "d", "c"],
                                        "r3": ["d", "c", "b", "a"]}, [2])
    # top-2 sets {a,b}, {a,b}, {c,d}: Jaccards 1, 0, 0
    assert sorted(pairs["jaccard"]) == [0.0, 0.0, 1.0]
    assert summary.loc[0, "mean_jaccard"] == pytest.approx(1 / 3)


def test_tables_from_explain_and_select_outputs():
    ranking = pd.DataFrame({"gene_id": ["g3", "g1", "g2", "g4"], "rank": ["2", "1", "3", "3"],
                            "mean_abs_shap": ["0.5", "0.9", "0.1", "0.1"]})
    # sorted by rank, ties broken by gene id
    assert ranking_from_table(ranking, "r") == {"r": ["g1", "g3", "g2", "g4"]}
    by_method = ranking.assign(method=["shap", "shap", "perm", "perm"])
    assert ranking_from_table(by_method, "r") == {"r:perm": ["g2", "g4"], "r:shap": ["g1", "g3"]}
    sel = pd.DataFrame({"gene_id": ["g1", "g2", "g3", "g4"], "selected": ["True", "false", "1", "0"],
                        "w": ["2.0", "0.1", "1.5", "-0.3"]})
    assert selection_from_table(sel) == ["g1", "g3"]
    assert selection_from_table(sel.drop(columns="selected")) == ["g1", "g2", "g3", "g4"]
    from iml_genomics.errors import InputDataError

    with pytest.raises(InputDataError, match="gene_id"):
        ranking_from_table(pd.DataFrame({"gene": ["a"]}), "bad.tsv")
    with pytest.raises(InputDataError, match="appears 2 times"):
        ranking_from_table(pd.DataFrame({"gene_id": ["a", "a"], "rank": [1, 2]}), "dup.tsv")


def test_evaluate_against_truth_tables_have_fixed_columns():
    out = evaluate_against_truth(["a", "b"], rankings={"r1": ["a", "x", "b"], "r2": ["x", "a", "b"]},
                                 selections={"s1": ["a"], "s2": ["a", "x"]}, k_values=[1, 2])
    assert list(out["selection_metrics"].columns) == ["source", "n_selected", "n_true", "true_positives",
                                                      "false_positives", "false_negatives", "fdp", "power"]
    assert out["selection_metrics"]["fdp"].tolist() == [0.0, 0.5]
    stab = out["stability"].set_index(["kind", "k"])
    assert stab.loc[("ranking_top_k", 1), "mean_jaccard"] == 0.0
    assert stab.loc[("ranking_top_k", 2), "mean_jaccard"] == 1.0
    assert out["stability"].query("kind == 'selection'")["mean_jaccard"].item() == 0.5


# ---------------------------------------------------------------------------
# prediction gaps
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cohort():
    from iml_genomics.simulate import simulate_gaussian

    return simulate_gaussian(150, 60, n_signal=4, effect_size=2.0, rho=0.3, block_size=10, seed=3)


def _pipeline():
    from iml_genomics.config import Config
    from iml_genomics.models import build_pipeline

    cfg = Config()
    cfg.model.params = {"C": 0.3, "solver": "liblinear"}  # liblinear: fast on small problems
    return build_pipeline(cfg, "classification")


def test_prediction_gaps_truth_vs_reversed_ranking_and_jobs_invariance(cohort):
    X = cohort.expression.to_numpy()
    y = cohort.labels["condition"].to_numpy(dtype=object)
    genes = list(cohort.expression.columns)
    good = complete_ranking(cohort.true_genes, genes)
    kwargs = dict(pipeline=_pipeline(), task="classification", classes=["normal", "tumour"], k_values=[4],
                  n_splits=3, n_random=2, random_state=5)
    table = prediction_gaps(X, y, genes, good, n_jobs=1, **kwargs)
    gaps = table.iloc[0]
    # removing the 4 true genes hurts far more than removing 4 random ones or the 4 last
    assert gaps["pgi"] > 0.15
    assert gaps["pgi"] > gaps["pgr"] + 0.1
    assert abs(gaps["pgu"]) < 0.05
    bad = prediction_gaps(X, y, genes, good[::-1], n_jobs=1, **kwargs).iloc[0]
    assert bad["pgu"] == pytest.approx(gaps["pgi"])  # reversed ranking swaps the roles
    # same seed -> same numbers with 1 or 2 workers
    pd.testing.assert_frame_equal(prediction_gaps(X, y, genes, good, n_jobs=2, **kwargs), table)
    with pytest.raises(ValueError, match="k must be"):
        prediction_gaps(X, y, genes, good, **{**kwargs, "k_values": [60]})


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------


def test_cli_evaluate_end_to_end(tmp_path, cohort):
    from iml_genomics.simulate import write_cohort

    write_cohort(cohort, tmp_path / "sim", "sim", detailed_truth=True)
    genes = list(cohort.expression.columns)
    truth = cohort.true_genes  # 4 genes
    others = [g for g in genes if g not in truth]
    order = [truth[0], others[0], truth[1], *others[1:], truth[2], truth[3]]
    (tmp_path / "explain").mkdir()
    pd.DataFrame({"gene_id": order, "rank": range(1, 61), "mean_abs_shap": np.linspace(1, 0, 60)}).to_csv(
        tmp_path / "explain" / "gene_ranking.tsv", sep="\t", index=False)
    (tmp_path / "seed2").mkdir()
    pd.DataFrame({"gene_id": order[::-1], "rank": range(1, 61)}).to_csv(
        tmp_path / "seed2" / "gene_ranking.tsv", sep="\t", index=False)
    (tmp_path / "select").mkdir()
    selected = {truth[0], truth[1], others[0]}
    pd.DataFrame({"gene_id": genes, "w": 0.0, "selected": [g in selected for g in genes]}).to_csv(
        tmp_path / "select" / "knockoff_selection.tsv", sep="\t", index=False)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("seed: 0\nn_jobs: 1\ndata:\n  label_column: condition\nmodel:\n  params: {C: 0.3, solver: liblinear}\n"
                   "cv:\n  n_splits: 3\n")
    res = _invoke("evaluate", "--truth", tmp_path / "sim" / "sim_truth.tsv",
                  "--ranking", tmp_path / "explain" / "gene_ranking.tsv",
                  "--ranking", tmp_path / "seed2" / "gene_ranking.tsv",
                  "--selection", tmp_path / "select" / "knockoff_selection.tsv", "--k", 2, "--k", 4,
                  "--expression", tmp_path / "sim" / "sim_expression.csv.gz", "--labels", tmp_path / "sim" / "sim_labels.tsv",
                  "--config", cfg, "--n-random", 1, "--out", tmp_path / "eval")
    assert res.exit_code == 0, res.output
    out = tmp_path / "eval"
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "precision_at_k.tsv", "prediction_gaps.tsv", "provenance.json", "ranking_metrics.tsv",
        "selection_metrics.tsv", "stability.tsv", "stability_pairs.tsv"]
    sel = pd.read_csv(out / "selection_metrics.tsv", sep="\t").iloc[0]
    assert sel["source"] == "select/knockoff_selection.tsv"
    assert (sel["n_selected"], sel["true_positives"], sel["false_positives"]) == (3, 2, 1)
    assert sel["fdp"] == pytest.approx(1 / 3) and sel["power"] == pytest.approx(2 / 4)
    pk = pd.read_csv(out / "precision_at_k.tsv", sep="\t").set_index(["source", "k"])
    assert pk.loc[("explain/gene_ranking.tsv", 2), "precision_at_k"] == 0.5
    assert pk.loc[("explain/gene_ranking.tsv", 4), "precision_at_k"] == 0.5
    rm = pd.read_csv(out / "ranking_metrics.tsv", sep="\t").set_index("source")
    # hits at ranks 1, 3, 59, 60
    assert rm.loc["explain/gene_ranking.tsv", "auprc"] == pytest.approx((1 + 2 / 3 + 3 / 59 + 4 / 60) / 4)
    gaps = pd.read_csv(out / "prediction_gaps.tsv", sep="\t")
    assert list(gaps.columns[:3]) == ["source", "k", "metric"] and len(gaps) == 4
    assert (gaps["metric"] == "balanced_accuracy").all()


def test_cli_evaluate_errors(tmp_path):
    truth = tmp_path / "truth.txt"
    truth.write_text("g1\ng2\n")
    res = _invoke("evaluate", "--truth", truth, "--out", tmp_path / "o")
    assert res.exit_code == 2 and "nothing to score" in res.output
    ranking = tmp_path / "r.tsv"
    ranking.write_text("gene_id\trank\ng1\t1\ng3\t2\n")
    res = _invoke("evaluate", "--truth", truth, "--ranking", ranking, "--expression", ranking, "--out", tmp_path / "o")
    assert res.exit_code == 2 and "--model" in res.output
    # a bare gene list as truth works
    res = _invoke("evaluate", "--truth", truth, "--ranking", ranking, "--k", 1, "--out", tmp_path / "o")
    assert res.exit_code == 0, res.output
    pk = pd.read_csv(tmp_path / "o" / "precision_at_k.tsv", sep="\t")
    assert pk["precision_at_k"].tolist() == [1.0]


def test_untested_genes_of_a_knockoff_table_are_not_ranked():
    from iml_genomics.evaluate import ranking_from_table

    table = pd.DataFrame({"gene_id": ["g2", "g1", "g9"], "rank": [1, 2, 3], "tested": [True, True, False]})
    assert ranking_from_table(table, "knockoff_selection.tsv") == {"knockoff_selection.tsv": ["g2", "g1"]}
