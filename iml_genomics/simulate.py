"""Cohorts with known truth, for tests, benchmarks, the demo and power studies."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd


@dataclass
class SimulatedCohort:
    """A simulated cohort and its truth.

    Attributes
    ----------
    expression : pandas.DataFrame
        Samples x genes.
    labels : pandas.DataFrame
        Indexed by sample id, with the outcome column ``label_column``.
    true_genes : list of str
        Genes the outcome depends on.
    pathways : dict of str -> list of str
        Simulated gene sets (GMT content).
    label_column : str
    params : dict
        Parameters that made it (for provenance).
    truth : pandas.DataFrame or None
        One row per true gene with family-specific detail (``gene_id``,
        ``effect``, ``pathway``, ...); written by :func:`write_cohort` when
        ``detailed_truth=True``.
    """

    expression: pd.DataFrame
    labels: pd.DataFrame
    true_genes: list[str]
    pathways: dict[str, list[str]]
    label_column: str = "condition"
    params: dict = field(default_factory=dict)
    truth: pd.DataFrame | None = None


def block_correlated_normal(n: int, p: int, *, block_size: int, rho: float, rng: np.random.Generator) -> np.ndarray:
    """n x p standard normal rows with equicorrelation ``rho`` inside blocks of genes.

    Each block shares one latent factor, so it costs O(n p) without any
    p x p matrix: X_j = sqrt(rho) F_b + sqrt(1 - rho) E_j.
    """
    n_blocks = -(-p // block_size)
    factors = rng.standard_normal((n, n_blocks))
    noise = rng.standard_normal((n, p))
    block_of = np.arange(p) // block_size
    return np.sqrt(rho) * factors[:, block_of] + np.sqrt(1.0 - rho) * noise


def ar1_correlated_normal(n: int, p: int, *, rho: float, rng: np.random.Generator) -> np.ndarray:
    """n x p standard normal rows of a stationary AR(1) chain along the genes.

    corr(X_j, X_k) = rho^|j - k|: every gene's neighbours correlate at rho,
    the local correlation a low-rank factor model misses (issue 11). O(n p),
    never a p x p matrix.
    """
    innovations = rng.standard_normal((n, p))
    X = np.empty((n, p))
    X[:, 0] = innovations[:, 0]
    scale = np.sqrt(1.0 - rho**2)
    for j in range(1, p):
        X[:, j] = rho * X[:, j - 1] + scale * innovations[:, j]
    return X


def factor_correlated_normal(n: int, p: int, *, n_factors: int, rho: float,
                             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n x p unit-variance normal rows with a rank-``n_factors`` correlation.

    X = sqrt(rho) F L^T + sqrt(1 - rho) E with unit-norm loading rows L, so
    Var(X_j) = 1 and Corr(X_i, X_j) = rho <L_i, L_j>. Gene j loads mostly on
    its "home" factor (contiguous groups of genes), which makes the groups
    the simulated pathways.

    Returns
    -------
    X : numpy.ndarray, n x p
    loadings : numpy.ndarray, p x n_factors
        The unit-norm rows L; the true covariance is rho L L^T + (1 - rho) I.
    """
    home = np.arange(p) * n_factors // p
    loadings = rng.standard_normal((p, n_factors)) * 0.5
    loadings[np.arange(p), home] += 2.0
    loadings /= np.linalg.norm(loadings, axis=1, keepdims=True)
    factors = rng.standard_normal((n, n_factors))
    noise = rng.standard_normal((n, p))
    return np.sqrt(rho) * factors @ loadings.T + np.sqrt(1.0 - rho) * noise, loadings


def gaussian_covariance(n_genes: int, *, rho: float, block_size: int = 20, correlation: str = "block",
                        loadings: np.ndarray | None = None) -> np.ndarray:
    """True gene covariance of :func:`simulate_gaussian` (dense p x p; for tests and oracle knockoffs)."""
    if correlation == "factor":
        if loadings is None:
            raise ValueError("factor covariance needs the loadings (SimulatedCohort.params['loadings'])")
        sigma = rho * loadings @ loadings.T
    else:
        block_of = np.arange(n_genes) // block_size
        sigma = rho * (block_of[:, None] == block_of[None, :]).astype(float)
    sigma[np.diag_indices(n_genes)] = 1.0
    return sigma


def _check_range(name: str, value, lo=None, hi=None, *, lo_open=False, hi_open=False) -> None:
    bad = (lo is not None and (value < lo or (lo_open and value == lo))) or \
          (hi is not None and (value > hi or (hi_open and value == hi)))
    if bad:
        lo_s = "" if lo is None else ("> " if lo_open else ">= ") + str(lo)
        hi_s = "" if hi is None else ("< " if hi_open else "<= ") + str(hi)
        raise ValueError(f"{name} must be {' and '.join(s for s in (lo_s, hi_s) if s)}, got {value!r}")


def simulate_gaussian(n_samples: int = 200, n_genes: int = 500, *, n_signal: int = 10, effect_size: float = 1.0,
                      rho: float = 0.5, block_size: int = 20, outcome: str = "binary", n_classes: int = 3,
                      interactions: bool = False, seed: int = 0, correlation: str = "block",
                      n_factors: int = 10, signal_blocks: int | None = None) -> SimulatedCohort:
    """Block- or factor-correlated Gaussian genes with a sparse planted outcome.

    Parameters
    ----------
    n_samples, n_genes : int
    n_signal : int
        Planted genes, spread one per block over the first blocks so they are
        not all correlated with each other.
    effect_size : float
        Coefficient magnitude (signs alternate).
    rho : float
        Within-block correlation, 0 <= rho < 1.
    block_size : int
        Genes per correlated block; each block is a simulated pathway.
    outcome : {'binary', 'multiclass', 'continuous'}
    n_classes : int
        Classes for a multiclass outcome.
    interactions : bool
        Add products of consecutive planted genes to the linear predictor.
    seed : int
    correlation : {'block', 'factor'}
        ``block``: equicorrelation ``rho`` inside blocks of ``block_size``
        genes, independent blocks. ``factor``: a rank-``n_factors`` model
        (:func:`factor_correlated_normal`) where every gene correlates a
        little with every other; each factor's home genes form a pathway.
    n_factors : int
        Factors of the ``factor`` correlation.

    Returns
    -------
    SimulatedCohort
        ``truth`` has gene_id, effect (coefficient) and pathway; for the
        factor model ``params['loadings']`` holds the p x k loadings.

    Notes
    -----
    Binary: P(y = tumour) = logistic(eta) with eta = X beta (+ interactions),
    so classes are balanced in expectation. Multiclass: softmax over class
    scores, class k using its own share of the planted genes. Continuous:
    y = eta + N(0, 1).
    """
    if outcome not in ("binary", "multiclass", "continuous"):
        raise ValueError(f"outcome must be binary, multiclass or continuous, got {outcome!r}")
    if correlation not in ("block", "factor"):
        raise ValueError(f"correlation must be block or factor, got {correlation!r}")
    _check_range("rho", rho, 0.0, 1.0, hi_open=True)
    _check_range("n_signal", n_signal, 0, n_genes)
    rng = np.random.default_rng(seed)
    loadings = None
    if correlation == "block":
        X = block_correlated_normal(n_samples, n_genes, block_size=block_size, rho=rho, rng=rng)
    else:
        _check_range("n_factors", n_factors, 1, n_genes)
        X, loadings = factor_correlated_normal(n_samples, n_genes, n_factors=n_factors, rho=rho, rng=rng)
        # planted genes are spread over the factors' home groups as over blocks
        block_size = -(-n_genes // n_factors)
    n_blocks = -(-n_genes // block_size)
    # spread one per block by default; with signal_blocks, concentrate them in the
    # first blocks so that those blocks (the simulated pathways) are enriched
    spread = n_blocks if signal_blocks is None else min(signal_blocks, n_blocks)
    signal_idx = np.array([(k % spread) * block_size + k // spread for k in range(n_signal)], dtype=int)
    beta = np.zeros(n_genes)
    beta[signal_idx] = effect_size * np.where(np.arange(n_signal) % 2 == 0, 1.0, -1.0)
    eta = X @ beta
    if interactions and n_signal >= 2:
        eta = eta + effect_size * np.sum(X[:, signal_idx[:-1]] * X[:, signal_idx[1:]], axis=1) / np.sqrt(n_signal)
    sample_ids = [f"S{i + 1:04d}" for i in range(n_samples)]
    gene_ids = [f"G{j + 1:05d}" for j in range(n_genes)]
    if outcome == "binary":
        # class names sort so that the positive (eta-increasing) class is last
        y = np.where(rng.random(n_samples) < 1 / (1 + np.exp(-eta)), "tumour", "normal")
    elif outcome == "multiclass":
        # class k's logit uses its own share of the planted genes
        logits = np.zeros((n_samples, n_classes))
        for k in range(n_classes):
            idx = signal_idx[k::n_classes]
            logits[:, k] = X[:, idx] @ beta[idx]
        prob = np.exp(logits - logits.max(axis=1, keepdims=True))
        prob /= prob.sum(axis=1, keepdims=True)
        draws = (prob.cumsum(axis=1) > rng.random(n_samples)[:, None]).argmax(axis=1)
        y = np.array([f"class_{k + 1}" for k in range(n_classes)])[draws]
    elif outcome == "continuous":
        y = eta + rng.standard_normal(n_samples)
    pathways = {f"PATHWAY_{b + 1:03d}": gene_ids[b * block_size:(b + 1) * block_size] for b in range(n_blocks)}
    params = {"family": "gaussian", "n_samples": n_samples, "n_genes": n_genes, "n_signal": n_signal,
              "effect_size": effect_size, "rho": rho, "block_size": block_size, "outcome": outcome,
              "n_classes": n_classes, "interactions": interactions, "seed": seed}
    if correlation == "factor":
        params.update(correlation="factor", n_factors=n_factors, loadings=loadings)
    truth = pd.DataFrame({"gene_id": [gene_ids[j] for j in signal_idx], "effect": beta[signal_idx],
                          "pathway": [f"PATHWAY_{j // block_size + 1:03d}" for j in signal_idx]})
    return SimulatedCohort(
        expression=pd.DataFrame(X, index=pd.Index(sample_ids, name="sample_id"), columns=gene_ids),
        labels=pd.DataFrame({"condition": y}, index=pd.Index(sample_ids, name="sample_id")),
        true_genes=[gene_ids[j] for j in signal_idx],
        pathways=pathways,
        params=params,
        truth=truth,
    )


def write_gmt(pathways: dict[str, list[str]], path, description: str = "simulated") -> None:
    """Write gene sets as GMT (name, description, genes), atomically."""
    from iml_genomics.io.writers import atomic_write_bytes

    lines = ["\t".join([name, description, *genes]) for name, genes in pathways.items()]
    atomic_write_bytes(("\n".join(lines) + "\n").encode(), path)


def write_cohort(cohort: SimulatedCohort, directory, prefix: str, formats=("csv.gz",), *,
                 detailed_truth: bool = False) -> dict[str, str]:
    """Write expression (in each format), labels, truth and GMT; return the paths.

    Files: ``{prefix}_expression.{fmt}`` for each format (csv, csv.gz, tsv,
    tsv.gz, parquet, h5ad), ``{prefix}_labels.tsv``, ``{prefix}_truth.tsv``
    (column gene_id; with ``detailed_truth`` every column of
    ``cohort.truth``) and ``{prefix}_pathways.gmt``. The bytes depend only on
    the cohort (gzip mtime 0, fixed float format).
    """
    from pathlib import Path

    import anndata as ad

    from iml_genomics.io.writers import atomic_write_bytes, write_tsv

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    expr = cohort.expression
    for fmt in formats:
        path = directory / f"{prefix}_expression.{fmt}"
        if fmt in ("csv", "csv.gz", "tsv", "tsv.gz"):
            sep = "," if fmt.startswith("csv") else "\t"
            text = expr.to_csv(sep=sep, float_format="%.6g", lineterminator="\n")
            data = text.encode()
            if fmt.endswith(".gz"):
                import gzip

                data = gzip.compress(data, mtime=0)
            atomic_write_bytes(data, path)
        elif fmt == "parquet":
            import io

            # round to what the CSV holds so every format carries the same numbers
            rounded = expr.map(lambda v: float(f"{v:.6g}"))
            buf = io.BytesIO()
            rounded.reset_index().to_parquet(buf, index=False)
            atomic_write_bytes(buf.getvalue(), path)
        elif fmt == "h5ad":
            rounded = expr.map(lambda v: float(f"{v:.6g}"))
            adata = ad.AnnData(X=rounded.to_numpy(), obs=cohort.labels.loc[expr.index].astype(str),
                               var=pd.DataFrame(index=expr.columns.rename("gene_id")))
            tmp = directory / f".{path.name}.tmp"
            adata.write_h5ad(tmp)
            tmp.replace(path)
        else:
            raise ValueError(f"unknown format {fmt}")
        paths[fmt] = str(path)
    write_tsv(cohort.labels, directory / f"{prefix}_labels.tsv", index=True)
    if detailed_truth and cohort.truth is not None:
        truth = cohort.truth
    else:
        truth = pd.DataFrame({"gene_id": cohort.true_genes})
    write_tsv(truth, directory / f"{prefix}_truth.tsv")
    for role in ("labels", "truth", "pathways"):
        paths[role] = str(directory / f"{prefix}_{role}.{'gmt' if role == 'pathways' else 'tsv'}")
    write_gmt(cohort.pathways, directory / f"{prefix}_pathways.gmt")
    return paths


def make_demo_data(directory, *, seed: int = 8) -> dict[str, str]:
    """Regenerate the bundled demo cohort in ``test_data/``.

    400 samples x 400 genes in blocks of 20 (rho = 0.3), 20 planted genes
    concentrated in the first 4 blocks (so 4 of the 20 simulated pathways are
    enriched), binary outcome; written as CSV.gz, Parquet and .h5ad with
    labels, the true genes and a GMT of the pathways. Sized so that every step
    has something to find: knockoff+ at q = 0.1 needs at least 1/q = 10
    discoveries before it can select anything, which a cohort with fewer
    signals, or fewer samples, cannot give.
    """
    cohort = simulate_gaussian(400, 400, n_signal=20, effect_size=1.0, rho=0.3, block_size=20,
                               outcome="binary", seed=seed, signal_blocks=4)
    return write_cohort(cohort, directory, "demo", formats=("csv.gz", "parquet", "h5ad"))


# ---------------------------------------------------------------------------
# Pathway (LDA-style) family, after Bontonou et al. 2023 (arXiv 2303.11336)
# ---------------------------------------------------------------------------


def _class_sizes(n: int, proportions) -> np.ndarray:
    """Split n samples by proportions; the remainder goes to the first classes."""
    proportions = np.asarray(proportions, dtype=float)
    proportions = proportions / proportions.sum()
    sizes = np.floor(proportions * n).astype(int)
    sizes[: n - sizes.sum()] += 1
    return sizes


def simulate_pathway(n_samples: int = 200, n_genes: int = 500, *, pathway_size: int = 10, overlap: int = 0,
                     n_classes: int = 2, n_characteristic: int = 2, over_weight: float = 2.0,
                     concentration: float = 4.0, gene_concentration: float = 5.0, n_reads: int = 1_500_000,
                     class_proportions=None, seed: int = 0) -> SimulatedCohort:
    """Hierarchical (LDA-style) counts: class -> pathways -> genes, as CPM.

    The generative model of Bontonou et al. (2023, arXiv 2303.11336):

    1. class c has a Dirichlet over the P pathways with parameter
       ``concentration`` for every pathway, times ``over_weight`` for its
       ``n_characteristic`` characteristic pathways;
    2. each sample of class c draws its pathway proportions theta from it;
    3. its ``n_reads`` reads are spread over pathways, Multinomial(theta);
    4. a pathway's reads are spread over its genes by Multinomial(beta_p),
       where beta_p ~ Dirichlet(``gene_concentration``) is drawn once per
       pathway (shared by all samples);
    5. gene counts (summed over the pathways a gene belongs to) are divided
       by the depth and multiplied by 10^6 (counts per million).

    Parameters
    ----------
    n_samples, n_genes : int
    pathway_size : int
        Genes per pathway.
    overlap : int
        Genes a pathway shares with the next one (0 <= overlap < pathway_size).
        Pathways are windows of ``pathway_size`` genes starting every
        ``pathway_size - overlap`` genes, wrapping around the gene list so
        every gene is in at least one pathway and all pathways have the same
        size.
    n_classes : int
        Classes (2 = binary outcome).
    n_characteristic : int
        Characteristic (over-weighted) pathways per class; spread evenly over
        the pathway list.
    over_weight : float
        Factor on the Dirichlet parameter of a class's characteristic
        pathways (Bontonou et al. use 2); 1 gives no signal.
    concentration : float
        Dirichlet parameter of an ordinary pathway (4 in the paper); larger
        values mean less sample-to-sample variation.
    gene_concentration : float
        Dirichlet parameter of the gene weights inside a pathway (5 in the paper).
    n_reads : int
        Reads per sample (sequencing depth).
    class_proportions : sequence of float, optional
        Share of each class; balanced when omitted.
    seed : int

    Returns
    -------
    SimulatedCohort
        Labels ``class_1`` .. ``class_K`` in column ``condition``; true genes
        are the genes of every class's characteristic pathways; ``truth`` has
        gene_id, pathway (characteristic pathways holding the gene) and
        class; ``params['characteristic']`` maps class -> pathways,
        ``params['pathway_weights']`` is the classes x pathways Dirichlet
        parameter and ``params['gene_weights']`` the pathways x
        pathway_size gene weights beta (in the order of the GMT's genes).
    """
    _check_range("pathway_size", pathway_size, 1, n_genes)
    _check_range("overlap", overlap, 0, pathway_size, hi_open=True)
    _check_range("n_classes", n_classes, 2)
    _check_range("over_weight", over_weight, 0.0, lo_open=True)
    _check_range("concentration", concentration, 0.0, lo_open=True)
    _check_range("gene_concentration", gene_concentration, 0.0, lo_open=True)
    _check_range("n_reads", n_reads, 1)
    stride = pathway_size - overlap
    n_pathways = -(-n_genes // stride)
    if n_classes * n_characteristic > n_pathways:
        raise ValueError(f"{n_classes} classes x {n_characteristic} characteristic pathways exceed the "
                         f"{n_pathways} pathways; lower n_characteristic or add genes")
    if class_proportions is None:
        class_proportions = np.ones(n_classes)
    if len(class_proportions) != n_classes:
        raise ValueError(f"class_proportions needs {n_classes} values, got {len(class_proportions)}")
    rng = np.random.default_rng(seed)
    members = [np.array([(p * stride + i) % n_genes for i in range(pathway_size)]) for p in range(n_pathways)]
    # characteristic pathways spaced out so that overlapping windows of two
    # classes do not touch when there is room
    spacing = max(1, n_pathways // (n_classes * n_characteristic))
    characteristic = {c: [(c * n_characteristic + j) * spacing for j in range(n_characteristic)]
                      for c in range(n_classes)}
    alpha = np.full((n_classes, n_pathways), float(concentration))
    for c, paths in characteristic.items():
        alpha[c, paths] *= over_weight
    beta = rng.dirichlet(np.full(pathway_size, float(gene_concentration)), size=n_pathways)
    sizes = _class_sizes(n_samples, class_proportions)
    y_idx = rng.permutation(np.repeat(np.arange(n_classes), sizes))
    theta = np.empty((n_samples, n_pathways))
    for c in range(n_classes):
        rows = np.flatnonzero(y_idx == c)
        theta[rows] = rng.dirichlet(alpha[c], size=rows.size)
    reads = rng.multinomial(n_reads, theta)
    counts = np.zeros((n_samples, n_genes))
    for p in range(n_pathways):
        # a window never holds a gene twice (pathway_size <= n_genes), so the
        # buffered fancy-index += is exact; overlaps across windows add up
        counts[:, members[p]] += rng.multinomial(reads[:, p], beta[p])
    cpm = counts * (1e6 / n_reads)
    sample_ids = [f"S{i + 1:04d}" for i in range(n_samples)]
    gene_ids = [f"G{j + 1:05d}" for j in range(n_genes)]
    path_names = [f"PATHWAY_{p + 1:03d}" for p in range(n_pathways)]
    class_names = [f"class_{c + 1}" for c in range(n_classes)]
    holder: dict[int, list[tuple[str, str]]] = {}
    for c, paths in characteristic.items():
        for p in paths:
            for j in members[p]:
                holder.setdefault(int(j), []).append((path_names[p], class_names[c]))
    true_idx = sorted(holder)
    truth = pd.DataFrame({
        "gene_id": [gene_ids[j] for j in true_idx],
        "pathway": [";".join(sorted({p for p, _ in holder[j]})) for j in true_idx],
        "class": [";".join(sorted({c for _, c in holder[j]})) for j in true_idx],
    })
    params = {"family": "pathway", "n_samples": n_samples, "n_genes": n_genes, "pathway_size": pathway_size,
              "overlap": overlap, "n_pathways": n_pathways, "n_classes": n_classes,
              "n_characteristic": n_characteristic, "over_weight": over_weight, "concentration": concentration,
              "gene_concentration": gene_concentration, "n_reads": n_reads,
              "class_proportions": [float(v) for v in np.asarray(class_proportions, float) / np.sum(class_proportions)],
              "seed": seed,
              "characteristic": {class_names[c]: [path_names[p] for p in paths] for c, paths in characteristic.items()},
              # arrays for tests and power studies (not written to provenance)
              "pathway_weights": alpha, "gene_weights": beta}
    return SimulatedCohort(
        expression=pd.DataFrame(cpm, index=pd.Index(sample_ids, name="sample_id"), columns=gene_ids),
        labels=pd.DataFrame({"condition": np.asarray(class_names, dtype=object)[y_idx]},
                            index=pd.Index(sample_ids, name="sample_id")),
        true_genes=[gene_ids[j] for j in true_idx],
        pathways={path_names[p]: [gene_ids[j] for j in members[p]] for p in range(n_pathways)},
        params=params,
        truth=truth,
    )


# ---------------------------------------------------------------------------
# Semi-synthetic family: a real matrix with a planted outcome
# ---------------------------------------------------------------------------


def simulate_semisynthetic(expression: pd.DataFrame, *, n_signal: int = 10, signal_genes=None,
                           effect_size: float = 1.0, outcome: str = "binary", n_classes: int = 3,
                           interactions: bool = False, seed: int = 0, signal_seed: int | None = None,
                           transform: str = "none") -> SimulatedCohort:
    """A real expression matrix, kept as is, with an outcome planted on some of its genes.

    The genes keep their real marginal distributions and correlations; only
    the outcome is simulated, from the standardised planted genes exactly as
    in :func:`simulate_gaussian`: eta = sum_j beta_j z_j with |beta_j| =
    ``effect_size`` and alternating signs, plus interactions if asked.

    Parameters
    ----------
    expression : pandas.DataFrame
        Samples x genes (real data).
    n_signal : int
        Planted genes drawn at random among non-constant genes (ignored when
        ``signal_genes`` is given).
    signal_genes : list of str, optional
        Genes to plant the outcome on.
    effect_size, outcome, n_classes, interactions
        As in :func:`simulate_gaussian`. Binary labels are ``negative`` /
        ``positive`` (eta increases the chance of ``positive``).
    seed : int
        Seed of the outcome noise.
    signal_seed : int, optional
        Seed of the random choice of planted genes; defaults to ``seed``.
        Fixing it while varying ``seed`` keeps the truth across replicates.
    transform : {'none', 'log1p'}
        Transform applied before standardising, for count matrices (the
        written expression is never transformed).

    Returns
    -------
    SimulatedCohort
        With ``truth`` (gene_id, effect) and a GMT with the planted set
        (``PLANTED_SIGNAL``) and a same-size random null set (``RANDOM_NULL``).
    """
    if outcome not in ("binary", "multiclass", "continuous"):
        raise ValueError(f"outcome must be binary, multiclass or continuous, got {outcome!r}")
    if transform not in ("none", "log1p"):
        raise ValueError(f"transform must be none or log1p, got {transform!r}")
    values = np.asarray(expression, dtype=np.float64)
    gene_ids = [str(g) for g in expression.columns]
    if transform == "log1p":
        if (values < 0).any():
            raise ValueError("transform log1p needs non-negative values")
        values = np.log1p(values)
    sd = values.std(axis=0)
    varying = np.flatnonzero(sd > 0)
    pick_rng = np.random.default_rng(seed if signal_seed is None else signal_seed)
    if signal_genes is not None:
        index = {g: j for j, g in enumerate(gene_ids)}
        missing = [g for g in signal_genes if g not in index]
        if missing:
            raise KeyError(f"signal gene(s) not in the matrix: {', '.join(missing[:5])}")
        signal_idx = np.array([index[g] for g in signal_genes], dtype=int)
        if (sd[signal_idx] == 0).any():
            bad = [gene_ids[j] for j in signal_idx if sd[j] == 0]
            raise ValueError(f"signal gene(s) are constant: {', '.join(bad[:5])}")
    else:
        _check_range("n_signal", n_signal, 1, varying.size)
        signal_idx = np.sort(pick_rng.choice(varying, size=n_signal, replace=False))
    null_pool = np.setdiff1d(varying, signal_idx)
    null_idx = np.sort(pick_rng.choice(null_pool, size=min(signal_idx.size, null_pool.size), replace=False))
    k = signal_idx.size
    Z = (values[:, signal_idx] - values[:, signal_idx].mean(axis=0)) / sd[signal_idx]
    beta = effect_size * np.where(np.arange(k) % 2 == 0, 1.0, -1.0)
    eta = Z @ beta
    if interactions and k >= 2:
        eta = eta + effect_size * np.sum(Z[:, :-1] * Z[:, 1:], axis=1) / np.sqrt(k)
    rng = np.random.default_rng(seed)
    n = values.shape[0]
    if outcome == "binary":
        y = np.where(rng.random(n) < 1 / (1 + np.exp(-eta)), "positive", "negative")
    elif outcome == "multiclass":
        logits = np.zeros((n, n_classes))
        for c in range(n_classes):
            logits[:, c] = Z[:, c::n_classes] @ beta[c::n_classes]
        prob = np.exp(logits - logits.max(axis=1, keepdims=True))
        prob /= prob.sum(axis=1, keepdims=True)
        draws = (prob.cumsum(axis=1) > rng.random(n)[:, None]).argmax(axis=1)
        y = np.array([f"class_{c + 1}" for c in range(n_classes)])[draws]
    else:
        y = eta + rng.standard_normal(n)
    sample_index = pd.Index([str(s) for s in expression.index], name="sample_id")
    true_genes = [gene_ids[j] for j in signal_idx]
    return SimulatedCohort(
        expression=pd.DataFrame(np.asarray(expression, dtype=np.float64), index=sample_index, columns=gene_ids),
        labels=pd.DataFrame({"condition": y}, index=sample_index),
        true_genes=true_genes,
        pathways={"PLANTED_SIGNAL": true_genes, "RANDOM_NULL": [gene_ids[j] for j in null_idx]},
        params={"family": "semi-synthetic", "n_samples": n, "n_genes": len(gene_ids), "n_signal": int(k),
                "signal_genes": true_genes, "effect_size": effect_size, "outcome": outcome,
                "n_classes": n_classes, "interactions": interactions, "seed": seed,
                "signal_seed": seed if signal_seed is None else signal_seed, "transform": transform},
        truth=pd.DataFrame({"gene_id": true_genes, "effect": beta}),
    )


def simulate(family: str, *, seed: int = 0, **params) -> SimulatedCohort:
    """Dispatch to :func:`simulate_gaussian`, :func:`simulate_pathway` or :func:`simulate_semisynthetic`.

    ``family`` is ``gaussian``, ``pathway`` or ``semi-synthetic``; for the
    last, ``params`` must hold ``expression`` (a samples x genes DataFrame).
    """
    if family == "gaussian":
        return simulate_gaussian(seed=seed, **params)
    if family == "pathway":
        return simulate_pathway(seed=seed, **params)
    if family in ("semi-synthetic", "semisynthetic"):
        expression = params.pop("expression")
        return simulate_semisynthetic(expression, seed=seed, **params)
    raise ValueError(f"family must be gaussian, pathway or semi-synthetic, got {family!r}")
