"""YAML configuration validated into typed objects.

Every key has a default, a type and, where it matters, a range or a set of
choices, declared once on the dataclass field. The validator walks those
declarations, so adding a key is one line here plus one line in
``docs/config.md``. Errors name the file, the dotted key and what to do.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from iml_genomics.errors import ConfigError, shorten

# Seeds reach numpy's RandomState / SeedSequence, which take 0 .. 2**32 - 1.
MAX_SEED = 2**32 - 1
# Every other integer must fit numpy's int64 (a larger one is an OverflowError deep in a step).
_MAX_INT = 2**63 - 1
# A config is a few hundred bytes; anything this large is not one.
MAX_CONFIG_BYTES = 1 * 2**20


def _opt(default: Any, *, min: float | None = None, max: float | None = None,
         min_exclusive: bool = False, help: str = "") -> Any:
    """A dataclass field carrying its validation range and documentation."""
    meta = {"min": min, "max": max, "min_exclusive": min_exclusive, "help": help}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


# the opt-in explanation methods of `explain` (iml_genomics.explain.methods runs them, in this order); named
# here so that validating a config needs no numpy
EXPLAIN_METHODS = ("surrogate", "pdp", "lime", "anchors", "examples", "integrated_gradients", "conditional", "map")


@dataclass
class DataConfig:
    expression: str | None = _opt(None, help="Expression matrix path for `run` and the Snakefile (relative to the working directory).")
    labels: str | None = _opt(None, help="Labels table path for `run`; omit to read the label column from an .h5ad obs.")
    orientation: Literal["samples_x_genes", "genes_x_samples"] = _opt(
        "samples_x_genes", help="Layout of the expression matrix file.")
    layer: str | None = _opt(None, help="AnnData layer to read instead of X.")
    label_column: str | None = _opt(None, help="Column of the labels table (or .h5ad obs) holding the outcome.")
    positive_class: str | None = _opt(
        None, help="The class of interest; AUROC/AP, SHAP signs, higher_in and gene-set directions refer to it. "
                   "Null = the last label in sorted order. On a column of more classes: that class against the "
                   "rest. Refused for a continuous outcome.")
    sample_id_column: str | None = _opt(None, help="Column of the labels table with sample ids; first column when unset.")
    drop_unmatched: bool = _opt(False, help="Drop samples present in only one of matrix and labels instead of failing.")
    covariates: list[str] = _opt([], help="Label-table columns included in every fit and never tested: extra model "
                                         "inputs in train/explain (reported as feature_type covariate), partialled out "
                                         "in select (docs/pipeline.md).")
    sensitive: list[str] = _opt([], help="Label-table columns audited in explain (audit.tsv): per-group performance, "
                                        "predictability from the top genes, attribution share (docs/pipeline.md).")


@dataclass
class PreprocessConfig:
    transform: Literal["none", "log1p", "log1p_cpm"] = _opt(
        "none", help="Value transform; log1p and log1p_cpm expect non-negative counts.")
    min_expression: float | None = _opt(
        None, help="Keep genes whose transformed value is >= this in at least min_expression_fraction of training samples.")
    min_expression_fraction: float = _opt(0.1, min=0.0, max=1.0, help="See min_expression.")
    top_k_variable: int | None = _opt(None, min=1, help="Keep the k most variable genes (training folds only).")
    standardize: bool = _opt(True, help="Centre and scale each gene on the training folds.")


@dataclass
class ModelConfig:
    name: Literal[
        "l1_logistic", "elasticnet_logistic", "lasso", "elasticnet",
        "random_forest", "extra_trees", "gradient_boosting", "hist_gradient_boosting", "linear_svm",
        "decision_tree", "mlp",
    ] = _opt("l1_logistic", help="Model from the registry (see docs/config.md).")
    params: dict = _opt({}, help="Extra keyword arguments passed to the scikit-learn estimator.")
    candidates: list[str] = _opt(
        [], help="Registry models compared on the same CV folds by `compare` (and by `run`, which then also "
                 "writes compare/); at least two names; empty = no comparison (docs/compare.md).")
    tuning: dict = _opt(
        {}, help="Nested-CV grids of the comparison: model name -> {parameter: [values]}, replacing the built-in "
                 "grid of that model; {} for a model = not tuned (docs/compare.md).")
    inner_folds: int = _opt(
        3, min=2, help="Folds of the inner CV that tunes a candidate inside each outer training fold.")


@dataclass
class CVConfig:
    n_splits: int = _opt(5, min=2, help="Number of cross-validation folds.")
    n_repeats: int = _opt(1, min=1, help="Repeats of k-fold CV with different shuffles.")
    max_samples: int | None = _opt(
        None, min=2, help="Train (CV and final fit) on a seeded subsample of at most this many samples, stratified "
                          "by the label (single-cell scale); null = all samples.")


@dataclass
class ExplainConfig:
    method: Literal["shap", "permutation", "all"] = _opt("all", help="Attribution methods to run.")
    shap_mode: Literal["tree_path_dependent", "interventional"] = _opt(
        "tree_path_dependent", help="Value function for Tree SHAP.")
    tree_shap_engine: Literal["fast", "shap"] = _opt(
        "fast", help="Tree SHAP implementation: fast = the compiled engine (threads over samples; shap's values to "
                     "float rounding), falling back to shap where it does not read the model; shap = shap's "
                     "TreeExplainer (docs/explain.md).")
    background_size: int = _opt(100, min=1, help="Background samples for interventional / model-agnostic SHAP.")
    chunk_size: int = _opt(256, min=1, help="Samples per parallel chunk.")
    permutation_repeats: int = _opt(5, min=1, help="Permutation repeats per gene.")
    stability: Literal["folds", "bootstrap"] = _opt("folds", help="How the ranking's uncertainty is estimated.")
    n_bootstraps: int = _opt(20, min=2, help="Bootstrap refits when stability is bootstrap.")
    top_k: int = _opt(20, min=1, help="k for top_k_frequency and fold agreement.")
    interaction_top_k: int = _opt(20, min=2, help="Genes considered for Shapley interaction values (tree models).")
    additivity_tolerance: float = _opt(1e-4, min=0.0, min_exclusive=True, help="Max |base + sum(phi) - f(x)| allowed.")
    samples: list[str] = _opt([], help="Sample ids for local explanations.")
    max_samples: int | None = _opt(
        None, min=2, help="Explain (SHAP, permutation, stability refits) a seeded subsample of at most this many "
                          "samples, stratified by the label; explain.samples are always kept; null = all samples.")
    local_top_n: int = _opt(10, min=1, help="Genes per direction (up, down) in local_explanations.tsv.")
    interaction_max_samples: int = _opt(
        200, min=1, help="Samples (seeded subset) over which tree interaction values are averaged.")
    permutation_scoring: Literal["auto", "log_loss", "auroc", "accuracy", "r2"] = _opt(
        "auto", help="Held-out score whose drop is the permutation importance; auto = log_loss (classes) or r2.")
    methods: list[str] | Literal["all"] = _opt(
        [], help="Explanation methods beyond SHAP and permutation importance (opt-in): a list of "
                 + ", ".join(EXPLAIN_METHODS) + "; or all (docs/explain.md).")
    # --- method surrogate (iml_genomics/explain/surrogate.py) ---
    surrogate_max_depth: int = _opt(3, min=1, max=8, help="Depth of the surrogate decision tree (explain.methods surrogate).")
    surrogate_max_rules: int = _opt(
        5, min=1, max=50, help="Rules of the surrogate rule list before its default rule (method surrogate).")
    surrogate_min_samples_leaf: int = _opt(
        5, min=1, help="Fewest samples in a surrogate leaf, so that no rule describes a handful of samples.")
    # --- method pdp (iml_genomics/explain/pdp.py) ---
    pdp_top_k: int = _opt(5, min=1, max=100, help="Top genes of the ranking with partial dependence and ICE curves.")
    pdp_grid_points: int = _opt(
        20, min=2, max=200, help="Grid values per gene: percentiles 5..95 of its raw expression (method pdp).")
    pdp_ice_samples: int = _opt(
        20, min=0, help="Seeded sample of individual (ICE) curves kept in partial_dependence.tsv (method pdp).")
    pdp_max_samples: int = _opt(
        1000, min=10, help="Samples (seeded subset) over which partial dependence is averaged (method pdp).")
    # --- method map (iml_genomics/explain/attribution_map.py) ---
    map_method: Literal["auto", "umap", "tsne"] = _opt(
        "auto", help="2-D embedding of the SHAP values (method map); auto = umap when umap-learn is installed, "
                     "else scikit-learn t-SNE.")
    map_max_samples: int = _opt(5000, min=10, help="Samples (seeded subset) placed on the attribution map.")
    # --- method integrated_gradients (explain/integrated_gradients.py; model mlp only) ---
    integrated_gradients_baseline: Literal["mean", "zeros", "median"] = _opt(
        "mean", help="integrated_gradients: the reference input; mean = training mean (0 after the fitted scaler), "
                     "zeros = no expression (0 before scaling), median = per-gene median of the explained cohort.")
    integrated_gradients_steps: int = _opt(
        64, min=2, max=100000, help="integrated_gradients: gradient evaluations along the path from baseline to sample.")
    integrated_gradients_rule: Literal["gauss_legendre", "riemann_trapezoid"] = _opt(
        "gauss_legendre", help="integrated_gradients: quadrature rule of the path integral.")
    integrated_gradients_tolerance: float = _opt(
        1e-2, min=0.0, min_exclusive=True,
        help="integrated_gradients: max |sum(IG) - (f(x) - f(baseline))| / max(1, |f(x) - f(baseline)|) on every "
             "sample (completeness); above it explain fails.")
    # method conditional (LOCO and knockoff CPI, iml_genomics/explain/conditional.py)
    conditional_top_k: int = _opt(
        20, min=1, help="conditional: top genes of gene_ranking.tsv tested by LOCO and CPI (capped at the genes the "
                        "model uses; more than the matrix's genes is refused).")
    conditional_tests: Literal["both", "loco", "cpi"] = _opt(
        "both", help="conditional: LOCO (k x folds refits), knockoff CPI (no refits), or both.")
    conditional_knockoff_draws: int = _opt(
        1, min=1, max=1000, help="conditional: knockoff draws per fold for CPI; per-sample differences are averaged.")
    # --- methods lime, anchors, examples (iml_genomics/explain/lime.py, anchors.py, examples.py) ---
    lime_top_genes: int | None = _opt(
        None, min=1, help="lime: genes perturbed and fitted, the top of gene_ranking.tsv; up to 20 when unset.")
    lime_n_samples: int = _opt(2000, min=50, max=1_000_000, help="lime: perturbations per explained sample.")
    lime_kernel_width: float | None = _opt(
        None, min=0.0, min_exclusive=True,
        help="lime: width of the exponential kernel on standardized distance; 0.75 * sqrt(genes perturbed) when unset.")
    anchors_threshold: float = _opt(0.95, min=0.0, max=1.0, min_exclusive=True,
                                    help="anchors: precision a rule must reach (95% binomial lower bound).")
    anchors_top_genes: int | None = _opt(
        None, min=1, help="anchors: genes a rule may use, the top of gene_ranking.tsv; up to 20 when unset.")
    anchors_n_bins: int = _opt(4, min=2, max=100, help="anchors: quantile bins per gene (4 = quartile boundaries).")
    anchors_n_samples: int = _opt(500, min=20, max=1_000_000,
                                  help="anchors: perturbations per candidate rule (and for the final estimate).")
    anchors_max_predicates: int = _opt(5, min=1, max=50, help="anchors: longest rule searched.")
    anchors_beam_width: int = _opt(2, min=1, max=50, help="anchors: rules kept at each step of the beam search.")
    examples_k: int = _opt(5, min=1, help="examples: nearest cohort samples listed per chosen sample and space.")


@dataclass
class SelectConfig:
    fdr: float = _opt(0.1, min=0.0, max=1.0, min_exclusive=True, help="Target false discovery rate q.")
    offset: Literal[0, 1] = _opt(1, help="1 = knockoff+ (controls FDR), 0 = knockoff (modified FDR).")
    statistic: Literal["lasso", "random_forest", "model"] = _opt("lasso", help="Feature statistic W.")
    covariance: Literal["auto", "ledoit_wolf", "factor", "factor_blocks"] = _opt("auto", help="Covariance model of the genes.")
    factor_rank: int | None = _opt(None, min=1, help="Rank k of the factor model; chosen from the data when unset.")
    s_method: Literal["mvr", "sdp", "equicorrelated"] = _opt("mvr", help="S-matrix solver.")
    n_draws: int = _opt(1, min=1, help="Knockoff draws aggregated with e-values (derandomised knockoffs).")
    max_samples: int | None = _opt(
        None, min=2, help="Run the knockoffs / dCRT on a seeded subsample of at most this many samples, stratified "
                          "by the label (the dense n x 2p design of the whole cohort may not fit); null = all.")
    groups: Literal["none", "clusters", "file"] = _opt("none", help="Group knockoffs over gene clusters or user groups.")
    group_file: str | None = _opt(None, help="TSV gene_id -> group when groups is file.")
    cluster_correlation: float = _opt(0.5, min=0.0, max=1.0, help="Correlation above which genes are clustered.")
    derandomize_fdr: float | None = _opt(
        None, min=0.0, max=1.0, min_exclusive=True,
        help="Knockoff level inside each draw when n_draws > 1 (e-values, Ren and Barber 2023); fdr / 2 when unset.")
    max_pairs: int | None = _opt(
        None, min=1, help="Gene/knockoff pairs kept by swap-symmetric screening before the lasso; max(1000, 2n) when unset.")
    strict: bool = _opt(False, help="Refuse (exit 3, nothing written) when the exchangeability check fails or cannot run.")
    method: Literal["knockoffs", "dcrt"] = _opt(
        "knockoffs", help="knockoffs (knockoff+ / e-BH) or dcrt (distilled conditional randomization test, one p-value per gene).")
    fdr_procedure: Literal["bh", "by"] = _opt(
        "bh", help="method dcrt: Benjamini-Hochberg (bh) or Benjamini-Yekutieli (by, any dependence) on the p-values.")
    # pseudobulk (issue 18): iml_genomics/pseudobulk.py, docs/select.md "Pseudobulk"
    pseudobulk_by: str | None = _opt(
        None, help="Run the knockoffs / dCRT on pseudobulk profiles: cells summed per (this labels/obs column, "
                   "class), or per this column with the mean response for a regression; then log1p CPM. Null = "
                   "on cells. Not with max_samples.")
    pseudobulk_min_cells: int = _opt(10, min=1, help="Pseudobulk groups with fewer cells are dropped (recorded in "
                                                     "select_summary.json).")
    pseudobulk_aggregate: Literal["sum", "mean"] = _opt(
        "sum", help="sum: counts summed per group, then log1p CPM (refused on non-counts); mean: the values as "
                    "given averaged per group, then preprocess.transform as configured.")


@dataclass
class ReportConfig:
    gene_sets: str | None = _opt(None, help="GMT file (plain or .gz) of gene sets.")
    gene_map: str | None = _opt(None, help="TSV mapping gene ids (probes, Ensembl) to symbols.")
    min_set_size: int = _opt(10, min=1, help="Smallest gene set tested (after mapping to measured genes).")
    max_set_size: int = _opt(500, min=1, help="Largest gene set tested.")
    top_k: int = _opt(50, min=1, help="Top genes of the ranking used for over-representation when no selection exists.")
    n_permutations: int = _opt(1000, min=10, help="Permutations for the rank-based set test.")
    max_samples: int | None = _opt(
        None, min=2, help="Per-gene tests and the label-permutation null of the gene-set tests on a seeded subsample "
                          "of at most this many samples, stratified by the label (both read the matrix a block of genes "
                          "at a time: 1.9 GiB and about 100 s for the report at 10^5 cells x 2,000 genes, so a "
                          "subsample only saves time); null = all samples.")
    ranking_metric: Literal["auto", "mean_abs_shap", "univariate", "knockoff_w"] = _opt(
        "auto", help="Gene score of the rank-based set test; auto = mean |SHAP| from explain, else the univariate "
                     "statistic, else knockoff W.")
    gene_set_fdr: float = _opt(0.1, min=0.0, max=1.0, min_exclusive=True,
                               help="q-value at or below which a gene set counts as significant (biomarkers.tsv).")
    gene_map_id_column: str | None = _opt(None, help="Gene-map column with the measured ids; auto-detected when unset.")
    gene_map_symbol_column: str | None = _opt(
        None, help="Gene-map column with symbols (first word used); symbol/gene_symbol/.../description when unset.")
    alias_map: str | None = _opt(
        None, help="TSV/CSV alias -> approved symbol (header, two columns) applied after the gene map (docs/report.md).")
    samples: list[str] = _opt([], help="Samples whose local explanations the report shows; explain.samples when empty.")
    title: str = _opt("iml-genomics report", help="Title of report.html.")


@dataclass
class OutputConfig:
    granularity: Literal["full", "aggregate"] = _opt(
        "full", help="aggregate = write no per-sample predictions, probabilities or attributions (docs/pipeline.md).")


@dataclass
class ParallelConfig:
    scheduler: str | None = _opt(None, help="dask.distributed scheduler address; local joblib when unset.")


@dataclass
class Config:
    seed: int = _opt(0, min=0, max=MAX_SEED, help="Seed of every random step.")
    n_jobs: int = _opt(-1, help="Parallel workers; -1 = all cores. Results do not depend on it.")
    task: Literal["auto", "classification", "regression"] = _opt("auto", help="Inferred from the labels when auto.")
    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    cv: CVConfig = field(default_factory=CVConfig)
    explain: ExplainConfig = field(default_factory=ExplainConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict:
        """The resolved configuration as plain Python types (for provenance)."""
        return dataclasses.asdict(self)

    def override(self, dotted_key: str, value: Any, source: str = "command line") -> None:
        """Set ``section.key`` (validated), as CLI options do; ``None`` is ignored."""
        if value is None:
            return
        *path, key = dotted_key.split(".")
        target = self
        for part in path:
            target = getattr(target, part)
        hints = typing.get_type_hints(type(target))
        fld = {f.name: f for f in dataclasses.fields(target)}[key]
        setattr(target, key, _check_value(value, hints[key], fld, dotted_key, source))
        check_relations(self, source)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " (or null)"
    if origin is list:
        return "a list"
    if origin is dict or tp is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _check_value(value: Any, tp: Any, fld: dataclasses.Field, key: str, source: str) -> Any:
    """Return ``value`` coerced to ``tp`` or raise a ConfigError naming ``key``."""
    def fail(reason: str) -> typing.NoReturn:
        # shorten: a 10,000-character value (or a huge list) is quoted, never echoed whole
        raise ConfigError(f"{source}: key '{key}' {reason}; got {shorten(value)}. "
                          f"Fix the value (see docs/config.md).")

    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        if len(args) == 1:  # Optional[X]: X's own message (range, NaN) is the useful one
            return _check_value(value, args[0], fld, key, source)
        for arg in args:
            try:
                return _check_value(value, arg, fld, key, source)
            except ConfigError:
                continue
        fail(f"must be {_type_name(tp)}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if (not isinstance(value, (str, int, float, type(None))) or value not in choices
                or isinstance(value, bool) != any(isinstance(c, bool) for c in choices)):
            near = (difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
                    if isinstance(value, str) and len(value) <= 200 else [])
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            fail(f"must be {_type_name(tp)}{hint}")
        return value
    if origin is list:
        if not isinstance(value, list) or not all(isinstance(v, (str, int)) for v in value):
            fail("must be a list of names")
        return [str(v) for v in value]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            fail("must be a mapping")
        for name, item in value.items():
            if isinstance(item, float) and math.isnan(item):
                # passed to scikit-learn, where NaN slips through most range checks
                raise ConfigError(f"{source}: key '{key}.{shorten(name, 60)[1:-1] if isinstance(name, str) else name}' "
                                  f"is NaN. Give a number (see the estimator's parameters).")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            fail("must be true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                fail("must be an integer")
        if abs(value) > _MAX_INT and fld.metadata.get("max") is None:
            fail(f"must be between {-_MAX_INT} and {_MAX_INT}")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail("must be a number")
        try:
            value = float(value)
        except OverflowError:  # an integer beyond the float range
            fail("must be a finite number")
        if not math.isfinite(value):
            # NaN fails every comparison, so without this it slips past the range check below
            fail("must be a finite number (not NaN or infinity)")
    elif tp is str:
        if not isinstance(value, str):
            fail("must be a string")
        return value
    lo, hi = fld.metadata.get("min"), fld.metadata.get("max")
    if lo is not None and (value < lo or (fld.metadata.get("min_exclusive") and value == lo)):
        bound = ">" if fld.metadata.get("min_exclusive") else ">="
        fail(f"must be {bound} {lo}")
    if hi is not None and value > hi:
        fail(f"must be <= {hi}")
    return value


def _build(cls: type, raw: Any, prefix: str, source: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: section '{prefix.rstrip('.') or 'top level'}' must be a mapping of keys "
                          f"to values; got {type(raw).__name__}.")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            near = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5) if len(str(key)) <= 200 else []
            hint = f" Did you mean '{prefix}{near[0]}'?" if near else f" Valid keys: {', '.join(fields)}."
            raise ConfigError(f"{source}: unknown config key {shorten(dotted)}.{hint}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value if value is not None else {}, f"{dotted}.", source)
        else:
            kwargs[key] = _check_value(value, tp, fields[key], dotted, source)
    return cls(**kwargs)


def config_from_dict(raw: dict | None, source: str = "config") -> Config:
    """Validate a parsed mapping into a :class:`Config`.

    Parameters
    ----------
    raw : dict or None
        Parsed YAML; ``None`` (an empty file) gives the defaults.
    source : str
        Name used in error messages, usually the file path.
    """
    cfg = _build(Config, raw or {}, "", source)
    check_relations(cfg, source)
    return cfg


def check_relations(cfg: Config, source: str = "config") -> None:
    """Rules that involve two keys; run after the file and after every override.

    ``select.derandomize_fdr`` above ``select.fdr`` (with ``n_draws > 1``) is
    refused. e-BH at q selects k genes only if the mean over draws of
    ``min(k, R_m) / (1 + N_m)`` reaches ``1 / q`` (``R_m`` genes with W >= T
    in draw m, ``N_m`` with W <= -T), so at least one draw needs a realised
    ratio ``(1 + N_m) / R_m <= q``. The knockoff+ threshold at level a is the
    smallest t with that ratio <= a; with a > q it stops where the ratio is
    up to a, so such draws all but vanish (docs/config.md gives the numbers).
    At a = q every non-empty draw meets the bound, so e-BH can select there.

    Raises
    ------
    ConfigError
        One line naming both keys, the reason and what to do.
    """
    methods = cfg.explain.methods
    unknown = [m for m in ([methods] if isinstance(methods, str) else methods)
               if m not in EXPLAIN_METHODS and m != "all"]
    if unknown:
        near = difflib.get_close_matches(unknown[0], EXPLAIN_METHODS, n=1) if len(unknown[0]) <= 200 else []
        raise ConfigError(f"{source}: key 'explain.methods' names an unknown method {shorten(unknown[0])}"
                          + (f" (did you mean {near[0]!r}?)" if near else "")
                          + f"; choose from {', '.join(EXPLAIN_METHODS)} or all (docs/explain.md).")
    if cfg.output.granularity == "aggregate":
        for key, value in (("explain.samples", cfg.explain.samples), ("report.samples", cfg.report.samples)):
            if value:
                # their local explanations are per-sample outputs, and the ids themselves would be written
                raise ConfigError(f"{source}: key '{key}' names samples but output.granularity is aggregate, "
                                  f"which writes no per-sample output. Empty {key} or use granularity full.")
    _check_compare_keys(cfg, source)
    _check_pseudobulk_keys(cfg, source)
    sel = cfg.select
    if sel.n_draws > 1 and sel.derandomize_fdr is not None and sel.derandomize_fdr > sel.fdr:
        raise ConfigError(
            f"{source}: select.derandomize_fdr ({sel.derandomize_fdr:g}) is above select.fdr ({sel.fdr:g}) with "
            f"n_draws = {sel.n_draws}: e-BH at fdr selects only genes of draws whose (1 + #{{W <= -T}}) / "
            f"#{{W >= T}} is <= fdr, and a per-draw level above fdr lets every draw stop where that ratio is "
            f"larger, so almost nothing can be selected. Set derandomize_fdr <= fdr or leave it unset (fdr / 2).")


def _check_pseudobulk_keys(cfg: Config, source: str) -> None:
    """select.pseudobulk_by and select.max_samples are alternatives: pseudobulk pools every cell."""
    if cfg.select.pseudobulk_by is not None and cfg.select.max_samples is not None:
        # a subsample of cells would only thin the groups (more dropped below pseudobulk_min_cells) for no
        # saving: the profiles are a few hundred rows whatever the number of cells
        raise ConfigError(f"{source}: select.pseudobulk_by and select.max_samples are both set; pseudobulk "
                          f"pools all cells (its profiles are small). Remove one of the two keys.")


def check_candidate_names(candidates, *, key: str = "model.candidates", source: str = "config",
                          allow_empty: bool = False) -> list[str]:
    """Validate a list of model names to compare: registry names, each once, at least two.

    The one check of ``model.candidates`` (config validation) and of ``compare --models`` / ``ig.tl.compare``
    (:func:`iml_genomics.compare.compare_models`); light, so the config loader imports no model library.

    Parameters
    ----------
    candidates : list of str
    key : str
        The config key or option the names came from (for the message).
    source : str
        The config file or option (for the message).
    allow_empty : bool
        An empty list is valid (the config key's default: no comparison).

    Returns
    -------
    list of str

    Raises
    ------
    ConfigError
        An unknown name (with a "did you mean" and the valid names), a name given twice, or fewer than two names.
    """
    valid = typing.get_args(typing.get_type_hints(ModelConfig)["name"])
    names = [str(c) for c in candidates]
    for name in names:
        if name not in valid:
            near = difflib.get_close_matches(name, valid, n=1) if len(name) <= 200 else []
            raise ConfigError(f"{source}: key '{key}' names an unknown model {shorten(name)}"
                              + (f" (did you mean {near[0]!r}?)" if near else "")
                              + f"; valid names: {', '.join(valid)}.")
    dup = [n for i, n in enumerate(names) if n in names[:i]]
    if dup:
        raise ConfigError(f"{source}: key '{key}' lists '{dup[0]}' twice; list each model once.")
    if len(names) < 2 and not (allow_empty and not names):
        raise ConfigError(f"{source}: key '{key}' lists {len(names)} model(s); a comparison needs at least two "
                          f"(for example [l1_logistic, random_forest])" + (", or leave it empty." if allow_empty
                                                                           else "."))
    return names


def _check_compare_keys(cfg: Config, source: str) -> None:
    """model.candidates: registry names, each once, at least two (or none); model.tuning: name -> grid."""
    names = typing.get_args(typing.get_type_hints(ModelConfig)["name"])
    check_candidate_names(cfg.model.candidates, source=source, allow_empty=True)
    for name, grid in cfg.model.tuning.items():
        if name not in names:
            raise ConfigError(f"{source}: key 'model.tuning' names an unknown model {shorten(name)}; valid names: "
                              f"{', '.join(names)}.")
        if not isinstance(grid, dict) or not all(isinstance(k, str) and isinstance(v, list) and v
                                                 and all(isinstance(x, (int, float, str, bool)) or x is None
                                                         for x in v) for k, v in grid.items()):
            raise ConfigError(f"{source}: key 'model.tuning.{shorten(name, 60)[1:-1]}' must map parameter names to "
                              f"non-empty lists of values (for example {{C: [0.1, 1.0]}}), or be {{}} (not tuned).")


def _parse_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load`` without aliases and without duplicate keys.

    Aliases are refused, not expanded: a "billion laughs" file is a few
    hundred bytes that expand to gigabytes once anything walks the result
    (``repr`` in a message, ``dataclasses.asdict``), and no config needs one.
    A key given twice in one mapping is refused too (YAML keeps the last one
    silently, so the first value a user reads is not the one used).
    """
    import yaml

    class _ConfigLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                kind = "alias" if isinstance(event, yaml.AliasEvent) else "anchor"
                mark = event.start_mark
                raise ConfigError(f"{source}: YAML {kind} '{shorten(event.anchor, 60)[1:-1]}' at line "
                                  f"{mark.line + 1}; configs may not use anchors or aliases (&name / *name). "
                                  f"Write the values out.")
            return super().compose_node(parent, index)

        def construct_object(self, node, deep=False):
            try:
                return super().construct_object(node, deep=deep)
            except (ConfigError, yaml.YAMLError, RecursionError):
                raise
            except Exception as exc:  # noqa: BLE001
                # PyYAML's own constructors fail with ValueError, IndexError, AttributeError, ... on
                # values such as 2001-13-45, !!int "" or !!int "abc"
                raise ConfigError(f"{source}: YAML value at line {node.start_mark.line + 1} cannot be read "
                                  f"({shorten(str(exc))[1:-1]}). Fix the value.") from None

        def construct_mapping(self, node, deep=False):
            if not isinstance(node, yaml.MappingNode):  # e.g. `!!set 0.5`: the base class says what is wrong
                return super().construct_mapping(node, deep=deep)
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    raise ConfigError(f"{source}: YAML merge key '<<' at line {key_node.start_mark.line + 1}; "
                                      f"configs may not merge mappings. Write the keys out.")
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if first is not None:
                    raise ConfigError(f"{source}: duplicate key {shorten(key, 120)} at line "
                                      f"{key_node.start_mark.line + 1} (first at line {first}). Keep one of them.")
                seen[key] = key_node.start_mark.line + 1
            return super().construct_mapping(node, deep=deep)

    try:
        return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 - a SafeLoader subclass
    except (ConfigError, yaml.YAMLError, RecursionError):
        raise
    except Exception as exc:  # noqa: BLE001 - PyYAML's constructors raise plain errors on odd tagged values
        raise ConfigError(f"{source}: YAML cannot be read ({shorten(str(exc))[1:-1]}). Fix the YAML.") from None


def load_config(path: str | Path | None) -> Config:
    """Read and validate a YAML configuration file; defaults when ``path`` is None.

    Raises
    ------
    ConfigError
        Missing file, malformed YAML (with its line), unknown key (with the
        nearest valid one), or a value of the wrong type or out of range.
    """
    if path is None:
        return Config()
    import yaml

    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: config path is a directory, not a file. Give the YAML file to --config.")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found. Check the path given to --config.")
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: config file is {size} bytes, more than the {MAX_CONFIG_BYTES} a config can "
                              f"be. Give the YAML config to --config.")
        raw = _parse_yaml(path.read_text(), str(path))
    except RecursionError:
        raise ConfigError(f"{path}: YAML nested too deeply to be a config. Fix the YAML.") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        # The parser often notices a problem a line after its cause (an unclosed
        # bracket); name where the enclosing construct started too.
        context, cmark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and cmark is not None and (mark is None or cmark.line != mark.line):
            problem += f" ({context} at line {cmark.line + 1})"
        raise ConfigError(f"{path}: malformed YAML{where}: {shorten(problem)[1:-1]}. Fix the YAML syntax.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc}).") from None
    return config_from_dict(raw, source=str(path))


def config_keys() -> list[tuple[str, str, Any, str]]:
    """Every documented key as (dotted key, type, default, help), for docs."""
    rows = []

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp):
                walk(tp, f"{prefix}{f.name}.")
                continue
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            lo, hi = f.metadata.get("min"), f.metadata.get("max")
            bounds = []
            if lo is not None:
                bounds.append(f"{'>' if f.metadata.get('min_exclusive') else '>='} {lo}")
            if hi is not None:
                bounds.append(f"<= {hi}")
            type_name = _type_name(tp) + (f", {' and '.join(bounds)}" if bounds else "")
            rows.append((f"{prefix}{f.name}", type_name, default, f.metadata.get("help", "")))

    walk(Config, "")
    return rows


def config_reference_markdown() -> str:
    """The table of every key for ``docs/config.md`` (kept in sync by a test)."""
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, type_name, default, help_text in config_keys():
        shown = "null" if default is None else repr(default) if isinstance(default, str) else str(default).lower() \
            if isinstance(default, bool) else str(default)
        lines.append(f"| `{key}` | {type_name.replace('|', '/')} | `{shown}` | {help_text.replace('|', '/')} |")
    return "\n".join(lines) + "\n"
