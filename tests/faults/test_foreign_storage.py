"""One node given another storage than the others (SPEC §9; found by a drill).

Every node builds its storage from its own settings. A node whose
``WALBACKUP_REMOTE_STORAGE`` (or S3 endpoint) names another bucket, prefix or
endpoint that answers used to upload, verify, commit and scrub there as if
it were the archive: backup_lsn advanced, nothing was reported, and with WAL
removal on every node deleted WAL that the archive never got. Now the node
finds the archive's marker missing from its storage, uses none of it, says
so, and the elections pass it over: the other nodes archive the timeline it
would have offloaded, and removal goes by what they verified.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cluster import BackupSampler, Cluster, wait_for
from tests.faults.harness import (
    NODES,
    Archive,
    WalWriter,
    assert_invariant,
    seg_lsn,
    ttid_offloaded_by,
)
from tests.fixtures_s3 import MotoServer, s3_client
from tests.removal_support import REMOVAL_ON, held, wait_held
from tests.servers import free_port

pytestmark = pytest.mark.integration


def test_a_node_with_another_storage_uploads_nothing_there_and_steps_aside(
    tmp_path: Path, redis_url: str
) -> None:
    remote, stray = tmp_path / "remote", tmp_path / "stray"
    cluster = Cluster(tmp_path, redis_url, remote.as_uri(), settings=REMOVAL_ON)
    ttid = ttid_offloaded_by(1)  # node 1's, were its storage the archive
    try:
        for n in (2, 3):
            cluster.start_node(n)
        cluster.start_beat()
        cluster.wait_nodes([2, 3])
        wait_for(lambda: cluster.state.archive_id() is not None, 20, "the archive's id")
        cluster.start_node(1, {"WALBACKUP_REMOTE_STORAGE": stray.as_uri()})
        cluster.wait_nodes([1])
        with BackupSampler(cluster, ttid) as sampler:
            writer = WalWriter([cluster.workdir(n) for n in NODES], ttid, next_segno=1)
            writer.write(12)
            cluster.wait_backup(ttid, seg_lsn(13), timeout=30)
            for n in (2, 3):
                wait_held(cluster, n, ttid, [12])
        # The node that cannot see the archive removes none of its WAL: the
        # cluster's backup_lsn says nothing about its storage.
        assert held(cluster.workdir(1), ttid) == list(range(1, 13))
        assert cluster.state.timeline(str(ttid)).offloader in (2, 3)
        assert [p.name for p in stray.rglob("*") if p.is_file()] == [], "written to the stray"
        log = cluster.log_path("node1").read_text(errors="replace")
        assert "is not in this node's storage, where other node(s) 2, 3 find it" in log, log[-3000:]
        (peer1,) = [r.peer for r in cluster.state.peers(str(ttid)) if r.peer.node_id == 1]
        assert peer1.damaged_lsn is not None  # what status shows: passed over
        assert_invariant(
            cluster, Archive(ttid, root=remote), sampler,
            first_segno=1, written_end=13, expected_end=13,
        )  # fmt: skip
    finally:
        cluster.stop()
        cluster.state.r.close()


def test_a_node_whose_endpoint_never_answers_is_passed_over(
    tmp_path: Path, redis_url: str, moto_server: MotoServer, s3_bucket_url: str
) -> None:
    """Found by the same drill: one node's S3 endpoint a dead port. Its
    storage errors were clear, but the elections kept the timelines it was
    given, so a third of the cluster's timelines stalled. A node that cannot
    confirm its storage is the archive is now passed over like a foreign one."""
    cluster = Cluster(tmp_path, redis_url, s3_bucket_url, s3_endpoint_url=moto_server.endpoint_url)
    ttid = ttid_offloaded_by(1)
    bucket, _, prefix = s3_bucket_url.removeprefix("s3://").partition("/")
    client = s3_client(moto_server.endpoint_url)
    try:
        for n in (2, 3):
            cluster.start_node(n)
        cluster.start_beat()
        cluster.wait_nodes([2, 3])
        cluster.start_node(1, {"WALBACKUP_S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"})
        cluster.wait_nodes([1])
        with BackupSampler(cluster, ttid) as sampler:
            WalWriter([cluster.workdir(n) for n in NODES], ttid, next_segno=1).write(12)
            cluster.wait_backup(ttid, seg_lsn(13), timeout=30)
        assert cluster.state.timeline(str(ttid)).offloader in (2, 3)
        log = cluster.log_path("node1").read_text(errors="replace")
        assert "cannot check that its storage" in log, log[-3000:]
        assert_invariant(
            cluster, Archive(ttid, s3=client, bucket=bucket, prefix=prefix), sampler,
            first_segno=1, written_end=13, expected_end=13,
        )  # fmt: skip
    finally:
        cluster.stop()
        cluster.state.r.close()
        client.close()
