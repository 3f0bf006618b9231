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
    """

    expression: pd.DataFrame
    labels: pd.DataFrame
    true_genes: list[str]
    pathways: dict[str, list[str]]
    label_column: str = "condition"
    params: dict = field(default_factory=dict)


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


def simulate_gaussian(n_samples: int = 200, n_genes: int = 500, *, n_signal: int = 10, effect_size: float = 1.0,
                      rho: float = 0.5, block_size: int = 20, outcome: str = "binary", n_classes: int = 3,
                      interactions: bool = False, seed: int = 0) -> SimulatedCohort:
    """Block-correlated Gaussian genes with a sparse planted outcome.

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

    Returns
    -------
    SimulatedCohort
    """
    rng = np.random.default_rng(seed)
    X = block_correlated_normal(n_samples, n_genes, block_size=block_size, rho=rho, rng=rng)
    n_blocks = -(-n_genes // block_size)
    signal_idx = np.array([(k % n_blocks) * block_size + k // n_blocks for k in range(n_signal)], dtype=int)
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
    else:
        raise ValueError(f"outcome must be binary, multiclass or continuous, got {outcome!r}")
    pathways = {f"PATHWAY_{b + 1:03d}": gene_ids[b * block_size:(b + 1) * block_size] for b in range(n_blocks)}
    return SimulatedCohort(
        expression=pd.DataFrame(X, index=pd.Index(sample_ids, name="sample_id"), columns=gene_ids),
        labels=pd.DataFrame({"condition": y}, index=pd.Index(sample_ids, name="sample_id")),
        true_genes=[gene_ids[j] for j in signal_idx],
        pathways=pathways,
        params={"family": "gaussian", "n_samples": n_samples, "n_genes": n_genes, "n_signal": n_signal,
                "effect_size": effect_size, "rho": rho, "block_size": block_size, "outcome": outcome,
                "n_classes": n_classes, "interactions": interactions, "seed": seed},
    )


def write_gmt(pathways: dict[str, list[str]], path, description: str = "simulated") -> None:
    """Write gene sets as GMT (name, description, genes), atomically."""
    from iml_genomics.io.writers import atomic_write_bytes

    lines = ["\t".join([name, description, *genes]) for name, genes in pathways.items()]
    atomic_write_bytes(("\n".join(lines) + "\n").encode(), path)


def write_cohort(cohort: SimulatedCohort, directory, prefix: str, formats=("csv.gz",)) -> dict[str, str]:
    """Write expression (in each format), labels, truth and GMT; return the paths."""
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
    write_tsv(pd.DataFrame({"gene_id": cohort.true_genes}), directory / f"{prefix}_truth.tsv")
    write_gmt(cohort.pathways, directory / f"{prefix}_pathways.gmt")
    return paths


def make_demo_data(directory, *, seed: int = 7) -> dict[str, str]:
    """Regenerate the bundled demo cohort in ``test_data/``.

    120 samples x 400 genes in blocks of 20 (rho = 0.5), 8 planted genes,
    binary outcome; written as CSV.gz, Parquet and .h5ad with labels, the
    true genes and a GMT of the 20 simulated pathways.
    """
    cohort = simulate_gaussian(120, 400, n_signal=8, effect_size=1.5, rho=0.5, block_size=20,
                               outcome="binary", seed=seed)
    return write_cohort(cohort, directory, "demo", formats=("csv.gz", "parquet", "h5ad"))
