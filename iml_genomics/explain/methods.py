"""Explanation methods beyond SHAP and permutation importance, opt-in through ``explain.methods``.

Each method is one function ``run(ctx: MethodContext) -> MethodOutput`` in its own module of this package,
registered by name in :data:`METHOD_MODULES`. The `explain` step builds one :class:`MethodContext` (the fitted
model, the cohort, the SHAP ranking, the CV splits) and runs the requested methods in the order of
:data:`METHOD_NAMES`; their tables and texts are written next to ``gene_ranking.tsv`` and their summaries go
under ``explain_summary.json["methods"][name]``. No file I/O here.

Every table a method returns carries an ``explains`` column saying what it describes: ``model`` (the fitted
model's behaviour) or ``data`` (the cohort's conditional structure, independent of this fitted model).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from iml_genomics.config import EXPLAIN_METHODS

# name -> module holding ``run(ctx) -> MethodOutput``; the order is the order methods run and are reported in
METHOD_MODULES = {
    "surrogate": "iml_genomics.explain.surrogate",
    "pdp": "iml_genomics.explain.pdp",
    "lime": "iml_genomics.explain.lime",
    "anchors": "iml_genomics.explain.anchors",
    "examples": "iml_genomics.explain.examples",
    "integrated_gradients": "iml_genomics.explain.integrated_gradients",
    "conditional": "iml_genomics.explain.conditional",
    "map": "iml_genomics.explain.attribution_map",
}
METHOD_NAMES = tuple(METHOD_MODULES)
assert METHOD_NAMES == EXPLAIN_METHODS, "config.EXPLAIN_METHODS and METHOD_MODULES must list the same methods"
# methods that read every sample's SHAP values (the step then keeps them in memory while it streams them)
NEEDS_ALL_ATTRIBUTIONS = frozenset({"examples", "map"})
EXPLAINS = ("model", "data")


@dataclass
class MethodContext:
    """What every explanation method may read. Nothing here is modified by a method.

    Attributes
    ----------
    pipeline : sklearn.pipeline.Pipeline
        The fitted model (preprocessing + estimator) of the bundle.
    refit_pipeline : sklearn.pipeline.Pipeline or None
        An unfitted copy of it, for refits inside the CV folds (LOCO, surrogates on out-of-fold predictions).
    X : numpy.ndarray or scipy.sparse matrix
        Samples x ``gene_ids``, the model's input order (raw expression: the pipeline preprocesses).
    y : numpy.ndarray or None
        The outcome as the step holds it: class names (elements of ``classes``, as the fitted pipeline predicts
        them) or values; None when the cohort is unlabelled.
    gene_ids, sample_ids : list of str
    classes : list of str or None
    task : {'classification', 'regression'}
    positive_class : str or None
        Two classes: the class SHAP explains; methods with a class-specific output explain the same one.
    explain_cfg : iml_genomics.config.ExplainConfig
    splits : list of (repeat, fold, train_idx, test_idx) or None
        The CV folds of the step (None without labels); methods that refit use these same folds.
    random_state : int
    backend : iml_genomics.parallel.Backend
    ranking : pandas.DataFrame
        ``gene_ranking.tsv`` (ordered by rank); ``ranking_top_genes(k)`` gives the top k used genes.
    shap_genes : list of str
        The genes SHAP values exist for (the genes that reach the model).
    local_shap : dict
        Sample id -> SHAP vector over ``shap_genes`` of the explained output (first output when several),
        for the ``explain.samples``.
    attributions : numpy.ndarray or None
        Every sample's SHAP values (samples x ``shap_genes``, the explained output), kept only when a method
        in :data:`NEEDS_ALL_ATTRIBUTIONS` was requested and SHAP ran.
    """

    pipeline: object
    refit_pipeline: object
    X: object
    y: np.ndarray | None
    gene_ids: list
    sample_ids: list
    classes: list | None
    task: str
    positive_class: str | None
    explain_cfg: object
    splits: list | None
    random_state: int
    backend: object
    ranking: pd.DataFrame
    shap_genes: list = field(default_factory=list)
    local_shap: dict = field(default_factory=dict)
    attributions: np.ndarray | None = None

    def ranking_top_genes(self, k: int) -> list:
        """The k best-ranked genes the model uses (fewer when the model uses fewer)."""
        used = self.ranking[self.ranking["used"].astype(bool)]
        return used["gene_id"].astype(str).head(k).tolist()

    def sample_rows(self) -> list:
        """Row positions of ``explain_cfg.samples`` in ``X``, in the order given."""
        pos = {s: i for i, s in enumerate(self.sample_ids)}
        return [pos[s] for s in self.explain_cfg.samples]

    def gene_column(self, gene_id: str) -> int:
        """Column of ``gene_id`` in ``X``."""
        return self.gene_ids.index(gene_id)


@dataclass
class MethodOutput:
    """What one method produces.

    Attributes
    ----------
    tables : dict
        Output file name (``surrogate.tsv``) -> table; every table has an ``explains`` column.
    texts : dict
        Output file name (``surrogate_rules.txt``) -> text.
    summary : dict
        JSON-serialisable; ``explain_summary.json["methods"][name]``.
    warnings : list of str
        One-line warnings for stderr.
    """

    tables: dict = field(default_factory=dict)
    texts: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)


def class_codes(values, classes) -> np.ndarray:
    """Positions in ``classes`` of labels or predictions given as class names, or numeric codes passed through.

    The one place the methods turn class names into codes (surrogate, map, examples, lime/anchors' helpers).
    The dtype decides, not the values: a numeric array is codes already, anything else is names, so a class
    named '1' is never mistaken for code 1.

    Raises
    ------
    ValueError
        A name that is not one of ``classes``.
    """
    values = np.asarray(values)
    if values.dtype.kind in "iuf":
        return values.astype(np.int64)
    pos = {str(c): i for i, c in enumerate(classes)}
    unknown = next((v for v in values if str(v) not in pos), None)
    if unknown is not None:
        raise ValueError(f"label {str(unknown)!r} is not one of the model's classes ({', '.join(map(str, classes))})")
    return np.asarray([pos[str(v)] for v in values], dtype=np.int64)


def is_default(explain_cfg, key: str) -> bool:
    """Whether ``explain.<key>`` holds its default value.

    A size a user chose (``pdp_top_k``, ``conditional_top_k``, ``examples_k``) above what the cohort has is
    refused; the default is capped instead, so that ``--methods all`` runs on a 6-gene panel or a 4-sample
    cohort without the user having to lower settings they never set.
    """
    import dataclasses

    field_ = next(f for f in dataclasses.fields(explain_cfg) if f.name == key)
    return getattr(explain_cfg, key) == field_.default


def resolve_methods(requested) -> list:
    """The methods to run, in :data:`METHOD_NAMES` order, from ``explain.methods``.

    ``'all'`` (alone or in the list) means every method. Unknown names are refused by the config validator
    (:func:`iml_genomics.config.check_relations`); here they raise ValueError.
    """
    names = [requested] if isinstance(requested, str) else list(requested or [])
    if "all" in names:
        return list(METHOD_NAMES)
    unknown = [n for n in names if n not in METHOD_MODULES]
    if unknown:
        raise ValueError(f"unknown explanation method(s): {', '.join(unknown)}")
    return [n for n in METHOD_NAMES if n in names]


def validate_methods(names, explain_cfg, *, gene_ids, sample_ids, classes=None) -> None:
    """Refuse bad settings of the requested methods before any work (SHAP, refits).

    Each module may define ``validate(explain_cfg, *, gene_ids, sample_ids, classes)`` raising a one-line
    ConfigError / InputDataError (k above the genes, ``examples_k`` above the samples, anchors on a
    regression: ``classes`` is None); methods without one are checked when they run. With ``'all'``, a method
    whose module's ``not_applicable(classes)`` gives a reason is skipped (a warning in :func:`run_methods`),
    not refused.
    """
    everything = _asks_for_all(names)
    for name in resolve_methods(names):
        module = importlib.import_module(METHOD_MODULES[name])
        if everything and _not_applicable(module, classes):
            continue  # 'all' skips it with a warning (run_methods); named on its own it is refused below
        check = getattr(module, "validate", None)
        if check is not None:
            check(explain_cfg, gene_ids=gene_ids, sample_ids=sample_ids, classes=classes)


def _asks_for_all(requested) -> bool:
    return requested == "all" or (not isinstance(requested, str) and "all" in list(requested or []))


def _not_applicable(module, classes):
    """Why the method of ``module`` does not apply to this task (its ``not_applicable(classes)``), or None."""
    check = getattr(module, "not_applicable", None)
    return check(classes) if check is not None else None


def run_methods(names, ctx: MethodContext) -> dict:
    """Run the requested methods in order; name -> :class:`MethodOutput`.

    Tables are checked for their ``explains`` column here, once, rather than in every method.
    """
    outputs = {}
    everything = _asks_for_all(names)
    for name in resolve_methods(names):
        module = importlib.import_module(METHOD_MODULES[name])
        reason = _not_applicable(module, ctx.classes) if everything else None
        if reason:
            # explain.methods: all means every method that applies to this model (anchors need classes)
            out = MethodOutput(summary={"skipped": reason},
                               warnings=[f"explain: warning: {name} skipped: {reason} (explain.methods: all)"])
        else:
            out = module.run(ctx)
        for file_name, table in out.tables.items():
            if "explains" not in table.columns or not set(table["explains"].astype(str)) <= set(EXPLAINS):
                raise AssertionError(f"{name}: table {file_name} must say in an 'explains' column whether it "
                                     f"describes the model or the data")
        # one form for every method's warnings on stderr: "explain: warning: ..."
        out.warnings = [w if w.startswith("explain: warning: ")
                        else "explain: warning: " + (w[len("explain: "):] if w.startswith("explain: ") else w)
                        for w in out.warnings]
        # the report finds a method's files through this list (report.inputs.load_inputs)
        out.summary["files"] = sorted([*out.tables, *out.texts])
        outputs[name] = out
    return outputs
