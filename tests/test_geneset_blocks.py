"""The report's gene-set nulls from blocks of the matrix (issue 18): the same bits as the dense computation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from iml_genomics import genesets as gs
from iml_genomics.report import geneset_blocks as gb
from iml_genomics.report.tables import analysis_values, outcome_residuals, permuted_statistics

N, P = 300, 43  # 43 genes: blocks of 3 leave a trailing single gene, which must join the block before it


def _cohort(seed=0, n=N, p=P, classes=("a", "b")):
    """Counts with co-expressed modules of 8 genes and a class effect on one (genes 8-15); sparse float32 CSR."""
    rng = np.random.default_rng(seed)
    y = np.array(classes)[rng.integers(0, len(classes), n)]
    module = rng.standard_normal((n, p // 8 + 1))
    logmu = 0.3 + 0.8 * module[:, np.arange(p) // 8] + 0.2 * rng.standard_normal((n, p))
    logmu[:, 8:16] += 1.0 * (y == classes[0])[:, None]
    counts = rng.poisson(np.exp(logmu) * rng.uniform(0.2, 1.0, (n, 1)))
    return sparse.csr_matrix(counts.astype(np.float32)), y, rng.normal(size=n)


def _members(p=P):
    rng = np.random.default_rng(3)
    return [np.arange(0, 8), np.arange(8, 16), np.sort(rng.choice(p, 12, replace=False)), np.arange(30, 41),
            np.array([5]), np.array([40, 2, 17])]


def test_gene_blocks_never_leave_a_single_gene():
    assert [(s.start, s.stop) for s in gb.gene_blocks(7, 3)] == [(0, 3), (3, 7)]
    assert [(s.start, s.stop) for s in gb.gene_blocks(6, 3)] == [(0, 3), (3, 6)]
    blocks = gb.gene_blocks(5, 1)  # width 1 is raised to 2, the trailing single gene joins the last block
    assert [(s.start, s.stop) for s in blocks] == [(0, 2), (2, 5)]
    assert [(s.start, s.stop) for s in gb.gene_blocks(1, 5)] == [(0, 1)]
    # the 200-row permutation block of the dense code up to 2 budgets of design
    assert gb.permutation_block_rows(100_000) == 200
    assert gb.permutation_block_rows(1000, budget=50_000) == 100


@pytest.mark.parametrize("count_data,cpm,dense", [(True, True, False), (True, False, False), (False, False, True)])
def test_blocks_are_the_dense_values_bit_for_bit(count_data, cpm, dense):
    X, _, _ = _cohort()
    X = X.toarray().astype(float) if dense else X
    ad = type("A", (), {"X": X})()
    ref = analysis_values(ad, count_data=count_data, cpm=cpm)
    vals = gb.AnalysisValues(X, count_data=count_data, cpm=cpm, budget=N * 3)
    assert len(vals.gene_blocks()) == 14 and len(vals.row_blocks()) > 10
    got = np.concatenate([vals.columns(s) for s in vals.gene_blocks()], axis=1)
    assert got.dtype == ref.dtype and np.array_equal(got, ref)
    assert np.array_equal(np.concatenate([vals.rows(s) for s in vals.row_blocks()]), ref)


@pytest.mark.parametrize("task,classes", [("classification", ("a", "b")), ("classification", ("a", "b", "c")),
                                          ("regression", ("a", "b"))])
def test_residual_correlation_is_the_dense_one(task, classes):
    X, y, yr = _cohort(classes=classes)
    out = yr if task == "regression" else y
    ad = type("A", (), {"X": X})()
    members = _members()
    ref = gs.inter_gene_correlation(outcome_residuals(analysis_values(ad, count_data=True), out, task), members)
    assert np.isnan(ref[4]) and np.nanmax(ref) > 0.2  # the modules are correlated, one set is too small
    # one block (bulk cohorts), and 7 blocks of genes and 8 blocks of samples with the sets' per-sample
    # means kept whole (5 sets x 300 samples fit the budget): bit for bit
    one = gb.residual_correlation(gb.AnalysisValues(X, count_data=True, budget=N * P), out, task, members)
    vals = gb.AnalysisValues(X, count_data=True, budget=N * 6)
    assert len(vals.gene_blocks()) == 7 and len(vals.row_blocks()) == 8
    kept = gb.residual_correlation(vals, out, task, members)
    # a budget smaller than the sets' per-sample means: summed block by block, within 1e-12
    summed = gb.residual_correlation(gb.AnalysisValues(X, count_data=True, budget=4 * N), out, task, members)
    if task == "regression":
        # the fitted values D @ beta come from a matrix product split by rows: last bits may move
        np.testing.assert_allclose(one, ref, rtol=0, atol=1e-12)
        np.testing.assert_allclose(kept, ref, rtol=0, atol=1e-12)
    else:
        np.testing.assert_array_equal(one, ref)
        np.testing.assert_array_equal(kept, ref)
    np.testing.assert_allclose(summed, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("task,classes", [("classification", ("a", "b")), ("classification", ("a", "b", "c")),
                                          ("regression", ("a", "b"))])
@pytest.mark.parametrize("cpm", [False, True])
def test_permuted_statistics_blocks_are_the_dense_ones(task, classes, cpm):
    X, y, yr = _cohort(classes=classes, seed=2)
    out = yr if task == "regression" else y
    ad = type("A", (), {"X": X})()
    Xt = analysis_values(ad, count_data=True, cpm=cpm)
    rng = np.random.default_rng(5)
    perm = np.stack([rng.permutation(N) for _ in range(450)])
    blocks = [perm[b:b + 200] for b in range(0, 450, 200)]
    Xc = Xt - Xt.mean(axis=0)
    ref = [permuted_statistics(Xt, out, task, b, positive_class="a", with_p=True,
                               centered=(Xc, Xc ** 2 if task != "regression" else None)) for b in blocks]
    for budget in (N * 3, N * P):  # 14 blocks of genes, or one (centred once, reused)
        vals = gb.AnalysisValues(X, count_data=True, cpm=cpm, budget=budget)
        got = list(gb.permuted_statistics_blocks(vals, out, task, iter(blocks), positive_class="a", with_p=True))
        assert len(got) == len(ref)
        for (s, p), (rs, rp) in zip(got, ref):
            if budget == N * P:
                assert np.array_equal(s, rs, equal_nan=True) and np.array_equal(p, rp, equal_nan=True)
            else:
                # BLAS sums a product of a few columns in another order than the whole (its small-matrix
                # kernel): the last bits move (at 10^5 cells x 167 genes per block they did not)
                np.testing.assert_allclose(s, rs, rtol=0, atol=1e-12)
                np.testing.assert_allclose(p, rp, rtol=0, atol=1e-12)
    # on the identity permutation the statistic is univariate_effects' observed one (scipy's own tests)
    import anndata as ad

    from iml_genomics.report.tables import univariate_effects

    adata = ad.AnnData(X=X, obs=pd.DataFrame({"y": out}, index=[f"c{i}" for i in range(N)]))
    obs = univariate_effects(adata, label_column="y", task=task, positive_class="a", count_data=True, cpm=cpm)
    s, _ = next(gb.permuted_statistics_blocks(gb.AnalysisValues(X, count_data=True, cpm=cpm, budget=N * 3), out,
                                              task, iter([np.arange(N)[None, :]]), positive_class="a"))
    np.testing.assert_allclose(s[0], obs["statistic"].to_numpy(dtype=float), rtol=1e-4)


def _analyse(X, y, *, block_values=None, metric="univariate", null="auto"):
    import anndata as ad

    from iml_genomics.report import ReportInputs
    from iml_genomics.report.tables import analyse_gene_sets, univariate_effects

    genes = [f"G{j:03d}" for j in range(X.shape[1])]
    adata = ad.AnnData(X=X, obs=pd.DataFrame({"cell_type": y}, index=[f"c{i}" for i in range(len(y))]),
                       var=pd.DataFrame(index=genes))
    sets = {f"SET_{i}": [genes[j] for j in m] for i, m in enumerate(_members()) if len(m) >= 3}
    uni = univariate_effects(adata, label_column="cell_type", task="classification", positive_class="a",
                             count_data=True)
    return analyse_gene_sets(ReportInputs(), gs.GeneSetCollection(sets, source="sim"), gene_map=None,
                             univariate=uni, min_size=3, max_size=500, top_k=10, n_permutations=450,
                             ranking_metric=metric, q_threshold=0.1, random_state=7, gene_ids=genes,
                             classes=("a", "b"), adata=adata, label_column="cell_type", task="classification",
                             positive_class="a", count_data=True, null=null, block_values=block_values)


def test_gene_set_table_from_blocks_equals_the_dense_one_and_sparse_equals_dense():
    X, y, _ = _cohort(seed=4)
    ref = _analyse(X, y)  # the default budget: one block, as dense
    assert ref.summary["null_method"] == "phenotype_permutation" == ref.summary["gsea_null_method"]
    assert ref.table["significant"].any() and not ref.table["significant"].all()
    # 7 blocks of genes, 8 of samples, the sets' per-sample means kept whole: the same table to the bit
    small = _analyse(X, y, block_values=N * 6)
    pd.testing.assert_frame_equal(small.table, ref.table, check_exact=True)
    assert small.summary == ref.summary
    # 14 blocks of genes, the per-sample means summed block by block: within 1e-12 (inter_gene_correlation
    # moves in its last bits; the permutation p-values are counts and stay equal)
    tiny = _analyse(X, y, block_values=N * 3)
    pd.testing.assert_frame_equal(tiny.table, ref.table, check_exact=False, rtol=0, atol=1e-12)
    pd.testing.assert_series_equal(tiny.table["gsea_p_value"], ref.table["gsea_p_value"], check_exact=True)
    # sparse and dense input give the same bits (float64: a dense matrix is read as float64, a sparse one
    # keeps its dtype, as univariate_effects reads them)
    X64 = X.astype(np.float64)
    for budget in (N * 3, None):
        pd.testing.assert_frame_equal(_analyse(X64, y, block_values=budget).table,
                                      _analyse(X64.toarray(), y, block_values=budget).table, check_exact=True)


def test_memory_is_bounded_by_the_blocks_not_the_matrix():
    """2,000 samples x 3,000 genes (a dense float64 copy: 48 MB; the dense null held four, 190 MB): the
    analysis on blocks of 30,000 values allocates a fraction of one copy (traced by tracemalloc)."""
    import tracemalloc

    import anndata as ad

    from iml_genomics.report import ReportInputs
    from iml_genomics.report.tables import analyse_gene_sets, univariate_effects

    n, p = 2000, 3000
    rng = np.random.default_rng(1)
    y = np.where(rng.random(n) < 0.5, "a", "b")
    X = sparse.random(n, p, density=0.1, format="csr", random_state=2, data_rvs=lambda k: rng.poisson(3, k) + 1.0)
    genes = [f"G{j:04d}" for j in range(p)]
    adata = ad.AnnData(X=X, obs=pd.DataFrame({"y": y}, index=[f"c{i}" for i in range(n)]),
                       var=pd.DataFrame(index=genes))
    sets = {f"S{i}": genes[i * 20:(i + 1) * 20] for i in range(40)}
    uni = univariate_effects(adata, label_column="y", task="classification", positive_class="a", count_data=True)
    dense_copy = 8 * n * p
    tracemalloc.start()
    try:
        res = analyse_gene_sets(ReportInputs(), gs.GeneSetCollection(sets, source="sim"), gene_map=None,
                                univariate=uni, min_size=5, max_size=500, top_k=30, n_permutations=200,
                                ranking_metric="univariate", q_threshold=0.1, random_state=0, gene_ids=genes,
                                classes=("a", "b"), adata=adata, label_column="y", task="classification",
                                positive_class="a", count_data=True, block_values=30_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert res.summary["null_method"] == "phenotype_permutation"
    # the block of 200 permutations (int32 indices, 1-byte labels, 0/1 float design: 5.2 MB) and their
    # statistics and p-values for every gene (200 x 3,000 x 8 bytes, a few times) are the largest parts:
    # measured 0.54 of one dense copy; 5.0 with the whole matrix as one block (the dense code's way)
    assert peak < 0.75 * dense_copy, peak / dense_copy
