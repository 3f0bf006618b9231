# iml-genomics as a Snakemake workflow: one rule per subcommand, one set of rules per cohort.
#
#   pip install -e ".[workflow]"                          # snakemake itself comes with this extra
#   snakemake --cores 2                                   # all cohorts in configs/snakemake.yaml
#   snakemake --cores 2 --configfile my_cohorts.yaml      # your own cohorts
#   snakemake --cores 2 --use-conda                       # each rule in envs/iml-genomics.yaml
#   snakemake --profile configs/slurm                     # on SLURM (snakemake-executor-plugin-slurm)
#
# Each cohort entry names an iml-genomics YAML config (docs/config.md) and its data files.
# Outputs go to {results}/{cohort}/{train,explain,select,report}/; logs to {results}/logs/;
# run times and peak memory (Snakemake's benchmark files) to {results}/benchmarks/.
# Every command writes its outputs atomically and exits non-zero on failure, so Snakemake's
# incomplete-output detection and --rerun-incomplete work as usual.
#
# What reruns after an edit (docs/pipeline.md "Snakemake"): every data file a step reads (matrix,
# labels, GMT, gene map, group file) is an input, so editing one reruns the steps that read it.
# The cohort's YAML config is deliberately NOT an input: each rule carries, as its `settings`
# param, the config sections its step reads (STEP_SECTIONS), so editing report.top_k reruns only
# report, and editing model.name reruns train and everything after it. This relies on Snakemake's
# params rerun trigger, on by default (--rerun-triggers mtime params input software-env code).

import json
import os
import re
import sys

import yaml
from snakemake.settings.types import DeploymentMethod

configfile: "configs/snakemake.yaml"

RESULTS = config.get("results", "results")
COHORTS = config["cohorts"]
STEPS = config.get("steps", ["train", "explain", "select", "report"])
ENV = "envs/iml-genomics.yaml"
if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method:
    # --use-conda: the environment's python, with this checkout's package on its path
    # (braces doubled: the rules' shell strings are formatted by Snakemake once more)
    IML = f'PYTHONPATH="{workflow.basedir}${{{{PYTHONPATH:+:$PYTHONPATH}}}}" python -m iml_genomics'
else:
    # The Python that runs Snakemake also runs iml-genomics: no PATH surprises on cluster nodes.
    IML = f'"{sys.executable}" -m iml_genomics'

# Config sections each step reads (n_jobs and parallel are left out: results do not depend on them).
# A section a step reads but that is missing here would not rerun that step when edited
# (tests/test_snakemake_rules.py checks the reruns after GMT, report, model and select edits).
STEP_SECTIONS = {
    "train": ["seed", "task", "data", "preprocess", "model", "cv", "output"],
    "explain": ["seed", "task", "data", "preprocess", "model", "cv", "explain", "output"],
    # the model section only with select.statistic "model" (see settings())
    "select": ["seed", "task", "data", "preprocess", "select"],
    # explain.samples is the default of report.samples
    "report": ["seed", "task", "data", "explain", "report", "output"],
}
_COHORT_CONFIGS = {}


def rule_mem_mb(step):
    """A rule's mem_mb: the step's `iml-genomics run --dry-run` estimate for the cohort, x attempt.

    Under a cluster executor, threads or memory beyond the largest node are an error here (SLURM would
    keep the job PENDING). config `mem_first_share: {step: 0.5}` starts lower (docs/pipeline.md#on-a-cluster).
    """
    from iml_genomics.cluster import rule_mem_mb as mem

    share = float(config.get("mem_first_share", {}).get(step, 1.0))
    return lambda wc, threads, attempt: mem(COHORTS[wc.cohort], step, threads=threads, attempt=attempt,
                                            first_share=share, partition=config.get("slurm_partition"),
                                            check_node=workflow.non_local_exec)


def rule_runtime(step, floor_minutes):
    """A rule's runtime (minutes): 4x the step's `iml-genomics run --dry-run` time estimate for the cohort, at
    least floor_minutes, x attempt (iml_genomics.cluster.rule_runtime)."""
    from iml_genomics.cluster import rule_runtime as runtime

    return lambda wc, threads, attempt: runtime(COHORTS[wc.cohort], step, threads=threads, attempt=attempt,
                                                floor_minutes=floor_minutes)


def cohort(wildcards):
    return COHORTS[wildcards.cohort]


def cohort_config(name):
    """The cohort's iml-genomics YAML config as a dict (read once per Snakemake run)."""
    if name not in _COHORT_CONFIGS:
        path = COHORTS[name]["config"]
        try:
            with open(path, encoding="utf-8") as handle:
                loaded = yaml.safe_load(handle)
        except (OSError, yaml.YAMLError) as exc:
            raise WorkflowError(f"cohort {name}: cannot read its config {path}: {exc}")
        _COHORT_CONFIGS[name] = loaded if isinstance(loaded, dict) else {}
    return _COHORT_CONFIGS[name]


def settings(step):
    """Param function: the config sections `step` reads, as canonical JSON (the rerun trigger)."""

    def get(wildcards):
        cfg = cohort_config(wildcards.cohort)
        keys = list(STEP_SECTIONS[step])
        if step == "select" and (cfg.get("select") or {}).get("statistic") == "model":
            keys.append("model")  # the W statistic is then the configured model's importance
        # an absent section is left out (not null): adding a section here reruns nothing that did not set it
        return json.dumps({key: cfg[key] for key in keys if key in cfg}, sort_keys=True, default=str)

    return get


def config_path(wildcards):
    return COHORTS[wildcards.cohort]["config"]


def data_inputs(wildcards):
    c = cohort(wildcards)
    files = {"expression": c["expression"]}
    if c.get("labels"):
        files["labels"] = c["labels"]
    return files


def select_inputs(wildcards):
    files = data_inputs(wildcards)
    sel = cohort_config(wildcards.cohort).get("select") or {}
    if sel.get("groups") == "file" and sel.get("group_file"):
        files["group_file"] = sel["group_file"]
    return files


def labels_arg(wildcards):
    c = cohort(wildcards)
    return f'--labels "{c["labels"]}"' if c.get("labels") else ""


def report_file(wildcards, key):
    """The cohort entry's gene_sets / gene_map / alias_map, else the config's report.<key>."""
    return COHORTS[wildcards.cohort].get(key) or (cohort_config(wildcards.cohort).get("report") or {}).get(key)


def report_inputs(wildcards):
    d = f"{RESULTS}/{wildcards.cohort}"
    files = {"train": f"{d}/train/model.json"}
    if "explain" in STEPS:
        files["explain"] = f"{d}/explain/gene_ranking.tsv"
    if "select" in STEPS:
        files["select"] = f"{d}/select/knockoff_selection.tsv"
    for key in ("gene_sets", "gene_map", "alias_map"):  # an edited file redoes the report
        if report_file(wildcards, key):
            files[key] = report_file(wildcards, key)
    return files


def report_option(key, option):
    def get(wildcards):
        path = report_file(wildcards, key)
        return f'{option} "{path}"' if path else ""

    return get


def report_step_dirs(wildcards, input):
    return " ".join(f'"{os.path.dirname(input[k])}"' for k in ("train", "explain", "select") if k in input.keys())


rule all:
    input:
        expand(f"{RESULTS}/{{cohort}}/report/report.html", cohort=list(COHORTS)) if "report" in STEPS else
        expand(f"{RESULTS}/{{cohort}}/{{step}}/provenance.json", cohort=list(COHORTS), step=STEPS),


# output.granularity: aggregate writes no per-sample file (oof_predictions.tsv, attributions.parquet,
# local_explanations.tsv): such cohorts run as train_aggregate / explain_aggregate, which do not declare them.
def _aggregate(name):
    return (cohort_config(name).get("output") or {}).get("granularity") == "aggregate"


def _cohort_pattern(names):
    return "|".join(re.escape(n) for n in names) if names else "(?!)"


AGGREGATE = _cohort_pattern([n for n in COHORTS if _aggregate(n)])
PER_SAMPLE = _cohort_pattern([n for n in COHORTS if not _aggregate(n)])


rule train:
    input:
        unpack(data_inputs),
    output:
        model=f"{RESULTS}/{{cohort}}/train/model.json",
        skops=f"{RESULTS}/{{cohort}}/train/model.skops",
        metrics=f"{RESULTS}/{{cohort}}/train/cv_metrics.tsv",
        summary=f"{RESULTS}/{{cohort}}/train/cv_summary.tsv",
        oof=f"{RESULTS}/{{cohort}}/train/oof_predictions.tsv",
        provenance=f"{RESULTS}/{{cohort}}/train/provenance.json",
    wildcard_constraints:
        cohort=PER_SAMPLE,
    log:
        f"{RESULTS}/logs/{{cohort}}/train.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{cohort}}/train.tsv"
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=rule_mem_mb("train"),
        runtime=rule_runtime("train", 60),  # minutes
    params:
        config=config_path,
        settings=settings("train"),
        labels=labels_arg,
        out=lambda wc: f"{RESULTS}/{wc.cohort}/train",
    shell:
        f'{IML} train --config "{{params.config}}" --expression "{{input.expression}}" {{params.labels}} '
        f'--out "{{params.out}}" --jobs {{threads}} 2> "{{log}}"'


rule explain:
    input:
        unpack(data_inputs),
        model=f"{RESULTS}/{{cohort}}/train/model.json",
        skops=f"{RESULTS}/{{cohort}}/train/model.skops",
    output:
        ranking=f"{RESULTS}/{{cohort}}/explain/gene_ranking.tsv",
        attributions=f"{RESULTS}/{{cohort}}/explain/attributions.parquet",
        local=f"{RESULTS}/{{cohort}}/explain/local_explanations.tsv",
        interactions=f"{RESULTS}/{{cohort}}/explain/interactions.tsv",
        summary=f"{RESULTS}/{{cohort}}/explain/explain_summary.json",
        provenance=f"{RESULTS}/{{cohort}}/explain/provenance.json",
    wildcard_constraints:
        cohort=PER_SAMPLE,
    log:
        f"{RESULTS}/logs/{{cohort}}/explain.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{cohort}}/explain.tsv"
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=rule_mem_mb("explain"),
        runtime=rule_runtime("explain", 120),  # minutes
    params:
        config=config_path,
        settings=settings("explain"),
        labels=labels_arg,
        model=lambda wc: f"{RESULTS}/{wc.cohort}/train",
        out=lambda wc: f"{RESULTS}/{wc.cohort}/explain",
    shell:
        f'{IML} explain --config "{{params.config}}" --model "{{params.model}}" --expression "{{input.expression}}" '
        f'{{params.labels}} --out "{{params.out}}" --jobs {{threads}} 2> "{{log}}"'


use rule train as train_aggregate with:
    output:
        model=f"{RESULTS}/{{cohort}}/train/model.json",
        skops=f"{RESULTS}/{{cohort}}/train/model.skops",
        metrics=f"{RESULTS}/{{cohort}}/train/cv_metrics.tsv",
        summary=f"{RESULTS}/{{cohort}}/train/cv_summary.tsv",
        provenance=f"{RESULTS}/{{cohort}}/train/provenance.json",
    wildcard_constraints:
        cohort=AGGREGATE,
    benchmark:
        f"{RESULTS}/benchmarks/{{cohort}}/train.tsv"


use rule explain as explain_aggregate with:
    output:
        ranking=f"{RESULTS}/{{cohort}}/explain/gene_ranking.tsv",
        interactions=f"{RESULTS}/{{cohort}}/explain/interactions.tsv",
        summary=f"{RESULTS}/{{cohort}}/explain/explain_summary.json",
        provenance=f"{RESULTS}/{{cohort}}/explain/provenance.json",
    wildcard_constraints:
        cohort=AGGREGATE,
    benchmark:
        f"{RESULTS}/benchmarks/{{cohort}}/explain.tsv"


rule select:
    input:
        unpack(select_inputs),
    output:
        selection=f"{RESULTS}/{{cohort}}/select/knockoff_selection.tsv",
        summary=f"{RESULTS}/{{cohort}}/select/select_summary.json",
        provenance=f"{RESULTS}/{{cohort}}/select/provenance.json",
    log:
        f"{RESULTS}/logs/{{cohort}}/select.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{cohort}}/select.tsv"
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=rule_mem_mb("select"),
        runtime=rule_runtime("select", 120),  # minutes
    params:
        config=config_path,
        settings=settings("select"),
        labels=labels_arg,
        out=lambda wc: f"{RESULTS}/{wc.cohort}/select",
    shell:
        f'{IML} select --config "{{params.config}}" --expression "{{input.expression}}" {{params.labels}} '
        f'--out "{{params.out}}" --jobs {{threads}} 2> "{{log}}"'


# gene_sets.tsv exists only with gene sets, and Snakemake's outputs cannot depend on the
# cohort: cohorts with a GMT (in their entry or their config's report.gene_sets) go to
# `report_gene_sets`, which declares it, the others to `report`.
def _has_gene_sets(name):
    return bool(COHORTS[name].get("gene_sets") or (cohort_config(name).get("report") or {}).get("gene_sets"))


WITH_SETS = _cohort_pattern([n for n in COHORTS if _has_gene_sets(n)])
WITHOUT_SETS = _cohort_pattern([n for n in COHORTS if not _has_gene_sets(n)])
REPORT_SHELL = (f'{IML} report --config "{{params.config}}" --inputs {{params.inputs}} {{params.gene_sets}} '
                f'{{params.gene_map}} --out "{{params.out}}" 2> "{{log}}"')


rule report:
    input:
        unpack(report_inputs),
    output:
        html=f"{RESULTS}/{{cohort}}/report/report.html",
        biomarkers=f"{RESULTS}/{{cohort}}/report/biomarkers.tsv",
        summary=f"{RESULTS}/{{cohort}}/report/report_summary.json",
        provenance=f"{RESULTS}/{{cohort}}/report/provenance.json",
    wildcard_constraints:
        cohort=WITHOUT_SETS,
    log:
        f"{RESULTS}/logs/{{cohort}}/report.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{cohort}}/report.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=rule_mem_mb("report"),
        runtime=rule_runtime("report", 20),  # minutes
    params:
        config=config_path,
        settings=settings("report"),
        inputs=report_step_dirs,
        gene_sets=report_option("gene_sets", "--gene-sets"),
        gene_map=report_option("gene_map", "--gene-map"),
        out=lambda wc: f"{RESULTS}/{wc.cohort}/report",
    shell:
        REPORT_SHELL


use rule report as report_gene_sets with:
    output:
        html=f"{RESULTS}/{{cohort}}/report/report.html",
        biomarkers=f"{RESULTS}/{{cohort}}/report/biomarkers.tsv",
        gene_sets=f"{RESULTS}/{{cohort}}/report/gene_sets.tsv",
        summary=f"{RESULTS}/{{cohort}}/report/report_summary.json",
        provenance=f"{RESULTS}/{{cohort}}/report/provenance.json",
    wildcard_constraints:
        cohort=WITH_SETS,
    benchmark:
        f"{RESULTS}/benchmarks/{{cohort}}/report.tsv"
