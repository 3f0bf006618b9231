"""SHAP and permutation importance at cohort scale, with the ranking's uncertainty.

Public API::

    shap_attributions(pipeline, X, *, gene_ids, classes, mode=..., ...) -> ShapResult
    permutation_importance_oof(pipeline, X, y, *, splits, classes, ...) -> DataFrame
    permutation_importance_fitted(pipeline, X, y, *, classes, ...) -> (n_genes, n_repeats) array
    ranking_stability(importances, *, gene_ids, top_k=20) -> (DataFrame, dict)
    refit_importances(pipeline, X, y, *, splits, classes, gene_ids, ...) -> dict
    explain_cohort(...) -> ExplainResult   (the whole `explain` step, no file I/O)
"""

from iml_genomics.explain.core import RANKING_COLUMNS, ExplainResult, explain_cohort
from iml_genomics.explain.interactions import INTERACTION_COLUMNS, tree_interactions
from iml_genomics.explain.local import LOCAL_COLUMNS, local_explanations
from iml_genomics.explain.permutation import permutation_importance_fitted, permutation_importance_oof
from iml_genomics.explain.shap_values import ShapChunk, ShapPlan, ShapResult, iter_shap_chunks, plan_shap, \
    shap_attributions
from iml_genomics.explain.stability import bootstrap_splits, ranking_stability, refit_importances

__all__ = [
    "ExplainResult", "INTERACTION_COLUMNS", "LOCAL_COLUMNS", "RANKING_COLUMNS", "ShapChunk", "ShapPlan", "ShapResult",
    "bootstrap_splits", "explain_cohort", "iter_shap_chunks", "local_explanations", "permutation_importance_fitted",
    "permutation_importance_oof", "plan_shap", "ranking_stability", "refit_importances", "shap_attributions",
    "tree_interactions",
]
