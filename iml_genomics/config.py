"""YAML configuration validated into typed objects.

Every key has a default, a type and, where it matters, a range or a set of
choices, declared once on the dataclass field. The validator walks those
declarations, so adding a key is one line here plus one line in
``docs/config.md``. Errors name the file, the dotted key and what to do.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from iml_genomics.errors import ConfigError


def _opt(default: Any, *, min: float | None = None, max: float | None = None,
         min_exclusive: bool = False, help: str = "") -> Any:
    """A dataclass field carrying its validation range and documentation."""
    meta = {"min": min, "max": max, "min_exclusive": min_exclusive, "help": help}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    expression: str | None = _opt(None, help="Expression matrix path for `run` and the Snakefile (relative to the working directory).")
    labels: str | None = _opt(None, help="Labels table path for `run`; omit to read the label column from an .h5ad obs.")
    orientation: Literal["samples_x_genes", "genes_x_samples"] = _opt(
        "samples_x_genes", help="Layout of the expression matrix file.")
    layer: str | None = _opt(None, help="AnnData layer to read instead of X.")
    label_column: str | None = _opt(None, help="Column of the labels table (or .h5ad obs) holding the outcome.")
    sample_id_column: str | None = _opt(None, help="Column of the labels table with sample ids; first column when unset.")
    drop_unmatched: bool = _opt(False, help="Drop samples present in only one of matrix and labels instead of failing.")
    covariates: list[str] = _opt([], help="Label-table columns included in every fit and never tested (select).")


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
        "random_forest", "extra_trees", "gradient_boosting", "linear_svm", "decision_tree",
    ] = _opt("l1_logistic", help="Model from the registry (see docs/config.md).")
    params: dict = _opt({}, help="Extra keyword arguments passed to the scikit-learn estimator.")


@dataclass
class CVConfig:
    n_splits: int = _opt(5, min=2, help="Number of cross-validation folds.")
    n_repeats: int = _opt(1, min=1, help="Repeats of k-fold CV with different shuffles.")


@dataclass
class ExplainConfig:
    method: Literal["shap", "permutation", "all"] = _opt("all", help="Attribution methods to run.")
    shap_mode: Literal["tree_path_dependent", "interventional"] = _opt(
        "tree_path_dependent", help="Value function for Tree SHAP.")
    background_size: int = _opt(100, min=1, help="Background samples for interventional / model-agnostic SHAP.")
    chunk_size: int = _opt(256, min=1, help="Samples per parallel chunk.")
    permutation_repeats: int = _opt(5, min=1, help="Permutation repeats per gene.")
    stability: Literal["folds", "bootstrap"] = _opt("folds", help="How the ranking's uncertainty is estimated.")
    n_bootstraps: int = _opt(20, min=2, help="Bootstrap refits when stability is bootstrap.")
    top_k: int = _opt(20, min=1, help="k for top_k_frequency and fold agreement.")
    interaction_top_k: int = _opt(20, min=2, help="Genes considered for Shapley interaction values (tree models).")
    additivity_tolerance: float = _opt(1e-4, min=0.0, min_exclusive=True, help="Max |base + sum(phi) - f(x)| allowed.")
    samples: list[str] = _opt([], help="Sample ids for local explanations.")
    local_top_n: int = _opt(10, min=1, help="Genes per direction (up, down) in local_explanations.tsv.")
    interaction_max_samples: int = _opt(
        200, min=1, help="Samples (seeded subset) over which tree interaction values are averaged.")
    permutation_scoring: Literal["auto", "log_loss", "auroc", "accuracy", "r2"] = _opt(
        "auto", help="Held-out score whose drop is the permutation importance; auto = log_loss (classes) or r2.")


@dataclass
class SelectConfig:
    fdr: float = _opt(0.1, min=0.0, max=1.0, min_exclusive=True, help="Target false discovery rate q.")
    offset: Literal[0, 1] = _opt(1, help="1 = knockoff+ (controls FDR), 0 = knockoff (modified FDR).")
    statistic: Literal["lasso", "random_forest", "model"] = _opt("lasso", help="Feature statistic W.")
    covariance: Literal["auto", "ledoit_wolf", "factor"] = _opt("auto", help="Covariance model of the genes.")
    factor_rank: int | None = _opt(None, min=1, help="Rank k of the factor model; chosen from the data when unset.")
    s_method: Literal["mvr", "sdp", "equicorrelated"] = _opt("mvr", help="S-matrix solver.")
    n_draws: int = _opt(1, min=1, help="Knockoff draws aggregated with e-values (derandomised knockoffs).")
    groups: Literal["none", "clusters", "file"] = _opt("none", help="Group knockoffs over gene clusters or user groups.")
    group_file: str | None = _opt(None, help="TSV gene_id -> group when groups is file.")
    cluster_correlation: float = _opt(0.5, min=0.0, max=1.0, help="Correlation above which genes are clustered.")
    derandomize_fdr: float | None = _opt(
        None, min=0.0, max=1.0, min_exclusive=True,
        help="Knockoff level inside each draw when n_draws > 1 (e-values, Ren and Barber 2023); fdr / 2 when unset.")
    max_pairs: int | None = _opt(
        None, min=1, help="Gene/knockoff pairs kept by swap-symmetric screening before the lasso; max(1000, 2n) when unset.")
    method: Literal["knockoffs", "dcrt"] = _opt(
        "knockoffs", help="knockoffs (knockoff+ / e-BH) or dcrt (distilled conditional randomization test, one p-value per gene).")
    fdr_procedure: Literal["bh", "by"] = _opt(
        "bh", help="method dcrt: Benjamini-Hochberg (bh) or Benjamini-Yekutieli (by, any dependence) on the p-values.")


@dataclass
class ReportConfig:
    gene_sets: str | None = _opt(None, help="GMT file (plain or .gz) of gene sets.")
    gene_map: str | None = _opt(None, help="TSV mapping gene ids (probes, Ensembl) to symbols.")
    min_set_size: int = _opt(10, min=1, help="Smallest gene set tested (after mapping to measured genes).")
    max_set_size: int = _opt(500, min=1, help="Largest gene set tested.")
    top_k: int = _opt(50, min=1, help="Top genes of the ranking used for over-representation when no selection exists.")
    n_permutations: int = _opt(1000, min=10, help="Permutations for the rank-based set test.")
    ranking_metric: Literal["auto", "mean_abs_shap", "univariate", "knockoff_w"] = _opt(
        "auto", help="Gene score of the rank-based set test; auto = mean |SHAP| from explain, else the univariate "
                     "statistic, else knockoff W.")
    gene_set_fdr: float = _opt(0.1, min=0.0, max=1.0, min_exclusive=True,
                               help="q-value at or below which a gene set counts as significant (biomarkers.tsv).")
    gene_map_id_column: str | None = _opt(None, help="Gene-map column with the measured ids; auto-detected when unset.")
    gene_map_symbol_column: str | None = _opt(
        None, help="Gene-map column with symbols (first word used); symbol/gene_symbol/.../description when unset.")
    samples: list[str] = _opt([], help="Samples whose local explanations the report shows; explain.samples when empty.")
    title: str = _opt("iml-genomics report", help="Title of report.html.")


@dataclass
class ParallelConfig:
    scheduler: str | None = _opt(None, help="dask.distributed scheduler address; local joblib when unset.")


@dataclass
class Config:
    seed: int = _opt(0, min=0, help="Seed of every random step.")
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
        raise ConfigError(f"{source}: key '{key}' {reason}; got {value!r}. "
                          f"Fix the value (see docs/config.md).")

    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        for arg in args:
            try:
                return _check_value(value, arg, fld, key, source)
            except ConfigError:
                continue
        fail(f"must be {_type_name(tp)}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices or isinstance(value, bool) != any(isinstance(c, bool) for c in choices):
            near = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            fail(f"must be {_type_name(tp)}{hint}")
        return value
    if origin is list:
        if not isinstance(value, list) or not all(isinstance(v, (str, int)) for v in value):
            fail("must be a list of names")
        return [str(v) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            fail("must be a mapping")
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
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail("must be a number")
        value = float(value)
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
            near = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            hint = f" Did you mean '{prefix}{near[0]}'?" if near else f" Valid keys: {', '.join(fields)}."
            raise ConfigError(f"{source}: unknown config key '{dotted}'.{hint}")
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
    return _build(Config, raw or {}, "", source)


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
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        # The parser often notices a problem a line after its cause (an unclosed
        # bracket); name where the enclosing construct started too.
        context, cmark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and cmark is not None and (mark is None or cmark.line != mark.line):
            problem += f" ({context} at line {cmark.line + 1})"
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}. Fix the YAML syntax.") from None
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
