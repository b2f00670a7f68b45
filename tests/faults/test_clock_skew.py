"""A node whose wall clock is off by an hour (a broken NTP; SPEC §9; found by a drill).

One node's worker runs an hour behind, or ahead, under libfaketime (the
wall clock only: monotonic time stays true, as with a broken NTP); or beat
five minutes behind; or a standby beat an hour behind, taking the lock over.
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

from tasks.state.keys import ROUND_LOCK_KEY
from tests.cluster import BackupSampler, Cluster, wait_for
from tests.faults.harness import (
    NODES,
    Archive,
    WalWriter,
    assert_invariant,
    backed_up_timeline,
    seg_lsn,
    ttid_offloaded_by,
)
from tests.removal_support import REMOVAL_ON, wait_held

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("faketime") is None, reason="needs libfaketime (faketime)"),
]

FAILOVER_BAR_S = 10.0
"""A dead offloader's timeline moves on within a few heartbeat timeouts (2 s here)."""


def skewed(offset: str, monotonic: bool = False) -> list[str]:
    """Under libfaketime 0.9.10 a worker whose monotonic clock is faked too
    never heartbeats, and beat's ``time.sleep`` fails (EINVAL) when it is
    not: each gets the one that works (they only use monotonic differences)."""
    fake = [] if monotonic else ["env", "FAKETIME_DONT_FAKE_MONOTONIC=1"]
    return [*fake, "faketime", "-f", offset]


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


def start(
    make_cluster: Callable[..., Cluster],
    node: int,
    offset: str,
    settings: dict[str, str] | None = None,
) -> Cluster:
    """Nodes 1-3, ``node`` (0: beat) with its wall clock ``offset``, and beat."""
    cluster = make_cluster(settings=settings)
    for n in NODES:
        cluster.start_node(n, None, skewed(offset) if n == node else None)
    if node == 0:
        beat = skewed(offset, monotonic=True)
        cluster.spawn("beat", ["beat", "--loglevel=DEBUG"], dict(cluster.env), beat)
    else:
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


def test_ticks_of_a_beat_five_minutes_behind_run(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    """Beat's ticks carried an expiry by beat's clock, which each worker
    judged by its own: a beat a second or more behind the workers had every
    election round dropped, and every scrub, so the scrubber never verified
    the archive and WAL removal, which waits for it, never removed a segment."""
    cluster = start(make_cluster, 0, "-300s", settings=REMOVAL_ON)
    ttid = ttid_offloaded_by(3)
    writer = WalWriter([cluster.workdir(n) for n in NODES], ttid, next_segno=1)
    with BackupSampler(cluster, ttid) as sampler:
        writer.write(6)
        cluster.wait_backup(ttid, seg_lsn(7), timeout=20)
        for n in NODES:  # the newest complete segment stays (SPEC §4)
            wait_held(cluster, n, ttid, [6])
        # Election rounds run: only they take the round lock.
        wait_for(lambda: cluster.state.r.exists(ROUND_LOCK_KEY), 5, "an election round")
    assert_invariant(cluster, Archive(ttid, root=tmp_path / "remote"), sampler,
                     first_segno=1, written_end=7, expected_end=7)  # fmt: skip


TAKEOVER_BAR_S = 10.0
"""Beat's ticks go on within a few election and scrub intervals of the takeover."""


def test_a_beat_an_hour_behind_ticks_once_it_takes_the_lock(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    """RedBeat stores each entry's next run by the clock of the beat that sent
    it: the standby beat, an hour behind, took the lock over from a killed
    beat and sent nothing for an hour (no elections by beat; no scrubs, so
    WAL removal, which waits for the scrubber, stopped)."""
    cluster = make_cluster(settings=REMOVAL_ON)
    for n in NODES:
        cluster.start_node(n)
    cluster.start_beat()
    wait_for(lambda: set(cluster.state.nodes()) == set(NODES), 30, "every node's heartbeat")
    behind = cluster.log_path("beat2")
    cluster.spawn("beat2", ["beat", "--loglevel=DEBUG"], dict(cluster.env),
                  skewed("-3600s", monotonic=True))  # fmt: skip
    ttid = ttid_offloaded_by(3)
    writer = WalWriter([cluster.workdir(n) for n in NODES], ttid, next_segno=1)
    with BackupSampler(cluster, ttid) as sampler:
        writer.write(3)
        for n in NODES:  # the first beat's scrubs
            wait_held(cluster, n, ttid, [3])
        wait_for(lambda: "standing by" in behind.read_text(), 10, "the second beat")
        cluster.kill("beat")
        wait_for(lambda: "Acquired lock" in behind.read_text(), 20, "the second beat's takeover")
        took_over = time.monotonic()
        writer.write(3)
        for n in NODES:  # only the second beat's scrubs can verify segments 4-5
            wait_held(cluster, n, ttid, [6], timeout=TAKEOVER_BAR_S)
        log = behind.read_text()
        assert "Sending due task walbackup-elect-all" in log, cluster.tail_logs()
        assert "rescheduled from now" in log
        print(f"Beat an hour behind took over: WAL removed within "
              f"{time.monotonic() - took_over:.1f} s")  # fmt: skip
    assert_invariant(cluster, Archive(ttid, root=tmp_path / "remote"), sampler,
                     first_segno=1, written_end=7, expected_end=7)  # fmt: skip
