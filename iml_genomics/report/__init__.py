"""Report step: biomarker table, gene-set summaries and a self-contained HTML report.

Public API: :func:`load_inputs` (read train/explain/select output
directories), :func:`build_report` (tables + HTML in memory) and the table
builders in :mod:`iml_genomics.report.tables`.
"""

from iml_genomics.report.build import ReportResult, build_report
from iml_genomics.report.inputs import ReportInputs, cohort_paths, load_inputs, measured_genes
from iml_genomics.report.tables import (
    BIOMARKER_COLUMNS,
    GENE_SET_COLUMNS,
    analyse_gene_sets,
    build_biomarkers,
    univariate_effects,
)

__all__ = ["BIOMARKER_COLUMNS", "GENE_SET_COLUMNS", "ReportInputs", "ReportResult", "analyse_gene_sets",
           "build_biomarkers", "build_report", "cohort_paths", "load_inputs", "measured_genes", "univariate_effects"]
