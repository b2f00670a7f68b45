"""Faults from SPEC §9 with real processes: a paused (partitioned) lease
holder is fenced, and a Redis that lost all its data recovers backup_lsn
from the nodes' state files."""

from __future__ import annotations

import secrets
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from celery import Celery

from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.core.segments import xlog_file_name
from tasks.dev.simulate import simulate
from tests.cluster import SEG_SIZE, BackupSampler, Cluster, wait_for

pytestmark = pytest.mark.integration


def new_ttid() -> TenantTimelineId:
    return TenantTimelineId(secrets.token_hex(16), secrets.token_hex(16))


def start_cluster(make_cluster: Callable[..., Cluster]) -> Cluster:
    cluster = make_cluster()
    for n in (1, 2, 3):
        cluster.start_node(n)
    cluster.start_beat()
    cluster.wait_nodes([1, 2, 3])
    return cluster


def assert_remote_matches(cluster: Cluster, ttid: TenantTimelineId, segnos: range) -> None:
    remote = cluster.root / "remote" / ttid.tenant_id / ttid.timeline_id
    local = cluster.workdir(1) / ttid.tenant_id / ttid.timeline_id
    for segno in segnos:
        name = xlog_file_name(segno, SEG_SIZE)
        assert (remote / name).read_bytes() == (local / name).read_bytes(), name


def lease_converged(
    cluster: Cluster,
    ttid: TenantTimelineId,
    workdirs: list[Path],
    next_segno: list[int],
    other_than: int | None = None,
) -> tuple[int, str]:
    """Wait until the elected offloader (``other_than`` excluded) holds the
    lease; returns (node, token).

    Right after start, elections may flip while heartbeats arrive, and a node
    takes the lease only when it has work: so keep completing one segment at a
    time until the two agree."""

    def agreed() -> tuple[int, str] | None:
        offloader = cluster.state.timeline(str(ttid)).offloader
        token = cluster.state.lease_holder_token(str(ttid))
        if (
            offloader not in (None, other_than)
            and token is not None
            and token.startswith(f"{offloader}.")
        ):
            return offloader, token
        simulate(workdirs, [ttid], segments=1, seg_size=SEG_SIZE, start_segno=next_segno[0])
        next_segno[0] += 1
        return None

    result: tuple[int, str] = wait_for(agreed, 30, "the offloader to hold the lease", 0.5)
    return result


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"], indirect=True)
def test_paused_lease_holder_is_fenced(make_cluster: Callable[..., Cluster]) -> None:
    cluster = start_cluster(make_cluster)
    ttid = new_ttid()
    workdirs = [cluster.workdir(n) for n in (1, 2, 3)]
    simulate(workdirs, [ttid], segments=5, seg_size=SEG_SIZE)
    next_segno = [6]
    old, old_token = lease_converged(cluster, ttid, workdirs, next_segno)

    # Partition the holder: it stops heartbeating and renewing, but it is not dead.
    cluster.procs[f"node{old}"].send_signal(signal.SIGSTOP)
    try:
        simulate(workdirs, [ttid], segments=10, seg_size=SEG_SIZE, start_segno=next_segno[0])
        next_segno[0] += 10
        _, new_token = lease_converged(cluster, ttid, workdirs, next_segno, other_than=old)
        assert new_token != old_token
        end = Lsn.from_segment(next_segno[0], 0, SEG_SIZE)
        cluster.wait_backup(ttid, end, timeout=60)
        # Work the old holder would still do with its stale token, queued for
        # it while it is paused.
        client = Celery(broker=cluster.broker_url)
        client.conf.update(task_serializer="json", accept_content=["json"])
        client.send_task(
            "walbackup.upload_segment",
            args=[str(ttid), 3, SEG_SIZE, old_token],
            queue=f"node.{old}",
        )
    finally:
        cluster.procs[f"node{old}"].send_signal(signal.SIGCONT)
    log = cluster.log_path(f"node{old}")
    wait_for(
        lambda: "'fenced'" in log.read_text(),
        30,
        "the stale holder's upload to be fenced",
    )
    # Back from its pause the old node may win the election again, but only
    # ever under a new token: the stale one never becomes valid again.
    assert cluster.state.lease_holder_token(str(ttid)) != old_token
    assert cluster.backup_lsn(ttid) == end
    assert_remote_matches(cluster, ttid, range(1, next_segno[0]))


def test_redis_data_loss_recovers_backup_lsn(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = start_cluster(make_cluster)
    ttid = new_ttid()
    workdirs = [cluster.workdir(n) for n in (1, 2, 3)]
    simulate(workdirs, [ttid], segments=10, seg_size=SEG_SIZE)
    done = Lsn.from_segment(11, 0, SEG_SIZE)
    cluster.wait_backup(ttid, done, timeout=30)
    # The nodes' state files lag backup_lsn (by up to 30 s, the default
    # WALBACKUP_STATE_FILE_INTERVAL): beat recovers it from the archive.

    redis.Redis.from_url(cluster.redis_url).flushdb()  # our private server
    # RedBeat's lock and schedule went with the data: beat takes the lock
    # again and re-creates its schedule (beat/scheduler.py), without a restart.
    with BackupSampler(cluster, ttid) as sampler:
        simulate(workdirs, [ttid], segments=5, seg_size=SEG_SIZE, start_segno=11)
        cluster.wait_backup(ttid, Lsn.from_segment(16, 0, SEG_SIZE), timeout=60)
    assert cluster.procs["beat"].poll() is None, cluster.tail_logs()
    wait_for(
        lambda: "re-creating them" in cluster.log_path("beat").read_text(),
        10,
        "beat to re-create its schedule entries",
    )
    samples = sampler.samples
    assert samples and min(samples) >= done, "backup_lsn restarted below what was backed up"
    assert samples == sorted(samples)
    assert_remote_matches(cluster, ttid, range(1, 16))


def test_two_beats_do_not_double_the_elections(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster()
    cluster.start_node(1)
    cluster.wait_nodes([1])
    cluster.start_beat()
    cluster.spawn("beat2", ["beat", "--loglevel=DEBUG"], dict(cluster.env))
    time.sleep(8)
    sent = [
        cluster.log_path(name).read_text().count("Sending due task walbackup-elect-all")
        for name in ("beat", "beat2")
    ]
    # One beat holds RedBeat's lock and ticks every 0.5 s; the other waits.
    assert min(sent) == 0, sent
    assert 5 <= max(sent) <= 18, sent
