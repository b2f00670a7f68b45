"""What scrubbing the archive costs (issue 11): objects/s a scrub pass verifies
incrementally (listing against the ledger) and deep (read back and hashed), on
a moto S3 server, against plain boto3 doing only the I/O.

- incremental: a scrub pass (``tasks.archive.scrubber.Scrubber.run``, deep
  check off) over N segments it has not seen yet — ledger flush included —
  vs one plain ``list_objects_v2`` pagination of the same prefix;
- steady state: a pass with nothing new (the rolling sweep of 1,000 older
  segments and the open problems only), in ms;
- deep: ``walbackup verify --deep``'s check (8 threads) vs 8 plain boto3
  threads GETting and SHA-256-hashing the same objects.

    .venv/bin/python -m bench.scrub [--segments 500] [--seg-mib 1]
"""

from __future__ import annotations

import argparse
import hashlib
import time
from concurrent.futures import ThreadPoolExecutor

from bench.common import MIB, Moto, aws_env, emit, log, private_redis, table, ttid_for, workspace
from tasks.archive.flush import LedgerFlusher
from tasks.archive.ledger_store import LedgerStore
from tasks.archive.scrubber import DeepBudget, Scrubber
from tasks.archive.verify import verify_timeline
from tasks.core.ledger import LedgerEntry, encode, wal_facts
from tasks.core.lsn import Lsn
from tasks.core.segments import xlog_file_name
from tasks.dev.simulate import expected_segment_bytes
from tasks.state.keys import ledger_key, tl_key
from tasks.state.redis import RedisState
from tasks.storage import open_storage
from tests.fixtures_s3 import s3_client


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--segments", type=int, default=500)
    parser.add_argument("--seg-mib", type=int, default=1)
    args = parser.parse_args()
    n, seg_size = args.segments, args.seg_mib * MIB
    ttid = ttid_for(0, "scrub")
    with workspace("scrub") as root, aws_env(), private_redis() as redis_server:
        moto = Moto(root)
        try:
            url = moto.fresh("walbackup-bench-scrub")
            bucket = url.removeprefix("s3://")
            storage = open_storage(url, s3_endpoint_url=moto.endpoint_url)
            state = RedisState.from_url(redis_server.url)
            log(f"archiving {n} segments of {args.seg_mib} MiB")
            client = s3_client(moto.endpoint_url)
            prefix = f"{ttid.tenant_id}/{ttid.timeline_id}/"  # the bucket is the root
            keys = []
            for segno in range(1, n + 1):
                data = expected_segment_bytes(ttid, segno, seg_size)
                key = prefix + xlog_file_name(segno, seg_size)
                client.put_object(Bucket=bucket, Key=key, Body=data)
                keys.append(key)
                entry = LedgerEntry(
                    seg_size,
                    hashlib.sha256(data).hexdigest(),
                    hashlib.md5(data, usedforsecurity=False).hexdigest(),
                    wal_facts(data[:40], segno * seg_size, seg_size),
                )
                state.r.hset(ledger_key(str(ttid)), str(segno), encode(entry))
            backup = Lsn.from_segment(n + 1, 0, seg_size)
            start = Lsn.from_segment(1, 0, seg_size)
            state.r.hset(
                tl_key(str(ttid)),
                mapping={"backup_lsn": str(backup), "timeline_start_lsn": str(start)},
            )
            state.r.hset(tl_key(str(ttid)), "wal_seg_size", seg_size)

            store = LedgerStore(storage)
            flusher = LedgerFlusher(1, state, store, lambda t, s: None)
            scrubber = Scrubber(state, flusher, DeepBudget(0), lambda t, s: None, lambda *a: False)
            t0 = time.perf_counter()
            result = scrubber.run(ttid, seg_size, backup, 1)
            first_s = time.perf_counter() - t0
            assert result.verified_lsn == backup and not result.open, result.open
            t0 = time.perf_counter()
            scrubber.run(ttid, seg_size, backup, 1)
            steady_ms = (time.perf_counter() - t0) * 1000

            t0 = time.perf_counter()
            listed = sum(
                len(page.get("Contents", []))
                for page in client.get_paginator("list_objects_v2").paginate(
                    Bucket=bucket, Prefix=prefix
                )
            )
            list_s = time.perf_counter() - t0

            t0 = time.perf_counter()
            verdict = verify_timeline(LedgerStore(storage), state, ttid, seg_size, deep=True)
            deep_s = time.perf_counter() - t0
            assert verdict.deep_checked == n and not verdict.problems, verdict.problems

            def get_and_hash(key: str) -> str:
                body = client.get_object(Bucket=bucket, Key=key)["Body"]
                return hashlib.sha256(body.read()).hexdigest()

            t0 = time.perf_counter()
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(get_and_hash, keys))
            base_deep_s = time.perf_counter() - t0
            client.close()
            storage.close()
            state.close()

        finally:
            moto.stop()

    ours, baseline = n / first_s, listed / list_s
    deep, base_deep = n / deep_s, n / base_deep_s
    table(
        f"scrub: {n} segments of {args.seg_mib} MiB on moto",
        ["what", "seconds", "objects/s"],
        [
            ["scrub pass over new segments (ledger flush included)", first_s, ours],
            ["plain boto3 list_objects_v2 of the prefix", list_s, baseline],
            ["scrub pass with nothing new (steady state)", steady_ms / 1000, "-"],
            ["verify --deep (8 threads)", deep_s, deep],
            ["plain boto3 GET + sha256 (8 threads)", base_deep_s, base_deep],
        ],
    )
    emit(
        "scrub",
        ours,
        baseline,
        unit="objects/s (incremental)",
        bar="report only",
        met=True,
        segments=n,
        seg_mib=args.seg_mib,
        steady_pass_ms=round(steady_ms, 1),
        deep_objects_s=round(deep, 1),
        deep_baseline_objects_s=round(base_deep, 1),
        deep_ratio=round(deep / base_deep, 3),
    )


if __name__ == "__main__":
    main()
