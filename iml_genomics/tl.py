"""The scanpy-style Python API: run a step on an AnnData and write its results into it.

``import iml_genomics as ig`` then ``ig.tl.train(adata, label_column="cell_type")``, ``ig.tl.explain(adata)``,
``ig.tl.select(adata)``, ``ig.tl.gene_sets(adata, gene_sets="sets.gmt")``. Each function calls the step of
:mod:`iml_genomics.steps` (where the science lives), writes its results into ``adata`` in place and returns
the step's result object. Where everything lands (``adata.var`` columns, ``adata.obsm``, ``adata.uns
["iml_genomics"]``) is listed in docs/api.md; :mod:`iml_genomics.get` turns it back into the tidy tables the
command line writes as TSV files.

Everything written is h5ad-writable: ``adata.write_h5ad(path)`` works after every call, and
:func:`explain` works on the AnnData read back, because the fitted model is kept as the bytes of its skops
bundle and loaded only through :func:`iml_genomics.models.load_bundle` (allow-listed types, never pickle).

Importing this module is cheap: the heavy libraries are imported when a function is called.
"""

from __future__ import annotations

import json
import os

UNS_KEY = "iml_genomics"
"""``adata.uns`` key under which every step records its parameters, provenance and tables."""

# step result table -> (attribute of the step result, adata.uns table name); get.py reads the same names
TABLES = {
    "train": (("cv_metrics", "cv_metrics"), ("oof_predictions", "oof_predictions")),
    "explain": (("ranking", "gene_ranking"), ("local", "local_explanations"), ("interactions", "interactions"),
                ("audit", "audit")),  # audit.tsv (data.sensitive); absent (None) without it
    "select": (("selection", "knockoff_selection"),),
    "gene_sets": (("table", "gene_sets"), ("group_attributions", "group_attributions")),
}

# gene_ranking.tsv column -> adata.var column (before the key_added prefix) and the value of genes it lacks
EXPLAIN_VAR = (("rank", "explain_rank", "Int64"), ("mean_abs_shap", "mean_abs_shap", "float"),
               ("mean_shap", "mean_shap", "float"), ("sd", "shap_sd", "float"),
               ("rank_low", "explain_rank_low", "Int64"), ("rank_high", "explain_rank_high", "Int64"),
               ("top_k_frequency", "top_k_frequency", "float"),
               ("permutation_importance", "permutation_importance", "float"),
               ("permutation_importance_sd", "permutation_importance_sd", "float"),
               ("used", "used_by_model", "bool"))
# knockoff_selection.tsv column -> adata.var column
SELECT_VAR = (("w", "knockoff_w", "float"), ("selected", "knockoff_selected", "bool"),
              ("selection_frequency", "selection_frequency", "float"), ("e_value", "knockoff_e_value", "float"),
              ("rank", "select_rank", "Int64"), ("group", "select_group", "str"),
              ("tested", "select_tested", "bool"), ("p_value", "dcrt_p_value", "float"),
              ("q_value", "dcrt_q_value", "float"))


def key_prefix(key_added: str | None) -> str:
    """``key_added`` as a column / key prefix: ``"nk"`` -> ``"nk_"``; None -> ``""``.

    Parameters
    ----------
    key_added : str or None

    Returns
    -------
    str
        The prefix of every var column, obsm key and ``uns["iml_genomics"]`` entry a step writes.
    """
    if key_added is None or key_added == "":
        return ""
    if not isinstance(key_added, str):
        raise TypeError(f"key_added must be a string, not {type(key_added).__name__}.")
    return key_added if key_added.endswith("_") else f"{key_added}_"


def _config(config, *, what: str = "config"):
    """A :class:`~iml_genomics.config.Config` from a YAML path, a mapping, a Config or None (the defaults)."""
    import copy
    from pathlib import Path

    from iml_genomics.config import Config, config_from_dict, load_config

    if config is None:
        return Config()
    if isinstance(config, Config):
        return copy.deepcopy(config)
    if isinstance(config, dict):
        return config_from_dict(copy.deepcopy(config), source=what)
    if isinstance(config, (str, Path)):
        return load_config(config)
    raise TypeError(f"{what} must be a YAML path, a dict or an iml_genomics.config.Config, "
                    f"not {type(config).__name__}.")


def _store(adata) -> dict:
    """``adata.uns["iml_genomics"]``, created when missing."""
    store = adata.uns.get(UNS_KEY)
    if store is None:
        adata.uns[UNS_KEY] = {}
        store = adata.uns[UNS_KEY]
    return store


def recorded(adata, step: str, key_added: str | None = None) -> dict:
    """What ``tl.<step>`` recorded in ``adata.uns["iml_genomics"]``, or a one-line error naming what to run.

    Parameters
    ----------
    adata : anndata.AnnData
    step : {"train", "explain", "select", "gene_sets"}
    key_added : str, optional
        The prefix the step was run with.

    Raises
    ------
    iml_genomics.errors.InputDataError
        The step has not been run on this AnnData (with this ``key_added``).
    """
    from iml_genomics.errors import InputDataError

    name = key_prefix(key_added) + step
    entry = (adata.uns.get(UNS_KEY) or {}).get(name)
    if entry is None:
        hint = f", key_added={key_added!r}" if key_added else ""
        raise InputDataError(f"adata.uns['{UNS_KEY}']['{name}'] not found: run ig.tl.{step}(adata{hint}) first.")
    return entry


def _json(obj) -> str:
    from iml_genomics.io.writers import json_document

    return json.dumps(json_document(obj), sort_keys=True)


def _table_bytes(frame):
    """A table as Parquet bytes (uint8): dtypes, NaN and column order survive h5ad exactly."""
    import io

    import numpy as np

    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return np.frombuffer(buf.getvalue(), dtype=np.uint8).copy()


def _params(**kwargs) -> dict:
    """Parameters as h5ad can hold them: None is left out (h5ad has no null)."""
    return {k: v for k, v in kwargs.items() if v is not None}


def _var_columns(adata, table, spec, prefix: str) -> None:
    """Write ``table``'s per-gene columns into ``adata.var`` (order = var_names; missing genes NaN/False/<NA>)."""
    import numpy as np
    import pandas as pd

    table = table.set_index("gene_id")
    table = table[~table.index.duplicated()]
    for column, var_column, kind in spec:
        values = table[column].reindex(adata.var_names) if column in table.columns else \
            pd.Series(np.nan, index=adata.var_names)
        if kind == "bool":
            values = values.astype("boolean").fillna(False).astype(bool)
        elif kind == "Int64":
            values = pd.to_numeric(values).astype("Int64")
        elif kind == "str":
            values = values.astype(object).where(values.notna(), "").astype(str)
        else:
            values = pd.to_numeric(values).astype(np.float64)
        adata.var[prefix + var_column] = values.to_numpy()


def _bundle_bytes(result):
    """The skops bundle :func:`iml_genomics.models.save_bundle` writes for ``result``: (model bytes, manifest JSON)."""
    import tempfile
    from pathlib import Path

    import numpy as np

    from iml_genomics.models import BUNDLE_MANIFEST, BUNDLE_MODEL, save_bundle

    with tempfile.TemporaryDirectory(prefix="iml_genomics_bundle_") as tmp:
        save_bundle(tmp, result.model, result.manifest)
        model = (Path(tmp) / BUNDLE_MODEL).read_bytes()
        manifest = (Path(tmp) / BUNDLE_MANIFEST).read_text()
    return np.frombuffer(model, dtype=np.uint8).copy(), manifest


def load_model(adata, key_added: str | None = None):
    """The model ``tl.train`` stored in ``adata``, loaded through the safe bundle loader.

    The bundle bytes are written to a private temporary directory and read by
    :func:`iml_genomics.models.load_bundle`, which checks the manifest, the sha256 and every type in the skops
    schema against the allow-list before anything is loaded; nothing is unpickled.

    Parameters
    ----------
    adata : anndata.AnnData
    key_added : str, optional

    Returns
    -------
    (sklearn.pipeline.Pipeline, dict)
        The fitted pipeline and its manifest (``model.json``), as :func:`iml_genomics.steps.explain` takes them.

    Raises
    ------
    iml_genomics.errors.BundleError
        The stored bundle is missing, damaged or altered (one line naming the ``adata.uns`` key).
    """
    import tempfile
    from pathlib import Path

    import numpy as np

    from iml_genomics.errors import BundleError
    from iml_genomics.models import BUNDLE_MANIFEST, BUNDLE_MODEL, load_bundle

    name = key_prefix(key_added) + "train"
    where = f"adata.uns['{UNS_KEY}']['{name}']['model']"
    stored = recorded(adata, "train", key_added).get("model")
    if not isinstance(stored, dict) or "skops" not in stored or "manifest" not in stored:
        raise BundleError(f"{where}: no model bundle (needs 'skops' and 'manifest'); re-run ig.tl.train(adata).")
    data, manifest = np.asarray(stored["skops"]), stored["manifest"]
    if data.dtype != np.uint8 or data.ndim != 1 or not isinstance(manifest, str):
        raise BundleError(f"{where}: 'skops' must be a 1-D uint8 array and 'manifest' a JSON string; "
                          f"re-run ig.tl.train(adata).")
    with tempfile.TemporaryDirectory(prefix="iml_genomics_bundle_") as tmp:
        (Path(tmp) / BUNDLE_MODEL).write_bytes(data.tobytes())
        (Path(tmp) / BUNDLE_MANIFEST).write_text(manifest)
        try:
            return load_bundle(tmp)
        except BundleError as exc:
            # the loader names its (temporary) files; the user knows the bundle by its adata.uns key
            message = str(exc).replace(str(Path(tmp) / BUNDLE_MODEL), f"{where}['skops']")
            message = message.replace(str(Path(tmp) / BUNDLE_MANIFEST), f"{where}['manifest']")
            message = message.replace(tmp, where)
            message = message.replace("Re-run 'iml-genomics train' to recreate it.", "Re-run ig.tl.train(adata).")
            raise BundleError(message) from None


def _provenance(result, cfg) -> str:
    from iml_genomics.io.writers import package_versions

    return _json({"versions": package_versions(), "task": result.task, "classes": result.classes,
                  "positive_class": result.positive_class, "cohort": getattr(result, "cohort", None),
                  "warnings": list(getattr(result, "warnings", []) or []), "seed": cfg.seed if cfg else None})


def attach_results(adata, *, train=None, explain=None, select=None, gene_sets=None, key_added=None, config=None,
                   params=None) -> None:
    """Write step results into an AnnData, as the ``tl`` functions do after calling a step.

    Parameters
    ----------
    adata : anndata.AnnData
        The cohort the results were computed on (same ``var_names`` / ``obs_names``); changed in place.
    train : iml_genomics.steps.TrainResult, optional
        ``var[used_by_model]``, the tables ``cv_metrics`` / ``oof_predictions`` and the model bundle (skops
        bytes + manifest JSON) in ``uns["iml_genomics"]["train"]``.
    explain : iml_genomics.steps.ExplainResult, optional
        The ``gene_ranking`` columns in ``var`` (``mean_abs_shap``, ``explain_rank``, ...), the per-sample SHAP
        values in ``obsm["shap"]`` (float32, samples x ``var_names``; 0 for genes the model does not use;
        samples x genes x classes for multiclass), base values and model outputs in ``uns``.
    select : iml_genomics.steps.SelectResult, optional
        ``knockoff_w``, ``knockoff_selected``, ``dcrt_p_value``, ... in ``var``; the table and summary in uns.
    gene_sets : iml_genomics.steps.GeneSetResult, optional
        The ``gene_sets`` table (and per-sample group attributions) in uns (sets are not genes: no var columns).
    key_added : str, optional
        Prefix of every var column, obsm key and uns entry (``"nk"`` -> ``nk_mean_abs_shap``,
        ``uns["iml_genomics"]["nk_train"]``); None = no prefix.
    config : iml_genomics.config.Config, optional
        The resolved config the steps ran with, recorded as JSON (train's defaults to its bundle's config).
    params : dict, optional
        The call's parameters, recorded under ``params`` (None values are left out).

    Notes
    -----
    Genes absent from a step's table (filtered out, or not in the model) get NaN in float columns, <NA> in
    integer ones, False in boolean ones and ``""`` in ``select_group``. Earlier results of the same step and
    prefix are replaced.
    """
    import numpy as np

    prefix = key_prefix(key_added)
    store = _store(adata)
    base = dict(params or {})
    cfg_json = _json(config.to_dict()) if config is not None else None
    for step, result in (("train", train), ("explain", explain), ("select", select), ("gene_sets", gene_sets)):
        if result is None:
            continue
        entry = {"params": _params(**base, key_added=key_added),
                 "tables": {name: _table_bytes(getattr(result, attr)) for attr, name in TABLES[step]
                            if getattr(result, attr) is not None}}
        if cfg_json is not None:
            entry["config"] = cfg_json
        if step != "gene_sets":
            entry["provenance"] = _provenance(result, config)
        if step == "train":
            skops, manifest = _bundle_bytes(result)
            entry["model"] = {"skops": skops, "manifest": manifest}
            entry.setdefault("config", _json(result.manifest.get("config") or {}))
            used = set(result.used_genes)
            adata.var[prefix + "used_by_model"] = np.array([g in used for g in adata.var_names], dtype=bool)
        elif step == "explain":
            entry["summary"] = _json(result.summary)
            _attach_attributions(adata, result, entry, prefix)  # first: it refuses a result of other samples
            _var_columns(adata, result.ranking, EXPLAIN_VAR, prefix)
            # explain.methods: the tables by output file name (ig.get.explain_method_df reads one back)
            entry["methods"] = {name: _table_bytes(table) for name, table in result.method_tables().items()}
            entry["method_texts"] = dict(result.method_texts())
        elif step == "select":
            entry["summary"] = _json(result.summary)
            _var_columns(adata, result.selection, SELECT_VAR, prefix)
        else:
            entry["summary"] = _json(result.summary)
            entry["provenance"] = _json({"positive_class": result.positive_class,
                                         "warnings": list(result.warnings or [])})
        store[prefix + step] = entry


def _attach_attributions(adata, result, entry, prefix: str) -> None:
    """Per-sample SHAP values into ``obsm`` on the var axis; base values, outputs and layout into ``uns``.

    A subsample of cells (``explain.max_samples``) goes to ``uns`` with its cell ids instead of ``obsm``;
    covariate attributions (``data.covariates``) go to ``uns`` after the genes.
    """
    import numpy as np

    key = prefix + "shap"
    if result.attributions is None:
        adata.obsm.pop(key, None)
        return
    from iml_genomics.errors import InputDataError

    position = {g: i for i, g in enumerate(adata.var_names)}
    # covariates (data.covariates) are model inputs but not genes: their attributions go to uns, not obsm
    from iml_genomics.covariates import PREFIX

    is_cov = np.array([g.startswith(PREFIX) and g not in position for g in result.attribution_genes], dtype=bool)
    missing = [g for g, c in zip(result.attribution_genes, is_cov) if g not in position and not c]
    rows = adata.obs_names.get_indexer(list(result.sample_ids))
    subsample = (list(result.sample_ids) != list(adata.obs_names) and len(rows) < adata.n_obs
                 and bool((rows >= 0).all()) and bool((np.diff(rows) > 0).all()))
    if (list(result.sample_ids) != list(adata.obs_names) and not subsample) or missing:
        what = (f"gene '{missing[0]}' is not in adata.var_names" if missing
                else "its samples differ from adata.obs_names")
        raise InputDataError(f"explain result: {what}; attach it to the AnnData it was computed on.")
    values = result.attributions
    genes = [g for g, c in zip(result.attribution_genes, is_cov) if not c]
    cov_values = values[:, is_cov] if is_cov.any() else None
    values = values[:, ~is_cov]
    columns = np.array([position[g] for g in genes], dtype=np.intp)
    # genes the model does not use contribute exactly nothing to its output
    full = np.zeros((len(result.sample_ids), adata.n_vars) + values.shape[2:], dtype=np.float32)
    full[:, columns] = values.astype(np.float32)
    entry["attributions"] = {"classes": np.array(result.attribution_classes, dtype=object).astype(str),
                             "genes": np.array(genes, dtype=object).astype(str),
                             "base_values": np.asarray(result.base_values, dtype=np.float64),
                             "model_output": np.asarray(result.model_output, dtype=np.float64)}
    if subsample:
        # explain.max_samples: only a subsample of cells was explained. obsm needs a row per cell, which at
        # 10^5 cells would be gigabytes of zeros, so the explained cells' values go to uns with their ids
        adata.obsm.pop(key, None)
        entry["attributions"]["values"] = full
        entry["attributions"]["sample_ids"] = np.array(result.sample_ids, dtype=object).astype(str)
    else:
        adata.obsm[key] = full
        entry["attributions"]["obsm_key"] = key
    if cov_values is not None:
        entry["attributions"]["covariates"] = np.array(
            [g for g, c in zip(result.attribution_genes, is_cov) if c], dtype=object).astype(str)
        entry["attributions"]["covariate_values"] = cov_values.astype(np.float32)


def stored_result(adata, step: str, key_added):
    """A step result rebuilt from what ``tl.<step>`` stored (gene_sets and ``get.attributions_df`` read it).

    Parameters
    ----------
    adata : anndata.AnnData
    step : {"train", "explain", "select"}
    key_added : str or None

    Returns
    -------
    TrainResult, ExplainResult, SelectResult or None
        None when the step has not run; a train result holds no fitted model (see :func:`load_model`).
    """
    from iml_genomics import get
    from iml_genomics.steps import ExplainResult, SelectResult, TrainResult

    entry = (adata.uns.get(UNS_KEY) or {}).get(key_prefix(key_added) + step)
    if entry is None:
        return None
    prov = json.loads(entry.get("provenance") or "{}")
    common = {"task": prov.get("task"), "classes": prov.get("classes"), "positive_class": prov.get("positive_class"),
              "cohort": prov.get("cohort") or {}}
    if step == "train":
        manifest = json.loads(entry["model"]["manifest"])
        manifest = {k: v for k, v in manifest.items() if k not in ("model_file", "model_sha256")}
        return TrainResult(cv_metrics=get.cv_metrics_df(adata, key_added=key_added),
                           oof_predictions=get.oof_predictions_df(adata, key_added=key_added), model=None,
                           manifest=manifest, gene_ids=manifest.get("gene_ids", []), used_genes=[], **common)
    if step == "select":
        return SelectResult(selection=get.selection_df(adata, key_added=key_added),
                            summary=json.loads(entry["summary"]), gene_ids=list(adata.var_names), tested_genes=[],
                            **common)
    out = ExplainResult(ranking=get.ranking_df(adata, key_added=key_added),
                        local=get.local_df(adata, key_added=key_added),
                        interactions=get.interactions_df(adata, key_added=key_added),
                        summary=json.loads(entry["summary"]), sample_ids=list(adata.obs_names),
                        gene_ids=list(adata.var_names), **common)
    att = entry.get("attributions")
    if att is not None:
        import numpy as np

        position = {g: i for i, g in enumerate(adata.var_names)}
        genes = [str(g) for g in att["genes"]]
        if "values" in att:  # a subsample of cells (explain.max_samples)
            out.attributions = np.asarray(att["values"])[:, [position[g] for g in genes]]
            out.sample_ids = [str(x) for x in att["sample_ids"]]
        else:
            out.attributions = np.asarray(adata.obsm[att["obsm_key"]])[:, [position[g] for g in genes]]
        if "covariates" in att:  # data.covariates: their attributions were kept in uns, after the genes
            out.attributions = np.concatenate([out.attributions, np.asarray(att["covariate_values"])], axis=1)
            genes = genes + [str(c) for c in att["covariates"]]
        out.base_values, out.model_output = np.asarray(att["base_values"]), np.asarray(att["model_output"])
        out.attribution_genes, out.attribution_classes = genes, [str(c) for c in att["classes"]]
    return out


def _withhold(result, cfg) -> None:
    """output.granularity aggregate: no per-sample table or array is stored in the AnnData either."""
    from iml_genomics.granularity import is_aggregate, withhold_per_sample

    if is_aggregate(cfg):
        withhold_per_sample(result)


def _with_data(cfg, label_column, positive_class):
    if label_column is not None:
        cfg.data.label_column = label_column
    if positive_class is not None:
        # obs columns of integers or booleans: classes are compared as text ('1', 'True')
        cfg.data.positive_class = str(positive_class)
    return cfg


def _matrix_choice(adata, key_added, layer, use_raw, cfg_given):
    """``(layer, use_raw)`` of an explain / select call: the arguments, else the config's ``data.layer``,
    else what ``tl.train`` used (a model explained on another matrix than it was fitted on is wrong)."""
    if layer is not None or use_raw is not None or (cfg_given is not None and cfg_given.data.layer is not None):
        return (layer if layer is not None else (cfg_given.data.layer if cfg_given is not None else None)), \
            bool(use_raw)
    params = ((adata.uns.get(UNS_KEY) or {}).get(key_prefix(key_added) + "train") or {}).get("params") or {}
    return params.get("layer"), bool(params.get("use_raw", False))


def cohort(adata, *, layer: str | None = None, use_raw: bool = False):
    """The AnnData a step reads: ``adata`` with the expression matrix checked and chosen as scanpy does.

    A notebook's AnnData has not gone through the file readers, so the checks they make are made here:
    unique gene ids, numeric values, no NaN / infinity, a well-formed sparse matrix. float16, integer and
    CSC matrices are converted to float64 (dense or CSR), as the readers do.

    Parameters
    ----------
    adata : anndata.AnnData
    layer : str, optional
        Read ``adata.layers[layer]`` instead of ``X`` (e.g. log-normalised values next to counts in ``X``).
    use_raw : bool
        Read ``adata.raw.X``, restricted to the genes of ``adata.var_names`` (results are written per gene of
        ``adata.var``).

    Returns
    -------
    anndata.AnnData
        ``adata`` itself when ``X`` is already float64 dense or CSR; else an AnnData sharing ``obs`` with
        the chosen matrix as ``X``.

    Raises
    ------
    iml_genomics.errors.InputDataError
        One line naming the matrix and what to do.
    """
    import anndata as ad
    import pandas as pd
    from scipy import sparse

    from iml_genomics.errors import InputDataError
    from iml_genomics.io.ids import show_id
    from iml_genomics.io.readers import check_unique, check_values, numeric_matrix

    genes, samples = [str(g) for g in adata.var_names], [str(s) for s in adata.obs_names]
    check_unique(genes, "adata.var_names", "gene", fix="call adata.var_names_make_unique() or aggregate them")
    if layer is not None and use_raw:
        raise InputDataError(f"layer={layer!r} and use_raw=True both given; pass one of them (layer= reads "
                             f"adata.layers[...], use_raw=True reads adata.raw.X).")
    if use_raw:
        if adata.raw is None:
            raise InputDataError("use_raw=True but adata.raw is not set; drop use_raw, or pass layer= to read a "
                                 "layer.")
        raw_genes = set(map(str, adata.raw.var_names))
        absent = [g for g in genes if g not in raw_genes]
        if absent:
            raise InputDataError(f"adata.raw.var_names lacks {len(absent)} gene(s) of adata.var_names (first "
                                 f"'{show_id(absent[0])}'); use_raw=True needs every gene of adata.var in "
                                 f"adata.raw. Drop use_raw, or pass layer=.")
        X, where = adata.raw[:, adata.var_names].X, "raw.X"
    elif layer is not None:
        if layer not in adata.layers:
            shown = ", ".join(f"'{show_id(k, 60)}'" for k in adata.layers.keys()) or "none"
            raise InputDataError(f"adata.layers has no '{show_id(layer)}' (layers: {shown}); pass layer= one of "
                                 f"them, or layer=None for adata.X.")
        X, where = adata.layers[layer], f"layers['{show_id(layer)}']"
    else:
        X, where = adata.X, "X"
    values = numeric_matrix(X, "adata", where, samples, genes, pick="pass layer= with")
    check_values(values, f"adata.{where}", samples, genes)
    if where == "X" and (values is X or (sparse.issparse(X) and X.format == "csr" and X.dtype == values.dtype)):
        return adata
    work = ad.AnnData(X=values, obs=adata.obs, var=pd.DataFrame(index=adata.var_names))
    if "sources" in adata.uns:
        work.uns["sources"] = adata.uns["sources"]
    return work


def _one_vs_rest(work, column, positive):
    """``work`` with the label column recoded to ``positive`` against the rest when it has more classes.

    The same recoding as the file readers (:func:`iml_genomics.io.cohort.one_vs_rest`): asking for one cell
    type of a ``cell_type`` column means that type against all the others. The caller's AnnData is not changed.
    """
    import anndata as ad

    from iml_genomics.io.cohort import one_vs_rest

    if positive is None or column is None or column not in work.obs.columns:
        return work
    recoded = one_vs_rest(work.obs[column], str(positive))
    if recoded is work.obs[column]:
        return work
    obs = work.obs.copy()
    obs[column] = recoded
    out = ad.AnnData(X=work.X, obs=obs, var=work.var)
    if "sources" in work.uns:
        out.uns["sources"] = work.uns["sources"]
    return out


def _warn_counts(work, cfg, where: str) -> None:
    """Warn when the matrix looks like raw counts and nothing transforms them.

    A model on raw counts ranks genes by library size and expression level as much as by the outcome (on
    PBMCs, 2 NK markers in the SHAP top 10 against 4 on the log-normalised values); single-cell files often
    keep counts in ``X`` and the log-normalised values in a layer or ``.raw``.
    """
    import warnings

    import numpy as np
    from scipy import sparse

    if cfg.preprocess.transform != "none":
        return
    values = work.X.data if sparse.issparse(work.X) else np.asarray(work.X).ravel()
    values = values[:200_000]  # a prefix decides: counts are integers everywhere
    if values.size and values.max() > 1 and np.all(values == np.round(values)) and values.min() >= 0:
        warnings.warn(f"adata.{where} holds non-negative integers (raw counts?) and preprocess.transform is "
                      f"'none': pass layer= (or use_raw=True) with log-normalised values, or set "
                      f"preprocess.transform: log1p_cpm.", UserWarning, stacklevel=3)


def _warn(result) -> None:
    """The step's one-line warnings (stderr at the shell) as Python warnings in the notebook."""
    import warnings

    for message in getattr(result, "warnings", None) or []:
        warnings.warn(message, UserWarning, stacklevel=3)


def _recorded_config(adata, key_added):
    """The config ``tl.train`` ran with (None when it has not run)."""
    from iml_genomics.config import config_from_dict

    entry = (adata.uns.get(UNS_KEY) or {}).get(key_prefix(key_added) + "train")
    if entry is None or "config" not in entry:
        return None
    return config_from_dict(json.loads(entry["config"]),
                            source=f"adata.uns['{UNS_KEY}']['{key_prefix(key_added)}train']")


def train(adata, *, label_column: str | None = None, config=None, positive_class: str | None = None,
          layer: str | None = None, use_raw: bool = False, key_added: str | None = None,
          n_jobs: int | None = None, random_state: int | None = None):
    """Cross-validate and fit a model predicting ``obs[label_column]``; results into ``adata``.

    Parameters
    ----------
    adata : anndata.AnnData
        Samples (cells) x genes; dense or sparse ``X`` (sparse input is scaled without centring).
    label_column : str, optional
        The outcome column of ``adata.obs``; None = ``data.label_column`` of the config.
    config : str, path, dict or iml_genomics.config.Config, optional
        A YAML file, a mapping with the same keys (docs/config.md) or a Config; None = the defaults.
    positive_class : str, optional
        Two classes: the class of interest (overrides ``data.positive_class``); an integer or boolean class
        is given as itself or as text. On a column of more than two classes it is refused with the line that
        builds the one-vs-rest column.
    layer : str, optional
        Fit on ``adata.layers[layer]`` instead of ``X`` (overrides ``data.layer``); :func:`explain` and
        :func:`select` then use the same layer unless told otherwise.
    use_raw : bool
        Fit on ``adata.raw.X`` (the genes of ``adata.var_names``), as scanpy's ``use_raw``.
    key_added : str, optional
        Prefix of the var columns and uns entries written (``"nk"`` -> ``nk_used_by_model``).
    n_jobs : int, optional
        Parallel workers; None = the config's. Results do not depend on it.
    random_state : int, optional
        Seed; None = the config's ``seed``.

    Returns
    -------
    iml_genomics.steps.TrainResult
        Also written into ``adata``: ``var["used_by_model"]``; ``uns["iml_genomics"]["train"]`` with
        ``params``, ``config`` (resolved, JSON), ``provenance`` (versions, classes, positive class; JSON),
        ``tables`` (``cv_metrics``, ``oof_predictions``; read them with :func:`iml_genomics.get.cv_metrics_df`)
        and ``model`` (the skops bundle: ``skops`` uint8 bytes, ``manifest`` JSON) that :func:`explain` loads.
    """
    from iml_genomics import steps
    from iml_genomics.steps import resolved

    cfg = resolved(_with_data(_config(config), label_column, positive_class), n_jobs, random_state)
    if layer is not None:
        cfg.data.layer = layer
    work = _one_vs_rest(cohort(adata, layer=cfg.data.layer, use_raw=use_raw), cfg.data.label_column,
                        cfg.data.positive_class)
    _warn_counts(work, cfg, "raw.X" if use_raw else ("X" if cfg.data.layer is None else
                                                     f"layers['{cfg.data.layer}']"))
    result = steps.train(work, cfg)
    _withhold(result, cfg)
    attach_results(adata, train=result, key_added=key_added, config=cfg,
                   params=_params(label_column=cfg.data.label_column, positive_class=result.positive_class,
                                  layer=cfg.data.layer, use_raw=bool(use_raw), n_jobs=n_jobs, random_state=cfg.seed,
                                  config=str(config) if isinstance(config, (str, os.PathLike)) else None))
    _warn(result)
    return result


def explain(adata, *, config=None, positive_class: str | None = None, layer: str | None = None,
            use_raw: bool | None = None, key_added: str | None = None, n_jobs: int | None = None,
            random_state: int | None = None):
    """Explain the model ``tl.train`` stored in ``adata``: SHAP, permutation importance, ranking stability.

    Parameters
    ----------
    adata : anndata.AnnData
        The AnnData :func:`train` ran on (or one read back from its h5ad, or another cohort holding the
        model's genes and, for permutation importance, the label column).
    config : str, path, dict or Config, optional
        ``explain`` / ``cv`` settings; None = the config ``tl.train`` recorded. The model and preprocessing
        are always the stored model's.
    positive_class : str, optional
        Two classes: the class SHAP explains; None = the model's positive class.
    layer, use_raw : optional
        The matrix explained (see :func:`train`); None = the config's ``data.layer``, else the matrix
        :func:`train` was fitted on.
    key_added : str, optional
        The prefix :func:`train` was called with; also the prefix of what this writes.
    n_jobs, random_state : int, optional
        None = the config's.

    Returns
    -------
    iml_genomics.steps.ExplainResult
        Also written into ``adata``: ``var`` columns ``mean_abs_shap``, ``mean_shap``, ``shap_sd``,
        ``explain_rank`` (1 = most important), ``explain_rank_low`` / ``explain_rank_high``,
        ``top_k_frequency``, ``permutation_importance`` (+ ``_sd``), ``used_by_model``; ``obsm["shap"]``
        (see :func:`attach_results`); ``uns["iml_genomics"]["explain"]``.

    Raises
    ------
    iml_genomics.errors.InputDataError
        :func:`train` has not run on ``adata``; the stored model bundle was altered (``BundleError``).
    """
    from iml_genomics import steps
    from iml_genomics.steps import resolved

    model = load_model(adata, key_added)
    given = _config(config) if config is not None else None
    layer, use_raw = _matrix_choice(adata, key_added, layer, use_raw, given)
    cfg = given if given is not None else _recorded_config(adata, key_added)
    if cfg is not None and positive_class is not None:
        cfg.data.positive_class = str(positive_class)
    elif cfg is None and positive_class is not None:
        cfg = _with_data(_config(model[1].get("config") or {}, what="model manifest"), None, positive_class)
    cfg_used = resolved(_explain_config(model[1], cfg), n_jobs, random_state)
    cfg_used.data.layer = layer
    where = f"adata.uns['{UNS_KEY}']['{key_prefix(key_added)}train']['model']"
    # a model of one class against the rest reads a many-class column the same way
    work = _one_vs_rest(cohort(adata, layer=layer, use_raw=use_raw), cfg_used.data.label_column,
                        cfg_used.data.positive_class or model[1].get("positive_class"))
    result = steps.explain(work, cfg_used, model=model, model_source=where)
    _withhold(result, cfg_used)
    attach_results(adata, explain=result, key_added=key_added, config=cfg_used,
                   params=_params(label_column=cfg_used.data.label_column, positive_class=result.positive_class,
                                  layer=layer, use_raw=use_raw, n_jobs=n_jobs, random_state=cfg_used.seed))
    _warn(result)
    return result


def _explain_config(manifest, cfg):
    from iml_genomics.steps.explain import explain_config

    return explain_config(manifest, cfg)


def select(adata, *, label_column: str | None = None, config=None, positive_class: str | None = None,
           groups=None, layer: str | None = None, use_raw: bool | None = None, key_added: str | None = None,
           n_jobs: int | None = None, random_state: int | None = None):
    """Select genes at the target FDR (model-X knockoffs or the dCRT, ``select.method``); results into ``adata``.

    Parameters
    ----------
    adata : anndata.AnnData
    label_column : str, optional
        None = the config's, else the column ``tl.train`` used.
    config : str, path, dict or Config, optional
        None = the config ``tl.train`` recorded, else the defaults.
    positive_class : str, optional
    groups : mapping of str to str, optional
        Gene -> group label for ``select.groups: file``.
    layer, use_raw : optional
        The matrix genes are selected on (see :func:`train`); None = the config's ``data.layer``, else the
        matrix :func:`train` used.
    key_added : str, optional
    n_jobs, random_state : int, optional

    Returns
    -------
    iml_genomics.steps.SelectResult
        Also written into ``adata``: ``var`` columns ``knockoff_w``, ``knockoff_selected`` (the selection at
        the target FDR, whichever ``select.method``), ``selection_frequency``, ``knockoff_e_value``,
        ``select_rank``, ``select_group``, ``select_tested``, ``dcrt_p_value``, ``dcrt_q_value`` (NaN for
        knockoffs); ``uns["iml_genomics"]["select"]``.
    """
    from iml_genomics import steps
    from iml_genomics.steps import resolved

    given = _config(config) if config is not None else None
    layer, use_raw = _matrix_choice(adata, key_added, layer, use_raw, given)
    cfg = given if given is not None else (_recorded_config(adata, key_added) or _config(None))
    cfg = resolved(_with_data(cfg, label_column, positive_class), n_jobs, random_state)
    cfg.data.layer = layer
    work = _one_vs_rest(cohort(adata, layer=layer, use_raw=use_raw), cfg.data.label_column,
                        cfg.data.positive_class)
    result = steps.select(work, cfg, groups=groups)
    attach_results(adata, select=result, key_added=key_added, config=cfg,
                   params=_params(label_column=cfg.data.label_column, positive_class=result.positive_class,
                                  method=cfg.select.method, fdr=cfg.select.fdr, layer=layer, use_raw=use_raw,
                                  n_jobs=n_jobs, random_state=cfg.seed))
    _warn(result)
    return result


def gene_sets(adata, gene_sets, *, config=None, positive_class: str | None = None, gene_map=None,
              layer: str | None = None, use_raw: bool | None = None, key_added: str | None = None,
              n_jobs: int | None = None, random_state: int | None = None):
    """Gene-set analysis of the ``tl.train`` / ``tl.explain`` / ``tl.select`` results stored in ``adata``.

    Parameters
    ----------
    adata : anndata.AnnData
    gene_sets : str, path, dict or iml_genomics.genesets.GeneSetCollection
        A GMT file, a mapping set name -> genes, or a collection.
    config : str, path, dict or Config, optional
        ``report`` settings; None = the config ``tl.train`` recorded, else the defaults.
    positive_class : str, optional
    gene_map : pandas.Series, optional
        Gene id -> symbol matched against the sets (e.g. ``adata.var["gene_symbols"]`` when ``var_names`` are
        Ensembl ids and the sets hold symbols).
    layer, use_raw : optional
        The matrix of the gene-gene correlations (see :func:`train`); None = the config's ``data.layer``,
        else the matrix :func:`train` used.
    key_added : str, optional
        The prefix of the earlier steps; also the prefix of what this writes.
    n_jobs, random_state : int, optional

    Returns
    -------
    iml_genomics.steps.GeneSetResult
        Also written into ``adata.uns["iml_genomics"]["gene_sets"]`` (tables ``gene_sets`` and
        ``group_attributions``; :func:`iml_genomics.get.gene_sets_df`).
    """
    from pathlib import Path

    from iml_genomics import steps
    from iml_genomics.errors import InputDataError
    from iml_genomics.genesets import GeneSetCollection, read_gmt
    from iml_genomics.steps import resolved

    if isinstance(gene_sets, (str, Path)):
        collection = read_gmt(gene_sets)
    elif isinstance(gene_sets, GeneSetCollection):
        collection = gene_sets
    elif isinstance(gene_sets, dict):
        collection = GeneSetCollection(sets={str(k): [str(g) for g in v] for k, v in gene_sets.items()},
                                       source="gene_sets", path="gene_sets")
    else:
        raise TypeError(f"gene_sets must be a GMT path, a dict or a GeneSetCollection, not "
                        f"{type(gene_sets).__name__}.")
    results = {step: stored_result(adata, step, key_added) for step in ("train", "explain", "select")}
    if all(r is None for r in results.values()):
        raise InputDataError(f"adata.uns['{UNS_KEY}'] holds no train, explain or select results"
                             f"{' with key_added=' + repr(key_added) if key_added else ''}: run ig.tl.explain or "
                             f"ig.tl.select first.")
    given = _config(config) if config is not None else None
    layer, use_raw = _matrix_choice(adata, key_added, layer, use_raw, given)
    cfg = given if given is not None else (_recorded_config(adata, key_added) or _config(None))
    cfg = resolved(cfg, n_jobs, random_state)
    cfg.data.layer = layer
    try:
        recorded = next((r.positive_class for r in (results["explain"], results["train"], results["select"])
                         if r is not None and r.positive_class is not None), None)
        work = _one_vs_rest(cohort(adata, layer=layer, use_raw=use_raw), cfg.data.label_column,
                            positive_class or cfg.data.positive_class or recorded)
        result = steps.gene_sets(work, cfg, collection=collection,
                                 gene_map=gene_map, positive_class=None if positive_class is None else
                                 str(positive_class), **results)
    except InputDataError as exc:
        # the step speaks of the shell's flag; in the notebook the same thing is an argument
        message = str(exc).replace("Pass --gene-map", "Pass gene_map= (e.g. adata.var['gene_symbols'])")
        if message == str(exc):
            raise
        raise InputDataError(message) from None
    attach_results(adata, gene_sets=result, key_added=key_added, config=cfg,
                   params=_params(n_sets=len(collection), positive_class=result.positive_class,
                                  random_state=cfg.seed, gene_sets=str(gene_sets) if isinstance(gene_sets, str)
                                  else None))
    _warn(result)
    return result


# compare: result attribute -> adata.uns table name (the TSV of `iml-genomics compare` without .tsv)
COMPARE_TABLES = (("comparison", "model_comparison"), ("agreement", "model_agreement"),
                  ("robust_genes", "robust_genes"), ("gene_rankings", "model_gene_rankings"),
                  ("tuning", "model_tuning"), ("folds", "cv_folds"))


def compare(adata, *, candidates=None, label_column: str | None = None, config=None,
            positive_class: str | None = None, layer: str | None = None, use_raw: bool = False,
            key_added: str | None = None, n_jobs: int | None = None, random_state: int | None = None):
    """Compare several registry models on the same CV folds (nested CV where tuned); results into ``adata.uns``.

    Parameters
    ----------
    adata : anndata.AnnData
    candidates : list of str, optional
        Registry model names, at least two; None = ``model.candidates`` of the config.
    label_column, config, positive_class, layer, use_raw, key_added, n_jobs, random_state
        As :func:`train`.

    Returns
    -------
    iml_genomics.steps.CompareResult
        Also written into ``adata.uns["iml_genomics"]["compare"]``: ``params``, ``config`` (JSON), ``summary``
        (``compare_summary.json``; :func:`iml_genomics.get.summary`) and ``tables`` (``model_comparison``,
        ``model_agreement``, ``robust_genes``, ``model_gene_rankings``, ``model_tuning``, ``cv_folds``;
        :func:`iml_genomics.get.compare_df`). See docs/compare.md.
    """
    from iml_genomics import steps
    from iml_genomics.steps import resolved

    cfg = resolved(_with_data(_config(config), label_column, positive_class), n_jobs, random_state)
    if layer is not None:
        cfg.data.layer = layer
    work = _one_vs_rest(cohort(adata, layer=cfg.data.layer, use_raw=use_raw), cfg.data.label_column,
                        cfg.data.positive_class)
    result = steps.compare(work, cfg, candidates=candidates)
    _store(adata)[key_prefix(key_added) + "compare"] = {
        "params": _params(label_column=cfg.data.label_column, positive_class=result.cohort["positive_class"],
                          layer=cfg.data.layer, use_raw=bool(use_raw), n_jobs=n_jobs, random_state=cfg.seed,
                          key_added=key_added, candidates=list(result.summary["candidates"])),
        "config": _json(cfg.to_dict()),
        "summary": _json(result.summary),
        "tables": {name: _table_bytes(getattr(result, attr)) for attr, name in COMPARE_TABLES},
    }
    _warn(result)
    return result
