"""The steps floor: one function per pipeline step on in-memory objects.

Each step takes the cohort (AnnData) and the resolved :class:`~iml_genomics.config.Config`, with keyword-only
``n_jobs``, ``random_state`` (None = the config's) and ``backend`` (an :class:`iml_genomics.parallel.Backend`;
None = built from ``cfg.parallel.scheduler`` and ``n_jobs``), and returns a result dataclass holding the tidy tables
exactly as the CLI writes them, the summary dict exactly as its JSON, and metadata. Steps never read or
write files, never print and never import click; the CLI (``iml_genomics.cli``) only loads inputs, calls a
step and writes its result. See docs/steps.md.

The heavy libraries (scikit-learn, shap, ...) are imported inside the step functions, so importing this
package stays cheap.
"""

from iml_genomics.steps._common import resolved
from iml_genomics.steps.compare import CompareResult, compare
from iml_genomics.steps.evaluate import EvaluateResult, evaluate
from iml_genomics.steps.explain import ExplainResult, explain
from iml_genomics.steps.report import GeneSetResult, ReportResult, gene_sets, report
from iml_genomics.steps.select import SelectResult, select
from iml_genomics.steps.train import TrainResult, train

__all__ = ["CompareResult", "EvaluateResult", "ExplainResult", "GeneSetResult", "ReportResult", "SelectResult", "TrainResult",
           "compare", "evaluate", "explain", "gene_sets", "report", "resolved", "select", "train"]
