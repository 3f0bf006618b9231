"""Local explanations: the genes pushing one sample's prediction up and down."""

from __future__ import annotations

import numpy as np
import pandas as pd

LOCAL_COLUMNS = ["sample_id", "class", "prediction", "base_value", "direction", "rank", "gene_id", "shap_value",
                 "expression_value"]


def local_explanations(values, base_values, model_output, *, sample_ids, gene_ids, outputs, expression,
                       top_n: int = 10) -> pd.DataFrame:
    """Top genes per direction for each sample and explained output.

    Parameters
    ----------
    values : array, (n_samples, n_genes_used, n_outputs)
        SHAP values of the samples to explain.
    base_values, model_output : array, (n_samples, n_outputs)
    sample_ids : list of str
    gene_ids : list of str
        The used genes (columns of ``values``).
    outputs : list of str
        The ``class`` of each output.
    expression : array, (n_samples, n_genes_used)
        The samples' input expression of the used genes (before preprocessing).
    top_n : int
        Genes per direction.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`LOCAL_COLUMNS`; per sample and class first the 'up'
        genes (shap_value > 0, largest first) then the 'down' genes
        (shap_value < 0, most negative first), ties by gene id; rank is 1-based within a direction.
    """
    ids = np.asarray(gene_ids, dtype=object)
    rows = []
    for i, sid in enumerate(sample_ids):
        for k, cls in enumerate(outputs):
            phi = values[i, :, k]
            for direction, sign in (("up", 1.0), ("down", -1.0)):
                s = sign * phi
                order = np.lexsort((ids, -s))
                order = [j for j in order[:top_n] if s[j] > 0]
                for r, j in enumerate(order, start=1):
                    rows.append((str(sid), cls, float(model_output[i, k]), float(base_values[i, k]), direction, r,
                                 str(ids[j]), float(phi[j]), float(expression[i, j])))
    return pd.DataFrame(rows, columns=LOCAL_COLUMNS)
