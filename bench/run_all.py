"""Runs every CPU benchmark under bench/ in turn and prints one table of their figures.

Each benchmark runs as its own process (so one's imports and heap do not colour another's) and prints lines
starting with "RESULT " that this script gathers. The default sizes keep the whole run under 15 minutes on a shared
2-core machine; --quick shrinks them further for a smoke check. The GPU check (bench/gpu_check.sh) is not run here.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common import RESULT_PREFIX

HERE = Path(__file__).resolve().parent

BENCHMARKS: list[tuple[str, list[str], list[str]]] = [
    # (script, default arguments, --quick arguments)
    ("executor_overhead.py", ["--repeats", "7"], ["--repeats", "3"]),
    ("engine_overhead.py", ["--repeats", "9"], ["--repeats", "3"]),
    ("caching.py", [], ["--repeats", "5", "--seeds", "2", "--rounds", "2", "--model-files", "500"]),
    ("server_throughput.py", [], ["--prompts", "16", "--idle-prompts", "5", "--queue-requests", "50"]),
    ("cold_start.py", ["--repeats", "2"], ["--repeats", "1"]),
    ("memory.py", ["--repeats", "2"], ["--repeats", "1", "--prompts", "30"]),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes: a smoke run, not figures to record")
    parser.add_argument("--only", nargs="*", default=None, help="script names to run (default: all)")
    args = parser.parse_args()

    rows: list[tuple[str, dict]] = []
    failures = []
    started = time.perf_counter()
    for script, full, quick in BENCHMARKS:
        if args.only and script not in args.only and script.removesuffix(".py") not in args.only:
            continue
        cmd = [sys.executable, str(HERE / script), *(quick if args.quick else full)]
        print(f"\n=== {' '.join(['python', 'bench/' + script, *cmd[2:]])}", flush=True)
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=HERE.parent, capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        for line in proc.stdout.splitlines():
            if line.startswith(RESULT_PREFIX):
                rows.append((script, json.loads(line[len(RESULT_PREFIX):])))
            else:
                print(line)
        if proc.returncode != 0:
            failures.append(script)
            print(proc.stderr[-3000:])
        print(f"--- {script}: exit {proc.returncode}, {elapsed:.0f} s", flush=True)
        if script == "executor_overhead.py":
            rows.extend((script, row) for row in executor_rows(proc.stdout))

    print(f"\n{'benchmark':22s} {'figure':48s} {'value':>12s} {'unit':10s} {'target':26s} note")
    for script, row in rows:
        value = row["value"]
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        print(f"{script.removesuffix('.py'):22s} {row['name'][:48]:48s} {shown:>12s} {row['unit']:10s} "
              f"{row['target'][:26]:26s} {row['note']}")
    print(f"\nall benchmarks: {time.perf_counter() - started:.0f} s"
          + (f"; FAILED: {', '.join(failures)}" if failures else ""))
    return 0


def executor_rows(stdout: str) -> list[dict]:
    """executor_overhead.py (the lead's) prints prose; its per-node overhead and re-queue lines become rows."""
    rows = []
    for line in stdout.splitlines():
        text = line.strip()
        if text.startswith("executor overhead"):
            rows.append({"name": "executor overhead per node (trivial nodes)", "value": float(text.split()[2]),
                         "unit": "us/node", "target": "", "note": ""})
        elif "identical re-queue:" in text:
            value = float(text.split("identical re-queue:")[1].split()[0])
            rows.append({"name": "re-queue of a 202-node chain", "value": value, "unit": "ms", "target": "",
                         "note": ""})
    return rows


if __name__ == "__main__":
    sys.exit(main())
