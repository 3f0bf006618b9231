"""Compare two output directories of iml-genomics byte for byte, timings aside.

Usage::

    python benchmarks/compare_outputs.py OLD NEW [--ignore-command-line]

Every file under OLD and NEW (recursively) must exist in both and be identical, except for what
changes from one run to the next whatever the code does:

- JSON files (provenance.json, run_state.json, ...): the keys ``started_utc``, ``finished_utc``,
  ``timings_seconds``, ``wall_time_seconds`` and ``seconds`` are dropped (at any depth);
- report.html: ISO timestamps and the "wall time (s)" cells are masked;
- the output listings ``.iml-outputs.json``: the sha256 and size of those timing-bearing files are dropped
  (their contents are compared, normalised, as files of their own);
- the two directory paths themselves (OLD and NEW appear in recorded input paths and command lines).

With ``--ignore-command-line`` the recorded command line (``command_line`` in JSON, the "command line" row of
report.html) is masked too: that compares ``run`` with the same steps run as separate subcommands.

Exit status 0 when the trees agree; 1 with one line per differing or missing file (named) otherwise.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

TIMING_KEYS = {"started_utc", "finished_utc", "timings_seconds", "wall_time_seconds", "seconds"}
TIMED_FILES = {"provenance.json", "run_state.json", "report.html"}
_ISO = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:\+00:00|Z)")
_WALL = re.compile(rb"(<th>wall time \(s\)</th>\s*<td>)[^<]*(</td>)")
_CMD = re.compile(rb"(<th>command line</th>\s*<td>)[^<]*(</td>)")


def _strip(value, drop: set):
    if isinstance(value, dict):
        return {k: _strip(v, drop) for k, v in value.items() if k not in drop}
    if isinstance(value, list):
        return [_strip(v, drop) for v in value]
    return value


def normalise(path: Path, data: bytes, root: Path, *, ignore_command_line: bool = False) -> bytes:
    """The bytes of ``path`` with run-to-run noise (timings, the output root) masked."""
    if path.suffix == ".html":
        # masks first: the cells are matched up to the next '<', which the '<OUT>' mask would bring forward
        data = _ISO.sub(b"<TIME>", data)
        data = _WALL.sub(rb"\1<SECONDS>\2", data)
        if ignore_command_line:
            data = _CMD.sub(rb"\1<COMMAND>\2", data)
    data = data.replace(str(root.resolve()).encode(), b"<OUT>").replace(str(root).encode(), b"<OUT>")
    if path.name == ".iml-outputs.json" or path.suffix == ".json":
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            return data
        drop = TIMING_KEYS | ({"command_line"} if ignore_command_line else set())
        doc = _strip(doc, drop)
        if path.name == ".iml-outputs.json" and isinstance(doc.get("files"), dict):
            doc["files"] = {k: ("<timed>" if k in TIMED_FILES else v) for k, v in doc["files"].items()}
        return json.dumps(doc, sort_keys=True, indent=1).encode()
    return data


def compare_trees(old: str | Path, new: str | Path, *, ignore_command_line: bool = False,
                  roots: tuple[str | Path, str | Path] | None = None) -> list[str]:
    """One line per difference between the trees ``old`` and ``new`` (empty when they agree).

    ``roots`` = the two directories whose paths are masked (default ``old`` and ``new``); pass the parents
    when comparing step directories of two runs.
    """
    old, new = Path(old), Path(new)
    old_root, new_root = (Path(r) for r in (roots or (old, new)))
    names_old = {p.relative_to(old) for p in old.rglob("*") if p.is_file()}
    names_new = {p.relative_to(new) for p in new.rglob("*") if p.is_file()}
    problems = [f"{rel}: only in {old}" for rel in sorted(names_old - names_new)]
    problems += [f"{rel}: only in {new}" for rel in sorted(names_new - names_old)]
    for rel in sorted(names_old & names_new):
        a = normalise(rel, (old / rel).read_bytes(), old_root, ignore_command_line=ignore_command_line)
        b = normalise(rel, (new / rel).read_bytes(), new_root, ignore_command_line=ignore_command_line)
        if a != b:
            problems.append(f"{rel}: differs ({old / rel} vs {new / rel})")
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--ignore-command-line", action="store_true",
                        help="also mask the recorded command line (run vs separate subcommands)")
    parser.add_argument("--roots", nargs=2, metavar=("OLD_ROOT", "NEW_ROOT"), default=None,
                        help="the directory paths recorded inside the files, masked before comparing "
                             "[OLD and NEW]; give the original paths when comparing copies")
    args = parser.parse_args(argv)
    for d in (args.old, args.new):
        if not Path(d).is_dir():
            print(f"{d}: not a directory", file=sys.stderr)
            return 2
    problems = compare_trees(args.old, args.new, ignore_command_line=args.ignore_command_line, roots=args.roots)
    for line in problems:
        print(line, file=sys.stderr)
    if not problems:
        print(f"identical (timings aside): {args.old} and {args.new}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
