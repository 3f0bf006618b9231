"""iml-genomics: interpretable machine learning for gene-expression cohorts.

The package is a computational core (plain functions over numpy, pandas and
AnnData) with a thin click command line in :mod:`iml_genomics.cli`.
"""

__version__ = "0.1.0"
