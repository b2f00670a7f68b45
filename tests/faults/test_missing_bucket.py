"""A missing bucket (SPEC §9 bad input: "a missing bucket ... gets a clear
error and loses nothing"). A 3-node cluster and beat start against an S3
bucket nobody created; WAL comes. Before the bucket exists, backup_lsn
cannot be recovered from the archive, so no upload is tried: the error must
show where users look, ``walbackup status`` (``last_error``), naming the
bucket. Once the bucket is made, backup resumes by itself, the error clears,
and the invariant holds."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from tasks.dev.simulate import simulate
from tests.cluster import SEG_SIZE, BackupSampler, Cluster, wait_for
from tests.faults.harness import (
    NODES,
    Archive,
    assert_invariant,
    seg_lsn,
    start_cluster,
    ttid_offloaded_by,
)
from tests.fixtures_s3 import MotoServer, s3_client

pytestmark = pytest.mark.integration


def test_a_missing_bucket_is_every_waiting_timelines_error_until_it_exists(
    make_cluster: Callable[..., Cluster], moto_server: MotoServer
) -> None:
    bucket = f"walbackup-late-{int(time.time() * 1000)}"
    cluster = start_cluster(
        lambda **kw: make_cluster(
            f"s3://{bucket}/wal", s3_endpoint_url=moto_server.endpoint_url, **kw
        )
    )
    client = s3_client(moto_server.endpoint_url)
    ttid = ttid_offloaded_by(1)
    workdirs = [cluster.workdir(n) for n in NODES]
    simulate(workdirs, [ttid], 3, SEG_SIZE)

    def last_error() -> str:
        return cluster.state.timeline(str(ttid)).last_error

    wait_for(lambda: "does not exist" in last_error(), 30, "the missing bucket in last_error")
    assert bucket in last_error() and cluster.backup_lsn(ttid) is None
    status = subprocess.run(
        [sys.executable, "-m", "tasks.cli", "status", "--json", str(ttid)],
        env=cluster.env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert status.returncode == 0, status.stderr
    assert "does not exist" in json.dumps(json.loads(status.stdout))

    with BackupSampler(cluster, ttid) as sampler:
        client.create_bucket(Bucket=bucket)
        cluster.wait_backup(ttid, seg_lsn(4), timeout=60)
        simulate(workdirs, [ttid], 2, SEG_SIZE, start_segno=4)
        cluster.wait_backup(ttid, seg_lsn(6), timeout=60)
    assert last_error() == ""
    archive = Archive(ttid, s3=client, bucket=bucket, prefix="wal")
    assert_invariant(cluster, archive, sampler, first_segno=1, written_end=6, expected_end=6)
    client.close()
