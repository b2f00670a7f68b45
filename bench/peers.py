"""Peers (optional, SPEC §8's reference figures): ``barman-cloud-wal-archive``
as PostgreSQL's ``archive_command`` — one process per 16 MiB segment, serially
— against a moto S3 server, next to the plain boto3 pool of 8 threads on the
same files in the same run. Skipped with a note when barman-cli-cloud is not
installed (``apt-get install barman-cli-cloud``).

    .venv/bin/python -m bench.peers [--segments 16]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import time

from bench.common import MIB, Moto, aws_env, emit, log, stage_segments, table, ttid_for, workspace
from bench.throughput import run_baseline

SEG_SIZE = 16 * MIB
BUCKET = "walbackup-bench-peers"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", type=int, default=16)
    args = parser.parse_args()

    barman = shutil.which("barman-cloud-wal-archive")
    if barman is None:
        print("peers: barman-cloud-wal-archive is not installed; skipped")
        print("       (apt-get install barman-cli-cloud to compare)")
        return
    version = subprocess.run([barman, "-V"], capture_output=True, text=True).stdout.strip()
    ttid = ttid_for(0, "peers")
    with workspace("peers") as root, aws_env():
        staged = stage_segments(root / "staging", [ttid], args.segments, SEG_SIZE)
        moto = Moto(root)
        try:
            log(f"{version}: one process per segment")
            url = moto.fresh(BUCKET)
            env = dict(os.environ)
            started = time.perf_counter()
            for _, _, path in staged:
                subprocess.run(
                    [barman, "--endpoint-url", moto.endpoint_url, f"{url}/barman", "pg", str(path)],
                    env=env,
                    check=True,
                    capture_output=True,
                )
            barman_s = time.perf_counter() - started
            log("plain boto3 thread pool, 8 threads")
            base_s = run_baseline(moto, staged, 8, {})
        finally:
            moto.stop()

    n = len(staged)
    ours, baseline = n / barman_s, n / base_s
    table(
        f"peers: {n} segments of 16 MiB to moto S3",
        ["what", "seconds", "segments/s"],
        [[version, barman_s, ours], ["plain boto3, 8 threads", base_s, baseline]],
    )
    emit(
        "peers",
        ours,
        baseline,
        unit="segments/s (barman-cloud-wal-archive)",
        bar="none (reference figures only)",
        met=True,
        tool=version,
        segments=n,
    )


if __name__ == "__main__":
    main()
