"""The Snakefile (issue 17 item 4): declared inputs and outputs, reruns limited to the steps an edit concerns.

One real Snakemake run of the demo cohort at a small config (train -> report; the full four steps in a slow
test); each test then edits one file, asks Snakemake's dry run which jobs it would run, and puts the file back.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, TEST_DATA

pytest.importorskip("snakemake")
SNAKEMAKE = [sys.executable, "-m", "snakemake"]

SMALL = """\
seed: 0
n_jobs: 1
task: classification
data:
  label_column: condition
model:
  name: l1_logistic
  params:
    C: 0.3
cv:
  n_splits: 2
explain:
  method: shap
  top_k: 10
select:
  fdr: 0.1
  n_draws: 1
report:
  min_set_size: 5
  top_k: 20
  n_permutations: 100
"""


def snakemake(work: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([*SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "-d", str(work), "--configfile",
                           str(work / "cohorts.yaml"), *args], capture_output=True, text=True, env=env, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def planned(work: Path) -> set[str]:
    """The rules a plain `snakemake` would run now (dry run), without the `all` target."""
    proc = snakemake(work, "-n")
    rules = set(re.findall(r"^(?:local)?rule (\w+):", proc.stdout + proc.stderr, flags=re.M))
    return rules - {"all"}


def make_workflow(work: Path, steps: list[str]) -> Path:
    shutil.copy(TEST_DATA / "demo_pathways.gmt", work / "sets.gmt")
    (work / "demo.yaml").write_text(SMALL)
    (work / "cohorts.yaml").write_text(yaml.safe_dump({
        "results": "res", "steps": steps,
        "cohorts": {"demo": {"config": "demo.yaml", "expression": str(TEST_DATA / "demo_expression.csv.gz"),
                             "labels": str(TEST_DATA / "demo_labels.tsv"), "gene_sets": "sets.gmt"}}}))
    snakemake(work, "--cores", "2")
    assert planned(work) == set()
    return work


@pytest.fixture(scope="module")
def small_workflow(tmp_path_factory):
    """train -> report only (the report reads any subset of steps): two commands, cheap enough for every run."""
    return make_workflow(tmp_path_factory.mktemp("snakemake_small"), ["train", "report"])


@pytest.fixture(scope="module")
def full_workflow(tmp_path_factory):
    return make_workflow(tmp_path_factory.mktemp("snakemake_full"), ["train", "explain", "select", "report"])


def editor(workflow):
    """edit(name, old, new): replace text in a workflow file; the original content is put back afterwards."""
    saved = {}

    def apply(name, old, new):
        path = workflow / name
        text = saved.setdefault(name, path.read_text())
        assert old in text
        path.write_text(text.replace(old, new, 1))

    yield apply
    for name, text in saved.items():
        (workflow / name).write_text(text)
    if set(saved) - {"demo.yaml"}:
        # a put-back data file is newer than the outputs: mark them up to date again (a config put back needs
        # nothing: the params are again those the outputs were made with)
        snakemake(workflow, "--touch", "--cores", "1")


@pytest.fixture
def edit(small_workflow):
    yield from editor(small_workflow)


@pytest.fixture
def edit_full(full_workflow):
    yield from editor(full_workflow)


def test_declared_outputs_exist_with_benchmarks_and_logs(small_workflow):
    res = small_workflow / "res"
    for rel in ("train/model.json", "train/model.skops", "train/cv_metrics.tsv", "train/oof_predictions.tsv",
                "report/report.html", "report/biomarkers.tsv", "report/gene_sets.tsv", "report/report_summary.json"):
        assert (res / "demo" / rel).is_file(), rel
    for step in ("train", "report"):
        header = (res / "benchmarks" / "demo" / f"{step}.tsv").read_text().splitlines()[0]
        assert header.split("\t")[:3] == ["s", "h:m:s", "max_rss"], header
        # the step's own stderr is the rule's log: a file, so timestamped progress lines, no \r, summary last
        log = (res / "logs" / "demo" / f"{step}.log").read_text()
        assert "\r" not in log and log.splitlines()[-1].startswith(f"{step}: "), log
    train_log = (res / "logs" / "demo" / "train.log").read_text()
    assert re.search(r"^\d{4}-\d\d-\d\dT\S+ iml-genomics INFO train: fitting CV folds 2/2 folds in \d+\.\d s$",
                     train_log, re.M), train_log


def test_editing_the_gmt_reruns_only_the_report(small_workflow, edit):
    edit("sets.gmt", "\n", "\nextra_set\tadded in a test\tG00001\tG00002\tG00003\tG00004\tG00005\n")
    assert planned(small_workflow) == {"report_gene_sets"}


def test_editing_a_report_key_reruns_only_the_report(small_workflow, edit):
    edit("demo.yaml", "  top_k: 20\n", "  top_k: 15\n")
    assert planned(small_workflow) == {"report_gene_sets"}


def test_editing_the_model_reruns_train_and_the_report(small_workflow, edit):
    edit("demo.yaml", "  name: l1_logistic\n", "  name: random_forest\n")
    assert planned(small_workflow) == {"train", "report_gene_sets"}


@pytest.mark.slow
def test_full_workflow_outputs_and_reruns(full_workflow, edit_full):
    res = full_workflow / "res" / "demo"
    for rel in ("explain/gene_ranking.tsv", "explain/attributions.parquet", "explain/local_explanations.tsv",
                "explain/interactions.tsv", "explain/explain_summary.json", "select/knockoff_selection.tsv",
                "select/select_summary.json"):
        assert (res / rel).is_file(), rel
    for step in ("explain", "select"):
        log = (full_workflow / "res" / "logs" / "demo" / f"{step}.log").read_text()
        assert re.search(rf"^\d{{4}}-\d\d-\d\dT\S+ iml-genomics INFO {step}: .* in \d+\.\d s$", log, re.M), log
    # select's lasso statistic does not read the model section
    edit_full("demo.yaml", "  name: l1_logistic\n", "  name: random_forest\n")
    assert planned(full_workflow) == {"train", "explain", "report_gene_sets"}
    edit_full("demo.yaml", "  fdr: 0.1\n", "  fdr: 0.2\n")  # applied to the original text: the model is back
    assert planned(full_workflow) == {"select", "report_gene_sets"}
    # results do not depend on n_jobs: no rerun
    (full_workflow / "demo.yaml").write_text(SMALL.replace("n_jobs: 1\n", "n_jobs: 2\n"))
    assert planned(full_workflow) == set()


def test_aggregate_cohorts_do_not_declare_per_sample_files(tmp_path):
    """output.granularity: aggregate writes no oof_predictions / attributions / local explanations: other rules."""
    (tmp_path / "cohorts.yaml").write_text(yaml.safe_dump({
        "results": "res", "cohorts": {
            name: {"config": f"{name}.yaml", "expression": str(TEST_DATA / "demo_expression.csv.gz"),
                   "labels": str(TEST_DATA / "demo_labels.tsv")} for name in ("full", "agg")}}))
    (tmp_path / "full.yaml").write_text(SMALL.replace("report:\n", "report:\n  gene_sets: null\n"))
    (tmp_path / "agg.yaml").write_text(SMALL + "output:\n  granularity: aggregate\n")
    proc = snakemake(tmp_path, "-n")
    jobs = re.findall(r"^rule (\w+):\n(?:    .*\n)*?    wildcards: cohort=(\w+)", proc.stdout, flags=re.M)
    assert sorted(jobs) == sorted([("train", "full"), ("explain", "full"), ("select", "full"), ("report", "full"),
                                   ("train_aggregate", "agg"), ("explain_aggregate", "agg"), ("select", "agg"),
                                   ("report", "agg")]), proc.stdout


def test_lint_is_clean():
    proc = subprocess.run([*SNAKEMAKE, "--lint", "-s", str(ROOT / "Snakefile"), "-d", str(ROOT)],
                          capture_output=True, text=True, timeout=300)
    assert "Congratulations, your workflow is in a good condition" in proc.stdout + proc.stderr, proc.stdout


def test_conda_environment_lists_every_runtime_dependency():
    """envs/iml-genomics.yaml (the rules' conda:) must not fall behind pyproject.toml's dependencies."""
    env = yaml.safe_load((ROOT / "envs" / "iml-genomics.yaml").read_text())
    listed = {re.split(r"[<>=! ]", dep, maxsplit=1)[0] for dep in env["dependencies"] if isinstance(dep, str)}
    listed |= {"matplotlib"} if "matplotlib-base" in listed else set()
    required = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=!\[ ;]", dep, maxsplit=1)[0].lower() for dep in required}
    assert names - listed == set(), names - listed
    rules = (ROOT / "Snakefile").read_text()
    assert rules.count("conda:\n        ENV") == 4 and "ENV = \"envs/iml-genomics.yaml\"" in rules
