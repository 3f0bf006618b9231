"""Red-team cases for issue 14 that the first hardening pass missed.

Each runs the real CLI in a subprocess and checks the exit code, exactly one
stderr line, no traceback, and that the user's files are untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
SIMULATE = ("simulate", "--family", "gaussian", "--n-samples", "20", "--n-genes", "10", "--out")


def cli(*args, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "iml_genomics", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=ENV)


def one_line(proc: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{proc.stderr}"
    assert proc.returncode == code, (proc.returncode, lines[0])
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in: {lines[0]}"
    return lines[0]


def test_stale_listing_entry_under_a_linked_directory_is_not_followed(tmp_path):
    """A listing naming 'sub/data.txt', with sub -> a user directory elsewhere, must not delete
    the user's file even when its sha256 matches (the listing is the attacker's to write)."""
    out, victim = tmp_path / "out", tmp_path / "victim"
    victim.mkdir()
    (victim / "data.txt").write_bytes(b"precious\n")
    one_line(cli(*SIMULATE, out), 0)
    (out / "sub").symlink_to(victim, target_is_directory=True)
    listing = json.loads((out / ".iml-outputs.json").read_text())
    listing["files"]["sub/data.txt"] = {"sha256": hashlib.sha256(b"precious\n").hexdigest(), "size": 9}
    (out / ".iml-outputs.json").write_text(json.dumps(listing))
    one_line(cli(*SIMULATE, out), 0)
    assert (victim / "data.txt").read_bytes() == b"precious\n"
