"""The pipeline end to end: three node workers and beat as real processes,
a private Redis, and remote storage checked byte for byte. The first two
tests run on RabbitMQ as the broker too."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tasks.core.election import determine_offloader
from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.core.segments import xlog_file_name
from tasks.dev.simulate import simulate
from tests.cluster import SEG_SIZE, BackupSampler, Cluster, wait_for

pytestmark = pytest.mark.integration

on_both_brokers = pytest.mark.parametrize("broker", ["redis", "rabbitmq"], indirect=True)
"""Once on Redis as the broker, once on RabbitMQ (Redis still coordinates)."""


def new_ttid() -> TenantTimelineId:
    return TenantTimelineId(secrets.token_hex(16), secrets.token_hex(16))


def remote_path(root: Path, ttid: TenantTimelineId, segno: int) -> Path:
    return root / ttid.tenant_id / ttid.timeline_id / xlog_file_name(segno, SEG_SIZE)


@on_both_brokers
def test_two_timelines_land_byte_identical(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    cluster = make_cluster()
    nodes = [1, 2, 3]
    ttids = [new_ttid(), new_ttid()]
    for n in nodes:
        cluster.start_node(n)
    cluster.start_beat()
    cluster.wait_nodes(nodes)
    simulate([cluster.workdir(n) for n in nodes], ttids, segments=20, seg_size=SEG_SIZE)
    end = Lsn.from_segment(21, 0, SEG_SIZE)  # segments 1..20 complete
    for ttid in ttids:
        cluster.wait_backup(ttid, end, timeout=60)
        assert cluster.backup_lsn(ttid) == end
    remote = tmp_path / "remote"
    for ttid in ttids:
        for segno in range(1, 21):
            local = (
                cluster.workdir(1)
                / ttid.tenant_id
                / ttid.timeline_id
                / xlog_file_name(segno, SEG_SIZE)
            )
            assert remote_path(remote, ttid, segno).read_bytes() == local.read_bytes()
        record = cluster.state.timeline(str(ttid))
        peers = [p.peer for p in cluster.state.peers(str(ttid))]
        expected = determine_offloader(peers, end, ttid.timeline_int, 128 << 20)
        assert record.offloader == expected.offloader


@on_both_brokers
def test_offloader_killed_mid_stream_another_takes_over(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    """SIGKILL the offloader while WAL keeps coming: another node takes over,
    nothing is lost, backup_lsn never moves backwards."""
    cluster = make_cluster()
    nodes = [1, 2, 3]
    ttid = new_ttid()
    for n in nodes:
        cluster.start_node(n)
    cluster.start_beat()
    cluster.wait_nodes(nodes)
    writer = threading.Thread(
        target=simulate,
        args=([cluster.workdir(n) for n in nodes], [ttid]),
        kwargs={"segments": 40, "seg_size": SEG_SIZE, "rate": 10.0},
    )
    with BackupSampler(cluster, ttid) as sampler:
        writer.start()
        try:
            first = wait_for(
                lambda: cluster.state.timeline(str(ttid)).offloader, 15, "a first offloader"
            )
            wait_for(
                lambda: (cluster.backup_lsn(ttid) or 0) >= Lsn.from_segment(5, 0, SEG_SIZE),
                20,
                "some progress before the kill",
            )
            cluster.kill(f"node{first}")
        finally:
            writer.join()
        cluster.wait_backup(ttid, Lsn.from_segment(41, 0, SEG_SIZE), timeout=60)
    assert cluster.state.timeline(str(ttid)).offloader not in (None, first)
    assert sampler.samples == sorted(sampler.samples), "backup_lsn moved backwards"
    remote = tmp_path / "remote"
    for segno in range(1, 41):
        local = (
            cluster.workdir(1) / ttid.tenant_id / ttid.timeline_id / xlog_file_name(segno, SEG_SIZE)
        )
        assert remote_path(remote, ttid, segno).read_bytes() == local.read_bytes()


def ttid_with_index(index: int, modulo: int) -> TenantTimelineId:
    """A timeline whose election picks caught-up peer ``index`` of ``modulo``."""
    while True:
        ttid = new_ttid()
        if ttid.timeline_int % modulo == index:
            return ttid


def test_lagging_node_and_late_joiner_are_never_elected(
    make_cluster: Callable[..., Cluster],
) -> None:
    """Node 3 lags more than max_offloader_lag_bytes and node 1 lacks the WAL
    at backup_lsn; both would win the modulo pick if they were eligible."""
    lag_segments = 6
    cluster = make_cluster(settings={"WALBACKUP_MAX_OFFLOADER_LAG_BYTES": str(3 * SEG_SIZE)})
    nodes = [1, 2, 3]
    # With all three caught up the pick is node 3 (index 2 of 3); with nodes
    # 1 and 2 it would be node 1 (index 0 of 2): timeline_int % 6 == 2 gives both.
    ttid = ttid_with_index(2, 6)
    workdirs = [cluster.workdir(n) for n in nodes]
    # Node 1 joined late: it holds only segments from 11 on. Node 3 is
    # lag_segments behind node 2 from the start. Node 3 starts last, so no
    # election ever sees it alone (alone, it would rightly be elected).
    simulate(workdirs[1:], [ttid], segments=10, seg_size=SEG_SIZE, lag={1: lag_segments})
    cluster.start_node(1)
    cluster.start_node(2)
    cluster.wait_nodes([1, 2])
    cluster.start_node(3)
    cluster.start_beat()
    cluster.wait_nodes(nodes)
    seen: list[tuple[int | None, Lsn | None]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            record = cluster.state.timeline(str(ttid))
            seen.append((record.offloader, record.backup_lsn))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        simulate(
            workdirs,
            [ttid],
            segments=20,
            seg_size=SEG_SIZE,
            start_segno=11,
            rate=10.0,
            lag={2: lag_segments},
        )
        cluster.wait_backup(ttid, Lsn.from_segment(31, 0, SEG_SIZE), timeout=60)
    finally:
        stop.set()
        sampler.join()
    node1_start = Lsn.from_segment(11, 0, SEG_SIZE)
    assert any(o is not None for o, _ in seen)
    for offloader, backup_lsn in seen:
        assert offloader != 3, "a node lagging more than max_offloader_lag_bytes was elected"
        if backup_lsn is not None and backup_lsn < node1_start:
            assert offloader != 1, "a node with local_start_lsn > backup_lsn was elected"


def test_cli_trigger_elects_at_once_and_status_reports_done(
    make_cluster: Callable[..., Cluster],
) -> None:
    """No beat runs: only `walbackup trigger` can start the backup of WAL that
    was on disk before the nodes started."""
    cluster = make_cluster()
    nodes = [1, 2, 3]
    ttid = new_ttid()
    simulate([cluster.workdir(n) for n in nodes], [ttid], segments=8, seg_size=SEG_SIZE)
    for n in nodes:
        cluster.start_node(n)
    cluster.wait_nodes(nodes)
    time.sleep(1.5)
    assert cluster.state.timeline(str(ttid)).offloader is None

    run = subprocess.run(
        [sys.executable, "-m", "tasks.cli", "trigger", str(ttid)],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    end = Lsn.from_segment(9, 0, SEG_SIZE)
    cluster.wait_backup(ttid, end, timeout=30)

    status = subprocess.run(
        [sys.executable, "-m", "tasks.cli", "status", "--json", str(ttid)],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
    (row,) = json.loads(status.stdout)["timelines"]
    assert row["backup_lsn"] == str(end) == row["commit_lsn"]
    assert row["lag_bytes"] == 0
    assert row["offloader"] in nodes
    assert sorted(p["node_id"] for p in row["peers"]) == nodes


def test_a_new_timeline_is_backed_up_without_waiting_for_beat(
    make_cluster: Callable[..., Cluster],
) -> None:
    """No beat runs. A timeline that appears with new WAL has no backup_lsn
    yet, which only a listing of the archive may give; the nodes' watchers
    may not list, so they hand it to a task (``Elector.recover_later``) that
    lists, elects and kicks at once, instead of waiting for beat's round."""
    cluster = make_cluster()
    nodes = [1, 2, 3]
    for n in nodes:
        cluster.start_node(n)
    cluster.wait_nodes(nodes)
    ttid = new_ttid()
    simulate([cluster.workdir(n) for n in nodes], [ttid], segments=4, seg_size=SEG_SIZE)
    cluster.wait_backup(ttid, Lsn.from_segment(5, 0, SEG_SIZE), timeout=30)
    assert cluster.state.timeline(str(ttid)).offloader in nodes


def test_bad_timeline_id_is_refused_by_trigger(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster()
    for bad in ["../x", "A" * 32 + "/" + "b" * 32, "a" * 31 + "/" + "b" * 32]:
        run = subprocess.run(
            [sys.executable, "-m", "tasks.cli", "trigger", bad],
            env=cluster.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 2
        assert "invalid" in run.stderr
    assert cluster.state.registered() == []
