"""``output.granularity: aggregate``: results without any per-sample value.

Per-sample predictions, probabilities and attributions are the model's input-output pairs: with enough
of them a third party can fit a copy of the model, and a single row tells about one person (that the
sample was in the cohort, its predicted diagnosis, which of its genes pushed it). ``aggregate`` keeps
what describes the cohort as a whole (CV metrics, the gene ranking, interactions, selections, gene sets,
the audit) and drops the rest, from the files (:mod:`iml_genomics.io.step_outputs`) and from the
results `run` hands to the report and to ``--write-h5ad``.
"""

from __future__ import annotations

import copy

import pandas as pd

# said in explain_summary.json / provenance.json next to the list of files withheld
WITHHELD_REASON = ("output.granularity is aggregate: no per-sample predictions, probabilities or attributions "
                   "are written (they let a third party rebuild the model or learn about individuals)")


def is_aggregate(cfg) -> bool:
    """Whether ``cfg`` asks for aggregate outputs only."""
    return getattr(getattr(cfg, "output", None), "granularity", "full") == "aggregate"


def withhold_per_sample(result) -> list[str]:
    """Drop every per-sample table and array from a train or explain result, in place.

    Returns
    -------
    list of str
        What was dropped (output file names), for the summary.
    """
    dropped = []
    if hasattr(result, "oof_predictions"):
        result.oof_predictions = None
        dropped.append("oof_predictions.tsv")
    if hasattr(result, "attributions") and hasattr(result, "local"):
        result.attributions = result.base_values = result.model_output = None
        dropped += ["attributions.parquet", "local_explanations.tsv"]
        result.local = None
        ids = [str(s) for s in result.sample_ids]
        for out in result.methods.values():
            for name in [n for n, t in out.tables.items() if isinstance(t, pd.DataFrame) and "sample_id" in t.columns]:
                del out.tables[name]
                dropped.append(name)
            for name in [n for n, t in out.texts.items() if any(i in t for i in ids)]:
                del out.texts[name]
                dropped.append(name)
            if isinstance(out.summary.get("files"), list):
                out.summary["files"] = [f for f in out.summary["files"] if f not in dropped]
        result.summary["withheld"] = {"files": dropped, "reason": WITHHELD_REASON}
    return dropped


def aggregate_copy(result):
    """A copy of an explain result with the per-sample values withheld; ``result`` itself is left alone.

    The arrays are not copied (they are dropped); the summary and the method outputs are.
    """
    out = copy.copy(result)
    out.summary = copy.deepcopy(result.summary)
    out.methods = {name: copy.copy(m) for name, m in result.methods.items()}
    for m in out.methods.values():
        m.tables, m.texts, m.summary = dict(m.tables), dict(m.texts), copy.deepcopy(m.summary)
    withhold_per_sample(out)
    return out
