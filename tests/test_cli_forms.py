"""Command-line forms users reach for (issue 17 item 6): `run --config`, comma-separated lists."""

import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "iml_genomics", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def one_line_error(proc, *fragments):
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


def test_run_takes_config_as_option_or_argument(tmp_path):
    by_option = cli("run", "--config", "configs/demo.yaml", "--out", tmp_path / "a", "--dry-run")
    assert by_option.returncode == 0 and "400 samples x 400 genes" in by_option.stdout, by_option.stderr
    # the same file both ways is one config
    assert cli("run", "configs/demo.yaml", "--config", "./configs/demo.yaml", "--out", tmp_path / "a",
               "--dry-run").returncode == 0
    one_line_error(cli("run", "configs/demo.yaml", "--config", "configs/golub.yaml", "--out", tmp_path / "b"),
                   "two configs given", "configs/golub.yaml")
    one_line_error(cli("run", "--out", tmp_path / "c"), "missing the config", "run --config CONFIG")
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_simulate_format_comma_list(tmp_path):
    args = ("simulate", "--family", "gaussian", "--n-samples", "20", "--n-genes", "30", "--seed", "3")
    assert cli(*args, "--format", "parquet,h5ad", "--out", tmp_path / "comma").returncode == 0
    assert cli(*args, "--format", "parquet", "--format", "h5ad", "--out", tmp_path / "repeat").returncode == 0
    for name in ("simulated_expression.parquet", "simulated_expression.h5ad"):
        assert (tmp_path / "comma" / name).read_bytes() == (tmp_path / "repeat" / name).read_bytes()
    assert not (tmp_path / "comma" / "simulated_expression.csv.gz").exists()
    # a bad item is named; nothing written
    one_line_error(cli(*args, "--format", "parquet,xlsx", "--out", tmp_path / "bad"), "xlsx")
    assert not (tmp_path / "bad").exists()


def test_evaluate_k_comma_list(tmp_path):
    truth = tmp_path / "truth.tsv"
    truth.write_text("gene_id\n" + "".join(f"G{i}\n" for i in range(5)))
    ranking = tmp_path / "ranking.tsv"
    ranking.write_text("gene_id\trank\n" + "".join(f"G{i}\t{i + 1}\n" for i in range(0, 60, 2)))
    # commas and a repeated option mix
    comma = cli("evaluate", "--truth", truth, "--ranking", ranking, "--k", "2,5", "--k", "10", "--out",
                tmp_path / "comma")
    assert comma.returncode == 0, comma.stderr
    a = pd.read_csv(tmp_path / "comma" / "precision_at_k.tsv", sep="\t")
    assert sorted(a["k"].unique().tolist()) == [2, 5, 10]
    one_line_error(cli("evaluate", "--truth", truth, "--ranking", ranking, "--k", "10,0", "--out", tmp_path / "bad"),
                   "0")


def test_comma_separated_type_checks_every_item():
    import click

    from iml_genomics.cli.common import CommaSeparated, flatten

    kind = CommaSeparated(click.Choice(["parquet", "h5ad"]))
    assert kind.convert("parquet, h5ad", None, None) == ["parquet", "h5ad"]
    assert flatten([["parquet"], ["h5ad", "parquet"]]) == ("parquet", "h5ad")
    for bad, needle in ((",", "lists nothing"), ("parquet,xlsx", "xlsx")):
        try:
            kind.convert(bad, None, None)
        except click.BadParameter as exc:
            assert needle in str(exc)
        else:
            raise AssertionError(f"{bad!r} accepted")
