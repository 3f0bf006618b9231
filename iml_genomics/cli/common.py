"""Options and glue shared by subcommands: config overrides and cohort loading."""

from __future__ import annotations

import functools
from pathlib import Path

import click


#: Set by ``iml-genomics -q`` (and ``run --quiet``): warnings and errors only, no summary line.
QUIET = False


def echo_summary(line: str) -> None:
    """The one-line summary a command ends with, on stderr; nothing under ``-q``."""
    if not QUIET:
        click.echo(line, err=True)


def cohort_options(func):
    """--config, --expression, --labels and the reader options, as one decorator."""
    options = [
        # Paths are plain strings here: the readers check them and say what is wrong
        # in one line (click's own checks print a multi-line usage block).
        click.option("--config", "config_path", type=click.Path(), default=None,
                     help="YAML config (docs/config.md); defaults when omitted."),
        click.option("--expression", required=True, type=click.Path(),
                     help="Expression matrix: CSV/TSV[.gz], Parquet or .h5ad."),
        click.option("--labels", type=click.Path(), default=None,
                     help="Labels table (CSV/TSV); omit to read --label-column from the .h5ad obs."),
        click.option("--label-column", default=None, help="Outcome column [config data.label_column]."),
        click.option("--positive-class", default=None,
                     help="Two classes: the class of interest (AUROC, SHAP signs, higher_in, gene-set directions "
                          "refer to it) [config data.positive_class; else the last label in sorted order]."),
        click.option("--sample-id-column", default=None, help="Sample id column of --labels [first column]."),
        click.option("--genes-as-rows", is_flag=True, default=None,
                     help="Matrix has genes as rows, samples as columns (GEO/TCGA layout)."),
        click.option("--layer", default=None, help="AnnData layer to read instead of X."),
        click.option("--drop-unmatched", is_flag=True, default=None,
                     help="Keep only samples present in both matrix and labels."),
        click.option("--seed", type=int, default=None, help="Seed of every random step [config seed]."),
        click.option("--jobs", "n_jobs", type=int, default=None,
                     help="Parallel workers, -1 = all cores [config n_jobs]; results do not depend on it."),
        click.option("--scheduler", default=None,
                     help="dask.distributed scheduler address (e.g. tcp://10.0.0.1:8786) to run parallel "
                          "loops on a cluster [config parallel.scheduler]."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


# Config key -> the option that sets it, so an out-of-range value names what the user typed.
_OPTION_OF_KEY = {
    "data.label_column": "--label-column", "data.positive_class": "--positive-class",
    "data.sample_id_column": "--sample-id-column",
    "data.orientation": "--genes-as-rows", "data.layer": "--layer", "data.drop_unmatched": "--drop-unmatched",
    "seed": "--seed", "n_jobs": "--jobs", "model.name": "--model", "cv.n_splits": "--cv-folds",
    "cv.n_repeats": "--cv-repeats", "select.fdr": "--fdr", "select.n_draws": "--draws",
}


def resolve_config(config_path, *, overrides: dict):
    """Load the YAML config and apply command-line overrides (dotted keys)."""
    from iml_genomics.config import load_config

    cfg = load_config(config_path)
    for key, value in overrides.items():
        if key == "data.orientation" and value:
            value = "genes_x_samples"
        elif key == "data.orientation":
            value = None
        option = _OPTION_OF_KEY.get(key)
        cfg.override(key, value, source=f"option {option}" if option else "command line")
    if cfg.model.params:
        _check_model_params(cfg, str(config_path))
    return cfg


def make_backend(cfg):
    """The :class:`~iml_genomics.parallel.Backend` of a subcommand: ``parallel.scheduler`` and ``n_jobs``.

    Called once the config is resolved and before any data is read: an unreachable scheduler (or a missing
    dask install) is one line and exit 2 before anything is computed or written. The command hands the
    backend to its step, so every parallel loop of the step runs where the user asked.
    """
    from iml_genomics.parallel import Backend

    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.params.get("expression"):
        # in a SLURM job granted less memory than this step's estimate: one line now, not an OOM kill later
        from iml_genomics.cluster import check_granted_memory

        check_granted_memory(cfg, ctx.params["expression"], ctx.info_name)
    return Backend.from_config(cfg)


def _check_model_params(cfg, source: str) -> None:
    """Fail before reading any data if model.params has a key the estimator does not take.

    The registry's own message says 'config:'; here the file is known, so the
    error names it. With task 'auto' the task is not known yet: a key accepted
    by either the classifier or the regressor passes (the fit re-checks it).
    """
    from iml_genomics.errors import ConfigError
    from iml_genomics.models import build_estimator

    if not isinstance(cfg.model.params, dict):
        raise ConfigError(f"{source}: key 'model.params' must be a mapping of estimator arguments (for example "
                          f"'C: 0.5'), got a {type(cfg.model.params).__name__}. Fix model.params.")
    tasks = ["classification", "regression"] if cfg.task == "auto" else [cfg.task]
    first = None
    for task in tasks:
        try:
            estimator = build_estimator(cfg.model.name, task, seed=cfg.seed, params=cfg.model.params)
            # scikit-learn checks values (types, ranges) only in fit; check them now so a bad
            # value is one line naming the key instead of a traceback from inside the CV loop.
            try:
                getattr(estimator, "_validate_params", lambda: None)()
            except (TypeError, ValueError) as exc:
                # scikit-learn quotes the value: cut it, a 10,000-character value must not fill the line
                from iml_genomics.io.ids import show_id

                text = show_id((str(exc).splitlines() or [""])[0], 300)
                raise ConfigError(f"config: model.params value rejected: {text}") from None
            return
        except ConfigError as exc:
            first = first or exc
    message = str(first)
    if message.startswith("config:"):
        message = f"{source}:{message[len('config:'):]}"
    message = message.rstrip(".")
    message += "" if message.endswith("?") else "."
    raise ConfigError(f"{message} Fix model.params (see the scikit-learn estimator's parameters).")


def common_overrides(opts: dict) -> dict:
    """Map the shared CLI options onto config keys."""
    return {
        "data.label_column": opts.get("label_column"),
        "data.positive_class": opts.get("positive_class"),
        "data.sample_id_column": opts.get("sample_id_column"),
        "data.orientation": opts.get("genes_as_rows"),
        "data.layer": opts.get("layer"),
        "data.drop_unmatched": opts.get("drop_unmatched"),
        "seed": opts.get("seed"),
        "n_jobs": opts.get("n_jobs"),
        "parallel.scheduler": opts.get("scheduler"),
    }


def load_cohort_for(cfg, expression, labels, *, require_labels: bool = True, check_cv: bool = False):
    """Read the cohort as the config says.

    With ``check_cv`` the outcome is also checked for cross-validation (two or
    more classes, none smaller than cv.n_splits) right away, so such an input
    fails in a second instead of after the model libraries are imported.
    """
    from iml_genomics.io import infer_task, load_cohort, prepare_target

    adata = load_cohort(expression, labels=labels, label_column=cfg.data.label_column,
                        sample_id_column=cfg.data.sample_id_column,
                        genes_as_rows=cfg.data.orientation == "genes_x_samples", layer=cfg.data.layer,
                        drop_unmatched=cfg.data.drop_unmatched, covariates=cfg.data.covariates,
                        require_labels=require_labels, positive_class=cfg.data.positive_class,
                        sensitive=cfg.data.sensitive)
    if require_labels:
        from iml_genomics.io.cohort import check_variation

        check_variation(adata, str(expression))
    if cfg.data.label_column is not None and cfg.data.label_column in adata.obs.columns:
        y = adata.obs[cfg.data.label_column]
        # select needs only two samples per class; train's CV needs cv.n_splits
        _, classes = prepare_target(y, infer_task(y, cfg.task), n_splits=cfg.cv.n_splits if check_cv else 2,
                                    source=str(labels or expression), column=cfg.data.label_column)
        check_positive_class(cfg, classes, source=str(labels or expression))
    return adata


_WARNED: set[str] = set()


def check_positive_class(cfg, classes, *, source: str) -> str | None:
    """Validate data.positive_class against the labels (before anything is written) and warn once.

    Returns the positive class (None unless there are two classes); the warning about a reference-like
    default (e.g. 'control' over 'case') goes to stderr once per process, whichever step asks first.
    """
    from iml_genomics.io.cohort import resolve_positive_class

    positive, warning = resolve_positive_class(classes, cfg.data.positive_class, source=source,
                                               column=cfg.data.label_column)
    if warning and warning not in _WARNED:
        _WARNED.add(warning)
        click.echo(warning, err=True)
    return positive


def echo_warnings(warnings) -> None:
    """Print a step's one-line warnings on stderr.

    The positive-class warning is printed once per process (``run`` calls several steps that each
    resolve the class); every other warning is printed each time.
    """
    for warning in warnings:
        if warning.startswith("iml-genomics: warning: positive class"):
            if warning in _WARNED:
                continue
            _WARNED.add(warning)
        click.echo(warning, err=True)


def _check_out_dir(ctx, param, value):
    """Fail at once, not after hours of work, if --out cannot be created or written."""
    if value is None:
        return value
    import os

    probe = Path(value)
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise click.BadParameter(f"'{probe}' is a file, so '{value}' cannot be a directory. Choose another path.")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise click.BadParameter(f"no permission to write in '{probe}'. Choose another path.")
    if probe.exists():
        # os.access says yes to root everywhere and knows nothing of read-only mounts or
        # /proc: create (and remove) an empty directory where --out's files will go
        import tempfile

        try:
            os.rmdir(tempfile.mkdtemp(prefix=".iml-probe-", dir=probe))
        except OSError as exc:
            raise click.BadParameter(f"cannot create '{value}': creating a directory in '{probe}' fails "
                                     f"({exc.strerror}). Check the path and its permissions, or choose another "
                                     f"path.") from None
    return value


# Files each subcommand may write into --out (defined with the pipeline's bookkeeping, used by `run` too).
from iml_genomics.pipeline import OUTPUT_NAMES  # noqa: E402

# Parameters that name files or directories a command reads.
_INPUT_PARAMS = ("expression", "labels", "config_path", "gene_sets", "gene_map", "truth", "signal_genes")
_INPUT_MULTI_PARAMS = ("rankings", "selections")
_INPUT_DIR_PARAMS = ("model_dir", "input_dirs")


def command_inputs(params: dict) -> tuple[list, list]:
    """(files, directories) named by a command's parameters."""
    files = [params.get(k) for k in _INPUT_PARAMS if params.get(k)]
    files += [p for k in _INPUT_MULTI_PARAMS for p in (params.get(k) or ())]
    dirs = [params.get("model_dir")] if params.get("model_dir") else []
    dirs += list(params.get("input_dirs") or ())
    return files, dirs


def guarded(step: str | None = None):
    """Run a command inside an output guard on its --out (lock, checks, cleanup; see io.writers)."""
    def decorate(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            from iml_genomics.io.writers import check_step_dir, output_guard, reading_step_dirs

            name = step or click.get_current_context().info_name
            files, dirs = command_inputs(kwargs)
            # a shared lock on each input step directory for the whole command: a `train` into the
            # --model directory cannot switch in a new model while this one reads (and records) it
            with reading_step_dirs(dirs):
                for d in dirs:
                    # a step directory whose commit was interrupted may mix two runs: refuse it as input
                    check_step_dir(d)
                with output_guard(kwargs["out"], name, names=OUTPUT_NAMES.get(name, ("provenance.json",)),
                                  inputs=[*files, *dirs]):
                    return func(*args, **kwargs)
        return wrapper
    return decorate


def out_option(func):
    """--out, with the command run inside an output guard (see :func:`guarded`)."""
    return click.option("--out", required=True, type=click.Path(file_okay=False), callback=_check_out_dir,
                        help="Output directory (created; files are written atomically; locked while "
                             "writing).")(guarded()(func))


def comma_list(text: str) -> list:
    """``"a, b,,c"`` -> ``['a', 'b', 'c']``: a comma-separated command-line list, blanks dropped."""
    return [item.strip() for item in text.split(",") if item.strip()]


class CommaSeparated(click.ParamType):
    """An option value that may list several items separated by commas (``--k 10,20,50``).

    Each item is checked by ``inner`` (a choice, an integer range...), so a bad
    item fails with that type's own message naming it. Used with
    ``multiple=True``: the option may also be repeated; :func:`flatten` joins
    the lists.
    """

    def __init__(self, inner: click.ParamType):
        self.inner = inner
        self.name = f"{inner.name}[,...]"

    def get_metavar(self, param, *args, **kwargs):
        inner = self.inner.get_metavar(param, *args, **kwargs) if hasattr(self.inner, "get_metavar") else None
        return f"{inner or self.inner.name.upper()}[,...]"

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        items = comma_list(str(value))
        if not items:
            self.fail(f"'{value}' lists nothing; give one or more values separated by commas.", param, ctx)
        return [self.inner.convert(item, param, ctx) for item in items]


def flatten(groups) -> tuple:
    """The items of a repeated :class:`CommaSeparated` option, in order, duplicates kept once."""
    return tuple(dict.fromkeys(item for group in (groups or ()) for item in group))


def config_argument(positional: str | None, option: str | None) -> str:
    """The config of `run`, given as its argument CONFIG or as ``--config`` (one of them).

    Raises
    ------
    click.UsageError
        Neither given, or both given and naming different files (exit 2, one line).
    """
    import os

    if positional is None and option is None:
        raise click.UsageError("missing the config: give it as 'run CONFIG' or 'run --config CONFIG'.")
    if positional is not None and option is not None and os.path.realpath(positional) != os.path.realpath(option):
        raise click.UsageError(f"two configs given: argument '{positional}' and --config '{option}'; give one.")
    return positional if positional is not None else option
