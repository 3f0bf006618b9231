"""Pseudobulk profiles for `select` at single-cell scale (``select.pseudobulk_by``).

Cells are pooled into one profile per (donor, class) for a classification and per donor for a regression
(the response of a profile is then the mean response of its cells). The counts of a group are SUMMED, the
single-cell standard (muscat's ``aggregateData``, Crowell et al. 2020; decoupler's ``get_pseudobulk``;
presto's ``collapse_counts``): a sparse cells -> groups indicator matrix times the cell matrix, so the cell
matrix is never dense. Groups with fewer than ``select.pseudobulk_min_cells`` cells are dropped (and
recorded), the sums are library-size normalised to counts per million and ``log1p``'d, and the knockoffs /
dCRT run on these profiles. Pseudobulk samples are the unit of replication (donors), not cells: cells of one
donor are not independent draws, which is what the knockoff filter's FDR guarantee needs of its rows.

Summing needs counts: the raw matrix (``adata.X`` as read, before ``preprocess.transform``) is summed, never
its logs, and a matrix with negative or non-integer values is refused unless
``select.pseudobulk_aggregate: mean`` says to average the values as given instead.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import sparse

from iml_genomics.errors import InputDataError
from iml_genomics.io.ids import show_id

# knockoffs / dCRT on fewer pseudobulk samples than this per class (or 2x this for a regression) is refused
MIN_PSEUDOBULK_PER_CLASS = 5
# stored values checked per block for the counts test: a bounded transient (8 MB) whatever the matrix size
_CHECK_BLOCK = 1 << 20


def group_sums(X, codes, n_groups: int) -> np.ndarray:
    """Per-group column sums of ``X`` as a dense ``n_groups x n_genes`` float64 array.

    Parameters
    ----------
    X : scipy.sparse matrix or numpy.ndarray
        Cells x genes.
    codes : array of int
        Group of each cell, in ``0 .. n_groups - 1``; -1 = the cell belongs to no group.
    n_groups : int

    Notes
    -----
    One sparse product ``G @ X`` with ``G`` the ``n_groups x n_cells`` 0/1 indicator: sparse X stays sparse
    and only the (small) group x gene result is dense.
    """
    codes = np.asarray(codes)
    cells = np.flatnonzero(codes >= 0)
    G = sparse.csr_matrix((np.ones(cells.size), (codes[cells], cells)), shape=(n_groups, X.shape[0]))
    S = G @ (X.tocsr() if sparse.issparse(X) else X)
    return np.asarray(S.toarray() if sparse.issparse(S) else S, dtype=np.float64)


def log_cpm(sums: np.ndarray) -> np.ndarray:
    """``log1p`` of counts per million of each row (a row of zeros stays zeros)."""
    lib = sums.sum(axis=1, keepdims=True)
    cpm = np.divide(sums * 1e6, lib, out=np.zeros_like(sums), where=lib > 0)
    return np.log1p(cpm)


def first_non_count(X):
    """(row, column, value) of the first negative or non-integer value of ``X``, or None for counts."""
    if sparse.issparse(X):
        X = X.tocsr()
        data = X.data
        for start in range(0, data.size, _CHECK_BLOCK):
            block = data[start:start + _CHECK_BLOCK]
            bad = np.flatnonzero((block < 0) | (block != np.round(block)) | ~np.isfinite(block))
            if bad.size:
                k = start + int(bad[0])
                row = int(np.searchsorted(X.indptr, k, side="right") - 1)
                return row, int(X.indices[k]), float(data[k])
        return None
    X = np.asarray(X)
    step = max(1, _CHECK_BLOCK // max(1, X.shape[1]))
    for start in range(0, X.shape[0], step):
        block = X[start:start + step]
        bad = np.argwhere((block < 0) | (block != np.round(block)) | ~np.isfinite(block))
        if bad.size:
            r, c = bad[0]
            return start + int(r), int(c), float(block[r, c])
    return None


def pseudobulk_cohort(adata, cfg, *, task: str, source: str, expression: str):
    """The pseudobulk cohort of ``adata`` as ``cfg.select`` says, and its record.

    Parameters
    ----------
    adata : anndata.AnnData
        Cells x genes, the label column (``cfg.data.label_column``) and ``select.pseudobulk_by`` in obs.
    cfg : iml_genomics.config.Config
        ``select.pseudobulk_by``, ``select.pseudobulk_min_cells``, ``select.pseudobulk_aggregate``,
        ``data.label_column``, ``data.covariates``.
    task : str
        ``classification`` (groups by column and class) or ``regression`` (groups by column; mean response).
    source, expression : str
        The labels' and the matrix's names for messages.

    Returns
    -------
    (anndata.AnnData, dict)
        One row per kept group (dense float64: ``log1p`` CPM of the summed counts, or the mean values with
        ``aggregate: mean``), obs holding the label (the group's class or mean response), the pseudobulk
        column, the covariates and ``n_cells``; and the record for select_summary.json / provenance.

    Raises
    ------
    InputDataError
        The column is absent or blank for some cells; the matrix is not counts (with ``aggregate: sum``); a
        covariate varies within a group; fewer than :data:`MIN_PSEUDOBULK_PER_CLASS` groups per class
        remain after dropping small groups.
    """
    import anndata as ad

    sc = cfg.select
    by, label, min_cells = sc.pseudobulk_by, cfg.data.label_column, sc.pseudobulk_min_cells
    key = f"select.pseudobulk_by '{show_id(by)}'"
    if by not in adata.obs.columns:
        shown = ", ".join(show_id(c, 60) for c in list(adata.obs.columns)[:20]) or "none"
        raise InputDataError(f"{source}: column '{show_id(by)}' (select.pseudobulk_by) not found in the labels / "
                             f"obs; available columns: {shown}. Set select.pseudobulk_by to the donor / sample "
                             f"column.")
    if by == label:
        raise InputDataError(f"{source}: select.pseudobulk_by is the label column '{show_id(by)}'; pool cells by "
                             f"donor or sample, not by the outcome.")
    donors = adata.obs[by]
    blank = donors.isna() | (donors.astype(str).str.strip() == "")
    if blank.any():
        first = adata.obs_names[np.flatnonzero(blank.to_numpy())[0]]
        raise InputDataError(f"{source}: {key} is empty for {int(blank.sum())} cell(s) (first '{show_id(first)}'); "
                             f"fill the column in or remove those cells.")
    if sc.pseudobulk_aggregate == "sum":
        bad = first_non_count(adata.X)
        if bad is not None:
            r, c, v = bad
            raise InputDataError(
                f"{expression}: value {v:g} at cell '{show_id(adata.obs_names[r])}', gene "
                f"'{show_id(adata.var_names[c])}' is not a count, but {key} sums counts per group; give the raw "
                f"counts (data.layer) or set select.pseudobulk_aggregate: mean to average the values as given.")
    donor_text = donors.astype(str).to_numpy()
    classification = task == "classification"
    if classification:
        y_text = adata.obs[label].astype(str).to_numpy()
        donor_names, donor_codes = np.unique(donor_text, return_inverse=True)
        class_names, class_codes = np.unique(y_text, return_inverse=True)
        # groups sorted by donor, then class; only the pairs that occur
        uniq, codes = np.unique(donor_codes * class_names.size + class_codes, return_inverse=True)
        group_donor = donor_names[uniq // class_names.size].astype(object)
        group_label = class_names[uniq % class_names.size].astype(object)
    else:
        uniq, codes = np.unique(donor_text, return_inverse=True)
        group_donor = uniq.astype(object)
        y_num = pd.to_numeric(adata.obs[label], errors="coerce").to_numpy(dtype=float)
        group_label = np.bincount(codes, weights=y_num, minlength=uniq.size) / np.bincount(codes, minlength=uniq.size)
    n_cells = np.bincount(codes, minlength=uniq.size)
    kept = n_cells >= min_cells
    new_index = np.cumsum(kept) - 1
    kept_codes = np.where(kept[codes], new_index[codes], -1)
    n_kept = int(kept.sum())
    # each class needs enough pseudobulk samples for the knockoff / dCRT fit (and its diagnostics)
    if classification:
        counts = pd.Series(group_label[kept]).value_counts()
        classes = sorted(set(group_label))
        short = [(c, int(counts.get(c, 0))) for c in classes if counts.get(c, 0) < MIN_PSEUDOBULK_PER_CLASS]
        if short:
            c, k = short[0]
            raise InputDataError(
                f"{source}: {key} leaves {k} pseudobulk sample(s) of class '{show_id(c)}' with at least "
                f"select.pseudobulk_min_cells = {min_cells} cells; select needs at least {MIN_PSEUDOBULK_PER_CLASS} "
                f"per class. Lower select.pseudobulk_min_cells, pool by a finer column, or use select.max_samples "
                f"instead of pseudobulk.")
    elif n_kept < 2 * MIN_PSEUDOBULK_PER_CLASS:
        raise InputDataError(
            f"{source}: {key} leaves {n_kept} pseudobulk sample(s) with at least select.pseudobulk_min_cells = "
            f"{min_cells} cells; select needs at least {2 * MIN_PSEUDOBULK_PER_CLASS}. Lower "
            f"select.pseudobulk_min_cells or use select.max_samples instead of pseudobulk.")
    obs = {}
    for cov in cfg.data.covariates:
        # a profile has one value of each covariate: donor-level ones (sex, batch) are; cell-level ones are not
        values = adata.obs[cov].astype(str).to_numpy()
        cov_codes = np.unique(values, return_inverse=True)[1]
        lo = np.full(uniq.size, np.iinfo(np.int64).max)
        hi = np.full(uniq.size, -1)
        np.minimum.at(lo, codes, cov_codes)
        np.maximum.at(hi, codes, cov_codes)
        varies = np.flatnonzero(kept & (lo != hi))
        if varies.size:
            g = varies[0]
            where = f"'{show_id(group_donor[g])}'" + (f", class '{show_id(group_label[g])}'" if classification else "")
            raise InputDataError(
                f"{source}: covariate '{show_id(cov)}' (data.covariates) varies within the pseudobulk group {where} "
                f"of {key}; a pseudobulk profile takes donor-level covariates only. Drop it from data.covariates "
                f"or pool by a finer column.")
        first = np.zeros(uniq.size, dtype=int)
        first[codes[::-1]] = np.arange(codes.size)[::-1]  # any cell of the group: the value is the same in all
        obs[cov] = adata.obs[cov].to_numpy()[first[kept]]
    sums = group_sums(adata.X, kept_codes, n_kept)
    if sc.pseudobulk_aggregate == "sum":
        values = log_cpm(sums)
    else:
        values = sums / n_cells[kept][:, None]
    names = [f"{d}|{y}" if classification else str(d) for d, y in zip(group_donor[kept], group_label[kept])]
    frame = pd.DataFrame({label: group_label[kept] if classification else group_label[kept].astype(float),
                          by: group_donor[kept], **obs, "n_cells": n_cells[kept]},
                         index=pd.Index(names, name="sample_id"))
    pb = ad.AnnData(X=values, obs=frame, var=pd.DataFrame(index=adata.var_names.copy()))
    pb.uns["sources"] = dict(adata.uns.get("sources") or {})
    groups = [{"group": str(n), by: str(d), **({"label": str(y)} if classification else {"mean_response": float(y)}),
               "n_cells": int(k), "kept": bool(q)}
              for n, d, y, k, q in zip([f"{d}|{y}" if classification else str(d)
                                        for d, y in zip(group_donor, group_label)],
                                       group_donor, group_label, n_cells, kept)]
    record = {"column": by, "grouped_by": [by, label] if classification else [by],
              "aggregate": sc.pseudobulk_aggregate,
              "normalisation": "log1p CPM of summed counts" if sc.pseudobulk_aggregate == "sum" else "mean of values",
              "min_cells": int(min_cells), "n_cells": int(adata.n_obs), "n_cells_used": int(n_cells[kept].sum()),
              "n_groups": int(uniq.size), "n_groups_kept": n_kept, "n_groups_dropped": int(uniq.size - n_kept),
              "groups": groups}
    return pb, record


def pseudobulk_config(cfg):
    """``cfg`` for the steps after pseudobulk: with ``aggregate: sum`` the profiles are already log1p CPM, so
    ``preprocess.transform`` is not applied a second time (the gene filters and scaling still are)."""
    import dataclasses

    if cfg.select.pseudobulk_aggregate != "sum" or cfg.preprocess.transform == "none":
        return cfg
    return dataclasses.replace(cfg, preprocess=dataclasses.replace(cfg.preprocess, transform="none"))
