"""Identifiers and other user values shown safely inside one-line error messages."""

from __future__ import annotations


def show_id(value, limit: int = 200) -> str:
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
