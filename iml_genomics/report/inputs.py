"""Read the output directories of train, explain and select.

Each directory is recognised by its files, never by its name. Every table
is optional: the report uses whatever exists.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from iml_genomics.errors import InputDataError

# step -> files that identify its output directory (any one of them suffices)
MARKERS = {
    "train": ("cv_metrics.tsv", "cv_summary.tsv", "model.json", "oof_predictions.tsv"),
    "explain": ("gene_ranking.tsv", "attributions.parquet", "explain_summary.json"),
    "select": ("knockoff_selection.tsv", "select_summary.json"),
    "compare": ("model_comparison.tsv", "compare_summary.json"),
}

# file -> columns it must have (the input contracts of the other steps)
REQUIRED_COLUMNS = {
    "cv_metrics.tsv": ("split",),
    "cv_summary.tsv": ("metric", "mean", "sd"),
    "oof_predictions.tsv": ("sample_id", "y_true", "y_pred"),
    "gene_ranking.tsv": ("gene_id", "rank", "mean_abs_shap"),
    "local_explanations.tsv": ("sample_id", "gene_id", "shap_value"),
    "interactions.tsv": ("gene_id_1", "gene_id_2", "mean_abs_interaction"),
    "knockoff_selection.tsv": ("gene_id", "w", "selected"),
    "audit.tsv": ("attribute", "group", "quantity", "metric", "value", "n", "explains"),
    "model_comparison.tsv": ("rank", "model"),
    "robust_genes.tsv": ("gene_id", "n_models", "in_all_models"),
    "model_agreement.tsv": ("model_a", "model_b", "top_k_jaccard"),
}


# ReportInputs tables whose `explains` column io/step_outputs.py (and ig.get) append to the step results (which
# have none in memory), and the summaries it adds the key to: dropped when the report reads them, so a report
# from the directories is the report from memory, byte for byte (the page shows what they explain as badges)
WRITER_EXPLAINS = ("cv_metrics", "cv_summary", "oof", "gene_ranking", "local", "interactions", "knockoffs")
WRITER_EXPLAINS_KEYS = ("explain_summary", "select_summary")


def without_writer_explains(inputs: "ReportInputs") -> "ReportInputs":
    """``inputs`` (modified in place) without the ``explains`` columns and keys the step writers add."""
    for attr in WRITER_EXPLAINS:
        frame = getattr(inputs, attr, None)
        if frame is not None and "explains" in frame.columns:
            setattr(inputs, attr, frame.drop(columns="explains"))
    for attr in WRITER_EXPLAINS_KEYS:
        summary = getattr(inputs, attr, None)
        if isinstance(summary, dict) and "explains" in summary:
            setattr(inputs, attr, {k: v for k, v in summary.items() if k != "explains"})
    return inputs

# identifier columns are read as strings (a gene called '1' or 'NA' stays that gene)
TSV_DTYPES = {"gene_id": str, "sample_id": str, "gene_id_1": str, "gene_id_2": str}


@dataclass
class ReportInputs:
    """Everything the report found in its input directories (None when absent)."""

    dirs: dict[str, Path] = field(default_factory=dict)
    cv_metrics: pd.DataFrame | None = None
    # one row per metric (cv_summary.tsv; derived from the folds for a train directory of an older version)
    cv_summary: pd.DataFrame | None = None
    oof: pd.DataFrame | None = None
    model: dict | None = None
    provenance: dict[str, dict] = field(default_factory=dict)
    attributions: pd.DataFrame | None = None
    gene_ranking: pd.DataFrame | None = None
    local: pd.DataFrame | None = None
    interactions: pd.DataFrame | None = None
    explain_summary: dict | None = None
    # explain.methods outputs by file name (surrogate.tsv -> table, surrogate_rules.txt -> text)
    explain_methods: dict = field(default_factory=dict)
    explain_texts: dict = field(default_factory=dict)
    knockoffs: pd.DataFrame | None = None
    select_summary: dict | None = None
    # audit.tsv of explain (data.sensitive)
    audit: pd.DataFrame | None = None
    # compare: model_comparison.tsv, robust_genes.tsv, model_agreement.tsv, compare_summary.json
    compare_table: pd.DataFrame | None = None
    compare_robust: pd.DataFrame | None = None
    compare_agreement: pd.DataFrame | None = None
    compare_summary: dict | None = None

    @property
    def steps(self) -> list[str]:
        return sorted(self.dirs)


def read_tsv(path: Path) -> pd.DataFrame:
    name = path.name
    try:
        frame = pd.read_csv(path, sep="\t", keep_default_na=True, dtype=TSV_DTYPES)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else "no data"
        raise InputDataError(f"{path}: cannot parse table ({msg}).") from None
    missing = [c for c in REQUIRED_COLUMNS.get(name, ()) if c not in frame.columns]
    if missing:
        raise InputDataError(f"{path}: column '{missing[0]}' missing; found {', '.join(map(str, frame.columns))}. "
                             f"Re-run the step that wrote it.")
    return frame


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InputDataError(f"{path}: cannot read JSON ({str(exc)[:200]}). Re-run the step that wrote it.") from None
    if not isinstance(data, dict):
        # every file read here (model.json, provenance.json, summaries) is a JSON object; callers use .get
        raise InputDataError(f"{path}: must be a JSON object, got a {type(data).__name__}. "
                             f"Re-run the step that wrote it.")
    return data


def detect_step(directory: Path) -> str:
    """'train', 'explain', 'select' or 'compare' from the files in ``directory``."""
    if not directory.is_dir():
        raise InputDataError(f"{directory}: input directory not found. Pass output directories of "
                             f"train/explain/select to --inputs.")
    found = [step for step, files in MARKERS.items() if any((directory / f).is_file() for f in files)]
    if len(found) != 1:
        prov = directory / "provenance.json"
        if prov.is_file():
            step = read_json(prov).get("step")
            if step in MARKERS and (not found or step in found):
                return step
        if not found:
            expected = ", ".join(f[0] for f in MARKERS.values())
            raise InputDataError(f"{directory}: not an output directory of train, explain, select or compare "
                                 f"(none of {expected} found). Pass the --out directory of one of those steps.")
        raise InputDataError(f"{directory}: holds outputs of several steps ({', '.join(found)}); give each "
                             f"step its own output directory.")
    return found[0]


def load_inputs(directories) -> ReportInputs:
    """Read every recognised file of the given step output directories.

    Raises
    ------
    InputDataError
        A directory that is missing or unrecognisable, two directories of the
        same step, or a table that cannot be parsed or lacks a contract column.
    """
    inputs = ReportInputs()
    for d in directories:
        d = Path(d)
        step = detect_step(d)
        if step in inputs.dirs:
            raise InputDataError(f"{d}: a second {step} directory (the first was {inputs.dirs[step]}); "
                                 f"pass one directory per step.")
        inputs.dirs[step] = d
        if (d / "provenance.json").is_file():
            inputs.provenance[step] = read_json(d / "provenance.json")
        if step == "train":
            if (d / "cv_metrics.tsv").is_file():
                from iml_genomics.io.interchange import cv_fold_rows, cv_summary_table

                # an older cv_metrics.tsv ends with mean/sd rows: folds only here, the summary apart
                inputs.cv_metrics = cv_fold_rows(read_tsv(d / "cv_metrics.tsv"))
                inputs.cv_summary = (read_tsv(d / "cv_summary.tsv") if (d / "cv_summary.tsv").is_file()
                                     else cv_summary_table(inputs.cv_metrics))
            if (d / "oof_predictions.tsv").is_file():
                inputs.oof = read_tsv(d / "oof_predictions.tsv")
            if (d / "model.json").is_file():
                inputs.model = read_json(d / "model.json")
                genes = inputs.model.get("gene_ids")
                if genes is not None and (not isinstance(genes, list) or not all(isinstance(g, str) for g in genes)):
                    raise InputDataError(f"{d / 'model.json'}: key 'gene_ids' must be a list of strings. "
                                         f"Re-run 'iml-genomics train'.")
        elif step == "explain":
            if (d / "gene_ranking.tsv").is_file():
                inputs.gene_ranking = read_tsv(d / "gene_ranking.tsv")
            if (d / "local_explanations.tsv").is_file():
                inputs.local = read_tsv(d / "local_explanations.tsv")
            if (d / "interactions.tsv").is_file():
                inputs.interactions = read_tsv(d / "interactions.tsv")
            if (d / "audit.tsv").is_file():
                inputs.audit = read_tsv(d / "audit.tsv")
            if (d / "explain_summary.json").is_file():
                inputs.explain_summary = read_json(d / "explain_summary.json")
                _read_method_files(d, inputs)
            if (d / "attributions.parquet").is_file():
                try:
                    inputs.attributions = pd.read_parquet(d / "attributions.parquet")
                except Exception as exc:  # pyarrow raises several unrelated types
                    raise InputDataError(f"{d / 'attributions.parquet'}: cannot read Parquet "
                                         f"({str(exc).splitlines()[0]}).") from None
                if "sample_id" not in inputs.attributions.columns:
                    raise InputDataError(f"{d / 'attributions.parquet'}: column 'sample_id' missing.")
        elif step == "compare":
            _read_compare(d, inputs)
        else:
            if (d / "knockoff_selection.tsv").is_file():
                inputs.knockoffs = read_tsv(d / "knockoff_selection.tsv")
            if (d / "select_summary.json").is_file():
                inputs.select_summary = read_json(d / "select_summary.json")
    return without_writer_explains(inputs)


def _read_compare(directory: Path, inputs: ReportInputs) -> None:
    """The tables of an ``iml-genomics compare`` directory (model_comparison.tsv is required, the rest optional)."""
    if not (directory / "model_comparison.tsv").is_file():
        raise InputDataError(f"{directory / 'model_comparison.tsv'}: missing from a compare directory. Re-run "
                             f"'iml-genomics compare'.")
    inputs.compare_table = read_tsv(directory / "model_comparison.tsv")
    if (directory / "robust_genes.tsv").is_file():
        inputs.compare_robust = read_tsv(directory / "robust_genes.tsv")
    if (directory / "model_agreement.tsv").is_file():
        inputs.compare_agreement = read_tsv(directory / "model_agreement.tsv")
    if (directory / "compare_summary.json").is_file():
        inputs.compare_summary = read_json(directory / "compare_summary.json")


def _read_method_files(directory: Path, inputs: ReportInputs) -> None:
    """The files of the explanation methods that explain_summary.json lists under ``methods.<name>.files``.

    Only plain names of .tsv/.txt files inside ``directory`` are read: the summary is a user's file, and a
    name such as ``../x`` or ``/etc/passwd`` must not make the report read outside the explain directory.
    """
    methods = (inputs.explain_summary or {}).get("methods")
    if not isinstance(methods, dict):
        return
    for name, info in methods.items():
        files = info.get("files") if isinstance(info, dict) else None
        for file_name in files if isinstance(files, list) else []:
            if (not isinstance(file_name, str) or Path(file_name).name != file_name
                    or not file_name.endswith((".tsv", ".txt"))):
                raise InputDataError(f"{directory / 'explain_summary.json'}: methods.{name}.files lists "
                                     f"{str(file_name)[:80]!r}, not a .tsv/.txt file name of that directory. "
                                     f"Re-run 'iml-genomics explain'.")
            path = directory / file_name
            if not path.is_file():
                raise InputDataError(f"{path}: listed in explain_summary.json but missing. Re-run "
                                     f"'iml-genomics explain'.")
            if path.is_symlink():
                # a link named like a method file still points outside the explain directory
                raise InputDataError(f"{path}: listed in explain_summary.json but a symbolic link, not a file "
                                     f"'iml-genomics explain' wrote. Re-run 'iml-genomics explain'.")
            if file_name.endswith(".tsv"):
                inputs.explain_methods[file_name] = read_tsv(path)
            else:
                inputs.explain_texts[file_name] = read_text_head(path)


#: bytes of a method's text file (surrogate_rules.txt) the report reads: the rules of a depth-8 tree are a few
#: hundred KiB at most, and a crafted file of gigabytes must neither fill the memory nor the HTML page
MAX_TEXT_BYTES = 1 * 2**20


def read_text_head(path: Path, max_bytes: int = MAX_TEXT_BYTES) -> str:
    """The first ``max_bytes`` of a text file (UTF-8, undecodable bytes replaced), with a note when cut."""
    with open(path, "rb") as fh:
        head = fh.read(max_bytes + 1)
    if len(head) <= max_bytes:
        return head.decode("utf-8", errors="replace")
    return (head[:max_bytes].decode("utf-8", errors="ignore")
            + f"\n# ... (file cut here by the report: more than {max_bytes} bytes)")


def cohort_paths(inputs: ReportInputs) -> dict[str, str | None]:
    """Expression and labels paths recorded by train (or select/explain) provenance."""
    out: dict[str, str | None] = {"expression": None, "labels": None}
    for step in ("train", "select", "explain", "compare"):
        prov = inputs.provenance.get(step) or {}
        recorded = prov.get("inputs") or {}
        for role in out:
            if out[role] is None and isinstance(recorded.get(role), dict):
                out[role] = recorded[role].get("path")
    return out


def measured_genes(inputs: ReportInputs) -> list[str]:
    """The measured gene ids, from the most complete source available."""
    if inputs.model and inputs.model.get("gene_ids"):
        return [str(g) for g in inputs.model["gene_ids"]]
    if inputs.gene_ranking is not None:
        return inputs.gene_ranking["gene_id"].astype(str).tolist()
    if inputs.knockoffs is not None:
        return inputs.knockoffs["gene_id"].astype(str).tolist()
    if inputs.attributions is not None:
        return [c for c in inputs.attributions.columns if c not in ("sample_id", "class", "base_value",
                                                                     "model_output")]
    return []
