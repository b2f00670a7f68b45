"""A cluster whose S3 answers with ETags that are no MD5 of the bytes (AWS
under SSE-KMS, several S3-compatible stores; our proxy, ``--opaque-etags``,
in front of moto), scrubbing every second while WAL removal deletes the
nodes' copies of what is archived.

A review found that the scrubber took every such ETag for a changed object,
deleted it and uploaded a node's copy again, which removal was deleting at
the same time: committed segments lost from the archive and every node. Now
an ETag is evidence only: the object's bytes, read back, decide, and a heal
never deletes before that (``tasks.archive.heal``); nothing good is deleted
(SPEC §9: no committed segment is ever lost)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cluster import SEG_SIZE, BackupSampler, Cluster
from tests.faults.harness import (
    NODES,
    Archive,
    WalWriter,
    assert_invariant,
    seg_lsn,
    start_cluster,
    ttid_offloaded_by,
)
from tests.faults.s3proxy import S3FaultProxy
from tests.fixtures_s3 import MotoServer, s3_client
from tests.integration.test_cli_cluster import walbackup

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def test_etags_that_are_no_md5s_never_get_good_segments_deleted(
    moto_server: MotoServer,
    s3_bucket_url: str,
    redis_url: str,
    make_cluster: Callable[..., Cluster],
    tmp_path: Path,
) -> None:
    proxy = S3FaultProxy(
        moto_server.endpoint_url, log_path=tmp_path / "proxy.log", opaque_etags=True
    )
    proxy.start()
    settings = {
        "WALBACKUP_SCRUB_INTERVAL": "1",
        "WALBACKUP_SCRUB_DEEP_RATE": "0",  # the shallow check alone: ETags and sizes
        "WALBACKUP_REMOVE_WAL": "true",
        "WALBACKUP_WAL_KEEP_SEGMENTS": "0",
    }
    bucket, _, prefix = s3_bucket_url.removeprefix("s3://").partition("/")
    client = s3_client(moto_server.endpoint_url)
    try:
        cluster = start_cluster(
            make_cluster, settings=settings, remote_storage=s3_bucket_url,
            s3_endpoint_url=proxy.endpoint_url,
        )  # fmt: skip
        ttid = ttid_offloaded_by(1)
        writer = WalWriter([cluster.workdir(n) for n in NODES], ttid, next_segno=1, rate=8)
        with BackupSampler(cluster, ttid) as sampler:
            writer.start()
            time.sleep(8)  # eight scrub passes while segments are archived and removed
            end = writer.stop()
            cluster.wait_backup(ttid, seg_lsn(end), timeout=60)
            time.sleep(3)  # passes over the whole archive once nothing new comes
        archive = Archive(ttid, s3=client, bucket=bucket, prefix=prefix)
        assert_invariant(
            cluster, archive, sampler, first_segno=1, written_end=end, expected_end=end
        )
        # Nothing was damaged: no DELETE but the checksum probe's, one per node at
        # most (before the fix: dozens every 10 s).
        assert proxy.stats().forwarded.get("DELETE", 0) <= len(NODES)
        logs = "".join(cluster.log_path(f"node{n}").read_text() for n in NODES)
        assert "compares sizes only" in logs  # a few read-backs showed it, then sizes only
        assert "uploaded again" not in logs

        env = {
            "WALBACKUP_REMOTE_STORAGE": s3_bucket_url,
            "WALBACKUP_S3_ENDPOINT_URL": proxy.endpoint_url,
        }
        run = walbackup("verify", "--json", str(ttid), redis_url=redis_url, **env)
        assert run.returncode == 0 and "no MD5 of them" in run.stdout, run.stdout + run.stderr

        # A real rewrite of the same size: no ETag shows it here, the bytes do.
        archive.put(2, b"\x00" * SEG_SIZE)
        run = walbackup("verify", "--deep", str(ttid), redis_url=redis_url, **env)
        assert run.returncode == 1 and "corrupt" in run.stdout, run.stdout + run.stderr
    finally:
        proxy.stop()
