"""A cluster whose S3 verifies the checksums it is sent, as AWS S3 does (our
proxy, ``--verify-checksums``, in front of moto): the nodes' checksum probe
finds it out, uploads then carry no MD5, and a byte flipped on the way is
refused by the server, retried, and never archived (SPEC §9)."""

from __future__ import annotations

import time

import pytest

from tests.cluster import BackupSampler, Cluster
from tests.faults.harness import (
    NODES,
    Archive,
    WalWriter,
    assert_invariant,
    seg_lsn,
    time_to_advance,
    ttid_offloaded_by,
)
from tests.faults.s3proxy import S3FaultProxy
from tests.fixtures_s3 import MotoServer, s3_client
from tests.servers import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def test_flipped_bytes_are_refused_by_a_verifying_server_and_never_archived(
    moto_server: MotoServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = tmp_path_factory.mktemp("verifying")
    moto_server.start()
    bucket = f"walbackup-verifying-{int(time.time() * 1000)}"
    client = s3_client(moto_server.endpoint_url)
    client.create_bucket(Bucket=bucket)
    redis_server = RedisServer()
    redis_server.start()
    proxy = S3FaultProxy(
        moto_server.endpoint_url, log_path=root / "proxy.log", verify_checksums=True
    )
    proxy.start()
    cluster = Cluster(
        root, redis_server.url, f"s3://{bucket}/wal", s3_endpoint_url=proxy.endpoint_url
    )
    try:
        for n in NODES:
            cluster.start_node(n)
        cluster.start_beat()
        cluster.wait_nodes(list(NODES))
        ttid = ttid_offloaded_by(2)
        writer = WalWriter([cluster.workdir(n) for n in NODES], ttid, next_segno=1, rate=4)
        writer.write(3)
        cluster.wait_backup(ttid, seg_lsn(4), timeout=30)
        logs = "".join(cluster.log_path(f"node{n}").read_text() for n in NODES)
        assert "verifies the SHA-256 sent with each upload" in logs
        assert "every upload is verified by its MD5 ETag" not in logs

        with BackupSampler(cluster, ttid) as sampler:
            proxy.reset_stats()
            proxy.set("flip_byte", methods=["PUT"])
            writer.start()
            time.sleep(3)
            refused = proxy.stats().refused.get("PUT", 0)
            assert refused >= 1, "no flipped upload reached the server"
            healed = time.monotonic()
            proxy.clear()
            time_to_advance(cluster, ttid, healed, timeout=30)
            time.sleep(1)
            end = writer.stop()
            cluster.wait_backup(ttid, seg_lsn(end), timeout=30)
        archive = Archive(ttid, s3=client, bucket=bucket, prefix="wal")
        assert_invariant(
            cluster, archive, sampler, first_segno=1, written_end=end, expected_end=end
        )
        logs = "".join(cluster.log_path(f"node{n}").read_text() for n in NODES)
        assert "arrived corrupted" in logs
    finally:
        cluster.stop()
        proxy.stop()
        redis_server.close()
        client.close()
