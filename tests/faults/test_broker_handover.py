"""The offloader must change while the broker is down (SPEC §9).

Three node workers and beat; Redis coordinates, a second private
redis-server is the Celery broker. WAL comes into every WORKDIR until backup
runs, then the broker is SIGKILLed and node 1, the offloader, stops getting
WAL: nodes 2 and 3 run ahead and node 1 falls further behind than
``max_offloader_lag_bytes``. Elections are beat's tasks, so none runs while
the broker is down: node 1 keeps the timeline. The broker comes back empty
on the same port (what was queued is lost). Then the next election hands the
timeline over (node 1 steps down and kicks the new offloader, which uploads
through messages of its own), every process is alive, backup moves within
SPEC §9's 10 s and reaches the end of the WAL, and the archive holds every
segment once, as written.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tasks.core.ids import TenantTimelineId
from tasks.state.keys import lease_key
from tests.cluster import SEG_SIZE, BackupSampler, Cluster, wait_for
from tests.faults.harness import (
    NODES,
    Archive,
    WalWriter,
    assert_invariant,
    seg_lsn,
    time_to_advance,
    ttid_offloaded_by,
)
from tests.servers import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

RESUME_BAR_S = 10.0
"""SPEC §9: progress within 10 s of the broker returning."""
DOWN_S = 4.0
"""How long the broker stays down: node 1 falls ~30 segments behind."""


def log_text(cluster: Cluster, name: str) -> str:
    return cluster.log_path(name).read_text(errors="replace")


def wait_node1_leases(cluster: Cluster, *ttids: TenantTimelineId) -> None:
    """Until node 1 holds the leases of ``ttids`` (offloaded by it): a new
    timeline's first election may run before every node told of it, and
    beat's rounds then move it to node 1."""
    for ttid in ttids:
        wait_for(
            lambda t=ttid: (
                cluster.state.timeline(str(t)).offloader == 1
                and (cluster.state.r.get(lease_key(str(t))) or "").startswith("1.")
            ),
            15,
            f"node 1 to hold the lease of {ttid}",
        )


def test_offloader_change_while_the_broker_is_down(make_cluster: Callable[..., Cluster]) -> None:
    broker = RedisServer()
    broker.start()
    try:
        cluster = make_cluster(
            broker_url=broker.url,
            settings={
                "WALBACKUP_MAX_OFFLOADER_LAG_BYTES": str(2 * SEG_SIZE),
                # Node 1 must count as alive throughout: nodes elect by
                # themselves (no broker) an offloader that stopped
                # heartbeating, and under a loaded suite a beat can come
                # 2 s late (the harness's timeout). The lag, not a death,
                # is what must wait for beat and the broker here.
                "WALBACKUP_HEARTBEAT_TIMEOUT": "5",
            },
        )
        for n in NODES:
            cluster.start_node(n)
        cluster.start_beat()
        cluster.wait_nodes(list(NODES))
        ttid = ttid_offloaded_by(1)
        workdirs = {n: cluster.workdir(n) for n in NODES}
        everyone = WalWriter(list(workdirs.values()), ttid, next_segno=1, rate=8.0).start()
        with BackupSampler(cluster, ttid) as sampler:
            cluster.wait_backup(ttid, seg_lsn(6), timeout=30)
            wait_node1_leases(cluster, ttid)
            broker.kill()
            ahead = WalWriter([workdirs[2], workdirs[3]], ttid, everyone.stop(), rate=8.0)
            ahead.start()
            try:
                time.sleep(DOWN_S)
                assert cluster.state.timeline(str(ttid)).offloader == 1  # no election ran
                broker.start()  # empty: what was queued is lost
                back = time.monotonic()
                moved_s = time_to_advance(cluster, ttid, back, timeout=30)
                time.sleep(1)  # WAL written after the broker returned
            finally:
                written_end = ahead.stop()
            cluster.wait_backup(ttid, seg_lsn(written_end), timeout=60)
            caught_up_s = time.monotonic() - back
        assert_invariant(
            cluster,
            Archive(ttid, root=cluster.root / "remote"),
            sampler,
            first_segno=1,
            written_end=written_end,
            expected_end=written_end,
        )
        assert cluster.state.timeline(str(ttid)).offloader in (2, 3)
        assert "stepping down from backup (node " in log_text(cluster, "node1")
        for name, proc in cluster.procs.items():
            assert proc.poll() is None, f"{name} exited: {proc.returncode}"
            assert "Unrecoverable error" not in log_text(cluster, name)
        print(
            f"\nbroker down {DOWN_S:.0f} s while the offloader fell behind: backup_lsn "
            f"moved {moved_s:.1f} s after it returned, reached the end of the WAL "
            f"({written_end - 1} segments) {caught_up_s:.1f} s after"
        )
        assert moved_s <= RESUME_BAR_S
    finally:
        broker.close()


def test_a_hand_over_kick_the_broker_cannot_take_never_stalls_the_heartbeats(
    make_cluster: Callable[..., Cluster],
) -> None:
    """An election moved node 1's timeline to node 2 just before the broker
    died (the test writes that election's result, as beat's round would):
    node 1's next heartbeat round hands the lease over and kicks node 2, and
    the kick cannot be sent. The round must go on: node 1 keeps heartbeating
    and keeps the lease of the other timeline it offloads."""
    broker = RedisServer()
    broker.start()
    try:
        cluster = make_cluster(broker_url=broker.url)
        for n in NODES:
            cluster.start_node(n)
        cluster.start_beat()
        cluster.wait_nodes(list(NODES))
        moved, kept = ttid_offloaded_by(1), ttid_offloaded_by(1)
        workdirs = [cluster.workdir(n) for n in NODES]
        for ttid in (moved, kept):
            WalWriter(workdirs, ttid, next_segno=1).write(3)
            cluster.wait_backup(ttid, seg_lsn(4), timeout=30)
        wait_node1_leases(cluster, moved, kept)
        kept_lease = cluster.state.r.get(lease_key(str(kept)))
        cluster.kill("beat")  # no round undoes the election below
        broker.kill()
        pipe = cluster.state.pipeline()
        cluster.state.record_election(str(moved), 2, "test: node 2 elected", time.time(), pipe)
        pipe.execute()
        started = time.monotonic()
        while time.monotonic() - started < DOWN_S:
            age = time.time() - cluster.state.nodes()[1]["ts"]
            assert age < 2.0, f"node 1's heartbeat is {age:.1f} s old: its round is stuck"
            time.sleep(0.2)
        text = log_text(cluster, "node1")
        assert "stepping down from backup (node 2 elected)" in text
        assert cluster.state.r.get(lease_key(str(kept))) == kept_lease
        assert "lost its lease" not in text
        broker.start()
    finally:
        broker.close()
