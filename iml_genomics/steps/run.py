"""`run` as a plain function: train -> explain -> select -> report composed in memory.

Unlike the other step modules this one writes files: it is the pipeline, and each step's directory under
``OUT`` is written with the same writers the subcommands use (:mod:`iml_genomics.io.step_outputs`), under
the same output guards and locks, so a step's files are the same bytes whichever path wrote them. The
cohort is read once (and only when some step actually runs), each input file is hashed once (the digests
serve the fingerprints and every provenance record), and the fitted model and the results are handed to
the next step in memory. A step skipped as up to date whose result is needed downstream is read back from
its directory. No click here: the CLI (``iml_genomics.cli.run``) parses, resolves and calls.
"""

from __future__ import annotations

import copy
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from iml_genomics.progress import silenced
from iml_genomics.progress import step as progress_step

log = logging.getLogger("iml_genomics.run")


@dataclass
class RunResult:
    """What :func:`run_pipeline` did.

    Attributes
    ----------
    out : Path
        The run's output directory.
    steps : list of str
        The steps asked for, in pipeline order.
    ran, skipped : list of str
        Steps run in this call, and steps skipped as up to date.
    adata : anndata.AnnData or None
        The cohort as loaded once for the steps (None when no step needed it).
    results : dict
        Step -> in-memory result (:class:`~iml_genomics.steps.TrainResult`, ...) of the steps that ran.
    state : dict
        ``run_state.json`` as written.
    """

    out: Path
    steps: list
    ran: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    adata: object = None
    results: dict = field(default_factory=dict)
    state: dict = field(default_factory=dict)


class _Inputs:
    """The run's input files, each hashed at most once (resolved path -> sha256)."""

    def __init__(self, paths):
        self.sha256: dict[str, str] = {}
        for p in paths:
            if p is not None and Path(p).is_file():
                self.digest(p)

    def digest(self, path) -> str:
        from iml_genomics.io.writers import file_sha256

        key = os.path.realpath(path)
        if key not in self.sha256:
            self.sha256[key] = file_sha256(path)
        return self.sha256[key]


def _tag(exc: BaseException, step: str) -> None:
    """Name the step an error or interruption happened in, so its one line says `iml-genomics STEP:`."""
    if getattr(exc, "iml_command", None) is None:
        try:
            exc.iml_command = step
        except AttributeError:  # a few builtin exception types take no attributes
            pass


def _step_cfg(cfg, n_jobs, scheduler):
    """The config train/explain/select run with: the file's, with --jobs and --scheduler applied."""
    cfg = copy.deepcopy(cfg)
    cfg.override("n_jobs", n_jobs, source="option --jobs")
    cfg.override("parallel.scheduler", scheduler, source="command line")
    return cfg


def _check_step_dirs(out: Path, wanted, names_of, inputs) -> None:
    """Refuse, before any work, a step directory that is a link or a file, another step's, or one whose
    output names collide (the same one-line refusals the step's own guard gives later)."""
    from iml_genomics.errors import OutputConflictError
    from iml_genomics.io.writers import LISTING, OutputGuard, read_listing

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
            listing, problem = read_listing(step_dir)
            if listing is not None and listing["step"] != step:
                raise OutputConflictError(f"{step_dir}: holds the outputs of 'iml-genomics {listing['step']}' "
                                          f"(see {LISTING}); `run` writes '{step}' there. Move it away or choose "
                                          f"another --out.")
            guard = OutputGuard(step_dir, step, inputs=[p for p in inputs if p is not None])
            guard.check_names(names_of[step], listing, problem)


def _step_args(step: str, config_path, data, out: Path, n_jobs, scheduler, gene_sets, inputs) -> list[str]:
    """The subcommand line that writes the same files as this step of `run` (logged with --verbose)."""
    cohort = ["--expression", str(data.expression)] + (["--labels", str(data.labels)] if data.labels else [])
    common = ["--config", str(config_path)] if config_path else []
    if n_jobs is not None:
        common += ["--jobs", str(n_jobs)]
    if scheduler:
        common += ["--scheduler", scheduler]
    if step == "train":
        return [step, *common, *cohort, "--out", str(out / "train")]
    if step == "explain":
        return [step, *common, *cohort, "--model", str(out / "train"), "--out", str(out / "explain")]
    if step == "select":
        return [step, *common, *cohort, "--out", str(out / "select")]
    args = [step, *(["--config", str(config_path)] if config_path else []), "--inputs", *map(str, inputs),
            "--out", str(out / "report")]
    return args + (["--gene-sets", str(gene_sets)] if gene_sets else [])


def run_pipeline(cfg, *, out, config_path=None, steps=None, force: bool = False, n_jobs: int | None = None,
                 scheduler: str | None = None, estimates=None, echo: Callable[[str], None] | None = None,
                 warn: Callable[[list], None] | None = None, progress: bool = True,
                 write_h5ad=None) -> RunResult:
    """Run train -> explain -> select -> report into ``out``, skipping steps that are up to date.

    Parameters
    ----------
    cfg : iml_genomics.config.Config
        The config as the file says (``data.expression`` and, unless the labels are in the .h5ad obs,
        ``data.labels`` set; paths relative to the working directory). ``n_jobs`` and ``scheduler`` are
        applied to train, explain and select (the report is single-process and runs with ``cfg`` as is).
    out : path
        Output directory; each step writes ``OUT/<step>/``, the run ``run_state.json`` and ``provenance.json``.
    config_path : path, optional
        The YAML ``cfg`` was read from, recorded in every provenance.json.
    steps : list of str, optional
        Subset of ``train, explain, select, report`` (any order; run in pipeline order). None = all.
    force : bool
        Redo every step even when its fingerprint and files say it is up to date.
    n_jobs : int, optional
        Parallel workers (``--jobs``); None = the config's. Results never depend on it.
    scheduler : str, optional
        dask.distributed scheduler address (``--scheduler``); None = the config's.
    estimates : list of iml_genomics.pipeline.StepEstimate, optional
        Resource estimates, recorded in ``OUT/provenance.json``.
    echo : callable, optional
        Receives each step's one-line summary (the subcommand's line); default: stderr.
    warn : callable, optional
        Receives a list of one-line warnings; default: stderr.
    progress : bool
        Show the steps' progress as :mod:`iml_genomics.progress` is configured (a bar per phase on a
        terminal or in a notebook, timestamped lines in a log); False: none during this run.
    write_h5ad : path, optional
        Also write the cohort with every result of the run attached (``iml_genomics.tl.attach_results``: per-gene
        columns in ``var``, SHAP values in ``obsm``, tables, summaries and the model in
        ``uns["iml_genomics"]``) to this ``.h5ad``; results of steps skipped as up to date are read back from
        their directories. An existing file is replaced only when this run directory's ``run_state.json``
        records having written it with the same sha256.

    Returns
    -------
    RunResult
        The loaded cohort and the in-memory results (the place ``--write-h5ad`` takes them from).

    Raises
    ------
    iml_genomics.errors.IMLGenomicsError
        Bad input or config, an output conflict, a busy directory; the exception's ``iml_command``
        attribute names the step it happened in (also set on interruptions).
    """
    from iml_genomics import pipeline as pl
    from iml_genomics.errors import ConfigError
    from iml_genomics.io.writers import output_guard

    echo = echo or (lambda line: print(line, file=sys.stderr))
    warn = warn or (lambda lines: [print(line, file=sys.stderr) for line in lines])
    if cfg.data.expression is None:
        raise ConfigError(f"{config_path or 'config'}: `run` needs data.expression (and data.labels unless the "
                          f"labels are in the .h5ad obs); add them to the config.")
    source = config_path or "config"
    expression = pl.resolve_input(cfg.data.expression, "expression", source)
    labels = pl.resolve_input(cfg.data.labels, "labels", source)
    gene_sets = pl.resolve_input(cfg.report.gene_sets, "gene_sets", source) if cfg.report.gene_sets else None
    gene_map = Path(cfg.report.gene_map) if cfg.report.gene_map else None
    wanted = list(pl.STEPS) if steps is None else [s for s in pl.STEPS if s in steps]
    unknown = [s for s in (steps or ()) if s not in pl.STEPS]
    if unknown:
        raise ConfigError(f"--steps: unknown step '{unknown[0]}'; choose from {', '.join(pl.STEPS)}.")
    step_cfg = _step_cfg(cfg, n_jobs, scheduler)
    if cfg.model.candidates and "train" in wanted:
        # model.candidates: the comparison of those models runs with train, into OUT/compare, before report
        wanted.insert(wanted.index("report") if "report" in wanted else len(wanted), "compare")
        from iml_genomics.compare import check_tuning

        try:
            check_tuning(step_cfg, step_cfg.task)  # a bad grid fails before a large matrix is read
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("config:", f"{source}:", 1)) from None
    if "select" in wanted:
        from iml_genomics.steps.select import check_select_config

        check_select_config(step_cfg, source=str(source))  # fail before reading a large matrix
    out = Path(out)
    from iml_genomics.pipeline import OUTPUT_NAMES

    run_inputs = [config_path, expression, labels, gene_sets, gene_map]
    with output_guard(out, "run", names=OUTPUT_NAMES["run"], inputs=run_inputs,
                      on_interrupt=f"steps finished before it are kept in {out} (the next run skips them)"):
        _check_step_dirs(out, wanted, OUTPUT_NAMES, run_inputs)
        if write_h5ad is not None:
            check_h5ad_target(write_h5ad, out)  # before any step runs
        run = _Run(cfg, step_cfg, config_path, out, wanted, force, n_jobs, scheduler, estimates, echo, warn,
                   progress, expression, labels, gene_sets, gene_map)
        run.write_h5ad = Path(write_h5ad) if write_h5ad is not None else None
        return run.execute()


class _Run:
    """One call of :func:`run_pipeline`, inside the run's output guard."""

    def __init__(self, cfg, step_cfg, config_path, out, wanted, force, n_jobs, scheduler, estimates, echo, warn,
                 progress, expression, labels, gene_sets, gene_map):
        self.cfg, self.step_cfg, self.config_path, self.out = cfg, step_cfg, config_path, out
        self.wanted, self.force, self.n_jobs, self.scheduler = wanted, force, n_jobs, scheduler
        self.estimates, self.echo, self.warn, self.progress = estimates or [], echo, warn, progress
        self.expression, self.labels, self.gene_sets, self.gene_map = expression, labels, gene_sets, gene_map
        group_file = step_cfg.select.group_file if step_cfg.select.groups == "file" else None
        self.group_file = group_file
        # every input hashed once, up front: fingerprints and provenance records share these digests
        self.hashes = _Inputs([config_path, expression, labels, gene_sets, gene_map, group_file])
        self.adata = None
        self.results: dict = {}
        self._backend = None
        self._oof = None  # train's out-of-fold predictions (kept in memory for explain's audit)

    def backend(self):
        """One backend for every step of the run (one connection to a Dask scheduler, made when a step runs)."""
        if self._backend is None:
            from iml_genomics.parallel import Backend

            self._backend = Backend.from_config(self.step_cfg)
        return self._backend

    # -- the cohort, read once and only when a step needs it ----------------------------------------------
    def cohort(self, to_run):
        if self.adata is not None:
            return self.adata
        from iml_genomics.io import infer_task, load_cohort, prepare_target
        from iml_genomics.io.cohort import check_variation, resolve_positive_class

        cfg, data = self.step_cfg, self.step_cfg.data
        # the strictest reader among the steps that run: train/select need labels (train also enough
        # samples per class for its folds); explain and report read the cohort without requiring them
        require = any(s in to_run for s in ("train", "select", "compare"))
        adata = load_cohort(data.expression, labels=data.labels, label_column=data.label_column,
                            sample_id_column=data.sample_id_column,
                            genes_as_rows=data.orientation == "genes_x_samples", layer=data.layer,
                            drop_unmatched=data.drop_unmatched, covariates=data.covariates,
                            require_labels=require, positive_class=data.positive_class,
                            sensitive=data.sensitive)
        if require:
            check_variation(adata, str(data.expression))
        # the label checks of the train/select subcommands (explain and report alone make none)
        if require and data.label_column is not None and data.label_column in adata.obs.columns:
            y = adata.obs[data.label_column]
            where = str(data.labels or data.expression)
            cv_steps = "train" in to_run or "compare" in to_run
            _, classes = prepare_target(y, infer_task(y, cfg.task), n_splits=cfg.cv.n_splits if cv_steps
                                        else 2, source=where, column=data.label_column)
            _, warning = resolve_positive_class(classes, cfg.data.positive_class, source=where,
                                                column=data.label_column)
            if warning:
                self.warn([warning])
            if "explain" in to_run and "train" in to_run:
                from iml_genomics.sparse_input import check_explainable

                # a model SHAP cannot explain is refused before training, not after it
                check_explainable(cfg, infer_task(y, cfg.task), classes)
        self.adata = adata
        return adata

    # -- the loop -----------------------------------------------------------------------------------------
    def execute(self) -> RunResult:
        from iml_genomics import pipeline as pl
        from iml_genomics.io.writers import Provenance, remove_leftovers

        out, wanted = self.out, self.wanted
        state = pl.read_run_state(out / "run_state.json")
        resolved = self.step_cfg.to_dict()
        step_inputs = {"train": [self.expression, self.labels], "explain": [self.expression, self.labels],
                       "select": [self.expression, self.labels], "report": [self.gene_sets, self.gene_map],
                       "compare": [self.expression, self.labels]}
        if self.step_cfg.report.alias_map:  # an edited alias table redoes the report
            step_inputs["report"].append(Path(self.step_cfg.report.alias_map))
        prov = Provenance("run", resolved, {"expression": self.expression, "labels": self.labels,
                                            "config": self.config_path}, known_sha256=self.hashes.sha256)
        fingerprints: dict[str, str] = {}
        plan = []
        for step in wanted:
            upstream = {u: fingerprints.get(u) or state.get(u, {}).get("fingerprint") for u in pl.UPSTREAM[step]}
            fp = pl.step_fingerprint(step, resolved, step_inputs[step], upstream, known_sha256=self.hashes.sha256)
            fingerprints[step] = fp
            done = state.get(step, {}).get("fingerprint") == fp and pl.outputs_complete(
                step, out / step, resolved.get("output", {}).get("granularity", "full"))
            plan.append((step, fp, done and not self.force))
        to_run = [step for step, _, skip in plan if not skip]
        result = RunResult(out=out, steps=list(wanted))
        for index, (step, fp, skip) in enumerate(plan, start=1):
            if skip:
                # a run killed while it re-did this step (another seed, say) left its staging here; we hold
                # OUT's lock, so no other writer is inside the step directory
                remove_leftovers(out / step)
                log.info("[%d/%d] %s: up to date, skipped", index, len(wanted), step)
                prov.timings[step] = 0.0
                result.skipped.append(step)
                continue
            log.info("[%d/%d] %s: running", index, len(wanted), step)
            started = time.perf_counter()
            try:
                # labels read "explain: SHAP values"; no progress at all when the caller said so
                with progress_step(step), silenced(not self.progress):
                    getattr(self, f"_{step}")(to_run)
            except BaseException as exc:
                _tag(exc, step)
                raise
            seconds = round(time.perf_counter() - started, 3)
            prov.timings[step] = seconds
            # recorded only after the step's outputs were moved into place, so a
            # killed run redoes exactly the step it was in
            state[step] = {"fingerprint": fp, "seconds": seconds,
                           "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            self._write_state(state)
            log.info("[%d/%d] %s: done in %.1f s", index, len(wanted), step, seconds)
            result.ran.append(step)
        prov.extra["steps"] = {s: state.get(s) for s in wanted}
        prov.extra["estimates"] = {e.step: {"peak_memory_bytes": e.peak_memory_bytes, "work": e.work, "seconds": e.seconds}
                                   for e in self.estimates}
        if self.write_h5ad is not None:
            state["h5ad"] = self._write_cohort_h5ad(to_run)
        self._write_state(state, prov)
        result.adata, result.results, result.state = self.adata, dict(self.results), state
        return result

    # -- --write-h5ad -------------------------------------------------------------------------------------
    def _write_cohort_h5ad(self, to_run) -> dict:
        """The cohort with every result of the run attached, written atomically; its run_state.json record."""
        from iml_genomics.io.writers import file_sha256
        from iml_genomics.tl import attach_results

        adata = self.cohort(to_run or ["explain"]).copy()  # explain's reader: labels not required
        adata.uns.pop("sources", None)  # absolute paths of this machine; provenance has the inputs
        found = {step: self.results.get(step) or self._load_result(step)
                 for step in ("train", "explain", "select", "report") if step in self.wanted}
        report = found.pop("report", None)
        attach_results(adata, train=found.get("train"), explain=found.get("explain"), select=found.get("select"),
                       gene_sets=_gene_set_result(report) if report is not None else None, config=self.step_cfg)
        target = self.write_h5ad
        check_h5ad_target(target, self.out)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            adata.write_h5ad(tmp)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                tmp.unlink()
        self.echo(f"run: wrote the cohort with every result attached to {target}")
        return {"path": str(target.resolve()), "sha256": file_sha256(target)}

    def _load_result(self, step):
        """A step's result read back from its directory (a step this call skipped as up to date)."""
        from iml_genomics.report.inputs import load_inputs

        directory = self.out / step
        if step == "report":
            return _read_report_dir(directory)
        inputs = load_inputs([directory])
        prov = inputs.provenance.get(step, {}).get("extra", {}).get("cohort") or {}
        if step == "train":
            from iml_genomics.models import load_bundle
            from iml_genomics.steps.train import TrainResult

            pipeline, manifest = load_bundle(directory)
            manifest = {k: v for k, v in manifest.items() if k not in ("model_file", "model_sha256")}
            return TrainResult(cv_metrics=inputs.cv_metrics, oof_predictions=inputs.oof, model=pipeline,
                               manifest=manifest, task=manifest["task"], classes=manifest.get("classes"),
                               positive_class=manifest.get("positive_class"), gene_ids=list(manifest["gene_ids"]),
                               used_genes=list(manifest.get("used_genes") or []), cohort=prov)
        summary = inputs.explain_summary if step == "explain" else inputs.select_summary
        common = {"task": prov.get("task"), "classes": prov.get("classes"),
                  "positive_class": summary.get("positive_class", prov.get("positive_class")), "cohort": prov}
        if step == "select":
            from iml_genomics.steps.select import SelectResult

            return SelectResult(selection=inputs.knockoffs, summary=summary, gene_ids=list(self.adata.var_names),
                                tested_genes=[], **common)
        from iml_genomics.steps.explain import ExplainResult

        result = ExplainResult(ranking=inputs.gene_ranking, local=inputs.local, interactions=inputs.interactions,
                               summary=summary, sample_ids=list(self.adata.obs_names),
                               gene_ids=list(self.adata.var_names), **common)
        result.set_attribution_table(inputs.attributions)
        return result

    def _write_state(self, state: dict, prov=None) -> None:
        """run_state.json (and provenance.json at the end) through the same guarded commit as every output."""
        from iml_genomics.io.writers import staged_output, write_json

        with staged_output(self.out) as stage:
            write_json(state, stage / "run_state.json")
            if prov is not None:
                prov.write(stage)

    def _debug_command(self, step, inputs=()):
        log.debug("iml-genomics %s", " ".join(_step_args(step, self.config_path, self.cfg.data, self.out,
                                                         self.n_jobs, self.scheduler, self.cfg.report.gene_sets,
                                                         inputs)))

    def _guard(self, step, *, reads=()):
        """The step's own guard (its directory's lock, a shared lock on OUT), as the subcommand takes it."""
        import contextlib

        from iml_genomics.pipeline import OUTPUT_NAMES
        from iml_genomics.io.writers import check_step_dir, output_guard, reading_step_dirs

        stack = contextlib.ExitStack()
        files = [self.expression if step != "report" else None, self.labels if step != "report" else None,
                 self.config_path, *((self.gene_sets, self.gene_map) if step == "report" else ())]
        stack.enter_context(reading_step_dirs(reads))
        for d in reads:
            # a step directory whose commit was interrupted may mix two runs: refuse it as input
            check_step_dir(d)
        stack.enter_context(output_guard(self.out / step, step, names=OUTPUT_NAMES[step],
                                         inputs=[*(f for f in files if f is not None), *reads]))
        return stack

    def _provenance(self, step, cfg_dict, inputs):
        from iml_genomics.io.writers import Provenance

        return Provenance(step, cfg_dict, inputs, known_sha256=self.hashes.sha256)

    # -- the steps ----------------------------------------------------------------------------------------
    def _cohort_step(self, name, to_run, run_step, write, phase):
        """Train and compare: guard, provenance of the cohort's files, read the cohort, run, warn, write staged.

        Returns the step's result and its output directory.
        """
        from iml_genomics.io.writers import staged_output

        cfg, data, target = self.step_cfg, self.step_cfg.data, self.out / name
        with self._guard(name):
            prov = self._provenance(name, cfg.to_dict(), {"expression": data.expression, "labels": data.labels,
                                                          "config": self.config_path})
            adata = self.cohort(to_run)
            prov.mark("read")
            res = run_step(adata, cfg, backend=self.backend())
            self.warn(res.warnings)
            prov.mark(phase)
            with staged_output(target) as stage:
                write(stage, res, prov)
        return res, target

    def _train(self, to_run):
        from iml_genomics.io.step_outputs import train_line, write_train
        from iml_genomics.steps.train import train as train_step

        self._debug_command("train")
        res, target = self._cohort_step("train", to_run, train_step, write_train, "cross_validate_and_fit")
        self._oof = res.oof_predictions  # the audit of data.sensitive reads it, whatever the granularity
        self._withhold(res)
        self.results["train"] = res
        self.echo(train_line(res, self.step_cfg, target))

    def _explain(self, to_run):
        from iml_genomics.io.step_outputs import attribution_writer, explain_line, write_explain
        from iml_genomics.io.writers import staged_output
        from iml_genomics.steps.explain import AttributionCollector, explain as explain_step, explain_config

        self._debug_command("explain")
        model_dir, target, data = self.out / "train", self.out / "explain", self.step_cfg.data
        with self._guard("explain", reads=[model_dir]):
            trained = self.results.get("train")
            if trained is not None:
                model = (trained.model, trained.manifest)  # handed over in memory, not read back
            else:
                from iml_genomics.models import load_bundle

                model = load_bundle(model_dir)
            source = f"{model_dir}/model.json"
            cfg = explain_config(model[1], self.cfg, source=source)
            cfg.override("n_jobs", self.n_jobs, source="option --jobs")
            cfg.override("parallel.scheduler", self.scheduler, source="command line")
            prov = self._provenance("explain", cfg.to_dict(), {
                "model": model_dir / "model.skops", "expression": data.expression, "labels": data.labels,
                "config": self.config_path})
            adata = self.cohort(to_run)
            prov.mark("read")
            keep = (AttributionCollector() if "report" in to_run or self.write_h5ad is not None  # the report
                    else None)  # and the .h5ad read the attributions too
            with staged_output(target) as stage:
                writer = attribution_writer(stage, adata.obs_names, prov)

                def sink(chunk, plan):
                    writer(chunk, plan)
                    if keep is not None:
                        keep(chunk, plan)
                sink.set_sample_ids = writer.set_sample_ids  # explain.max_samples: the subsample's ids
                try:
                    res = explain_step(adata, cfg, model=model, on_chunk=sink, model_source=source,
                                       backend=self.backend(), oof=self._oof)
                finally:
                    writer.close()
                self.warn(res.warnings)
                prov.mark("explain")
                write_explain(stage, res, prov)
        if keep is not None and keep.plan is not None:
            res.attributions, res.base_values, res.model_output = keep.arrays()
            res.attribution_genes, res.attribution_classes = list(keep.plan.gene_ids), list(keep.plan.outputs)
        self._withhold(res)
        self.results["explain"] = res
        self.echo(explain_line(res, adata, target))

    def _withhold(self, res) -> None:
        """output.granularity aggregate: the report and --write-h5ad get no per-sample value either."""
        from iml_genomics.granularity import is_aggregate, withhold_per_sample

        if is_aggregate(self.step_cfg):
            withhold_per_sample(res)

    def _select(self, to_run):
        from iml_genomics.io.step_outputs import select_line, write_select
        from iml_genomics.io.writers import staged_output
        from iml_genomics.steps.select import select as select_step

        self._debug_command("select")
        cfg, data, target = self.step_cfg, self.step_cfg.data, self.out / "select"
        with self._guard("select"):
            prov = self._provenance("select", cfg.to_dict(), {
                "expression": data.expression, "labels": data.labels, "config": self.config_path,
                "group_file": self.group_file})
            adata = self.cohort(to_run)
            groups = None
            if self.group_file:
                from iml_genomics.io.readers import read_gene_groups

                groups = read_gene_groups(self.group_file)
            prov.mark("read")
            res = select_step(adata, cfg, groups=groups, groups_source=self.group_file, backend=self.backend())
            self.warn(res.warnings)
            prov.mark("knockoffs")
            with staged_output(target) as stage:
                write_select(stage, res, prov)
        self.results["select"] = res
        self.echo(select_line(res, target))

    def _compare(self, to_run):
        from iml_genomics.io.step_outputs import compare_line, write_compare
        from iml_genomics.steps.compare import compare as compare_step

        res, target = self._cohort_step("compare", to_run, compare_step, write_compare, "cross_validate_models")
        self.results["compare"] = res
        self.echo(compare_line(res, target))

    def _report(self, to_run):
        from iml_genomics import genesets as gs
        from iml_genomics.io.step_outputs import report_line, write_report
        from iml_genomics.io.writers import staged_output
        from iml_genomics.report import ReportInputs, cohort_paths, load_inputs, measured_genes
        from iml_genomics.report.inputs import read_json
        from iml_genomics.steps.report import report as report_step

        cfg, rc, target = self.cfg, self.cfg.report, self.out / "report"
        dirs = [self.out / s for s in ("train", "explain", "select", "compare") if (self.out / s).is_dir()
                and (s != "compare" or "compare" in self.wanted)]
        self._debug_command("report", dirs)
        with self._guard("report", reads=dirs):
            # results of this call are used from memory; a step skipped as up to date is read from its directory
            in_memory = {s: self.results[s] for s in ("train", "explain", "select") if s in self.results}
            from_disk = [d for d in dirs if d.name not in in_memory]
            inputs = load_inputs(from_disk) if from_disk else ReportInputs()
            recorded = {s: (self.out / s, read_json(self.out / s / "provenance.json")) for s in in_memory}
            # what the report subcommand would find: the recorded provenance of every input directory
            view = ReportInputs(dirs=dict(inputs.dirs), provenance=dict(inputs.provenance))
            for s, (d, doc) in recorded.items():
                view.dirs[s], view.provenance[s] = d, doc
            paths = cohort_paths(view)
            prov = self._provenance("report", cfg.to_dict(), {
                **{f"inputs_{s}": str(view.dirs[s]) for s in ("train", "explain", "select", "compare")
                   if s in view.dirs},
                "gene_sets": rc.gene_sets, "gene_map": rc.gene_map,
                "expression": paths["expression"], "labels": paths["labels"], "config": self.config_path})
            prov.mark("read_inputs")
            adata = self.cohort(to_run) if paths["expression"] else None
            collection = gs.read_gmt(rc.gene_sets) if rc.gene_sets else None
            genes = [str(g) for g in adata.var_names] if adata is not None else measured_genes(view)
            from iml_genomics.gene_ids import load_gene_map

            gene_table = load_gene_map(rc.gene_map, genes, id_column=rc.gene_map_id_column,
                                       symbol_column=rc.gene_map_symbol_column, alias_map=rc.alias_map)
            prov.mark("read_cohort_and_gene_sets")
            res = report_step(adata, cfg, inputs=inputs, **in_memory, collection=collection, gene_map=gene_table,
                              positive_class=cfg.data.positive_class,
                              own_provenance={"command line": " ".join(sys.argv), "seed": cfg.seed,
                                              "gene sets": rc.gene_sets, "gene map": rc.gene_map,
                                              "expression": paths["expression"], "labels": paths["labels"]},
                              recorded=recorded)
            self.warn(res.warnings)
            prov.mark("analyse")
            with staged_output(target) as stage:
                write_report(stage, res, prov)
        self.results["report"] = res
        self.echo(report_line(res, target))


def check_h5ad_target(path, out) -> None:
    """Refuse a ``--write-h5ad`` target that is not ours to replace (one line, before any work).

    Raises
    ------
    iml_genomics.errors.OutputConflictError
        The path is a directory or a symbolic link, its directory does not exist, or a file is there that
        ``OUT/run_state.json`` does not record as written by this run directory (same sha256).
    """
    from iml_genomics import pipeline as pl
    from iml_genomics.errors import OutputConflictError
    from iml_genomics.io.writers import file_sha256

    path = Path(path)
    if path.is_symlink() or path.is_dir():
        raise OutputConflictError(f"{path}: --write-h5ad needs a file path, and this is a "
                                  f"{'symbolic link' if path.is_symlink() else 'directory'}; choose another path.")
    if not path.parent.is_dir():
        raise OutputConflictError(f"{path}: its directory {path.parent} does not exist; create it or choose another "
                                  f"--write-h5ad path.")
    if path.exists():
        record = pl.read_run_state(Path(out) / "run_state.json").get("h5ad") or {}
        if record.get("path") != str(path.resolve()) or record.get("sha256") != file_sha256(path):
            raise OutputConflictError(f"{path}: exists and was not written by `run --out {out}` (or was changed "
                                      f"since); move it away or choose another --write-h5ad path.")


def _read_report_dir(directory: Path):
    """The gene-set part of a report directory (gene_sets.tsv, group_attributions.parquet, report_summary.json)."""
    import pandas as pd

    from iml_genomics.report.inputs import read_json, read_tsv

    summary = read_json(directory / "report_summary.json")
    table = read_tsv(directory / "gene_sets.tsv")
    groups = directory / "group_attributions.parquet"
    return {"gene_sets": table, "group_attributions": pd.read_parquet(groups) if groups.is_file() else None,
            "summary": summary}


def _gene_set_result(report):
    """The GeneSetResult of a report (in memory, or as read back by :func:`_read_report_dir`)."""
    from iml_genomics.steps.report import GeneSetResult

    if isinstance(report, dict):
        table, groups, summary = report["gene_sets"], report["group_attributions"], report["summary"]
    else:
        table, groups, summary = report.gene_sets, report.group_attributions, report.summary
    block = summary.get("gene_sets") or {}
    return GeneSetResult(table=table, group_attributions=groups, summary=block, keys=None,
                         positive_class=block.get("positive_class", summary.get("positive_class")), warnings=[])
