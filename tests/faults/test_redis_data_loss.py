"""Redis loses all its data (SPEC §9): nothing is forgotten. The nodes
register their timelines again with their heartbeats, beat's round recovers
backup_lsn by listing the archive, and backup_lsn never moves backwards,
even though the nodes' state files lag it (``WALBACKUP_STATE_FILE_INTERVAL``)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from tasks.archive.ledger_store import LedgerStore
from tasks.storage.local import LocalStorage
from tests.cluster import SEG_SIZE, BackupSampler, Cluster, wait_for
from tests.faults.harness import (
    NODES,
    Archive,
    assert_invariant,
    backed_up_timeline,
    seg_lsn,
    start_cluster,
)

pytestmark = pytest.mark.integration


def test_idle_cluster_recovers_everything_without_new_wal(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    cluster = start_cluster(make_cluster)
    ttid, writer = backed_up_timeline(
        cluster, [cluster.workdir(n) for n in NODES], offloader=2, segments=10
    )

    with BackupSampler(cluster, ttid) as sampler:
        redis.Redis.from_url(cluster.redis_url).flushdb()  # our private server
        lost = time.monotonic()
        # No new WAL: the nodes' heartbeats alone bring the timeline back.
        wait_for(
            lambda: str(ttid) in cluster.state.registered(), 10, "the timeline to be registered"
        )
        cluster.wait_backup(ttid, seg_lsn(11), timeout=10)
        took = time.monotonic() - lost
    print(f"\nidle cluster after FLUSHDB: backup_lsn recovered in {took:.2f} s")
    archive = Archive(ttid, root=tmp_path / "remote")
    assert_invariant(cluster, archive, sampler, first_segno=1, written_end=11, expected_end=11)
    # And backup goes on from there.
    writer.write(3)
    cluster.wait_backup(ttid, seg_lsn(14), timeout=20)


def test_backup_lsn_never_moves_backwards_across_data_loss(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    cluster = start_cluster(make_cluster, settings={"WALBACKUP_SCRUB_INTERVAL": "1"})
    ttid, writer = backed_up_timeline(cluster, [cluster.workdir(n) for n in NODES], offloader=1)
    writer.rate = 8
    with BackupSampler(cluster, ttid) as sampler:
        writer.start()
        time.sleep(1.5)
        # Right after a commit, before any node's state file caught up.
        before = cluster.backup_lsn(ttid)
        wait_for(lambda: cluster.backup_lsn(ttid) != before, 10, "a commit", interval=0.005)
        redis.Redis.from_url(cluster.redis_url).flushdb()
        lost = time.monotonic()
        time.sleep(1.5)
        end = writer.stop()
        cluster.wait_backup(ttid, seg_lsn(end), timeout=20)
        took = time.monotonic() - lost
    print(f"\nFLUSHDB under load: caught up to segno {end} {took:.2f} s later")
    archive = Archive(ttid, root=tmp_path / "remote")
    assert_invariant(cluster, archive, sampler, first_segno=1, written_end=end, expected_end=end)

    # The ledger lost no segment: the entries Redis lost before they reached
    # a page were rebuilt from the archive, and the scrubber verifies it all.
    wait_for(
        lambda: cluster.state.timeline(str(ttid)).verified_lsn == seg_lsn(end),
        30,
        "the scrubber to verify the archive up to backup_lsn",
    )
    storage = LocalStorage(tmp_path / "remote")
    entries, conflicts = LedgerStore(storage).entries(ttid, SEG_SIZE, 0, end)
    assert sorted(entries) == list(range(1, end)) and not conflicts
    for segno, entry in entries.items():
        assert entry.sha256 == hashlib.sha256(archive.read(segno) or b"").hexdigest(), segno
    recovered = sum(e.source == "recovered" for e in entries.values())
    print(f"ledger: {len(entries)} entries, {recovered} rebuilt from the archive")
