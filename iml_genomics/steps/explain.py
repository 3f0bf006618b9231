"""The `explain` step: SHAP and permutation importance of a fitted model, with the ranking's uncertainty."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from iml_genomics.steps._common import step_backend, expression_source, label_source, resolved


@dataclass
class ExplainResult:
    """What :func:`explain` produces.

    Attributes
    ----------
    ranking : pandas.DataFrame
        ``gene_ranking.tsv``.
    local : pandas.DataFrame
        ``local_explanations.tsv``.
    interactions : pandas.DataFrame
        ``interactions.tsv``.
    summary : dict
        ``explain_summary.json``.
    task : str
    classes : list of str or None
    positive_class : str or None
        Two classes: the class SHAP explains.
    sample_ids, gene_ids : list of str
        The cohort's samples and the model's input genes.
    attributions : numpy.ndarray or None
        Per-sample SHAP values, samples x ``attribution_genes`` (float64), of the explained class; with several
        explained outputs (multiclass) samples x genes x outputs. None when ``on_chunk`` received them or
        when SHAP was not computed.
    base_values, model_output : numpy.ndarray or None
        Per sample (and output): the expected value and the model output the attributions add up to.
    attribution_genes : list of str
        Genes with attributions (the genes that reach the model).
    attribution_classes : list of str
        The explained outputs: the class names (two classes: the positive class only); ``['']`` for regression.
    cohort : dict
        Provenance's ``cohort`` block.
    warnings : list of str
        One-line warnings for stderr.
    methods : dict
        The explanation methods of ``explain.methods``: name -> :class:`iml_genomics.explain.methods.MethodOutput`
        (tables and texts by output file name, summary, warnings).
    audit : pandas.DataFrame or None
        ``audit.tsv``, the sensitive-attribute audit of ``data.sensitive`` (:func:`iml_genomics.audit.sensitive_audit`);
        None without sensitive attributes.
    """

    ranking: pd.DataFrame
    local: pd.DataFrame
    interactions: pd.DataFrame
    summary: dict
    task: str
    classes: list | None
    positive_class: str | None
    sample_ids: list
    gene_ids: list
    cohort: dict
    attributions: np.ndarray | None = None
    base_values: np.ndarray | None = None
    model_output: np.ndarray | None = None
    attribution_genes: list = field(default_factory=list)
    attribution_classes: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    methods: dict = field(default_factory=dict)
    audit: pd.DataFrame | None = None

    def method_tables(self) -> dict:
        """Every table of the explanation methods by output file name (``surrogate.tsv``, ...)."""
        return {name: table for out in self.methods.values() for name, table in out.tables.items()}

    def method_texts(self) -> dict:
        """Every text of the explanation methods by output file name (``surrogate_rules.txt``, ...)."""
        return {name: text for out in self.methods.values() for name, text in out.texts.items()}

    def attribution_table(self) -> pd.DataFrame | None:
        """The attributions as ``attributions.parquet`` holds them (float32 genes, sample-major rows, then class).

        None when the attributions were streamed to ``on_chunk`` instead of kept.
        """
        if self.attributions is None:
            if self.summary.get("n_samples_explained"):
                return None
            return pd.DataFrame({"sample_id": pd.Series([], dtype=object), "class": pd.Series([], dtype=object),
                                 "base_value": pd.Series([], dtype=np.float64),
                                 "model_output": pd.Series([], dtype=np.float64)})
        values = self.attributions if self.attributions.ndim == 3 else self.attributions[:, :, None]
        n, q, k = values.shape
        frame = pd.DataFrame({
            "sample_id": np.repeat(np.asarray(self.sample_ids, dtype=object), k),
            "class": np.tile(np.asarray(self.attribution_classes, dtype=object), n),
            "base_value": np.asarray(self.base_values, dtype=np.float64).reshape(-1),
            "model_output": np.asarray(self.model_output, dtype=np.float64).reshape(-1)})
        genes = pd.DataFrame(values.transpose(0, 2, 1).reshape(n * k, q).astype(np.float32),
                             columns=self.attribution_genes)
        return pd.concat([frame, genes], axis=1)

    def set_attribution_table(self, table: pd.DataFrame | None) -> None:
        """The inverse of :meth:`attribution_table`: fill the attribution arrays from ``attributions.parquet``.

        Used for an explain step read back from its directory. An empty or missing table leaves them None.
        """
        if table is None or table.empty:
            return
        genes = [c for c in table.columns if c not in ("sample_id", "class", "base_value", "model_output")]
        classes = list(dict.fromkeys(table["class"].astype(str)))
        k = len(classes)
        n = table.shape[0] // k
        values = table[genes].to_numpy(dtype=np.float64).reshape(n, k, len(genes)).transpose(0, 2, 1)
        base = table["base_value"].to_numpy(dtype=np.float64).reshape(n, k)
        output = table["model_output"].to_numpy(dtype=np.float64).reshape(n, k)
        if k == 1:
            values, base, output = values[:, :, 0], base[:, 0], output[:, 0]
        self.attributions, self.base_values, self.model_output = values, base, output
        self.attribution_genes, self.attribution_classes = genes, classes
        self.sample_ids = list(dict.fromkeys(table["sample_id"].astype(str)))


class AttributionCollector:
    """Keeps every SHAP chunk in memory (the Python user's default; the CLI streams them to Parquet)."""

    def __init__(self):
        self.values, self.base, self.output, self.plan = [], [], [], None

    def __call__(self, chunk, plan):
        self.plan = plan
        self.values.append(chunk.values)
        self.base.append(chunk.base_values)
        self.output.append(chunk.model_output)

    def arrays(self):
        if self.plan is None:
            return None, None, None
        values, base, out = (np.concatenate(a) for a in (self.values, self.base, self.output))
        if values.shape[2] == 1:  # one explained output: samples x genes
            return values[:, :, 0], base[:, 0], out[:, 0]
        return values, base, out


def explain_config(manifest: dict, cfg=None, *, source: str = "model.json"):
    """The config explain runs with: ``cfg`` (else the bundle's) with the bundle's model and preprocessing.

    The model and its preprocessing are the bundle's whatever ``cfg`` says: they define what is explained.
    ``data.label_column`` falls back to the column the model was trained on.

    Parameters
    ----------
    manifest : dict
        ``model.json`` (:func:`iml_genomics.models.load_bundle`) or :attr:`TrainResult.manifest`.
    cfg : iml_genomics.config.Config, optional
        The user's config; None = the bundle's.
    source : str
        Where the manifest came from, for error messages.
    """
    import copy

    from iml_genomics.config import config_from_dict

    bundle_cfg = config_from_dict(manifest.get("config") or {}, source=source)
    user_cfg = cfg is not None
    cfg = copy.deepcopy(cfg) if cfg is not None else config_from_dict(manifest.get("config") or {}, source=source)
    cfg.model, cfg.preprocess = bundle_cfg.model, bundle_cfg.preprocess
    # where train ran is not how explain runs: a scheduler recorded by an older bundle is not inherited
    cfg.parallel.scheduler = cfg.parallel.scheduler if user_cfg else None
    if cfg.data.label_column is None:
        cfg.data.label_column = manifest.get("label_column")
    return cfg


def explain(adata, cfg=None, *, model, n_jobs: int | None = None, random_state: int | None = None,
            on_chunk=None, model_source: str = "model.json", backend=None, oof=None) -> ExplainResult:
    """Explain a fitted model on a cohort: SHAP, permutation importance, stability of the ranking.

    Parameters
    ----------
    adata : anndata.AnnData
        Samples x genes; it must hold every gene the model was trained on (others are ignored). With the
        outcome in ``obs[cfg.data.label_column]`` permutation importance and fold stability are computed
        too; without it only SHAP of the model.
    cfg : iml_genomics.config.Config, optional
        Resolved config (``explain``, ``cv``, ``seed``, ``data``); None = the bundle's. Its model and
        preprocessing are replaced by the bundle's (:func:`explain_config`).
    model : TrainResult or (Pipeline, dict)
        The fitted pipeline and its manifest: a :class:`iml_genomics.steps.TrainResult` or what
        :func:`iml_genomics.models.load_bundle` returns.
    n_jobs : int, optional
        Parallel workers; None = ``cfg.n_jobs``. Results do not depend on it.
    random_state : int, optional
        Seed of the background sample, permutations and refits; None = ``cfg.seed``.
    on_chunk : callable, optional
        Called with ``(ShapChunk, ShapPlan)`` for every chunk of samples, in order (the CLI passes an
        :class:`iml_genomics.io.attributions.AttributionWriter`); the result then holds no attributions.
        With ``explain.max_samples`` the chunks index the subsample; an ``on_chunk`` with a
        ``set_sample_ids`` method is told the subsample's ids before the first chunk.
        None = the attributions are kept in the result.
    model_source : str
        Where the manifest came from, for error messages.
    backend : iml_genomics.parallel.Backend, optional
        Where the parallel work runs; None = built from ``cfg.parallel.scheduler`` and ``n_jobs``
        (:meth:`~iml_genomics.parallel.Backend.from_config`). A given backend decides over ``n_jobs`` and
        the config's scheduler.
    oof : pandas.DataFrame, optional
        Train's out-of-fold predictions (``oof_predictions.tsv``) for the audit of ``data.sensitive``; None =
        those of ``model`` when it is a TrainResult, else recomputed here with train's folds (same seed).

    Returns
    -------
    ExplainResult

    Raises
    ------
    iml_genomics.errors.InputDataError
        Genes of the model missing from the cohort, labels whose classes differ from the model's, an unknown
        positive class or ``explain.samples`` id.
    """
    from scipy import sparse

    from iml_genomics.errors import InputDataError
    from iml_genomics.explain import explain_cohort
    from iml_genomics.io import prepare_target
    from iml_genomics.models import build_pipeline
    from iml_genomics.covariates import check_manifest_covariates
    from iml_genomics.covariates import features as covariate_features
    from iml_genomics.training import align_genes, model_input

    pipeline, manifest = (model.model, model.manifest) if hasattr(model, "manifest") else model
    cfg = resolved(explain_config(manifest, cfg, source=model_source), n_jobs, random_state)
    backend = step_backend(cfg, backend)  # before any work: an unreachable scheduler fails at once
    from iml_genomics.single_cell import subsample_cohort

    # single-cell scale: SHAP, permutations and refits on a stratified subsample (explain.max_samples)
    adata, subsample = subsample_cohort(adata, cfg.explain.max_samples, label_column=cfg.data.label_column,
                                        seed=cfg.seed, min_per_class=cfg.cv.n_splits, task=manifest["task"],
                                        keep=cfg.explain.samples)
    if subsample is not None and hasattr(on_chunk, "set_sample_ids"):
        on_chunk.set_sample_ids(list(adata.obs_names))  # a writer of the cohort's ids: chunks index the subsample
    adata = align_genes(adata, manifest["gene_ids"], expression_source(adata, None))
    task, classes = manifest["task"], manifest.get("classes")
    label_column = cfg.data.label_column
    source = label_source(adata)
    # covariates the bundle was trained with are read from this cohort again (docs/pipeline.md)
    encoding = check_manifest_covariates(manifest, cfg.data.covariates, model_source)
    if cfg.data.sensitive:
        from iml_genomics.covariates import require_column

        for column in cfg.data.sensitive:  # before any work: absent or blank -> one line
            require_column(adata.obs, column, source=source, key="data.sensitive")
    X, feature_ids = model_input(adata, manifest, source)
    y = None
    if label_column is not None and label_column in adata.obs:
        y, cohort_classes = prepare_target(adata.obs[label_column], task, n_splits=cfg.cv.n_splits, source=source,
                                           column=label_column)
        if classes is not None and cohort_classes != list(classes):
            raise InputDataError(f"{source}: classes of '{label_column}' ({', '.join(cohort_classes)}) differ from "
                                 f"the model's ({', '.join(classes)}); use the labels the model was trained on.")
    positive, warning = explained_class(cfg, manifest, classes, source=source,
                                        column=label_column or manifest.get("label_column"))
    cov_features = covariate_features(encoding)
    refit = build_pipeline(cfg, task, sparse_input=sparse.issparse(X), n_classes=len(classes) if classes else None,
                           n_covariates=len(cov_features))
    from iml_genomics.sparse_input import densify_for

    # the bundle or the refit may need dense rows (a centring scaler fitted on a dense matrix, HistGradientBoosting):
    # only the explained subsample (explain.max_samples) is densified
    X = densify_for(densify_for(X, pipeline, key="explain.max_samples", source=expression_source(adata, None)),
                    refit, key="explain.max_samples", source=expression_source(adata, None))
    sample_ids = list(adata.obs_names)
    collector = AttributionCollector() if on_chunk is None else None
    result = explain_cohort(pipeline, X, gene_ids=feature_ids, sample_ids=sample_ids,
                            classes=classes, task=task, explain_cfg=cfg.explain, refit_pipeline=refit, y=y,
                            n_splits=cfg.cv.n_splits, n_repeats=cfg.cv.n_repeats, random_state=cfg.seed,
                            backend=backend, on_chunk=on_chunk or collector, positive_class=positive)
    cohort = {"n_samples": adata.n_obs, "n_genes": adata.n_vars, "task": task, "classes": classes,
              "labels_used": y is not None, "positive_class": positive}
    # covariates are model inputs like the genes: their rows stay in the ranking, marked (never hidden)
    result.ranking["feature_type"] = np.where(result.ranking["gene_id"].isin(cov_features), "covariate", "gene")

    if cov_features:
        result.summary["covariates"] = {"columns": [e["column"] for e in encoding], "features": cov_features,
                                        "approach": "model inputs, standardized on each training fold "
                                                    "(docs/pipeline.md#covariates)"}
    if subsample is not None:
        cohort["subsample"] = subsample
    out = ExplainResult(ranking=result.ranking, local=result.local, interactions=result.interactions,
                        summary=result.summary, task=task, classes=classes, positive_class=positive,
                        sample_ids=sample_ids, gene_ids=list(adata.var_names), cohort=cohort,
                        warnings=([warning] if warning else [])
                        + [w for m in result.extra.get("methods", {}).values() for w in m.warnings],
                        methods=result.extra.get("methods", {}))
    if cfg.data.sensitive:
        if oof is None and getattr(model, "oof_predictions", None) is not None:
            oof = model.oof_predictions
        out.audit = _audit(adata, cfg, X, y, task, classes, positive, refit, result.ranking, oof, backend, source)
        out.summary["audit"] = {"attributes": list(cfg.data.sensitive), "file": "audit.tsv",
                                "association_test": "ANOVA F-test per gene, BH q <= 0.05"}
    if collector is not None and collector.plan is not None:
        out.attributions, out.base_values, out.model_output = collector.arrays()
        out.attribution_genes, out.attribution_classes = list(collector.plan.gene_ids), list(collector.plan.outputs)
    return out


def _audit(adata, cfg, X, y, task, classes, positive, refit, ranking, oof, backend, source):
    """``audit.tsv`` (:func:`iml_genomics.audit.sensitive_audit`), with out-of-fold predictions of this cohort."""
    from iml_genomics.audit import sensitive_audit
    from iml_genomics.models import cross_validate
    from iml_genomics.preprocess import ExpressionTransform

    sample_ids = [str(s) for s in adata.obs_names]
    if y is not None and (oof is None or set(oof["sample_id"].astype(str)) != set(sample_ids)):
        # not handed train's predictions of these samples (e.g. oof_predictions.tsv withheld by
        # output.granularity aggregate): the same CV as train (folds from the seed) gives the same predictions
        oof = cross_validate(refit, X, y, sample_ids=sample_ids, classes=classes, task=task,
                             n_splits=cfg.cv.n_splits, n_repeats=cfg.cv.n_repeats, seed=cfg.seed,
                             positive_class=positive, backend=backend).oof
    genes = list(adata.var_names)
    # association and predictability on the expression scale the model sees (the configured transform)
    X_genes = ExpressionTransform(cfg.preprocess.transform).fit(adata.X).transform(adata.X)
    if oof is not None:
        import io

        from iml_genomics.io.writers import tsv_text

        # as oof_predictions.tsv holds them (10 significant digits): the audit of `run` (predictions in
        # memory) and of `explain --model DIR` (read from the file) are then the same bytes
        oof = pd.read_csv(io.StringIO(tsv_text(oof)), sep="\t", dtype={"sample_id": str})
    y_true = None if y is None else (np.asarray(y, dtype=np.float64) if classes is None
                                     else np.searchsorted(np.asarray(classes, dtype=object), np.asarray(y)))
    return sensitive_audit(adata.obs, list(cfg.data.sensitive), X_genes=X_genes, gene_ids=genes, ranking=ranking,
                           top_k=cfg.explain.top_k, oof=oof if y is not None else None, y_true=y_true, classes=classes,
                           positive_class=positive, random_state=cfg.seed, source=source)


def explained_class(cfg, manifest, classes, *, source, column):
    """The class SHAP explains: ``data.positive_class``, else the bundle's, else the last label.

    Returns
    -------
    positive_class : str or None
    warning : str or None
        The default-looks-wrong warning (case/control and the like), repeated when the bundle itself used
        the default.
    """
    from iml_genomics.io.cohort import resolve_positive_class

    requested = cfg.data.positive_class
    if requested is None and classes is not None and len(classes) == 2:
        recorded = manifest.get("positive_class")
        default, _ = resolve_positive_class(classes, None, source=source, column=column)
        if recorded is not None and recorded != default:
            return recorded, None
    return resolve_positive_class(classes, requested, source=source, column=cfg.data.label_column)
