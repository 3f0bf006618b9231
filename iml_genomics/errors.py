"""The small family of errors the command line turns into one line on stderr.

Every error carries the exit code the CLI should use; core functions raise
them with a message that names the file, the row/column/key and what to do.
"""


class IMLGenomicsError(Exception):
    """Base class: a user-facing error with an exit code."""

    exit_code = 2


class ConfigError(IMLGenomicsError):
    """The YAML configuration, or a command-line override, is invalid."""


class InputDataError(IMLGenomicsError):
    """An input file (matrix, labels, gene sets, model bundle) is unusable."""


class BundleError(InputDataError):
    """A model bundle is missing, tampered with, or holds untrusted types."""


class NumericalError(IMLGenomicsError):
    """A numerical check failed (additivity, PSD of 2*Sigma - S, ...)."""

    exit_code = 3


class ResourceError(IMLGenomicsError):
    """A step would exceed a user-given resource limit."""
