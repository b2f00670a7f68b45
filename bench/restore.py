"""Restore (SPEC §8): ``walbackup fetch TTID %f %p`` as PostgreSQL's
``restore_command`` — one process per segment, serially, each into
``pg_wal/RECOVERYXLOG`` — over 64 segments of 16 MiB on a moto S3 server, in
segments/s. The restore spool (``tasks/restore/spool.py``, filled by
``tasks/restore/prefetch.py``) prefetches the next ones; every segment is
checked against the archive ledger's pages, which the bench writes as the
offloader would.

Baseline: a plain ``python -c`` boto3 GET per segment (what a one-line
restore_command script costs).

    .venv/bin/python -m bench.restore [--segments 64] [--prefetch 8]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.common import (
    MIB,
    Moto,
    aws_env,
    emit,
    log,
    table,
    ttid_for,
    workspace,
)
from tasks.archive.ledger_store import LedgerStore
from tasks.core.ids import TenantTimelineId
from tasks.core.ledger import LedgerEntry
from tasks.core.segments import xlog_file_name
from tasks.dev.simulate import expected_segment_bytes
from tasks.storage import open_storage
from tests.fixtures_s3 import s3_client
from tests.servers import env_without_walbackup

SEG_SIZE = 16 * MIB
BAR_SEG_S = 15.0
RAISED_GOAL_SEG_S = 30.0
"""SPEC §8, "Raised goals (turn 2)"."""
BUCKET = "walbackup-bench-restore"

BASELINE = """
import sys, boto3
from botocore.config import Config
bucket, key, dest, endpoint = sys.argv[1:]
s3 = boto3.client("s3", endpoint_url=endpoint, config=Config(s3={"addressing_style": "path"}))
s3.download_file(bucket, key, dest)
"""


def upload(url: str, endpoint: str, ttid: TenantTimelineId, count: int) -> dict[str, str]:
    """Segments 1..count under the walbackup layout, and the archive ledger's
    pages for them (64 segments each, as the offloader's flushes write them,
    which fetch checks against); returns name -> sha256."""
    client = s3_client(endpoint)
    digests = {}
    entries = {}
    for segno in range(1, count + 1):
        name = xlog_file_name(segno, SEG_SIZE)
        data = expected_segment_bytes(ttid, segno, SEG_SIZE)
        client.put_object(
            Bucket=BUCKET, Key=f"{ttid.tenant_id}/{ttid.timeline_id}/{name}", Body=data
        )
        digests[name] = hashlib.sha256(data).hexdigest()
        md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
        entries[segno] = LedgerEntry(SEG_SIZE, digests[name], md5)
    client.close()
    store = LedgerStore(open_storage(url, s3_endpoint_url=endpoint))
    for first in range(1, count + 1, 64):
        run = {s: entries[s] for s in range(first, min(count + 1, first + 64))}
        store.write(ttid, SEG_SIZE, run, node_id=1)
    store.storage.close()
    return digests


def pg_keeps(path: Path) -> None:
    """What PostgreSQL's ``KeepFileRestoredFromArchive`` costs the disk: an
    fsync of every restored segment (outside the timed call, as in
    PostgreSQL; a spool that left its bytes unwritten would move its own
    write-back here, onto recovery's path, and slow the calls around it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(MIB):
            h.update(chunk)
    return h.hexdigest()


def restore_loop(
    names: list[str], cmd: list[str], env: dict[str, str], pg_wal: Path, digests: dict[str, str]
) -> tuple[float, list[float]]:
    """Run ``cmd + [name, dest]`` per segment like PostgreSQL; verify each."""
    dest = pg_wal / "RECOVERYXLOG"
    calls = []
    started = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        run = subprocess.run([*cmd, name, str(dest)], env=env, capture_output=True)
        calls.append(time.perf_counter() - t0)
        if run.returncode != 0:
            raise SystemExit(f"{cmd[0]} {name}: exit {run.returncode}: {run.stderr.decode()}")
        # PostgreSQL fsyncs the file (durable_rename to its own name), reads it.
        pg_keeps(dest)
        if sha256_file(dest) != digests[name]:
            raise SystemExit(f"{name}: restored bytes differ")
        dest.unlink()
    return time.perf_counter() - started, calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", type=int, default=64)
    parser.add_argument("--prefetch", type=int, default=8, help="WALBACKUP_RESTORE_PREFETCH")
    args = parser.parse_args()

    ttid = ttid_for(0, "restore")
    walbackup = str(Path(sys.executable).parent / "walbackup")
    with workspace("restore") as root, aws_env():
        moto = Moto(root)
        try:
            url = moto.fresh(BUCKET)
            log(f"uploading {args.segments} segments of 16 MiB to moto")
            digests = upload(url, moto.endpoint_url, ttid, args.segments)
            names = sorted(digests)
            env = env_without_walbackup() | {
                "WALBACKUP_REMOTE_STORAGE": url,
                "WALBACKUP_S3_ENDPOINT_URL": moto.endpoint_url,
                "WALBACKUP_DATA_DIR": str(root / "data"),
                "WALBACKUP_WAL_SEG_SIZE": str(SEG_SIZE),
                "WALBACKUP_RESTORE_PREFETCH": str(args.prefetch),
            }
            # As installed by pip: bytecode cached (this shell may say otherwise).
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            pg_wal = root / "pg_wal"
            pg_wal.mkdir()
            warm = [str(ttid), xlog_file_name(args.segments + 2, SEG_SIZE), str(pg_wal / "x")]
            subprocess.run([walbackup, "fetch", *warm], env=env, capture_output=True)

            log("baseline: python -c boto3 download_file per segment")
            base_s, base_calls = _baseline(names, env, pg_wal, digests, ttid, moto.endpoint_url)
            log(f"ours: walbackup fetch per segment (prefetch {args.prefetch})")
            ours_s, calls = restore_loop(
                names, [walbackup, "fetch", str(ttid)], env, pg_wal, digests
            )
            # The archive ends here: PostgreSQL's next call gets "not found".
            missing = xlog_file_name(args.segments + 1, SEG_SIZE)
            end = subprocess.run(
                [walbackup, "fetch", str(ttid), missing, str(pg_wal / "RECOVERYXLOG")],
                env=env,
                capture_output=True,
            )
            assert end.returncode == 1, end.stderr
            left = _wait_prefetcher_gone(root / "data")
        finally:
            moto.stop()

    n = len(names)
    # The rate of restore_command itself: the time between calls (PostgreSQL
    # replaying; here, checking the bytes) is not the command's.
    ours, baseline = n / sum(calls), n / sum(base_calls)
    # After the first call (a direct fetch: imports, settings, client, and the
    # prefetcher's start), which a long recovery pays once.
    steady = (n - 1) / sum(calls[1:])
    print("calls ms:", " ".join(f"{c * 1000:.0f}" for c in calls))
    calls_ms = sorted(c * 1000 for c in calls)
    table(
        f"restore: {n} segments of 16 MiB from moto S3, one process per segment",
        ["what", "wall s", "calls s", "segments/s", "after the first", "first call ms",
         "median call ms", "slowest call ms"],
        [
            [f"walbackup fetch (prefetch {args.prefetch})", ours_s, sum(calls), ours, steady,
             calls[0] * 1000, calls_ms[n // 2], calls_ms[-1]],
            ["python -c boto3 download_file", base_s, sum(base_calls), baseline,
             (n - 1) / sum(base_calls[1:]), base_calls[0] * 1000,
             sorted(base_calls)[n // 2] * 1000, max(base_calls) * 1000],
        ],
    )  # fmt: skip
    emit(
        "restore",
        ours,
        baseline,
        unit="segments/s",
        bar=f">= {BAR_SEG_S:.0f} segments/s",
        met=ours >= BAR_SEG_S,
        raised_goal=f">= {RAISED_GOAL_SEG_S:.0f} segments/s",
        raised_goal_met=ours >= RAISED_GOAL_SEG_S,
        segments=n,
        prefetch=args.prefetch,
        median_call_ms=round(calls_ms[n // 2], 2),
        first_call_ms=round(calls[0] * 1000, 1),
        steady_seg_s=round(steady, 2),
        prefetcher_left_running=left,
    )


def _baseline(
    names: list[str],
    env: dict[str, str],
    pg_wal: Path,
    digests: dict[str, str],
    ttid: TenantTimelineId,
    endpoint: str,
) -> tuple[float, list[float]]:
    prefix = f"{ttid.tenant_id}/{ttid.timeline_id}/"
    dest = pg_wal / "RECOVERYXLOG"
    calls = []
    started = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", BASELINE, BUCKET, prefix + name, str(dest), endpoint],
            env=env,
            check=True,
        )
        calls.append(time.perf_counter() - t0)
        pg_keeps(dest)
        if sha256_file(dest) != digests[name]:
            raise SystemExit(f"baseline {name}: restored bytes differ")
        dest.unlink()
    return time.perf_counter() - started, calls


def _wait_prefetcher_gone(data_dir: Path, timeout_s: float = 15) -> bool:
    """True if a prefetcher still holds a spool lock after ``timeout_s``."""
    from tasks.restore.hit import LOCK_NAME, prefetcher_running

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        locks = list(data_dir.glob(f"spool/*/*/*/{LOCK_NAME}"))
        if not any(prefetcher_running(p.parent) for p in locks):
            return False
        time.sleep(0.1)
    return True


if __name__ == "__main__":
    os.environ.pop("WALBACKUP_RESTORE_PREFETCH", None)
    main()
