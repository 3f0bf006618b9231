"""Readers, cohort validation and atomic writers."""

from iml_genomics.io.cohort import infer_task, load_cohort, prepare_target
from iml_genomics.io.readers import detect_format, read_expression, read_labels, read_table
from iml_genomics.io.writers import (
    Provenance,
    atomic_write_bytes,
    file_sha256,
    staged_output,
    write_json,
    write_tsv,
)

__all__ = [
    "Provenance", "atomic_write_bytes", "detect_format", "file_sha256", "infer_task", "load_cohort",
    "prepare_target", "read_expression", "read_labels", "read_table", "staged_output", "write_json", "write_tsv",
]
