"""The README's examples run as printed, top to bottom, on a fresh copy of the repository (issue 17 item 6).

Rules for turning the README into commands (the README promises nothing more):
- the shell (```bash) and Python (```python) blocks run in the order printed; a trailing backslash joins lines,
  ``# ...`` ends a command;
- installation (``python3 -m venv``, ``. .venv/bin/activate``, ``pip install``) is already done in the test's
  environment and dropped; the test-suite command (``python -m pytest``) is this very suite and dropped;
- ``snakemake --profile`` needs a cluster (skipped without ``sbatch``), ``snakemake`` needs snakemake.

The default suite checks the commands statically (each one parses with the CLI's own options, and every
directory or file it reads was written by an earlier command or ships with the repository) and runs the cheap
ones (dry runs); ``-m slow`` runs them all.
"""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parents[1]
SETUP = (re.compile(r"^python3? -m venv\b"), re.compile(r"^\. \.venv/bin/activate$"), re.compile(r"^pip install\b"))
SUITE = re.compile(r"^python -m pytest\b")
# options whose value is read (must exist by then) and the option that names what a command writes
READS = ("--model", "--inputs", "--truth", "--ranking", "--selection", "--expression", "--labels",
         "--gene-sets", "--gene-map", "--config")


def readme_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced bash/python block, in order."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"```(bash|python)\n(.*?)```", text, re.S)]


def shell_commands(body: str) -> list[str]:
    """The commands of a bash block: continuations joined, comments cut, setup and the suite dropped."""
    joined = re.sub(r"\\\n\s*", " ", body)
    commands = []
    for line in joined.splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split("&&")]
        parts = [p for p in parts if not any(r.match(p) for r in SETUP) and not SUITE.match(p)]
        if parts:
            commands.append(" && ".join(parts))
    return commands


def readme_steps(text: str) -> list[tuple[str, str]]:
    steps = []
    for lang, body in readme_blocks(text):
        if lang == "python":
            steps.append(("python", body))
        else:
            steps.extend(("bash", c) for c in shell_commands(body))
    return steps


def _iml_args(command: str) -> list[str] | None:
    words = shlex.split(command)
    return words[1:] if words and words[0] == "iml-genomics" else None


def _option_values(args: list[str], name: str) -> list[str]:
    values, i = [], 0
    while i < len(args):
        if args[i] == name:
            i += 1
            while i < len(args) and not args[i].startswith("--"):
                values.append(args[i])
                if name != "--inputs":
                    break
                i += 1
            continue
        if args[i].startswith(name + "="):
            values.append(args[i].split("=", 1)[1])
        i += 1
    return values


def dependency_problems(steps, root: Path) -> list[str]:
    """Commands that read a path no earlier command wrote and the repository does not ship."""
    written: list[str] = []
    problems = []
    for lang, command in steps:
        if lang == "python":
            for path in re.findall(r"read_h5ad\(\"([^\"]+)\"\)", command):
                if not (root / path).exists() and not any(path.startswith(w) for w in written):
                    problems.append(f"python block reads {path}, which nothing before it writes")
            continue
        args = _iml_args(command)
        if args is None:
            continue
        for option in READS:
            for value in _option_values(args, option):
                inside = any(value.rstrip("/") == w or value.startswith(w + "/") for w in written)
                if not inside and not (root / value).exists():
                    problems.append(f"'{command[:60]}...' reads {value}, which nothing before it writes")
        outs = _option_values(args, "--out")
        written.extend(o.rstrip("/") for o in outs)
    return problems


def test_readme_commands_parse_with_the_cli():
    from iml_genomics.cli import main

    steps = readme_steps((ROOT / "README.md").read_text())
    checked = 0
    for lang, command in steps:
        args = _iml_args(command) if lang == "bash" else None
        if args is None:
            continue
        sub = main.get_command(click.Context(main), args[0]) if hasattr(main, "get_command") else None
        assert sub is not None, f"README: unknown subcommand in '{command}'"
        # parsing only: every option, the comma lists and `run --config` are accepted as printed
        with sub.make_context(args[0], list(args[1:]), resilient_parsing=False) as ctx:
            assert ctx.params is not None
        checked += 1
    assert checked >= 12, checked


def test_readme_order_every_input_exists_first():
    steps = readme_steps((ROOT / "README.md").read_text())
    assert dependency_problems(steps, ROOT) == []


def test_order_check_catches_a_report_before_explain():
    # negative control: the README of issue 17 reported on Golub before explaining it and evaluated a
    # simulation nothing had analysed
    bad = """```bash
iml-genomics train --config configs/golub.yaml --expression test_data/golub_expression.tsv.gz \\
    --labels test_data/golub_labels.tsv --out results/golub/train
iml-genomics report --inputs results/golub/train results/golub/explain --out results/golub/report
iml-genomics simulate --family pathway --out sim/
iml-genomics evaluate --truth sim/simulated_truth.tsv --ranking results/sim/explain/gene_ranking.tsv \\
    --out results/sim/evaluate
```"""
    problems = dependency_problems(readme_steps(bad), ROOT)
    assert len(problems) == 2 and "results/golub/explain" in problems[0] and "results/sim/explain" in problems[1]


def _fresh_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "clone"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(".git", "results", ".venv", ".snakemake", "__pycache__",
                                                              ".pytest_cache", "*.egg-info"))
    return copy


def _run_step(lang: str, command: str, cwd: Path):
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    if lang == "python":
        proc = subprocess.run([sys.executable, "-c", command], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=900)
    else:
        # 'iml-genomics' is the console script of an installed package; run this copy's module instead
        line = re.sub(r"(^|&& )iml-genomics ", rf"\1{shlex.quote(sys.executable)} -m iml_genomics ", command)
        proc = subprocess.run(["bash", "-c", line], cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"README example failed (exit {proc.returncode}): {command}\n{proc.stderr[-2000:]}"
    return proc


def _runnable(command: str) -> str | None:
    """Why a README command cannot run here, or None."""
    if command.startswith("snakemake"):
        if "--profile" in command and shutil.which("sbatch") is None:
            return "needs a SLURM cluster"
        if shutil.which("snakemake") is None:
            return "snakemake is not installed"
    return None


def test_readme_cheap_examples_run(tmp_path):
    copy = _fresh_copy(tmp_path)
    cheap = [(lang, c) for lang, c in readme_steps((copy / "README.md").read_text())
             if lang == "bash" and "--dry-run" in c]
    assert cheap
    for lang, command in cheap:
        proc = _run_step(lang, command, copy)
        assert "peak memory" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_readme_examples_run_in_order_on_a_fresh_copy(tmp_path):
    copy = _fresh_copy(tmp_path)
    ran = []
    for lang, command in readme_steps((copy / "README.md").read_text()):
        if lang == "bash" and _runnable(command):
            continue
        _run_step(lang, command, copy)
        ran.append(command)
    assert (copy / "results/golub/report/report.html").is_file()
    assert (copy / "results/sim/evaluate/selection_metrics.tsv").is_file()
    assert (copy / "results/demo_explained.h5ad").is_file()
    # example outputs stay out of git
    proc = subprocess.run(["git", "check-ignore", "-q", "results/demo/report/report.html"], cwd=ROOT)
    assert proc.returncode == 0
