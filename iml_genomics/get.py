"""Tidy tables back out of an AnnData the :mod:`iml_genomics.tl` functions wrote into (scanpy's ``get``).

Each ``*_df`` returns the table the command line writes under the same name, with the same columns, order
and dtypes: ``iml_genomics.io.write_tsv(get.ranking_df(adata), path)`` writes the bytes of the
``gene_ranking.tsv`` that ``iml-genomics explain`` writes for the same cohort, config and model. The tables
are kept in ``adata.uns["iml_genomics"][step]["tables"]`` as Parquet bytes, so they come back exactly, also
from an AnnData read back from h5ad.
"""

from __future__ import annotations

import json

from iml_genomics.tl import UNS_KEY, key_prefix, recorded


def _table(adata, step: str, name: str, key_added):
    import io

    import numpy as np
    import pandas as pd

    from iml_genomics.errors import InputDataError

    tables = recorded(adata, step, key_added).get("tables") or {}
    if name not in tables:
        raise InputDataError(f"adata.uns['{UNS_KEY}']['{key_prefix(key_added)}{step}']['tables'] has no '{name}' "
                             f"(the step did not produce it); re-run ig.tl.{step}(adata).")
    frame = pd.read_parquet(io.BytesIO(np.asarray(tables[name], dtype=np.uint8).tobytes()))
    return _with_explains(adata, step, name, frame, key_added)


def _with_explains(adata, step: str, name: str, frame, key_added):
    """The table with the ``explains`` column its file has (io/step_outputs.py appends it when writing)."""
    from iml_genomics import explains as E

    if step in E.STEP_KIND:
        return E.with_explains(frame, E.STEP_KIND[step])
    if name == "gene_sets":
        return E.gene_sets_with_explains(frame, json.loads(recorded(adata, step, key_added).get("summary") or "{}"))
    return frame  # group_attributions: per-sample Parquet, one column per set


def cv_metrics_df(adata, *, key_added: str | None = None):
    """``cv_metrics.tsv`` of :func:`iml_genomics.tl.train`: one row per fold.

    Parameters
    ----------
    adata : anndata.AnnData
    key_added : str, optional
        The prefix the step ran with.

    Returns
    -------
    pandas.DataFrame
        Per-fold rows; the ``mean``/``sd`` rows an AnnData written by an older
        version holds are dropped (they are :func:`cv_summary_df`).
    """
    from iml_genomics.io.interchange import cv_fold_rows

    return cv_fold_rows(_table(adata, "train", "cv_metrics", key_added))


def cv_summary_df(adata, *, key_added: str | None = None):
    """``cv_summary.tsv`` of :func:`iml_genomics.tl.train`: one row per metric with mean, sd, n_folds.

    Parameters
    ----------
    adata : anndata.AnnData
    key_added : str, optional
        The prefix the step ran with.

    Returns
    -------
    pandas.DataFrame
        Columns ``metric``, ``mean``, ``sd``, ``n_folds``, ``explains``.
    """
    from iml_genomics.explains import with_explains
    from iml_genomics.io.interchange import cv_summary_table

    return with_explains(cv_summary_table(cv_metrics_df(adata, key_added=key_added)), "model")  # as the file


def oof_predictions_df(adata, *, key_added: str | None = None):
    """``oof_predictions.tsv`` of :func:`iml_genomics.tl.train`: out-of-fold predictions per sample."""
    return _table(adata, "train", "oof_predictions", key_added)


def ranking_df(adata, *, key_added: str | None = None):
    """``gene_ranking.tsv`` of :func:`iml_genomics.tl.explain`: genes best first, with uncertainty."""
    return _table(adata, "explain", "gene_ranking", key_added)


def audit_df(adata, *, key_added: str | None = None):
    """``audit.tsv`` of :func:`iml_genomics.tl.explain` with ``data.sensitive`` (iml_genomics.audit)."""
    return _table(adata, "explain", "audit", key_added)


def local_df(adata, *, key_added: str | None = None):
    """``local_explanations.tsv`` of :func:`iml_genomics.tl.explain`: top genes of the ``explain.samples``."""
    return _table(adata, "explain", "local_explanations", key_added)


def interactions_df(adata, *, key_added: str | None = None):
    """``interactions.tsv`` of :func:`iml_genomics.tl.explain` (empty unless interactions were computed)."""
    return _table(adata, "explain", "interactions", key_added)


def explain_method_df(adata, file_name: str, *, key_added: str | None = None):
    """A table of an ``explain.methods`` method by its output file name (``surrogate.tsv``, ``examples.tsv``).

    Parameters
    ----------
    adata : anndata.AnnData
    file_name : str
        The name ``iml-genomics explain`` writes it under (docs/explain.md).
    key_added : str, optional

    Returns
    -------
    pandas.DataFrame
    """
    import io

    import numpy as np
    import pandas as pd

    from iml_genomics.errors import InputDataError

    methods = recorded(adata, "explain", key_added).get("methods") or {}
    if file_name not in methods:
        have = ", ".join(sorted(methods)) or "none"
        raise InputDataError(f"adata.uns['{UNS_KEY}']['{key_prefix(key_added)}explain']['methods'] has no "
                             f"'{file_name}' (present: {have}); run ig.tl.explain with that method in "
                             f"explain.methods.")
    return pd.read_parquet(io.BytesIO(np.asarray(methods[file_name], dtype=np.uint8).tobytes()))


def explain_method_text(adata, file_name: str, *, key_added: str | None = None) -> str:
    """A text of an ``explain.methods`` method by its output file name (``surrogate_rules.txt``,
    ``model_rules.txt``); :func:`iml_genomics.explain.surrogate.parse_rules` reads rules back.

    Parameters
    ----------
    adata : anndata.AnnData
    file_name : str
        The name ``iml-genomics explain`` writes it under (docs/explain.md).
    key_added : str, optional

    Returns
    -------
    str
    """
    from iml_genomics.errors import InputDataError

    texts = recorded(adata, "explain", key_added).get("method_texts") or {}
    if file_name not in texts:
        have = ", ".join(sorted(texts)) or "none"
        raise InputDataError(f"adata.uns['{UNS_KEY}']['{key_prefix(key_added)}explain']['method_texts'] has no "
                             f"'{file_name}' (present: {have}); run ig.tl.explain with that method in "
                             f"explain.methods (tables: ig.get.explain_method_df).")
    return str(texts[file_name])


def selection_df(adata, *, key_added: str | None = None):
    """``knockoff_selection.tsv`` of :func:`iml_genomics.tl.select`: every gene, W / p-values, selected."""
    return _table(adata, "select", "knockoff_selection", key_added)


def gene_sets_df(adata, *, key_added: str | None = None):
    """``gene_sets.tsv`` of :func:`iml_genomics.tl.gene_sets`."""
    return _table(adata, "gene_sets", "gene_sets", key_added)


def group_attributions_df(adata, *, key_added: str | None = None):
    """``group_attributions.parquet`` of :func:`iml_genomics.tl.gene_sets` (sum of |SHAP| per sample and set)."""
    return _table(adata, "gene_sets", "group_attributions", key_added)


def attributions_df(adata, *, key_added: str | None = None):
    """``attributions.parquet`` of :func:`iml_genomics.tl.explain`, rebuilt from ``obsm["shap"]``.

    Returns
    -------
    pandas.DataFrame
        ``sample_id``, ``class``, ``base_value``, ``model_output``, then one float32 column per gene with
        attributions (sample-major rows, then class).
    """
    from iml_genomics.tl import stored_result

    recorded(adata, "explain", key_added)
    return stored_result(adata, "explain", key_added).attribution_table()


def summary(adata, step: str, *, key_added: str | None = None) -> dict:
    """The step's summary JSON (``explain_summary.json``, ``select_summary.json``, the gene-set block).

    Parameters
    ----------
    adata : anndata.AnnData
    step : {"explain", "select", "gene_sets"}
    key_added : str, optional
    """
    from iml_genomics.errors import InputDataError

    entry = recorded(adata, step, key_added)
    if "summary" not in entry:
        raise InputDataError(f"adata.uns['{UNS_KEY}']['{key_prefix(key_added)}{step}'] has no summary; the "
                             f"{step} step records none.")
    from iml_genomics.explains import STEP_KIND, step_summary_with_explains

    document = json.loads(entry["summary"])
    # as the step's summary file says it (io/step_outputs.py)
    return step_summary_with_explains(document, STEP_KIND[step]) if step in STEP_KIND else document


def provenance(adata, step: str, *, key_added: str | None = None) -> dict:
    """The step's provenance (package versions, task, classes, positive class, cohort, warnings)."""
    return json.loads(recorded(adata, step, key_added).get("provenance") or "{}")


def config(adata, step: str = "train", *, key_added: str | None = None):
    """The resolved :class:`~iml_genomics.config.Config` the step ran with."""
    from iml_genomics.config import config_from_dict

    entry = recorded(adata, step, key_added)
    return config_from_dict(json.loads(entry.get("config") or "{}"),
                            source=f"adata.uns['{UNS_KEY}']['{key_prefix(key_added)}{step}']['config']")


def compare_df(adata, name: str = "model_comparison", *, key_added: str | None = None):
    """A table of :func:`iml_genomics.tl.compare`, as ``iml-genomics compare`` writes ``<name>.tsv``.

    Parameters
    ----------
    adata : anndata.AnnData
    name : {"model_comparison", "model_agreement", "robust_genes", "model_gene_rankings", "model_tuning",
            "cv_folds"}
    key_added : str, optional

    Returns
    -------
    pandas.DataFrame
    """
    return _table(adata, "compare", name, key_added)
