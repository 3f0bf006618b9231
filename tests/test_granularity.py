"""output.granularity: aggregate writes no per-sample value anywhere (issue 16, item 4).

The whole pipeline (`run`, with --write-h5ad) runs on the demo twice, aggregate and full, and every file it
writes is scanned for the cohort's sample ids: TSV/JSON/HTML as text, Parquet through pandas, the zip of
model.skops member by member, the .h5ad through anndata. The same scan finds the ids in the full run (so the
scan can fail), and none in the aggregate run. The .h5ad is the cohort itself, so its obs names are the
cohort's ids by construction; what is scanned there is everything the run attached (obs columns, obsm, uns, var).
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import CONFIGS, TEST_DATA, one_line, run_cli_inprocess

SAMPLE_IDS = pd.read_csv(TEST_DATA / "demo_labels.tsv", sep="\t", dtype=str)["sample_id"].tolist()
# whole ids only (S0001 must not match inside S00012)
ID_PATTERN = re.compile(r"(?<![A-Za-z0-9_])(" + "|".join(map(re.escape, SAMPLE_IDS)) + r")(?![A-Za-z0-9_])")


def _h5ad_text(path: Path) -> str:
    """Everything the run attached to the cohort's .h5ad, as text (obs names and X are the input itself)."""
    import anndata as ad

    adata = ad.read_h5ad(path)
    parts = [adata.obs.to_csv(index=False), adata.var.to_csv(), " ".join(adata.obsm.keys())]

    def walk(value):
        if isinstance(value, dict):
            for k, v in value.items():
                parts.append(str(k))
                walk(v)
        elif isinstance(value, (bytes, bytearray)):
            parts.append(value.decode("utf-8", errors="replace"))
        else:
            parts.append(str(value.tolist() if hasattr(value, "tolist") else value))

    walk(dict(adata.uns))
    for key in adata.obsm:
        parts.append(f"obsm:{key}")
    return "\n".join(parts)


def file_text(path: Path) -> str:
    """A written file as text, decoded the way its format needs."""
    if path.suffix == ".parquet":
        return pd.read_parquet(path).to_csv()
    if path.suffix == ".skops" or zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            return "\n".join(z.read(name).decode("utf-8", errors="replace") for name in z.namelist())
    if path.suffix == ".h5ad":
        return _h5ad_text(path)
    return path.read_bytes().decode("utf-8", errors="replace")


def scan(paths) -> dict[str, str]:
    """File -> first sample id found in it (files without any are left out)."""
    found = {}
    for path in paths:
        match = ID_PATTERN.search(file_text(path))
        if match:
            found[path.name if path.suffix == ".h5ad" else str(path)] = match.group(1)
    return found


def _config(tmp_path: Path, granularity: str | None) -> Path:
    raw = yaml.safe_load((CONFIGS / "demo.yaml").read_text())
    for key in ("expression", "labels"):
        raw["data"][key] = str(TEST_DATA / Path(raw["data"][key]).name)
    raw["report"]["gene_sets"] = str(TEST_DATA / Path(raw["report"]["gene_sets"]).name)
    raw["n_jobs"] = 2
    if granularity is not None:
        raw["output"] = {"granularity": granularity}
        raw["explain"]["samples"] = []  # refused in aggregate mode (tested below)
    path = tmp_path / f"{granularity or 'default'}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("granularity")
    out = {}
    for mode in ("aggregate", None):
        cfg = _config(base, mode)
        target = base / (mode or "full")
        run_cli_inprocess("run", cfg, "--out", target, "--write-h5ad", base / f"{mode or 'full'}.h5ad")
        out[mode or "full"] = (target, base / f"{mode or 'full'}.h5ad")
    return out


def _files(target: Path, h5ad: Path) -> list[Path]:
    files = [p for p in target.rglob("*") if p.is_file() and not p.name.startswith(".iml-lock")]
    return sorted(files) + [h5ad]


def test_full_run_writes_sample_ids_so_the_scan_can_fail(runs):
    target, h5ad = runs["full"]
    found = scan(_files(target, h5ad))
    names = {Path(f).name for f in found}
    # the per-sample files of a full run, each found by the scan
    assert {"oof_predictions.tsv", "attributions.parquet", "local_explanations.tsv", "full.h5ad"} <= names, names
    import anndata as ad

    assert "shap" in ad.read_h5ad(h5ad).obsm


def test_aggregate_run_writes_no_sample_id_anywhere(runs):
    target, h5ad = runs["aggregate"]
    files = _files(target, h5ad)
    kinds = {p.suffix for p in files}
    assert {".tsv", ".json", ".parquet", ".html", ".skops", ".h5ad"} - kinds <= {".parquet"}, kinds
    assert scan(files) == {}
    for name in ("oof_predictions.tsv", "attributions.parquet", "local_explanations.tsv",
                 "group_attributions.parquet"):
        assert not list(target.rglob(name)), name
    import anndata as ad

    adata = ad.read_h5ad(h5ad)
    assert "shap" not in adata.obsm and list(adata.obs.columns) == ["condition"]
    # what was withheld, and why, is said
    summary = json.loads((target / "explain" / "explain_summary.json").read_text())
    assert {"attributions.parquet", "local_explanations.tsv"} <= set(summary["withheld"]["files"])
    assert "third party" in summary["withheld"]["reason"]
    prov = json.loads((target / "train" / "provenance.json").read_text())
    assert prov["withheld"]["files"] == ["oof_predictions.tsv"]
    # the aggregate outputs are still there: the ranking, the CV metrics, the report
    ranking = pd.read_csv(target / "explain" / "gene_ranking.tsv", sep="\t")
    assert ranking["mean_abs_shap"].notna().sum() > 0
    assert (target / "report" / "report.html").stat().st_size > 1000


def test_aggregate_rerun_is_up_to_date(runs):
    """The files aggregate never writes do not make `run` think the steps are incomplete."""
    target, _ = runs["aggregate"]
    proc = run_cli_inprocess("run", target.parent / "aggregate.yaml", "--out", target)
    assert "up to date" in proc.stderr or "skipped" in proc.stderr, proc.stderr
    state = json.loads((target / "run_state.json").read_text())
    assert set(state) >= {"train", "explain", "select", "report"}


def test_aggregate_refuses_explain_samples(tmp_path):
    raw = yaml.safe_load((CONFIGS / "demo.yaml").read_text())
    raw["output"] = {"granularity": "aggregate"}  # demo.yaml has explain.samples: [S0001, S0002]
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    proc = run_cli_inprocess("run", cfg, "--out", tmp_path / "out", check=False)
    one_line(proc, 2, "explain.samples", "aggregate")
    assert not (tmp_path / "out").exists()


def test_parquet_scan_reads_values_not_bytes(tmp_path):
    """A compressed Parquet hides ids from a byte search; the scan decodes it."""
    path = tmp_path / "x.parquet"
    pd.DataFrame({"sample_id": SAMPLE_IDS[:50], "v": range(50)}).to_parquet(path, compression="zstd")
    assert scan([path]) == {str(path): SAMPLE_IDS[0]}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("schema.json", json.dumps({"ids": SAMPLE_IDS[3:4] * 100}))
    (tmp_path / "m.skops").write_bytes(buffer.getvalue())
    assert scan([tmp_path / "m.skops"]) == {str(tmp_path / "m.skops"): SAMPLE_IDS[3]}
