# iml-genomics as a Snakemake workflow: one rule per subcommand, one set of rules per cohort.
#
#   snakemake --cores 2                                   # all cohorts in configs/snakemake.yaml
#   snakemake --cores 2 --configfile my_cohorts.yaml      # your own cohorts
#   snakemake --profile configs/slurm                     # on SLURM (snakemake-executor-plugin-slurm)
#
# Each cohort entry names an iml-genomics YAML config (docs/config.md) and its data files.
# Outputs go to {results}/{cohort}/{train,explain,select,report}/; logs to {results}/logs/.
# Every command writes its outputs atomically and exits non-zero on failure, so Snakemake's
# incomplete-output detection and --rerun-incomplete work as usual.

import os
import sys

configfile: "configs/snakemake.yaml"

RESULTS = config.get("results", "results")
COHORTS = config["cohorts"]
STEPS = config.get("steps", ["train", "explain", "select", "report"])
# The Python that runs Snakemake also runs iml-genomics: no PATH surprises on cluster nodes.
IML = f'"{sys.executable}" -m iml_genomics'


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


def cohort(wildcards):
    return COHORTS[wildcards.cohort]


def data_inputs(wildcards):
    c = cohort(wildcards)
    files = {"config": c["config"], "expression": c["expression"]}
    if c.get("labels"):
        files["labels"] = c["labels"]
    return files


def labels_arg(wildcards):
    c = cohort(wildcards)
    return f'--labels "{c["labels"]}"' if c.get("labels") else ""


def report_inputs(wildcards):
    d = f"{RESULTS}/{wildcards.cohort}"
    files = {"train": f"{d}/train/model.json"}
    if "explain" in STEPS:
        files["explain"] = f"{d}/explain/gene_ranking.tsv"
    if "select" in STEPS:
        files["select"] = f"{d}/select/knockoff_selection.tsv"
    return files


rule all:
    input:
        expand(f"{RESULTS}/{{cohort}}/report/report.html", cohort=list(COHORTS)) if "report" in STEPS else
        expand(f"{RESULTS}/{{cohort}}/{{step}}/provenance.json", cohort=list(COHORTS), step=STEPS),


rule train:
    input:
        unpack(data_inputs),
    output:
        model=f"{RESULTS}/{{cohort}}/train/model.json",
        skops=f"{RESULTS}/{{cohort}}/train/model.skops",
        metrics=f"{RESULTS}/{{cohort}}/train/cv_metrics.tsv",
        oof=f"{RESULTS}/{{cohort}}/train/oof_predictions.tsv",
        provenance=f"{RESULTS}/{{cohort}}/train/provenance.json",
    log:
        f"{RESULTS}/logs/{{cohort}}/train.log",
    threads: 2
    resources:
        mem_mb=rule_mem_mb("train"),
        runtime=lambda wc, attempt: 60 * attempt,  # minutes
    params:
        labels=labels_arg,
        out=lambda wc: f"{RESULTS}/{wc.cohort}/train",
    shell:
        '{IML} train --config "{input.config}" --expression "{input.expression}" {params.labels} '
        '--out "{params.out}" --jobs {threads} 2> "{log}"'


rule explain:
    input:
        unpack(data_inputs),
        model=f"{RESULTS}/{{cohort}}/train/model.json",
        skops=f"{RESULTS}/{{cohort}}/train/model.skops",
    output:
        ranking=f"{RESULTS}/{{cohort}}/explain/gene_ranking.tsv",
        attributions=f"{RESULTS}/{{cohort}}/explain/attributions.parquet",
        summary=f"{RESULTS}/{{cohort}}/explain/explain_summary.json",
        provenance=f"{RESULTS}/{{cohort}}/explain/provenance.json",
    log:
        f"{RESULTS}/logs/{{cohort}}/explain.log",
    threads: 2
    resources:
        mem_mb=rule_mem_mb("explain"),
        runtime=lambda wc, attempt: 120 * attempt,  # minutes
    params:
        labels=labels_arg,
        model=lambda wc: f"{RESULTS}/{wc.cohort}/train",
        out=lambda wc: f"{RESULTS}/{wc.cohort}/explain",
    shell:
        '{IML} explain --config "{input.config}" --model "{params.model}" --expression "{input.expression}" '
        '{params.labels} --out "{params.out}" --jobs {threads} 2> "{log}"'


rule select:
    input:
        unpack(data_inputs),
    output:
        selection=f"{RESULTS}/{{cohort}}/select/knockoff_selection.tsv",
        summary=f"{RESULTS}/{{cohort}}/select/select_summary.json",
        provenance=f"{RESULTS}/{{cohort}}/select/provenance.json",
    log:
        f"{RESULTS}/logs/{{cohort}}/select.log",
    threads: 2
    resources:
        mem_mb=rule_mem_mb("select"),
        runtime=lambda wc, attempt: 120 * attempt,  # minutes
    params:
        labels=labels_arg,
        out=lambda wc: f"{RESULTS}/{wc.cohort}/select",
    shell:
        '{IML} select --config "{input.config}" --expression "{input.expression}" {params.labels} '
        '--out "{params.out}" --jobs {threads} 2> "{log}"'


rule report:
    input:
        unpack(report_inputs),
        config=lambda wc: COHORTS[wc.cohort]["config"],
    output:
        html=f"{RESULTS}/{{cohort}}/report/report.html",
        biomarkers=f"{RESULTS}/{{cohort}}/report/biomarkers.tsv",
        provenance=f"{RESULTS}/{{cohort}}/report/provenance.json",
    log:
        f"{RESULTS}/logs/{{cohort}}/report.log",
    threads: 1
    resources:
        mem_mb=rule_mem_mb("report"),
        runtime=lambda wc, attempt: 20 * attempt,  # minutes
    params:
        inputs=lambda wc, input: " ".join(f'"{os.path.dirname(p)}"' for k, p in input.items() if k != "config"),
        gene_sets=lambda wc: f'--gene-sets "{COHORTS[wc.cohort]["gene_sets"]}"' if COHORTS[wc.cohort].get("gene_sets") else "",
        gene_map=lambda wc: f'--gene-map "{COHORTS[wc.cohort]["gene_map"]}"' if COHORTS[wc.cohort].get("gene_map") else "",
        out=lambda wc: f"{RESULTS}/{wc.cohort}/report",
    shell:
        '{IML} report --config "{input.config}" --inputs {params.inputs} {params.gene_sets} {params.gene_map} '
        '--out "{params.out}" 2> "{log}"'
