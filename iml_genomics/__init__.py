"""iml-genomics: interpretable machine learning for gene-expression cohorts.

The package is a computational core (plain functions over numpy, pandas and
AnnData) with a thin click command line in :mod:`iml_genomics.cli`, the steps
floor :mod:`iml_genomics.steps`, and a scanpy-style API on AnnData:
``import iml_genomics as ig; ig.tl.train(adata, label_column=...); ig.get.ranking_df(adata)``.

``ig.tl`` and ``ig.get`` are imported on first use, so ``import iml_genomics``
stays fast (no scikit-learn, pandas, anndata, ... at import time; a test checks).
"""

__version__ = "0.1.0"

_LAZY = ("tl", "get", "steps")


def __getattr__(name):
    # PEP 562: the submodule is imported when first asked for
    if name in _LAZY:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_LAZY])
