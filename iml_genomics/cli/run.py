"""`iml-genomics run`: train, explain, select and report from one config."""

from __future__ import annotations

import click


def _available_steps() -> list[str]:
    from iml_genomics.cli import SUBCOMMANDS, module_exists
    from iml_genomics.pipeline import STEPS

    return [s for s in STEPS if module_exists(SUBCOMMANDS[s])]


@click.command()
@click.argument("config_path", metavar="[CONFIG]", required=False, type=click.Path(dir_okay=False))
@click.option("--config", "config_option", default=None, type=click.Path(dir_okay=False),
              help="The YAML config, as the other subcommands take it (or give it as the argument CONFIG).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output directory; each step writes OUT/<step>/.")
@click.option("--force", is_flag=True, help="Redo every step even when its outputs are up to date.")
@click.option("--steps", default=None, help="Comma-separated subset of train,explain,select,report [all].")
@click.option("--jobs", "n_jobs", type=int, default=None, help="Parallel workers [config n_jobs].")
@click.option("--scheduler", default=None, help="dask.distributed scheduler address [config parallel.scheduler].")
@click.option("--dry-run", is_flag=True, help="Print each step's estimated peak memory and work, then stop.")
@click.option("--max-memory", default=None, help="Refuse to run when a step's estimate exceeds this (e.g. 16G).")
@click.option("--write-h5ad", "write_h5ad", default=None, type=click.Path(dir_okay=False),
              help="Also write the cohort with every result attached (var columns, SHAP in obsm, tables and the "
                   "model in uns['iml_genomics']) to this .h5ad, readable by anndata and scanpy.")
@click.option("--quiet", is_flag=True, help="Only warnings and errors on stderr (as iml-genomics -q).")
@click.option("--verbose", is_flag=True, help="Debug messages on stderr.")
def run(config_path, config_option, out, force, steps, n_jobs, scheduler, dry_run, max_memory, write_h5ad, quiet,
        verbose):
    """Run the whole pipeline from one YAML config.

    \b
    The config names the data (data.expression, data.labels,
    data.label_column) and, for the report, report.gene_sets. Steps whose
    outputs are complete and whose inputs and config are unchanged are
    skipped (fingerprints in OUT/run_state.json); --force redoes them.
    \b
    Example:
      iml-genomics run configs/demo.yaml --out results/demo
      iml-genomics run configs/demo.yaml --out results/demo --write-h5ad results/demo.h5ad
      iml-genomics run --config configs/demo.yaml --out results/demo
    """
    from iml_genomics.cli.common import config_argument

    config_path = config_argument(config_path, config_option)
    from iml_genomics import pipeline as pl
    from iml_genomics.cli import configure_logging
    from iml_genomics.cli.common import echo_warnings, resolve_config
    from iml_genomics.config import load_config
    from iml_genomics.errors import ConfigError, ResourceError
    from iml_genomics.steps.run import run_pipeline

    from iml_genomics.cli import common

    if quiet or verbose:
        configure_logging(quiet or common.QUIET, verbose)
    # validated (model.params, --jobs, scheduler contacted) as every subcommand does
    cfg = resolve_config(config_path, overrides={"n_jobs": n_jobs, "parallel.scheduler": scheduler})
    if cfg.parallel.scheduler:
        from iml_genomics.cli.common import make_backend

        make_backend(cfg)  # an unreachable scheduler: one line, exit 2, before any step runs or writes
    if cfg.data.expression is None:
        raise ConfigError(f"{config_path}: `run` needs data.expression (and data.labels unless the labels are "
                          f"in the .h5ad obs); add them to the config.")
    expression = pl.resolve_input(cfg.data.expression, "expression", config_path)
    pl.resolve_input(cfg.data.labels, "labels", config_path)
    if cfg.report.gene_sets:
        pl.resolve_input(cfg.report.gene_sets, "gene_sets", config_path)
    available = _available_steps()
    wanted = [s.strip() for s in steps.split(",")] if steps else list(available)
    unknown = [s for s in wanted if s not in pl.STEPS]
    if unknown:
        raise ConfigError(f"--steps: unknown step '{unknown[0]}'; choose from {', '.join(pl.STEPS)}.")
    wanted = [s for s in pl.STEPS if s in wanted and s in available]

    n_samples, n_genes = pl.peek_shape(expression, genes_as_rows=cfg.data.orientation == "genes_x_samples")
    # a dry run times this machine now (a short probe) so that its times are this machine's, not the calibration
    # machine's; a real run records the calibration machine's estimates in its provenance, next to its timings
    slowdown = pl.machine_slowdown() if dry_run else 1.0
    estimates = pl.estimate_resources(cfg, n_samples, n_genes, n_jobs=cfg.n_jobs, nnz=pl.peek_nnz(expression),
                                      slowdown=slowdown)
    limit = pl.parse_memory(max_memory) if max_memory else None
    if dry_run or limit is not None:
        lines = [f"{'step':<8} {'peak memory':>12} {'time':>8}  work"]
        lines += [f"{e.step:<8} {pl.format_bytes(e.peak_memory_bytes):>12} {e.seconds:>7.0f}s  {e.work}"
                  for e in estimates if e.step in wanted]
        if dry_run:
            click.echo("\n".join(lines))
            # on stderr: stdout stays the table that scripts read
            common.echo_summary(f"run --dry-run: times are for this machine now, which ran a timing probe "
                                f"{slowdown:.2f}x as long as the machine the estimates were calibrated on "
                                f"(docs/benchmarks.md)")
        over = [e for e in estimates if e.step in wanted and limit is not None and e.peak_memory_bytes > limit]
        if over:
            raise ResourceError(f"step '{over[0].step}' is estimated at {pl.format_bytes(over[0].peak_memory_bytes)}, "
                                f"over --max-memory {max_memory}; lower preprocess.top_k_variable, --jobs or "
                                f"select.n_draws, or run on a larger node.")
        if dry_run:
            return
    from iml_genomics.sparse_input import resource_warning

    # a cohort too big for its config: say so before hours are spent (the memory refusal above is opt-in)
    too_big = resource_warning(estimates, steps=wanted)
    if too_big:
        echo_warnings([too_big])

    # the steps get the file's config with --jobs/--scheduler applied (the report runs with the file's as is)
    result = run_pipeline(load_config(config_path), out=out, config_path=config_path, steps=wanted, force=force,
                          n_jobs=n_jobs, scheduler=scheduler, estimates=estimates,
                          echo=common.echo_summary, warn=echo_warnings, write_h5ad=write_h5ad)
    report = result.out / "report" / "report.html"
    common.echo_summary(f"run: {', '.join(wanted)} complete in {result.out}"
                        + (f"; open {report}" if report.is_file() else ""))
