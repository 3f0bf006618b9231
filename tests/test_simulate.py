"""Simulation families: moments against theory, planted truth recoverable, same seed -> same bytes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from iml_genomics.simulate import (
    gaussian_covariance,
    make_demo_data,
    simulate,
    simulate_gaussian,
    simulate_pathway,
    simulate_semisynthetic,
)

ROOT = Path(__file__).resolve().parents[1]
GOLUB = ROOT / "test_data" / "golub_expression.tsv.gz"


def _run(*args):
    """The real command in a subprocess (slow to start: used once)."""
    return subprocess.run([sys.executable, "-m", "iml_genomics", *map(str, args)], capture_output=True, text=True)


def _invoke(*args):
    """The real click command in-process (no interpreter start-up)."""
    from click.testing import CliRunner

    from iml_genomics.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


# ---------------------------------------------------------------------------
# gaussian
# ---------------------------------------------------------------------------


def test_block_gaussian_moments_match_theory():
    n, p, rho = 4000, 40, 0.6
    c = simulate_gaussian(n, p, n_signal=4, rho=rho, block_size=10, seed=11)
    X = c.expression.to_numpy()
    # means 0 and variances 1 within 4.5 standard errors
    assert np.all(np.abs(X.mean(axis=0)) < 4.5 / np.sqrt(n))
    assert np.all(np.abs(X.var(axis=0) - 1) < 4.5 * np.sqrt(2 / n))
    emp = np.corrcoef(X.T)
    theory = gaussian_covariance(p, rho=rho, block_size=10)
    # SE of a correlation r is about (1 - r^2) / sqrt(n)
    assert np.max(np.abs(emp - theory)) < 5 / np.sqrt(n)
    # binary classes balanced in expectation: P(tumour) = 1/2 by symmetry
    share = (c.labels["condition"] == "tumour").mean()
    assert abs(share - 0.5) < 4 * np.sqrt(0.25 / n)
    assert list(c.pathways) == [f"PATHWAY_{b:03d}" for b in range(1, 5)]
    assert all(len(g) == 10 for g in c.pathways.values())


def test_factor_gaussian_correlation_is_low_rank_model():
    n, p, k, rho = 4000, 60, 3, 0.7
    c = simulate_gaussian(n, p, n_signal=6, rho=rho, correlation="factor", n_factors=k, seed=3)
    L = c.params["loadings"]
    assert L.shape == (p, k)
    np.testing.assert_allclose(np.linalg.norm(L, axis=1), 1.0)
    theory = gaussian_covariance(p, rho=rho, correlation="factor", loadings=L)
    emp = np.cov(c.expression.to_numpy().T)
    assert np.max(np.abs(emp - theory)) < 6 / np.sqrt(n)
    # genes of one factor's home group correlate more than across groups
    home = np.arange(p) * k // p
    same = theory[(home[:, None] == home[None, :]) & ~np.eye(p, dtype=bool)].mean()
    cross = theory[home[:, None] != home[None, :]].mean()
    assert same > cross + 0.3


def test_planted_linear_effects_are_recovered_by_ols():
    # continuous outcome y = X beta + N(0, 1): OLS recovers beta (truth, signs and zeros)
    c = simulate_gaussian(2000, 30, n_signal=4, effect_size=0.8, rho=0.5, block_size=10, outcome="continuous",
                          seed=5)
    X = np.column_stack([np.ones(2000), c.expression.to_numpy()])
    y = c.labels["condition"].to_numpy(dtype=float)
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    beta = pd.Series(coef[1:], index=c.expression.columns)
    expected = pd.Series(0.0, index=beta.index)
    expected[c.truth["gene_id"]] = c.truth["effect"].to_numpy()
    assert np.abs(beta - expected).max() < 0.15  # SE ~ 1/sqrt(n (1 - R^2)) ~ 0.03
    assert set(beta.abs().nlargest(4).index) == set(c.true_genes)
    np.testing.assert_array_equal(np.sign(c.truth["effect"]), [1, -1, 1, -1])


def test_interaction_outcome_contains_products():
    k, eff = 4, 1.0
    c = simulate_gaussian(3000, 40, n_signal=k, effect_size=eff, block_size=10, outcome="continuous",
                          interactions=True, seed=8)
    Xs = c.expression[c.true_genes].to_numpy()
    prods = Xs[:, :-1] * Xs[:, 1:]
    design = np.column_stack([np.ones(len(Xs)), Xs, prods])
    coef, *_ = np.linalg.lstsq(design, c.labels["condition"].to_numpy(dtype=float), rcond=None)
    np.testing.assert_allclose(coef[1 + k:], eff / np.sqrt(k), atol=0.1)


def test_binary_planted_genes_top_the_lasso():
    from sklearn.linear_model import LogisticRegression

    c = simulate_gaussian(600, 80, n_signal=5, effect_size=1.5, rho=0.3, block_size=10, seed=2)
    model = LogisticRegression(l1_ratio=1.0, solver="liblinear", C=0.1).fit(c.expression.to_numpy(),
                                                                            c.labels["condition"])
    top = pd.Series(np.abs(model.coef_[0]), index=c.expression.columns).nlargest(5).index
    assert set(top) == set(c.true_genes)


def test_multiclass_three_balanced_classes():
    n = 3000
    c = simulate_gaussian(n, 60, n_signal=6, outcome="multiclass", n_classes=3, block_size=10, seed=4)
    counts = c.labels["condition"].value_counts()
    assert sorted(counts.index) == ["class_1", "class_2", "class_3"]
    # symmetric logits -> each class 1/3 in expectation
    assert np.all(np.abs(counts / n - 1 / 3) < 4 * np.sqrt((1 / 3) * (2 / 3) / n))


def test_bad_gaussian_parameters_raise():
    with pytest.raises(ValueError, match="rho"):
        simulate_gaussian(10, 10, rho=1.0)
    with pytest.raises(ValueError, match="outcome"):
        simulate_gaussian(10, 10, outcome="ordinal")


# ---------------------------------------------------------------------------
# pathway (LDA-style)
# ---------------------------------------------------------------------------


def test_pathway_structure_and_overlap():
    c = simulate_pathway(50, 100, pathway_size=10, overlap=4, n_characteristic=2, seed=1)
    stride = 6
    assert c.params["n_pathways"] == -(-100 // stride)
    names = list(c.pathways)
    for a, b in zip(names[:-1], names[1:]):
        assert len(set(c.pathways[a]) & set(c.pathways[b])) == 4
    covered = set().union(*map(set, c.pathways.values()))
    assert covered == set(c.expression.columns)
    # true genes = union of characteristic pathways of every class
    char = [p for paths in c.params["characteristic"].values() for p in paths]
    assert len(char) == 4
    assert set(c.true_genes) == set().union(*(set(c.pathways[p]) for p in char))
    # CPM: every read lands on exactly one gene
    np.testing.assert_allclose(c.expression.sum(axis=1), 1e6)
    assert (c.expression.to_numpy() >= 0).all()


def test_pathway_class_means_match_the_generative_model():
    n, p, size = 3000, 60, 6
    c = simulate_pathway(n, p, pathway_size=size, overlap=2, n_classes=2, n_characteristic=1, over_weight=3.0,
                         seed=9)
    alpha, beta = c.params["pathway_weights"], c.params["gene_weights"]
    col = {g: j for j, g in enumerate(c.expression.columns)}
    weight = np.zeros((len(c.pathways), p))  # pathway -> gene share
    for i, genes in enumerate(c.pathways.values()):
        for pos, g in enumerate(genes):
            weight[i, col[g]] += beta[i, pos]
    X = c.expression.to_numpy()
    y = c.labels["condition"].to_numpy()
    for k, name in enumerate(["class_1", "class_2"]):
        expected = 1e6 * (alpha[k] / alpha[k].sum()) @ weight
        rows = X[y == name]
        se = rows.std(axis=0, ddof=1) / np.sqrt(len(rows))
        z = (rows.mean(axis=0) - expected) / se
        assert np.max(np.abs(z)) < 4.5, (name, np.max(np.abs(z)))


def test_pathway_class_proportions_exact_and_truth_recoverable():
    from scipy import stats

    c = simulate_pathway(300, 200, pathway_size=10, n_classes=3, n_characteristic=1, over_weight=3.0,
                         class_proportions=[0.2, 0.3, 0.5], seed=4)
    counts = c.labels["condition"].value_counts().sort_index()
    assert counts.tolist() == [60, 90, 150]
    # a one-way ANOVA of log CPM over classes ranks the characteristic genes first
    logx = np.log1p(c.expression)
    groups = [logx[c.labels["condition"] == k] for k in counts.index]
    f = pd.Series(stats.f_oneway(*groups).statistic, index=c.expression.columns)
    top = set(f.nlargest(len(c.true_genes)).index)
    assert len(top & set(c.true_genes)) >= 0.9 * len(c.true_genes)


def test_pathway_rejects_too_many_characteristic_pathways():
    with pytest.raises(ValueError, match="characteristic"):
        simulate_pathway(20, 40, pathway_size=10, n_classes=2, n_characteristic=3)


# ---------------------------------------------------------------------------
# semi-synthetic
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def golub():
    return pd.read_csv(GOLUB, sep="\t", index_col=0)


def test_semisynthetic_keeps_matrix_and_recovers_effects(golub):
    c = simulate_semisynthetic(golub, n_signal=3, effect_size=2.0, outcome="continuous", seed=1, signal_seed=7)
    # the real matrix and hence its correlation are untouched
    np.testing.assert_array_equal(c.expression.to_numpy(), golub.to_numpy())
    assert list(c.expression.columns) == list(golub.columns)
    Z = golub[c.true_genes]
    Z = (Z - Z.mean()) / Z.std(ddof=0)
    design = np.column_stack([np.ones(len(Z)), Z.to_numpy()])
    coef, *_ = np.linalg.lstsq(design, c.labels["condition"].to_numpy(dtype=float), rcond=None)
    np.testing.assert_allclose(coef[1:], [2.0, -2.0, 2.0], atol=0.75)  # n = 38, noise sd 1
    # the same signal_seed keeps the truth while the outcome noise changes
    d = simulate_semisynthetic(golub, n_signal=3, effect_size=2.0, outcome="continuous", seed=2, signal_seed=7)
    assert d.true_genes == c.true_genes
    assert not np.array_equal(d.labels["condition"], c.labels["condition"])


def test_semisynthetic_chosen_genes_and_errors(golub):
    genes = list(golub.columns[[5, 50, 500]])
    c = simulate(family="semi-synthetic", expression=golub, signal_genes=genes, seed=0)
    assert c.true_genes == genes
    assert set(c.labels["condition"]) == {"negative", "positive"}
    assert set(c.pathways["RANDOM_NULL"]).isdisjoint(genes)
    with pytest.raises(KeyError, match="NOT_A_GENE"):
        simulate_semisynthetic(golub, signal_genes=["NOT_A_GENE"])


# ---------------------------------------------------------------------------
# files: CLI, determinism, demo data
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def golub_small(tmp_path_factory, golub):
    """The first 300 Golub genes, as a genes-as-rows TSV (the GEO layout)."""
    path = tmp_path_factory.mktemp("golub") / "golub300.tsv"
    golub.iloc[:, :300].T.rename_axis("gene_id").to_csv(path, sep="\t")
    return path


@pytest.mark.parametrize("family,extra", [
    ("gaussian", ["--n-samples", 40, "--n-genes", 60, "--correlation", "factor", "--n-factors", 3]),
    ("pathway", ["--n-samples", 40, "--n-genes", 60, "--overlap", 2]),
    ("semi-synthetic", ["--genes-as-rows", "--n-signal", 4]),
])
def test_cli_same_seed_same_bytes(tmp_path, family, extra, golub_small):
    if family == "semi-synthetic":
        extra = ["--expression", golub_small, *extra]
    outs = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        res = _invoke("simulate", "--family", family, "--seed", seed, "--format", "csv.gz", "--format", "parquet",
                      *extra, "--out", tmp_path / name)
        assert res.exit_code == 0, res.output
        outs.append(tmp_path / name)
    files = sorted(p.name for p in outs[0].iterdir() if not p.name.startswith("."))
    assert files == ["provenance.json", "simulated_expression.csv.gz", "simulated_expression.parquet",
                     "simulated_labels.tsv", "simulated_pathways.gmt", "simulated_truth.tsv"]
    for f in files:
        if f != "provenance.json":
            assert (outs[0] / f).read_bytes() == (outs[1] / f).read_bytes(), f
    changed = "simulated_labels.tsv" if family == "semi-synthetic" else "simulated_expression.csv.gz"
    assert (outs[0] / changed).read_bytes() != (outs[2] / changed).read_bytes()
    truth = pd.read_csv(outs[0] / "simulated_truth.tsv", sep="\t")
    assert truth.columns[0] == "gene_id" and len(truth) > 0
    # the written cohort loads through the package's own reader
    from iml_genomics.io import load_cohort

    adata = load_cohort(outs[0] / "simulated_expression.parquet", labels=outs[0] / "simulated_labels.tsv",
                        label_column="condition")
    assert set(truth["gene_id"]) <= set(adata.var_names)


def test_cli_errors_are_one_line(tmp_path):
    res = _run("simulate", "--family", "semi-synthetic", "--out", tmp_path / "x")
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "--expression" in res.stderr
    res = _invoke("simulate", "--family", "pathway", "--n-genes", 40, "--n-characteristic", 5, "--out", tmp_path / "y")
    assert res.exit_code == 2 and "error:" in res.output and "characteristic" in res.output
    assert not (tmp_path / "y").exists()


def test_make_demo_data_reproduces_committed_files(tmp_path):
    make_demo_data(tmp_path)
    for name in ("demo_expression.csv.gz", "demo_expression.parquet", "demo_labels.tsv", "demo_truth.tsv",
                 "demo_pathways.gmt"):
        assert (tmp_path / name).read_bytes() == (ROOT / "test_data" / name).read_bytes(), name
