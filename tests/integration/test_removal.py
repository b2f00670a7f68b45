"""Local WAL removal on a cluster of real processes (issue 10, part 2).

Three node workers with ``WALBACKUP_REMOVE_WAL=true`` and beat, a private
Redis, and the archive read behind the system's back: the nodes delete what is
archived (keeping the keep-back and their newest complete segment), the archive
stays complete and byte-identical, and a node whose WAL stopped coming keeps
what it needs to be elected again.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tasks.core.ids import TenantTimelineId
from tasks.dev.simulate import simulate
from tests.cluster import SEG_SIZE, BackupSampler, Cluster, wait_for
from tests.faults.harness import (
    NODES,
    Archive,
    WalWriter,
    assert_invariant,
    scrape,
    seg_lsn,
    start_cluster,
    ttid_offloaded_by,
)
from tests.fixtures_s3 import MotoServer, s3_client
from tests.removal_support import REMOVAL_ON, held, state_of, wait_held
from tests.servers import free_port

pytestmark = pytest.mark.integration

SEGMENTS = 200  # the figure: after 200 segments, only the keep-back is left


def test_three_nodes_keep_only_the_keep_back_and_the_archive_stays_whole(
    make_cluster: Callable[..., Cluster], moto_server: MotoServer, s3_bucket_url: str
) -> None:
    ports = {n: free_port() for n in NODES}
    cluster = make_cluster(
        remote_storage=s3_bucket_url,
        s3_endpoint_url=moto_server.endpoint_url,
        settings={**REMOVAL_ON, "WALBACKUP_WAL_KEEP_SEGMENTS": "1"},
    )
    for n in NODES:
        cluster.start_node(n, {"WALBACKUP_METRICS_PORT": str(ports[n])})
    cluster.start_beat()
    cluster.wait_nodes(list(NODES))
    ttid = TenantTimelineId(secrets.token_hex(16), secrets.token_hex(16))
    workdirs = [cluster.workdir(n) for n in NODES]
    writer = threading.Thread(
        target=simulate,
        args=(workdirs, [ttid]),
        kwargs={"segments": SEGMENTS, "seg_size": SEG_SIZE, "rate": 20.0},
    )
    too_early: list[str] = []
    most_held = 0
    deadline = time.monotonic() + 90
    with BackupSampler(cluster, ttid) as sampler:
        writer.start()
        # While WAL comes and uploads run: nothing at or above the horizon of
        # the backup_lsn read *after* the listing is ever gone.
        while writer.is_alive() or (cluster.backup_lsn(ttid) or 0) < seg_lsn(SEGMENTS + 1):
            listings = {n: held(cluster.workdir(n), ttid) for n in NODES}
            backup = cluster.backup_lsn(ttid)
            for n, segnos in listings.items():
                most_held = max(most_held, len(segnos))
                if segnos and backup is not None:
                    floor = max(1, backup.segment_number(SEG_SIZE) - 1)
                    if segnos[0] > floor:
                        too_early.append(f"node {n} starts at {segnos[0]}, backup_lsn {backup}")
            time.sleep(0.05)
            assert time.monotonic() < deadline, cluster.tail_logs()
        writer.join()
    assert not too_early, too_early[:5]
    for n in NODES:
        wait_held(cluster, n, ttid, [SEGMENTS])  # 0 unarchived + keep-back 1
    s3 = s3_client(moto_server.endpoint_url)
    bucket, prefix = s3_bucket_url.removeprefix("s3://").split("/", 1)
    archive = Archive(ttid, s3=s3, bucket=bucket, prefix=prefix)
    assert_invariant(
        cluster,
        archive,
        sampler,
        first_segno=1,
        written_end=SEGMENTS + 1,
        expected_end=SEGMENTS + 1,
    )
    assert archive.segnos() == set(range(1, SEGMENTS + 1))
    for n in NODES:
        recorded = state_of(cluster.workdir(n), ttid)
        assert recorded.removal_horizon_lsn == seg_lsn(SEGMENTS)
        assert recorded.timeline_start_lsn == seg_lsn(1)
        assert scrape(ports[n], "removed_wal_segments_total") == SEGMENTS - 1
        text = cluster.log_path(f"node{n}").read_text(errors="replace")
        assert f"Timeline {ttid}: node {n} removed" in text
    # The heartbeats say so too, and every node is still capable (SPEC §4).
    backup = cluster.backup_lsn(ttid)
    assert backup == seg_lsn(SEGMENTS + 1)

    def published() -> dict[int, Any]:
        return {r.peer.node_id: r.peer.local_start_lsn for r in cluster.state.peers(str(ttid))}

    wait_for(lambda: published() == dict.fromkeys(NODES, seg_lsn(SEGMENTS)), 5, "heartbeats")
    print(f"\n{SEGMENTS} segments: each node holds 1 at the end, at most {most_held} during")


def test_a_lagging_node_keeps_what_it_needs_and_is_elected_again(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    """Node 2's WAL stops arriving while nodes 1 and 3 archive 20 more
    segments: node 2 keeps its newest complete segment (keep-back 0), stays
    capable (local_start_lsn <= backup_lsn), and once caught up it is elected
    offloader again (the timeline is node 2's when all three are caught up)."""
    lag_limit = 3 * SEG_SIZE
    cluster = start_cluster(
        lambda: make_cluster(
            settings={
                **REMOVAL_ON,
                "WALBACKUP_WAL_KEEP_SEGMENTS": "0",
                "WALBACKUP_MAX_OFFLOADER_LAG_BYTES": str(lag_limit),
            }
        )
    )
    ttid = ttid_offloaded_by(2)
    everyone = WalWriter([cluster.workdir(n) for n in NODES], ttid, next_segno=1)
    everyone.write(10)
    cluster.wait_backup(ttid, seg_lsn(11), timeout=30)
    wait_for(lambda: cluster.state.timeline(str(ttid)).offloader == 2, 10, "node 2 elected")

    with BackupSampler(cluster, ttid) as sampler:
        # Node 2's writer pauses; nodes 1 and 3 go on to segno 30.
        others = WalWriter([cluster.workdir(1), cluster.workdir(3)], ttid, next_segno=11)
        others.write(20)
        cluster.wait_backup(ttid, seg_lsn(31), timeout=60)
        for n in (1, 3):
            wait_held(cluster, n, ttid, [30])
        wait_held(cluster, 2, ttid, [10])  # the newest it has: never removed
        record = cluster.state.timeline(str(ttid))
        assert record.offloader in (1, 3)
        backup = record.backup_lsn
        assert backup == seg_lsn(31)
        (peer2,) = [r.peer for r in cluster.state.peers(str(ttid)) if r.peer.node_id == 2]
        assert peer2.commit_lsn == seg_lsn(11)
        assert peer2.local_start_lsn is not None and peer2.local_start_lsn <= backup

        # Node 2 catches up: elected again, and then uploads new WAL itself.
        WalWriter([cluster.workdir(2)], ttid, next_segno=11).write(20)
        wait_for(
            lambda: cluster.state.timeline(str(ttid)).offloader == 2,
            15,
            "node 2, caught up, to be elected again",
        )
        wait_held(cluster, 2, ttid, [30])
        # Fewer segments than the lag limit: whichever node's heartbeat is a
        # round behind, node 2 stays among the caught-up (a round late by 4
        # segments would step it aside, as the election rule says).
        everyone.next_segno = 31
        everyone.write(2)
        cluster.wait_backup(ttid, seg_lsn(33), timeout=30)
    assert cluster.state.timeline(str(ttid)).offloader == 2
    assert_invariant(
        cluster,
        Archive(ttid, root=tmp_path / "remote"),
        sampler,
        first_segno=1,
        written_end=33,
        expected_end=33,
    )
