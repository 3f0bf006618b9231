"""Time and peak memory of `iml-genomics run` per step, at single-cell scale (issue 18 item 4).

Runs the command given after ``--`` as a child process, samples the resident memory of the whole process
tree (the main process plus joblib/loky workers) every 0.2 s, and attributes each sample to the step the
run's log says is running ("[i/4] STEP: running"). Prints one JSON document: wall seconds per step (the
run's own provenance timings), peak tree RSS per step and overall, and the ``--dry-run`` estimates.

Usage::

    iml-genomics simulate --family single-cell --n-samples 100000 --n-genes 2000 --out sc100k --prefix sc
    python benchmarks/bench_single_cell.py --dry-run-too -- \\
        iml-genomics run configs/single_cell.yaml --out results/sc100k --jobs 2 --force
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

STEP_LINE = re.compile(r"\[\d+/\d+\] (\w+): running")


def tree_rss(proc: psutil.Process) -> int:
    """Resident bytes of a process and all its descendants (0 for those gone meanwhile)."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def measure(cmd: list[str], interval: float = 0.2) -> dict:
    """Run ``cmd``; return wall time, exit code and peak tree RSS per step and overall."""
    started = time.perf_counter()
    child = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    proc = psutil.Process(child.pid)
    current = {"step": "startup"}
    peaks: dict[str, int] = {}
    lines: list[str] = []

    def read_log():
        for line in child.stderr:
            lines.append(line)
            m = STEP_LINE.search(line)
            if m:
                current["step"] = m.group(1)

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()
    while child.poll() is None:
        rss = tree_rss(proc) if child.poll() is None else 0
        step = current["step"]
        peaks[step] = max(peaks.get(step, 0), rss)
        time.sleep(interval)
    reader.join()
    return {"command": cmd, "exit_code": child.returncode, "wall_seconds": round(time.perf_counter() - started, 1),
            "peak_tree_rss_bytes": max(peaks.values(), default=0), "peak_tree_rss_bytes_by_step": peaks,
            "stderr_tail": lines[-3:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run-too", action="store_true", help="Also record `run --dry-run`'s estimates.")
    parser.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    out = {}
    if args.dry_run_too:
        dry = [c for c in cmd if c != "--force"] + ["--dry-run"]
        out["dry_run"] = subprocess.run(dry, capture_output=True, text=True).stdout
    out.update(measure(cmd))
    if "--out" in cmd:
        prov = Path(cmd[cmd.index("--out") + 1]) / "provenance.json"
        if prov.is_file():
            doc = json.loads(prov.read_text())
            out["provenance_seconds"] = doc.get("timings_seconds")
            out["provenance_estimates"] = doc.get("estimates")
    out["load_average"] = psutil.getloadavg()
    out["cpu_count"] = psutil.cpu_count()
    json.dump(out, sys.stdout, indent=1, default=str)
    print()


if __name__ == "__main__":
    main()
