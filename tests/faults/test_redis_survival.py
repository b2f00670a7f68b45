"""Redis disruptions under load (SPEC §9): no process dies, and the cluster
works again once Redis is back.

Three node workers and beat run on a private redis-server while WAL keeps
coming into the three WORKDIRs (so uploads are in flight), then Redis is
SIGKILLed and restarted empty, SIGKILLed and restarted from its AOF, or
frozen for 10 s (SIGSTOP, SIGCONT). Afterwards every worker and beat is
alive; every worker answers a ping and runs a task sent to its own queue, and
one sent to the shared queue runs; beat sends elections again; and backup_lsn
reaches the end of the WAL written after Redis returned (the time it took is
printed).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from celery import Celery

from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.dev.simulate import SegmentWritten, simulate
from tests.cluster import SEG_SIZE, BackupSampler, Cluster, wait_for
from tests.faults.harness import Archive, assert_invariant
from tests.servers import RedisServer

pytestmark = pytest.mark.integration

NODE_IDS = (1, 2, 3)
WAL_RATE = 8.0
"""Segments per second per node while the fault happens."""
RESUME_BAR_S = 10.0
"""SPEC §9: progress within 10 s of Redis returning."""
ELECT = "Sending due task walbackup-elect-all"


def new_ttid() -> TenantTimelineId:
    return TenantTimelineId(secrets.token_hex(16), secrets.token_hex(16))


class WalWriter:
    """Writes WAL for one timeline into every node's WORKDIR in a thread."""

    def __init__(self, cluster: Cluster, ttid: TenantTimelineId) -> None:
        self.workdirs = [cluster.workdir(n) for n in NODE_IDS]
        self.ttid = ttid
        self.done = dict.fromkeys(self.workdirs, 0)  # workdir -> last complete segno
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _written(self, seg: SegmentWritten) -> None:
        self.done[seg.workdir] = seg.segno

    def _run(self) -> None:
        simulate(
            self.workdirs,
            [self.ttid],
            segments=100_000,
            seg_size=SEG_SIZE,
            rate=WAL_RATE,
            stop_event=self._stop,
            on_segment=self._written,
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> Lsn:
        """Stops writing; the end of the WAL every node has."""
        self._stop.set()
        self._thread.join()
        return Lsn.from_segment(min(self.done.values()) + 1, 0, SEG_SIZE)

    @property
    def written_end(self) -> int:
        """The first segno no node completed."""
        return max(self.done.values()) + 1


@dataclass(frozen=True)
class Fault:
    name: str
    appendonly: bool
    inject: Callable[[RedisServer], None]
    data_survives: bool


def kill_and_restart(server: RedisServer) -> None:
    server.kill()
    time.sleep(1)
    server.start()


def freeze(server: RedisServer) -> None:
    server.pause()
    time.sleep(10)
    server.resume()


FAULTS = [
    Fault("sigkill-restart-empty", appendonly=False, inject=kill_and_restart, data_survives=False),
    Fault("sigkill-restart-aof", appendonly=True, inject=kill_and_restart, data_survives=True),
    Fault("sigstop-10s", appendonly=False, inject=freeze, data_survives=True),
]


@pytest.fixture(params=FAULTS, ids=[f.name for f in FAULTS])
def fault(request: pytest.FixtureRequest) -> Fault:
    result: Fault = request.param
    return result


@pytest.fixture
def cluster(fault: Fault, tmp_path: Path) -> Iterator[tuple[Cluster, RedisServer]]:
    server = RedisServer(appendonly=fault.appendonly)
    server.start()
    cluster = Cluster(tmp_path, server.url, (tmp_path / "remote").as_uri())
    try:
        for n in NODE_IDS:
            cluster.start_node(n)
        cluster.start_beat()
        cluster.wait_nodes(list(NODE_IDS))
        yield cluster, server
    finally:
        cluster.stop()
        cluster.state.r.close()
        server.close()


def assert_all_alive(cluster: Cluster) -> None:
    dead = {name: p.returncode for name, p in cluster.procs.items() if p.poll() is not None}
    assert not dead, f"processes died: {dead}\n{cluster.tail_logs()}"


def log_text(cluster: Cluster, name: str) -> str:
    return cluster.log_path(name).read_text(errors="replace")


def client_for(cluster: Cluster) -> Celery:
    client = Celery(broker=cluster.redis_url)
    client.conf.update(task_serializer="json", accept_content=["json"])
    return client


def wait_workers_consume(cluster: Cluster, client: Celery) -> None:
    """Every node worker answers a broadcast ping and runs a task sent to its
    own queue; a task sent to the shared queue runs on one of them."""
    names = {f"node{n}" for n in NODE_IDS}

    def pinged() -> bool:
        replies = client.control.ping(timeout=1.0)
        return names <= {name.partition("@")[0] for reply in replies for name in reply}

    wait_for(pinged, 20, "a ping reply from every node worker", interval=0.5)
    # A valid timeline id nobody has: the node answers "not offloader".
    probe = str(new_ttid())
    sent = {
        f"node{n}": client.send_task(
            "walbackup.backup_timeline", args=[probe], queue=f"node.{n}"
        ).id
        for n in NODE_IDS
    }
    shared = client.send_task("walbackup.backup_timeline", args=[probe], queue="walbackup").id

    def ran(name: str, task_id: str) -> bool:
        return f"walbackup.backup_timeline[{task_id}] succeeded" in log_text(cluster, name)

    for name, task_id in sent.items():
        wait_for(
            lambda name=name, task_id=task_id: ran(name, task_id),  # type: ignore[misc]
            10,
            f"{name} to run a task sent to its queue",
        )
    wait_for(
        lambda: any(ran(name, shared) for name in sent), 10, "a task on the shared queue to run"
    )


def test_redis_disruption_is_survived(fault: Fault, cluster: tuple[Cluster, RedisServer]) -> None:
    c, server = cluster
    ttid = new_ttid()
    writer = WalWriter(c, ttid)
    writer.start()
    sampler = BackupSampler(c, ttid).__enter__()
    try:
        # Uploads under way before the fault.
        wait_for(lambda: (c.backup_lsn(ttid) or 0) > 0, 20, "the first uploads")
        time.sleep(1)
        elections_before = log_text(c, "beat").count(ELECT)
        fault.inject(server)
        back = time.monotonic()
        at_return = c.backup_lsn(ttid)
        assert_all_alive(c)
        # New WAL after Redis returned.
        time.sleep(1)
    finally:
        end = writer.stop()

    # After an empty restart the nodes' heartbeats register the timeline
    # again and beat's round recovers backup_lsn from the archive.
    c.wait_backup(ttid, end, timeout=max(1.0, back + RESUME_BAR_S - time.monotonic()))
    resumed_s = time.monotonic() - back
    sampler.__exit__(None, None, None)
    assert_invariant(
        c,
        Archive(ttid, root=c.root / "remote"),
        sampler,
        first_segno=1,
        written_end=writer.written_end,
    )

    client = client_for(c)
    try:
        wait_workers_consume(c, client)
    finally:
        client.close()
    # Beat ticks again (and re-created its schedule if Redis lost it).
    wait_for(
        lambda: log_text(c, "beat").count(ELECT) > elections_before + 2,
        10,
        "beat to send elections again",
    )
    print(
        f"\n{fault.name}: backup_lsn from {at_return} when Redis returned to the end "
        f"of the WAL written since ({end}) in {resumed_s:.1f}s (1 s of it writing)"
    )

    assert_all_alive(c)
    for n in NODE_IDS:
        text = log_text(c, f"node{n}")
        assert "Unrecoverable error" not in text, text[-3000:]
        # Redis away: one line per kind of failure, never a traceback a tick.
        assert "Traceback" not in text, text[-3000:]
        if fault.inject is kill_and_restart:
            assert "Connection to broker lost" in text  # the fault reached the worker
    beat_log = log_text(c, "beat")
    # One line per kind of failure, not a traceback per tick.
    assert "Traceback" not in beat_log, beat_log[-3000:]
    assert beat_log.count("beat: tick failed") <= 3, beat_log[-3000:]


def test_two_beats_still_tick_once_after_a_restart(tmp_path: Path) -> None:
    """The restart loses beat's lock: both beats try to take it again, one
    wins, and the elections are not doubled."""
    server = RedisServer()
    server.start()
    c = Cluster(tmp_path, server.url, (tmp_path / "remote").as_uri())
    beats = ("beat", "beat2")

    def sent() -> list[int]:
        return [log_text(c, name).count(ELECT) for name in beats]

    try:
        c.start_node(1)
        c.wait_nodes([1])
        c.start_beat()
        c.spawn("beat2", ["beat", "--loglevel=DEBUG"], dict(c.env))
        wait_for(lambda: sum(sent()) >= 3, 20, "the first elections")
        kill_and_restart(server)
        wait_for(lambda: sum(sent()) >= 3 + 3, 10, "elections after the restart")
        before = sent()
        time.sleep(5)
        moved = [after - b for after, b in zip(sent(), before, strict=True)]
        # One beat ticks every 0.5 s; the other stands by.
        assert min(moved) == 0 and 5 <= max(moved) <= 12, (moved, c.tail_logs())
        assert_all_alive(c)
    finally:
        c.stop()
        c.state.r.close()
        server.close()
