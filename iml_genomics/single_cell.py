"""Single-cell scale: a sparse count simulator and the seeded cell subsamples the steps use.

A cohort of 10^5 cells x 2,000 genes is 1.6 GB as dense float64; nothing here builds that matrix. The
simulator draws negative-binomial counts chunk by chunk straight into CSR, and the steps (train, explain,
select) work on a stratified subsample of cells when the config says so (``cv.max_samples``,
``explain.max_samples``, ``select.max_samples``), so the dense copies they hold are of the subsample only.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import sparse

# cells drawn per dense block: 5,000 x 2,000 float64 = 80 MB, a bounded transient whatever n_cells is
_CHUNK_CELLS = 5000


def simulate_single_cell(n_cells: int = 10_000, n_genes: int = 2_000, *, n_types: int = 5, n_markers: int = 10,
                         fold_change: float = 4.0, mean_log: float = -2.8, sd_log: float = 1.2,
                         dispersion: float = 2.0, n_donors: int = 0, donor_sd: float = 0.3, seed: int = 0):
    """Sparse negative-binomial counts of cells of ``n_types`` cell types with planted marker genes.

    Parameters
    ----------
    n_cells, n_genes : int
    n_types : int
        Cell types (the label ``cell_type``: ``type_1`` ... ``type_K``), in equal shares up to a remainder.
    n_markers : int
        Marker genes per cell type: their mean is ``fold_change`` times higher in that type than elsewhere.
        Markers of type k are genes ``k * n_markers`` ... (disjoint), so ``n_types * n_markers <= n_genes``.
    fold_change : float
        Up-regulation of a marker in its own type (> 1).
    mean_log, sd_log : float
        Gene base means are lognormal(mean_log, sd_log) counts per cell; the defaults give about 90% zeros.
    dispersion : float
        Negative-binomial size theta (Var = mu + mu^2 / theta), drawn as a gamma-Poisson mixture.
    n_donors : int
        0 (default): no donors, the cohort of earlier versions byte for byte. Otherwise each cell is drawn
        from one of ``n_donors`` donors (uniformly; labels column ``donor``: ``D001`` ...), and each donor
        multiplies every gene's mean by its own lognormal(0, ``donor_sd``) factor, so cells of one donor are
        correlated as cells of a real individual are (what pseudobulk, ``select.pseudobulk_by``, pools).
    donor_sd : float
        Standard deviation of a donor's log effect on a gene (>= 0).
    seed : int

    Returns
    -------
    X : scipy.sparse.csr_matrix
        ``n_cells x n_genes`` float32 counts (never dense as a whole).
    labels : pandas.DataFrame
        Indexed by ``sample_id`` (cell ids ``C000001`` ...), column ``cell_type`` (and ``donor`` when
        ``n_donors`` > 0).
    truth : pandas.DataFrame
        One row per marker gene: gene_id, cell_type, fold_change.
    pathways : dict of str -> list of str
        One set per cell type (its markers, ``MARKERS_TYPE_k``) and ``n_types`` same-size sets of non-marker
        genes (``RANDOM_k``), as GMT content.
    gene_ids : list of str

    Notes
    -----
    A cell's library size factor is lognormal(0, 0.3), so cells differ in depth as real cells do. Counts are
    drawn in blocks of 5,000 cells; same seed, same matrix, whatever the block size.
    """
    if n_types < 2:
        raise ValueError(f"n_types must be >= 2, got {n_types}")
    if n_markers < 1 or n_types * n_markers > n_genes:
        raise ValueError(f"n_types x n_markers ({n_types} x {n_markers}) must be between 1 and n_genes ({n_genes})")
    if not fold_change > 1:
        raise ValueError(f"fold_change must be > 1, got {fold_change}")
    if not dispersion > 0:
        raise ValueError(f"dispersion must be > 0, got {dispersion}")
    if n_donors < 0 or not donor_sd >= 0:
        raise ValueError(f"n_donors must be >= 0 and donor_sd >= 0, got {n_donors} and {donor_sd}")
    rng = np.random.default_rng(seed)
    base = np.exp(rng.normal(mean_log, sd_log, size=n_genes))
    types = np.repeat(np.arange(n_types), -(-n_cells // n_types))[:n_cells]
    types = rng.permutation(types)
    size_factor = np.exp(rng.normal(0.0, 0.3, size=n_cells))
    marker_fold = np.ones((n_types, n_genes))
    for k in range(n_types):
        marker_fold[k, k * n_markers:(k + 1) * n_markers] = fold_change
    donor_of, donor_fold = None, None
    if n_donors:
        # a stream of its own: the cell types, depths and counts' other inputs are those of n_donors = 0
        drng = np.random.default_rng([seed, 0xD0D0])
        donor_of = drng.integers(0, n_donors, size=n_cells)
        donor_fold = np.exp(drng.normal(0.0, donor_sd, size=(n_donors, n_genes)))
    blocks = []
    # one child stream per block of cells: the draws do not depend on how many blocks came before
    block_seeds = np.random.SeedSequence(seed).spawn(-(-n_cells // _CHUNK_CELLS))
    for b, start in enumerate(range(0, n_cells, _CHUNK_CELLS)):
        stop = min(start + _CHUNK_CELLS, n_cells)
        brng = np.random.default_rng(block_seeds[b])
        mu = size_factor[start:stop, None] * base[None, :] * marker_fold[types[start:stop]]
        if donor_fold is not None:
            mu *= donor_fold[donor_of[start:stop]]
        lam = brng.gamma(dispersion, mu / dispersion)
        counts = brng.poisson(lam).astype(np.float32)
        blocks.append(sparse.csr_matrix(counts))
        del mu, lam, counts
    X = sparse.vstack(blocks, format="csr", dtype=np.float32)
    cell_ids = [f"C{i + 1:06d}" for i in range(n_cells)]
    gene_ids = [f"G{j + 1:05d}" for j in range(n_genes)]
    type_names = np.array([f"type_{k + 1}" for k in range(n_types)])
    labels = pd.DataFrame({"cell_type": type_names[types]}, index=pd.Index(cell_ids, name="sample_id"))
    if donor_of is not None:
        labels["donor"] = np.array([f"D{d + 1:03d}" for d in range(n_donors)])[donor_of]
    truth = pd.DataFrame({"gene_id": [gene_ids[j] for j in range(n_types * n_markers)],
                          "cell_type": np.repeat(type_names, n_markers),
                          "fold_change": fold_change})
    pathways = {f"MARKERS_TYPE_{k + 1}": gene_ids[k * n_markers:(k + 1) * n_markers] for k in range(n_types)}
    rest = np.arange(n_types * n_markers, n_genes)
    null = rng.choice(rest, size=min(rest.size, n_types * n_markers), replace=False)
    for k in range(n_types):
        picked = np.sort(null[k * n_markers:(k + 1) * n_markers])
        if picked.size:
            pathways[f"RANDOM_{k + 1}"] = [gene_ids[j] for j in picked]
    return X, labels, truth, pathways, gene_ids


def write_single_cell(directory, prefix: str, *, seed: int = 0, **params) -> dict:
    """Simulate (:func:`simulate_single_cell`) and write ``{prefix}_expression.h5ad`` (sparse CSR X, obs
    ``cell_type``), ``{prefix}_labels.tsv``, ``{prefix}_truth.tsv`` and ``{prefix}_pathways.gmt``.

    Returns
    -------
    dict
        Role -> path, and ``summary`` (n_cells, n_genes, fraction of zeros, class counts) for provenance.
    """
    from pathlib import Path

    import anndata as ad

    from iml_genomics.io.writers import write_tsv
    from iml_genomics.simulate import write_gmt

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    X, labels, truth, pathways, gene_ids = simulate_single_cell(seed=seed, **params)
    path = directory / f"{prefix}_expression.h5ad"
    adata = ad.AnnData(X=X, obs=labels.copy(), var=pd.DataFrame(index=pd.Index(gene_ids, name="gene_id")))
    tmp = directory / f".{path.name}.tmp"
    adata.write_h5ad(tmp)
    tmp.replace(path)
    write_tsv(labels, directory / f"{prefix}_labels.tsv", index=True)
    write_tsv(truth, directory / f"{prefix}_truth.tsv")
    write_gmt(pathways, directory / f"{prefix}_pathways.gmt")
    n, p = X.shape
    summary = {"n_samples": n, "n_genes": p, "fraction_zero": round(1 - X.nnz / (n * p), 4),
               "n_true_genes": len(truth), "n_pathways": len(pathways),
               "class_counts": labels["cell_type"].value_counts().sort_index().to_dict()}
    if "donor" in labels:
        summary["n_donors"] = int(labels["donor"].nunique())
    return {"h5ad": str(path), "labels": str(directory / f"{prefix}_labels.tsv"),
            "truth": str(directory / f"{prefix}_truth.tsv"), "pathways": str(directory / f"{prefix}_pathways.gmt"),
            "summary": summary}


def stratified_subsample(labels, max_samples: int | None, *, seed: int, min_per_class: int = 1,
                         classification: bool = True) -> np.ndarray | None:
    """Sorted row indices of a seeded subsample of at most ``max_samples`` rows, stratified by label.

    Parameters
    ----------
    labels : array-like
        One label per row (class names, or numbers for a regression outcome).
    max_samples : int or None
        None, or at least the number of rows: no subsample (None is returned).
    seed : int
        The config's seed; same seed, same rows, whatever ``--jobs``.
    min_per_class : int
        Each class keeps at least this many rows (or all it has), so cross-validation folds stay possible.
    classification : bool
        False: a simple random subsample (no strata).

    Returns
    -------
    numpy.ndarray or None
        Row indices in the original order, or None when every row is kept.

    Notes
    -----
    Each class gets ``max_samples`` times its share, rounded by largest remainder, then raised to
    ``min_per_class``; rows within a class are drawn without replacement.
    """
    labels = np.asarray(labels)
    n = labels.shape[0]
    if max_samples is None or max_samples >= n:
        return None
    rng = np.random.default_rng([seed, 0x5CE11])  # a stream of its own, apart from the steps' other draws
    if not classification:
        return np.sort(rng.choice(n, size=max_samples, replace=False))
    classes, codes = np.unique(labels.astype(str), return_inverse=True)
    counts = np.bincount(codes, minlength=classes.size)
    quota = max_samples * counts / n
    take = np.floor(quota).astype(int)
    order = np.argsort(-(quota - take), kind="stable")
    take[order[: max_samples - take.sum()]] += 1
    take = np.minimum(np.maximum(take, np.minimum(counts, min_per_class)), counts)
    picked = [rng.choice(np.flatnonzero(codes == c), size=take[c], replace=False) for c in range(classes.size)]
    return np.sort(np.concatenate(picked))


def subsample_cohort(adata, max_samples: int | None, *, label_column: str | None, seed: int,
                     min_per_class: int = 1, task: str = "auto", keep=()):
    """The cohort restricted to :func:`stratified_subsample`'s rows (a copy of those rows only), or itself.

    ``keep``: sample ids always included (``explain.samples``), on top of the subsample.

    Returns
    -------
    (anndata.AnnData, dict or None)
        The (sub)cohort and a record for the step's summary/provenance: ``{"n_samples_total",
        "n_samples_used", "max_samples", "stratified_by"}``; None when no subsample was taken.
    """
    if max_samples is None or adata.n_obs <= max_samples:
        return adata, None
    has_labels = label_column is not None and label_column in adata.obs
    if has_labels:
        values = adata.obs[label_column]
        numeric = pd.api.types.is_numeric_dtype(values) and values.nunique() > 20
        classification = task == "classification" or (task == "auto" and not numeric)
        labels = values.astype(str).to_numpy() if classification else values.to_numpy()
    else:
        classification, labels = False, np.zeros(adata.n_obs)
    idx = stratified_subsample(labels, max_samples, seed=seed, min_per_class=min_per_class,
                               classification=classification)
    wanted = adata.obs_names.get_indexer(pd.Index([str(k) for k in keep]))
    idx = np.union1d(idx, wanted[wanted >= 0])
    record = {"n_samples_total": int(adata.n_obs), "n_samples_used": int(idx.size), "max_samples": int(max_samples),
              "stratified_by": label_column if has_labels and classification else None}
    return adata[idx].copy(), record
