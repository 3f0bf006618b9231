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


def shorten(value, limit: int = 200) -> str:
    """A user value made safe to echo in a one-line error message.

    Control characters (tab, newline, NUL, ...) are shown escaped (``\\t``)
    so the message stays one line and shows what is really in the file, and
    a value longer than ``limit`` characters keeps its start and end around
    a count of what was left out: a 10,000-character id must not flood a log.

    Parameters
    ----------
    value : object
        The value (an id, a cell, a config value); ``str()`` is applied.
    limit : int
        Longest result, in characters (about; the elision note is counted).

    Returns
    -------
    str
    """
    raw = str(value)
    if len(raw) <= limit:
        return _escape(raw)
    tail = max(limit // 5, 1)
    head = max(limit - tail - 40, 1)
    # escape only the kept ends: a huge value is never walked character by character
    return f"{_escape(raw[:head])}...[{len(raw) - head - tail} more characters]...{_escape(raw[-tail:])}"


def _escape(text: str) -> str:
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)
