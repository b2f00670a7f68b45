"""Run every benchmark (each in its own process, one after another) and print
a summary with the run-to-run spread.

    .venv/bin/python -m bench.run_all [--repeat 3] [--only overhead latency] [--out FILE]

One full pass takes about 5 minutes on the 2-core machine. Each benchmark's
own table is passed through; the JSON lines are collected (and appended to
``--out`` when given).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import REPO, machine, table

BENCHES = [
    "overhead",
    "election",
    "election_scale",
    "latency",
    "memory",
    "throughput",
    "restore",
    "peers",
    "scrub",
    "fleet",
]


def run(name: str) -> dict[str, Any] | None:
    proc = subprocess.run(
        [sys.executable, "-m", f"bench.{name}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    print(proc.stdout, end="", flush=True)
    if proc.returncode != 0:
        print(f"bench.{name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}", flush=True)
        return None
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith('{"bench"'):
            record: dict[str, Any] = json.loads(line)
            return record
    return None  # skipped (peers without barman)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--only", nargs="+", choices=BENCHES, default=BENCHES)
    parser.add_argument("--out", type=Path, help="append the JSON lines to this file")
    args = parser.parse_args()

    records: dict[str, list[dict[str, Any]]] = {name: [] for name in args.only}
    started = time.perf_counter()
    for i in range(args.repeat):
        for name in args.only:
            print(f"\n===== bench.{name} (pass {i + 1}/{args.repeat})", flush=True)
            record = run(name)
            if record is None:
                continue
            records[name].append(record)
            if args.out:
                with args.out.open("a") as f:
                    f.write(json.dumps(record) + "\n")
    rows = []
    for name, recs in records.items():
        if not recs:
            rows.append([name, "-", "-", "-", "-", "skipped or failed"])
            continue
        ours = sorted(r["ours"] for r in recs)
        rows.append(
            [
                name,
                recs[0]["unit"],
                f"{ours[len(ours) // 2]:.3g}",
                f"{ours[0]:.3g} .. {ours[-1]:.3g}",
                ", ".join(f"{r['ratio']:.3g}" if r["ratio"] is not None else "-" for r in recs),
                f"{sum(r['met'] for r in recs)}/{len(recs)} ({recs[0]['bar']})",
            ]
        )
    facts = machine()
    table(
        f"summary: {args.repeat} pass(es) in {time.perf_counter() - started:.0f} s; "
        f"{facts['nproc']} cores, {facts['mem']} RAM, Python {facts['python']}, {facts['date']}",
        ["bench", "unit", "median", "min .. max", "ratio per pass", "bar met"],
        rows,
    )


if __name__ == "__main__":
    main()
