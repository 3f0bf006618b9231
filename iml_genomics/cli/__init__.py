"""Command line: a thin click layer over the core.

Subcommands live in their own modules and are imported only when invoked,
so ``iml-genomics --help`` starts fast. Errors of the
:class:`~iml_genomics.errors.IMLGenomicsError` family become one line on
stderr and their exit code, never a traceback.
"""

from __future__ import annotations

import errno
import importlib
import signal
import sys

import click

from iml_genomics import __version__

# name -> "module:function"; each module defines one click command.
SUBCOMMANDS = {
    "train": "iml_genomics.cli.train:train",
    "explain": "iml_genomics.cli.explain:explain",
    "select": "iml_genomics.cli.select:select",
    "report": "iml_genomics.cli.report:report",
    "simulate": "iml_genomics.cli.simulate:simulate",
    "evaluate": "iml_genomics.cli.evaluate:evaluate",
    "run": "iml_genomics.cli.run:run",
    "compare": "iml_genomics.cli.compare:compare",
}


class LazyGroup(click.Group):
    """Imports a subcommand's module only when that subcommand runs."""

    def list_commands(self, ctx):
        return [name for name, target in SUBCOMMANDS.items() if module_exists(target)]

    def get_command(self, ctx, name):
        target = SUBCOMMANDS.get(name)
        if target is None or not module_exists(target):
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)

    def invoke(self, ctx):
        from iml_genomics.errors import IMLGenomicsError, Interrupted

        def prog(exc=None) -> str:
            # `run` tags an error or interruption with the step it happened in, so the line names that step
            # as the subcommand would (iml-genomics explain: interrupted ...)
            name = getattr(exc, "iml_command", None) or ctx.invoked_subcommand
            return f"iml-genomics {name}" if name else "iml-genomics"

        try:
            return super().invoke(ctx)
        except IMLGenomicsError as exc:
            message = _one_line(str(exc))
            click.echo(f"{prog(exc)}: error: {message}", err=True)
            ctx.exit(exc.exit_code)
        except click.UsageError as exc:
            # A bad option is reported like a bad input: one line (click's default is a
            # usage block), so logs of pipelines stay one line per failure; exit code 2.
            message = _one_line(exc.format_message())
            click.echo(f"{prog()}: error: {message} See '{prog()} --help'.", err=True)
            ctx.exit(exc.exit_code)
        except (Interrupted, KeyboardInterrupt) as exc:
            # SIGTERM (a scheduler's time limit) or SIGINT: staging is already removed by
            # the output guard on the way up; say what was kept, exit 128 + signal number.
            signum = getattr(exc, "signum", signal.SIGINT)
            detail = getattr(exc, "detail", None) or "nothing was written"
            click.echo(f"{prog(exc)}: interrupted ({signal.Signals(signum).name}); {detail}.", err=True)
            ctx.exit(128 + signum)
        except OSError as exc:
            # A path the system refuses (output under a file, no permission, disk full):
            # an environment problem, reported in one line. OSErrors without a file name
            # are not about the user's paths and keep their traceback, except a full
            # disk or a file size limit, which are always the environment's.
            if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
                click.echo(f"{prog(exc)}: error: {exc.strerror or exc}. Free disk space (or raise the file size "
                           f"limit) and run again.", err=True)
                ctx.exit(3)
            if exc.filename is None:
                raise
            click.echo(f"{prog(exc)}: error: {exc.filename}: {exc.strerror or exc}. Check the path, its "
                       f"permissions and the free disk space.", err=True)
            ctx.exit(2)
        except MemoryError:
            click.echo("iml-genomics: error: out of memory; run on a larger machine, lower --jobs, "
                       "or reduce the genes (preprocess.top_k_variable).", err=True)
            ctx.exit(3)


def _one_line(text: str) -> str:
    """The message on one line, any over-long word shortened.

    The core shortens the user values it echoes; this is the net under it: an
    id or value of thousands of characters reaching a message some other way
    (a click usage error, a library's text) still cannot flood a log line.
    """
    from iml_genomics.io.ids import show_id

    line = " ".join(word if len(word) <= 300 else show_id(word) for word in text.split())
    # a long value with spaces in it (a list, a sentence) escapes the per-word cut: cap the line,
    # keeping its start (file, key) and its end (what to do)
    return line if len(line) <= 2000 else show_id(line, 2000)


def module_exists(target: str) -> bool:
    """Whether the module of a ``"package.module:function"`` target can be imported (without importing it).

    Parameters
    ----------
    target : str

    Returns
    -------
    bool
    """
    import importlib.util

    return importlib.util.find_spec(target.split(":")[0]) is not None



def configure_logging(quiet: bool = False, verbose: bool = False) -> None:
    """Timestamped lines on stderr: INFO by default, WARNING with --quiet, DEBUG with --verbose."""
    import logging

    from iml_genomics import progress
    from iml_genomics.cli import common

    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    # through tqdm while a bar is drawn: a warning never lands inside a progress bar
    handler = progress.BarSafeHandler(sys.stderr)
    # full ISO date and time: Snakemake and cluster logs outlive the day they were written
    handler.setFormatter(logging.Formatter("%(asctime)s iml-genomics %(levelname)s %(message)s",
                                           "%Y-%m-%dT%H:%M:%S"))
    root = logging.getLogger("iml_genomics")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # -q: warnings and errors only (no bars, no progress lines, no summary line); a terminal gets bars,
    # a file or pipe (Snakemake's log:, a batch job's output) sparse timestamped lines
    common.QUIET = quiet
    click_ctx = click.get_current_context(silent=True)
    step = click_ctx.invoked_subcommand if click_ctx is not None else None
    progress.configure("off" if quiet else "bar" if progress.isatty(sys.stderr) else "log",
                       step=None if step == "run" else step)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="iml-genomics")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr (no progress, no summary line).")
@click.option("-v", "--verbose", is_flag=True, help="Debug messages on stderr.")
def main(quiet, verbose):
    """From an expression cohort to ranked, error-controlled, pathway-level biomarkers.

    \b
    Steps: train -> explain -> select -> report (or all of them with `run`).
    Each step reads files, writes a directory with provenance.json, and can be
    one Snakemake rule. See `iml-genomics COMMAND --help`.
    Progress of long loops goes to stderr: one bar per phase on a terminal,
    a timestamped line every 10 s otherwise (cluster logs); -q silences it
    and the summary line (warnings and errors are still shown).
    """
    configure_logging(quiet, verbose)
    install_signal_handlers()


def _on_signal(signum, frame):
    from iml_genomics.errors import Interrupted

    # later signals are ignored, so the cleanup the first one starts is not cut short
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    raise Interrupted(signum)


def install_signal_handlers() -> None:
    """SIGTERM/SIGINT raise :class:`~iml_genomics.errors.Interrupted`; SIGXFSZ is ignored.

    With SIGXFSZ ignored, a write past ``ulimit -f`` fails with EFBIG (reported in
    one line) instead of killing the process and leaving staging behind.
    """
    import threading

    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread (e.g. tests' CliRunner threads)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
