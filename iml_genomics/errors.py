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


class ExchangeabilityError(NumericalError):
    """The knockoffs failed the exchangeability diagnostic and ``select --strict`` refuses to report them."""


class ResourceError(IMLGenomicsError):
    """A step would exceed a user-given resource limit."""


class OutputConflictError(IMLGenomicsError):
    """Writing ``--out`` would replace or follow something iml-genomics did not write
    (a user's directory or file, an input, another step's directory, a symbolic link)."""


class OutputBusyError(IMLGenomicsError):
    """Another live iml-genomics process holds the lock on the output directory.

    Exit code 75 (EX_TEMPFAIL): nothing is wrong with the input, try again later.
    """

    exit_code = 75


class OutputWriteError(IMLGenomicsError):
    """The system refused a write (disk full, file size limit, quota, read-only, I/O error).

    Exit code 3, like other failures of the environment rather than of the input.
    """

    exit_code = 3


class Interrupted(BaseException):
    """SIGTERM or SIGINT arrived; raised in the main thread so staging is removed on the way out.

    A ``BaseException`` (like ``KeyboardInterrupt``) so that ``except Exception``
    blocks in libraries do not swallow it. ``detail`` is filled in by the output
    guard that was active, to say what was and was not written.
    """

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
        self.detail: str | None = None

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def shorten(value: object, limit: int = 200) -> str:
    """``repr``-like text of a user value, cut to about ``limit`` characters.

    Error messages quote what the user wrote so they can find it, but a
    10,000-character id or a huge nested YAML value must not flood the one
    error line (nor take minutes to format): containers are rendered with
    :mod:`reprlib` (bounded work whatever their size) and long strings keep
    their head and tail.

    Parameters
    ----------
    value : object
        The offending value.
    limit : int
        Rough maximum length of the returned text.

    Returns
    -------
    str
        One line of at most about ``limit`` characters.
    """
    import reprlib

    if isinstance(value, str):
        if len(value) > limit:
            # slice before repr: formatting never touches more than ~limit characters
            return f"{repr(value[: limit - 60])[:-1]}...[{len(value)} characters]...{repr(value[-20:])[1:]}"
        text = repr(value)
    else:
        r = reprlib.Repr()
        r.maxstring, r.maxother, r.maxlevel = limit, limit, 3
        r.maxdict = r.maxlist = r.maxtuple = r.maxset = 8
        text = r.repr(value)
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    keep = max(limit - 40, 20)
    return f"{text[: keep - 20]}...[{len(text)} characters]...{text[-20:]}"
