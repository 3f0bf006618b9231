"""Model-X knockoff selection with FDR control at genome scale.

Modules: ``covariance`` (Ledoit-Wolf, factor model), ``smatrix``
(equicorrelated, SDP, MVR), ``sampler`` (Gaussian knockoffs), ``statistics``
(W), ``threshold`` (knockoff+, e-values, e-BH), ``groups`` (group
knockoffs) and ``filter`` (:func:`knockoff_select`, the public entry point).
"""

from iml_genomics.select.filter import KnockoffResult, knockoff_select, with_untested_genes

__all__ = ["KnockoffResult", "knockoff_select", "with_untested_genes"]
