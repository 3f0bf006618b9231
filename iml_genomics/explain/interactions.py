"""Shapley interaction values of tree models, restricted to the top-K genes.

The ``shap`` library computes the full (p+1) x (p+1) interaction matrix per
sample; we run it one small chunk of samples at a time, keep only the K x K
block of the top genes and discard the rest, so the output and the memory
held across chunks are K x K (the transient per-chunk matrix is bounded by
``max_bytes``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

INTERACTION_COLUMNS = ["gene_id_1", "gene_id_2", "mean_abs_interaction", "rank"]


def _interaction_chunk(estimator, Z, top_idx, n_outputs):
    import shap

    explainer = shap.TreeExplainer(estimator, feature_perturbation="tree_path_dependent")
    iv = np.asarray(explainer.shap_interaction_values(Z), dtype=np.float64)
    if iv.ndim == 3:
        iv = iv[..., None]
    if iv.shape[3] != n_outputs:
        iv = iv[..., -n_outputs:]
    block = iv[:, top_idx][:, :, top_idx]  # (n, K, K, outputs)
    return np.abs(block).sum(axis=0)  # summed over samples


def tree_interactions(pipeline, X, *, used_gene_ids, top_genes, classes, max_samples: int = 200,
                      max_bytes: int = 512 * 2**20, n_jobs: int | None = 1, backend=None):
    """Mean |Shapley interaction value| between pairs of ``top_genes`` (path-dependent Tree SHAP).

    Parameters
    ----------
    pipeline : fitted Pipeline whose final estimator is a tree model
    X : raw expression rows (the first ``max_samples`` are used)
    used_gene_ids : list of str
        Genes entering the model (columns after preprocessing).
    top_genes : list of str
        The K genes (e.g. the top of the SHAP ranking).
    classes : list of str or None
    n_jobs : int
        Workers over sample chunks; used only when ``backend`` is None.
    backend : iml_genomics.parallel.Backend, optional
        Runs the sample chunks; it decides over ``n_jobs``.

    Returns
    -------
    table : pandas.DataFrame
        gene_id_1, gene_id_2 (gene_id_1 < gene_id_2 in ``top_genes`` order), mean_abs_interaction, rank.
        ``mean_abs_interaction`` is the mean over samples of |Phi_ij| as returned by shap (the full pair
        effect is Phi_ij + Phi_ji = 2 Phi_ij), averaged over the explained classes for multiclass models.
    info : dict
        n_samples, k, skipped reason (or None).
    """
    from iml_genomics.explain.shap_values import explained_outputs, preprocess, split_pipeline
    from iml_genomics.parallel import resolve_backend

    pre, estimator = split_pipeline(pipeline)
    pos = {g: j for j, g in enumerate(used_gene_ids)}
    top = [g for g in top_genes if g in pos]
    k = len(top)
    n_out = len(explained_outputs(estimator, classes))
    info = {"n_samples": 0, "k": k, "value_function": "tree_path_dependent", "skipped": None}
    if k < 2:
        info["skipped"] = "fewer than 2 used genes"
        return pd.DataFrame(columns=INTERACTION_COLUMNS), info
    q = len(used_gene_ids)
    per_sample = (q + 1) ** 2 * max(2, n_out) * 8
    if per_sample > 4 * max_bytes:
        info["skipped"] = (f"one sample's interaction matrix would need {per_sample / 2**30:.1f} GiB for {q} genes; "
                           f"reduce the genes (preprocess.top_k_variable)")
        return pd.DataFrame(columns=INTERACTION_COLUMNS), info
    n = min(X.shape[0], max_samples)
    chunk = max(1, int(max_bytes // per_sample))
    top_idx = np.array([pos[g] for g in top])
    tasks = [(estimator, preprocess(pre, X[s:min(s + chunk, n)]), top_idx, n_out) for s in range(0, n, chunk)]
    total = sum(resolve_backend(backend, n_jobs).map(_interaction_chunk, tasks))
    mean = total.mean(axis=2) / n  # average over outputs
    iu, ju = np.triu_indices(k, 1)
    table = pd.DataFrame({"gene_id_1": [top[i] for i in iu], "gene_id_2": [top[j] for j in ju],
                          "mean_abs_interaction": mean[iu, ju]})
    table = table.sort_values(["mean_abs_interaction", "gene_id_1", "gene_id_2"], ascending=[False, True, True],
                              kind="mergesort").reset_index(drop=True)
    table["rank"] = np.arange(1, len(table) + 1)
    info["n_samples"] = n
    return table, info
