"""A node whose wall clock is off by an hour (a broken NTP; SPEC §9; found by a drill).

One node's worker runs an hour behind, or ahead, under libfaketime (the
wall clock only: monotonic time stays true, as with a broken NTP).
Heartbeats used to carry each node's own time, compared with the reader's:
the election rounds the node behind ran counted it alive and the others'
counted it dead, so its timeline's offloader flapped between it and another
node round after round; and the node ahead, killed, stayed "alive" for an
hour, its timelines stalled. Those times are all Redis's now
(``tasks.state.clock``).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cluster import BackupSampler, Cluster, wait_for
from tests.faults.harness import (
    NODES,
    Archive,
    assert_invariant,
    backed_up_timeline,
    seg_lsn,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("faketime") is None, reason="needs libfaketime (faketime)"),
]

FAILOVER_BAR_S = 10.0
"""A dead offloader's timeline moves on within a few heartbeat timeouts (2 s here)."""


def skewed(offset: str) -> list[str]:
    return ["env", "FAKETIME_DONT_FAKE_MONOTONIC=1", "faketime", "-f", offset]


def offloaders(cluster: Cluster, ttid: str, seconds: float) -> list[int | None]:
    """The timeline's offloader of record, each time it changed over ``seconds``."""
    seen: list[int | None] = [cluster.state.timeline(ttid).offloader]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        offloader = cluster.state.timeline(ttid).offloader
        if offloader != seen[-1]:
            seen.append(offloader)
        time.sleep(0.05)
    return seen


def start(make_cluster: Callable[..., Cluster], node: int, offset: str) -> Cluster:
    """Nodes 1-3, ``node`` with its wall clock ``offset``, and beat."""
    cluster = make_cluster()
    for n in NODES:
        cluster.start_node(n, None, skewed(offset) if n == node else None)
    cluster.start_beat()
    # Not ``wait_nodes``, which reads the heartbeats' times with this process's clock.
    wait_for(lambda: set(cluster.state.nodes()) == set(NODES), 30, "every node's heartbeat")
    return cluster


def test_a_node_an_hour_behind_keeps_its_timelines(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    """Its heartbeats looked an hour old to the other nodes' election rounds."""
    cluster = start(make_cluster, 2, "-3600s")
    ttid, writer = backed_up_timeline(cluster, [cluster.workdir(n) for n in NODES], offloader=2)
    with BackupSampler(cluster, ttid) as sampler:
        writer.start()
        changes = offloaders(cluster, str(ttid), 6)
        end = writer.stop()
        assert changes == [2], f"the offloader went {changes}\n{cluster.tail_logs()}"
        cluster.wait_backup(ttid, seg_lsn(end), timeout=20)
    assert_invariant(cluster, Archive(ttid, root=tmp_path / "remote"), sampler,
                     first_segno=1, written_end=end, expected_end=end)  # fmt: skip


def test_a_node_an_hour_ahead_is_dead_once_killed(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    """Its heartbeats looked fresh for an hour after its last one."""
    cluster = start(make_cluster, 1, "+3600s")
    ttid, writer = backed_up_timeline(cluster, [cluster.workdir(n) for n in NODES], offloader=1)
    with BackupSampler(cluster, ttid) as sampler:
        cluster.kill("node1")
        killed = time.monotonic()
        writer.workdirs = [cluster.workdir(n) for n in (2, 3)]
        writer.write(3)
        cluster.wait_backup(ttid, seg_lsn(writer.next_segno), timeout=FAILOVER_BAR_S)
        print(f"Node 1 killed: its timeline backed up by another node in "
              f"{time.monotonic() - killed:.1f} s")  # fmt: skip
    assert cluster.state.timeline(str(ttid)).offloader in (2, 3)
    end = writer.next_segno
    assert_invariant(cluster, Archive(ttid, root=tmp_path / "remote"), sampler,
                     first_segno=1, written_end=end, expected_end=end)  # fmt: skip
