"""The report's gene-set nulls on blocks of the expression matrix, never the whole of it dense.

The label-permutation null and CAMERA's inter-gene correlation used to hold the analysis values dense
four times (values, residuals, centred values, their squares) plus a permutations x samples matrix:
6.97 GiB at 100,000 cells x 2,000 genes (issue 18). Here every quantity is computed from blocks of about
:data:`BLOCK_VALUES` values densified from the (sparse or dense) matrix as they are needed:

* per-gene quantities (column means, class means, residual scales, the permuted statistics) on blocks of
  genes: every sample of a few genes;
* per-sample quantities (the mean of a set's standardised residuals in each sample) on blocks of samples.

Results equal the dense computation of :func:`iml_genomics.report.tables.analysis_values`,
:func:`~iml_genomics.report.tables.outcome_residuals`, :func:`iml_genomics.genesets.inter_gene_correlation`
and :func:`~iml_genomics.report.tables.permuted_statistics`, to the bit where the summation order is the
same and within 1e-12 where it is not (tests/test_geneset_blocks.py):

* every column reduction (``mean(axis=0)``) adds the rows in order whatever the width of the block (a block
  is never one column wide, which numpy would reduce pairwise); every other per-gene operation is elementwise;
* the permuted statistics are matrix products split by columns: OpenBLAS gave the same bits for blocks of
  167 genes x 100,000 cells (the 100,000-cell report's files are byte-identical), not for products of a
  few columns (its small-matrix kernel sums in another order): then within 1e-12. Split by rows the bits
  changed at most sizes tried, so the permutations stay in blocks of :data:`PERMUTATION_BLOCK` rows, the dense
  code's block;
* the inter-gene correlation is exact while the sets' per-sample means fit one budget (sets x samples
  <= budget); beyond, each set's mean square is summed block by block (within 1e-12). For a continuous
  outcome the fitted values are a product split by rows (within 1e-12).

Same input and budget, same bytes: nothing here depends on the number of jobs (BLAS runs with the
threads :mod:`iml_genomics.parallel` fixes).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd

# values densified at once (2^24 float64 = 128 MiB), as univariate_effects' blocks
BLOCK_VALUES = 1 << 24
# label permutations per block: the dense code's block size, kept because a matrix product split by rows
# does not give the same bits; above 2 * BLOCK_VALUES / 200 samples (167,772) the block shrinks so that
# its 0/1 design stays within two budgets (results then differ from a 200-row block in the last bits)
PERMUTATION_BLOCK = 200


def gene_blocks(p: int, width: int) -> list[slice]:
    """Consecutive column blocks of ``width`` genes covering ``p``; never a block of one gene when p > 1.

    A one-column block would change the summation order of a column reduction (numpy then reduces the
    column as a contiguous vector, pairwise) and the matrix product (a matrix-vector product): so a
    trailing single column joins the block before it.
    """
    width = max(2, int(width))
    starts = list(range(0, p, width))
    if len(starts) > 1 and p - starts[-1] == 1:
        starts.pop()
    return [slice(s, starts[i + 1] if i + 1 < len(starts) else p) for i, s in enumerate(starts)]


def permutation_block_rows(n: int, budget: int = BLOCK_VALUES) -> int:
    """Rows of one block of label permutations for ``n`` samples (see :data:`PERMUTATION_BLOCK`)."""
    return PERMUTATION_BLOCK if PERMUTATION_BLOCK * n <= 2 * budget else max(1, 2 * budget // max(1, n))


class AnalysisValues:
    """The samples x genes values the univariate tests use, served a block at a time.

    ``columns(s)`` equals ``analysis_values(adata, ...)[:, s]`` and ``rows(s)`` its rows ``s``, bit for
    bit (same dtype: a sparse matrix keeps its own, a dense one is read as float64), without densifying
    more than the block.

    Parameters
    ----------
    X : array or scipy.sparse matrix
        Samples x genes, as loaded (``adata.X``).
    count_data : bool
        Values are counts: the tests use log1p.
    cpm : bool
        Counts are first scaled to counts per million (library size = the row's sum).
    budget : int
        Values densified at once.
    """

    def __init__(self, X, *, count_data: bool = False, cpm: bool = False, budget: int = BLOCK_VALUES):
        from scipy import sparse

        self.sparse = sparse.issparse(X)
        # row slices and column slices of CSR are cheap; other sparse formats are converted once (sparse)
        self.X = X.tocsr() if self.sparse and X.format not in ("csr", "csc") else X
        self.n, self.p = X.shape
        self.count_data, self.cpm, self.budget = count_data, cpm, int(budget)
        self.lib = None
        if count_data and cpm:
            # each row's sum over its dense row, as the dense code sums it
            self.lib = np.concatenate([self._raw(s, slice(None)).sum(axis=1, keepdims=True)
                                       for s in self.row_blocks()]) if self.n else np.zeros((0, 1))

    def gene_blocks(self) -> list[slice]:
        """Blocks of genes of about ``budget`` values each."""
        return gene_blocks(self.p, self.budget // max(1, self.n))

    def row_blocks(self) -> list[slice]:
        """Blocks of samples of about ``budget`` values each."""
        rows = max(1, self.budget // max(1, self.p))
        return [slice(s, min(s + rows, self.n)) for s in range(0, self.n, rows)]

    def _raw(self, rows: slice, cols: slice) -> np.ndarray:
        part = self.X[rows, cols]
        return part.toarray() if self.sparse else np.asarray(part, dtype=float)

    def _transform(self, X: np.ndarray, lib: np.ndarray | None) -> np.ndarray:
        if lib is not None:
            X = X / np.where(lib > 0, lib, 1.0) * 1e6
        return np.log1p(np.clip(X, 0, None)) if self.count_data else np.asarray(X, dtype=float)

    def columns(self, cols: slice) -> np.ndarray:
        """Every sample's values of the genes ``cols`` (C-contiguous)."""
        return np.ascontiguousarray(self._transform(self._raw(slice(None), cols), self.lib))

    def rows(self, rows: slice) -> np.ndarray:
        """Every gene's values in the samples ``rows`` (C-contiguous)."""
        lib = self.lib[rows] if self.lib is not None else None
        return np.ascontiguousarray(self._transform(self._raw(rows, slice(None)), lib))


def _codes(y) -> tuple[np.ndarray, list[str]]:
    """Integer class codes of the labels (as strings) and the sorted classes: a permuted block of codes is
    one byte per sample (up to 255 classes) where the labels' strings took 4 bytes per character."""
    uniq, code = np.unique(pd.Series(np.asarray(y)).astype(str).to_numpy(), return_inverse=True)
    return code.reshape(-1).astype(np.min_scalar_type(len(uniq))), [str(c) for c in uniq]


def residual_correlation(values: AnalysisValues, y, task: str, members: list[np.ndarray]) -> np.ndarray:
    """:func:`iml_genomics.genesets.inter_gene_correlation` of :func:`~iml_genomics.report.tables.outcome_residuals`,
    block by block.

    Parameters
    ----------
    values : AnalysisValues
    y : sequence
        Outcome per sample.
    task : {'classification', 'regression'}
    members : list of int arrays
        Column indices of each set.

    Returns
    -------
    (n_sets,) array of mean correlations (NaN for sets with fewer than two genes).
    """
    n, p = values.n, values.p
    # pass 1, blocks of genes: what each gene's residual subtracts, and the residual's root mean square
    if task == "regression":
        yv = pd.to_numeric(pd.Series(np.asarray(y)), errors="coerce").to_numpy(dtype=float)
        D = np.column_stack([np.ones_like(yv), yv])
        fit = np.empty((2, p))
    else:
        codes, classes = _codes(y)
        rows_of = [codes == c for c in range(len(classes))]
        fit = np.empty((len(classes), p))
    scale = np.empty(p)
    for s in values.gene_blocks():
        Xt = values.columns(s)
        if task == "regression":
            beta, *_ = np.linalg.lstsq(D, Xt, rcond=None)
            fit[:, s] = beta
            R = Xt - D @ beta
        else:
            R = np.array(Xt, dtype=float, copy=True)
            for c, rows in enumerate(rows_of):
                fit[c, s] = R[rows].mean(axis=0)
                R[rows] -= fit[c, s]
        scale[s] = np.sqrt((R ** 2).mean(axis=0))
    # pass 2, blocks of samples: each set's mean standardised residual per sample
    sizes = np.array([len(idx) for idx in members])
    todo = [i for i, m in enumerate(sizes) if m >= 2]
    out = np.full(len(members), np.nan)
    if not todo:
        return out
    keep = len(todo) * n <= values.budget  # the per-sample means fit: reduce each over all samples at once
    kept = np.empty((len(todo), n)) if keep else None
    sums = np.zeros(len(todo))
    for r in values.row_blocks():
        Xt = values.rows(r)
        if task == "regression":
            R = Xt - D[r] @ fit
        else:
            R = np.array(Xt, dtype=float, copy=True)
            for c, rows in enumerate(rows_of):
                R[rows[r]] -= fit[c]
        Z = np.divide(R, scale, out=np.zeros_like(R), where=scale > 0)
        for j, i in enumerate(todo):
            mean = Z[:, members[i]].mean(axis=1)
            if keep:
                kept[j, r] = mean
            else:
                sums[j] += np.add.reduce(mean ** 2)
    for j, i in enumerate(todo):
        msq = np.mean(kept[j] ** 2) if keep else sums[j] / n
        vif = sizes[i] * float(msq)
        out[i] = (vif - 1) / (sizes[i] - 1)
    return out


def permuted_statistics_blocks(values: AnalysisValues, y, task: str, permutations: Iterator[np.ndarray], *,
                               positive_class: str | None = None,
                               with_p: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """:func:`~iml_genomics.report.tables.permuted_statistics` of each block of label permutations, from
    blocks of genes.

    Parameters
    ----------
    values : AnalysisValues
    y : sequence
        Outcome per sample.
    task : {'classification', 'regression'}
    permutations : iterator of (B, n) int arrays
        Blocks of permutations (of :func:`permutation_block_rows` rows to match the dense code's bits).
    positive_class : str, optional
    with_p : bool
        Also the p-values.

    Yields
    ------
    stat : (B, p) array, p : (B, p) array or None
    """
    from iml_genomics.report.tables import permuted_design, statistics_from_design

    blocks = values.gene_blocks()
    means = [None] * len(blocks)
    cached = None  # one block holds every gene (bulk cohorts): centre it once
    codes = classes = None
    if task != "regression":
        codes, classes = _codes(y)
    for perm in permutations:
        design = permuted_design(y, task, perm, positive_class=positive_class, codes=(codes, classes))
        stat = np.empty((len(perm), values.p))
        pval = np.empty((len(perm), values.p)) if with_p else None
        for b, s in enumerate(blocks):
            if cached is not None:
                Xc, Xc2 = cached
            else:
                Xt = values.columns(s)
                if means[b] is None:
                    means[b] = Xt.mean(axis=0)
                Xc = Xt - means[b]
                del Xt
                Xc2 = Xc ** 2
                if len(blocks) == 1:
                    cached = (Xc, Xc2)
            st, pv = statistics_from_design(Xc, Xc2, design, with_p=with_p)
            stat[:, s] = st
            if with_p:
                pval[:, s] = pv
        yield stat, pval
