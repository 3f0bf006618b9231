"""`iml-genomics run`: train, explain, select and report from one config."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import click

log = logging.getLogger("iml_genomics.run")


def _step_args(step: str, cfg, config_path: str, out: Path, n_jobs: int | None, scheduler: str | None) -> list[str]:
    """Command-line arguments that make one step read the run's config and write under OUT."""
    data = cfg.data
    cohort = ["--expression", data.expression] + (["--labels", data.labels] if data.labels else [])
    common = ["--config", config_path]
    if n_jobs is not None:
        common += ["--jobs", str(n_jobs)]
    if scheduler:
        common += ["--scheduler", scheduler]
    if step == "train":
        return [*common, *cohort, "--out", str(out / "train")]
    if step == "explain":
        return [*common, *cohort, "--model", str(out / "train"), "--out", str(out / "explain")]
    if step == "select":
        return [*common, *cohort, "--out", str(out / "select")]
    inputs = [str(out / s) for s in ("train", "explain", "select") if (out / s).is_dir()]
    args = ["--config", config_path, "--inputs", *inputs, "--out", str(out / "report")]
    if cfg.report.gene_sets:
        args += ["--gene-sets", cfg.report.gene_sets]
    return args


def _available_steps() -> list[str]:
    from iml_genomics.cli import SUBCOMMANDS, _module_exists
    from iml_genomics.pipeline import STEPS

    return [s for s in STEPS if _module_exists(SUBCOMMANDS[s])]


@click.command()
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output directory; each step writes OUT/<step>/.")
@click.option("--force", is_flag=True, help="Redo every step even when its outputs are up to date.")
@click.option("--steps", default=None, help="Comma-separated subset of train,explain,select,report [all].")
@click.option("--jobs", "n_jobs", type=int, default=None, help="Parallel workers [config n_jobs].")
@click.option("--scheduler", default=None, help="dask.distributed scheduler address [config parallel.scheduler].")
@click.option("--dry-run", is_flag=True, help="Print each step's estimated peak memory and work, then stop.")
@click.option("--max-memory", default=None, help="Refuse to run when a step's estimate exceeds this (e.g. 16G).")
@click.option("--quiet", is_flag=True, help="Only warnings and errors on stderr.")
@click.option("--verbose", is_flag=True, help="Debug messages on stderr.")
def run(config_path, out, force, steps, n_jobs, scheduler, dry_run, max_memory, quiet, verbose):
    """Run the whole pipeline from one YAML config.

    \b
    The config names the data (data.expression, data.labels,
    data.label_column) and, for the report, report.gene_sets. Steps whose
    outputs are complete and whose inputs and config are unchanged are
    skipped (fingerprints in OUT/run_state.json); --force redoes them.
    \b
    Example:
      iml-genomics run configs/demo.yaml --out results/demo
    """
    from iml_genomics import pipeline as pl
    from iml_genomics.cli import configure_logging
    from iml_genomics.cli.common import OUTPUT_NAMES, resolve_config
    from iml_genomics.errors import ConfigError, OutputConflictError, ResourceError
    from iml_genomics.io.writers import output_guard

    if quiet or verbose:
        configure_logging(quiet, verbose)
    cfg = resolve_config(config_path, overrides={"n_jobs": n_jobs, "parallel.scheduler": scheduler})
    if cfg.parallel.scheduler:
        from iml_genomics.cli.common import make_backend

        make_backend(cfg)  # an unreachable scheduler: one line, exit 2, before any step runs or writes
    if cfg.data.expression is None:
        raise ConfigError(f"{config_path}: `run` needs data.expression (and data.labels unless the labels are "
                          f"in the .h5ad obs); add them to the config.")
    expression = pl.resolve_input(cfg.data.expression, "expression", config_path)
    labels = pl.resolve_input(cfg.data.labels, "labels", config_path)
    gene_sets = pl.resolve_input(cfg.report.gene_sets, "gene_sets", config_path) if cfg.report.gene_sets else None
    available = _available_steps()
    wanted = [s.strip() for s in steps.split(",")] if steps else list(available)
    unknown = [s for s in wanted if s not in pl.STEPS]
    if unknown:
        raise ConfigError(f"--steps: unknown step '{unknown[0]}'; choose from {', '.join(pl.STEPS)}.")
    wanted = [s for s in pl.STEPS if s in wanted and s in available]

    n_samples, n_genes = pl.peek_shape(expression, genes_as_rows=cfg.data.orientation == "genes_x_samples")
    estimates = pl.estimate_resources(cfg, n_samples, n_genes, n_jobs=cfg.n_jobs)
    limit = pl.parse_memory(max_memory) if max_memory else None
    if dry_run or limit is not None:
        lines = [f"{'step':<8} {'peak memory':>12}  work"]
        lines += [f"{e.step:<8} {pl.format_bytes(e.peak_memory_bytes):>12}  {e.work}"
                  for e in estimates if e.step in wanted]
        if dry_run:
            click.echo("\n".join(lines))
        over = [e for e in estimates if e.step in wanted and limit is not None and e.peak_memory_bytes > limit]
        if over:
            raise ResourceError(f"step '{over[0].step}' is estimated at {pl.format_bytes(over[0].peak_memory_bytes)}, "
                                f"over --max-memory {max_memory}; lower preprocess.top_k_variable, --jobs or "
                                f"select.n_draws, or run on a larger node.")
        if dry_run:
            return

    out = Path(out)
    gene_map = Path(cfg.report.gene_map) if cfg.report.gene_map else None
    with output_guard(out, "run", names=OUTPUT_NAMES["run"],
                      inputs=[config_path, expression, labels, gene_sets, gene_map],
                      on_interrupt=f"steps finished before it are kept in {out} (the next run skips them)"):
        for step in wanted:
            step_dir = out / step
            if step_dir.is_symlink():
                # never follow it: the step's outputs would land outside OUT
                raise OutputConflictError(f"{step_dir}: is a symbolic link; `run` writes each step into a real "
                                          f"directory under --out. Remove the link or choose another --out.")
            if step_dir.exists() and not step_dir.is_dir():
                raise OutputConflictError(f"{step_dir}: is a file where `run` writes the '{step}' directory; move "
                                          f"it away or choose another --out.")
            if step_dir.is_dir():
                # the step's own guard checks these again; checking now refuses a colliding name
                # before any step has run (one line, not progress lines and then the refusal)
                _precheck_step_dir(step_dir, step, OUTPUT_NAMES[step],
                                   [config_path, expression, labels, gene_sets, gene_map])
        _run_steps(cfg, config_path, out, wanted, force, n_jobs, scheduler, quiet, estimates, resolved_inputs={
            "expression": expression, "labels": labels, "gene_sets": gene_sets, "gene_map": gene_map})


def _precheck_step_dir(step_dir: Path, step: str, names, inputs) -> None:
    """Refuse, before any work, a step directory another step wrote or one whose output names collide.

    Raises
    ------
    OutputConflictError
        The same one-line refusal the step's own output guard would give later.
    """
    from iml_genomics.errors import OutputConflictError
    from iml_genomics.io.writers import LISTING, OutputGuard, _owned_hashes, read_listing

    listing, problem = read_listing(step_dir)
    if listing is not None and listing["step"] != step:
        raise OutputConflictError(f"{step_dir}: holds the outputs of 'iml-genomics {listing['step']}' (see "
                                  f"{LISTING}); `run` writes '{step}' there. Move it away or choose another --out.")
    guard = OutputGuard(step_dir, step, inputs=[p for p in inputs if p is not None])
    guard._listing_problem = problem
    owned = _owned_hashes(listing)
    for name in names:
        guard._check_name(name, owned)


def _write_state(out: Path, state: dict, prov=None) -> None:
    """run_state.json (and provenance.json at the end) through the same guarded commit as every output."""
    from iml_genomics.io.writers import staged_output, write_json

    with staged_output(out) as stage:
        write_json(state, stage / "run_state.json")
        if prov is not None:
            prov.write(stage)


def _run_steps(cfg, config_path, out, wanted, force, n_jobs, scheduler, quiet, estimates, *, resolved_inputs):
    from iml_genomics import pipeline as pl
    from iml_genomics.cli import main as cli_main
    from iml_genomics.io.writers import Provenance, remove_leftovers

    expression, labels = resolved_inputs["expression"], resolved_inputs["labels"]
    gene_sets, gene_map = resolved_inputs["gene_sets"], resolved_inputs["gene_map"]
    state_path = out / "run_state.json"
    state = pl.read_run_state(state_path)
    resolved = cfg.to_dict()
    step_inputs = {"train": [expression, labels], "explain": [expression, labels], "select": [expression, labels],
                   "report": [gene_sets, gene_map]}
    prov = Provenance("run", resolved, {"expression": expression, "labels": labels, "config": config_path})
    fingerprints: dict[str, str] = {}
    show_bar = sys.stderr.isatty() and not quiet
    for index, step in enumerate(wanted, start=1):
        upstream = {u: fingerprints.get(u) or state.get(u, {}).get("fingerprint") for u in pl.UPSTREAM[step]}
        fp = pl.step_fingerprint(step, resolved, step_inputs[step], upstream)
        fingerprints[step] = fp
        done = state.get(step, {}).get("fingerprint") == fp and pl.outputs_complete(step, out / step)
        if done and not force:
            # a run killed while it re-did this step (another seed, say) left its staging here; we hold
            # OUT's lock, so no other writer is inside the step directory
            remove_leftovers(out / step)
            log.info("[%d/%d] %s: up to date, skipped", index, len(wanted), step)
            prov.timings[step] = 0.0
            continue
        log.info("[%d/%d] %s: running", index, len(wanted), step)
        if show_bar:
            click.echo(f"\r[{'#' * index}{'.' * (len(wanted) - index)}] {step} ...", err=True, nl=False)
        # each step re-enters the click group, which would reset logging: pass the level on
        level = logging.getLogger("iml_genomics").getEffectiveLevel()
        flags = ["-q"] if level >= logging.WARNING else ["-v"] if level <= logging.DEBUG else []
        args = [*flags, step, *_step_args(step, cfg, config_path, out, n_jobs, scheduler)]
        log.debug("iml-genomics %s", " ".join(args))
        started = time.perf_counter()
        code = cli_main.main(args=args, prog_name="iml-genomics", standalone_mode=False)
        if isinstance(code, int) and code != 0:
            # the step already printed its one-line error; stop with its exit code
            click.get_current_context().exit(code)
        seconds = round(time.perf_counter() - started, 3)
        prov.timings[step] = seconds
        # recorded only after the step's outputs were moved into place, so a
        # killed run redoes exactly the step it was in
        state[step] = {"fingerprint": fp, "seconds": seconds,
                       "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        _write_state(out, state)
        log.info("[%d/%d] %s: done in %.1f s", index, len(wanted), step, seconds)
    if show_bar:
        click.echo("", err=True)
    prov.extra["steps"] = {s: state.get(s) for s in wanted}
    prov.extra["estimates"] = {e.step: {"peak_memory_bytes": e.peak_memory_bytes, "work": e.work} for e in estimates}
    _write_state(out, state, prov)
    report = out / "report" / "report.html"
    click.echo(f"run: {', '.join(wanted)} complete in {out}" + (f"; open {report}" if report.is_file() else ""),
               err=True)
