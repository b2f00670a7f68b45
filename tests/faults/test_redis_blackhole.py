"""One node loses Redis to a network blackhole (SPEC §9: "a node partitioned
away while holding the lock").

Three node workers and beat; node 1, the timeline's offloader, reaches Redis
(state and broker) through a ``TcpBlackhole`` proxy, the others directly,
while WAL keeps coming into every WORKDIR. The proxy goes silent for 12 s
(well past the 2 s lease): bytes stop both ways, nothing is closed. Faults:

- ``connections-lost``: then the partition ends having lost node 1's
  connections (a flushed NAT or conntrack table): they stay silent for good;
- ``mid-commit-reply-lost``: it begins as node 1 sends a commit, which Redis
  runs; the reply is lost with the connections;
- ``mid-commit-late``: it begins as node 1 sends a commit, which waits with
  the connections and reaches Redis when the partition ends, long after
  another node took the lease: it must be fenced.

Another node takes the lease and backup moves on during the partition; after
it node 1 heartbeats, answers a ping and runs a task sent to its queue (its
worker recovered in-process); backup reaches the end of the WAL; the SPEC §9
invariant holds.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator

import pytest
from celery import Celery

from tasks.state.keys import lease_key
from tasks.state.lua import SCRIPT_SOURCES
from tests.cluster import BackupSampler, Cluster, wait_for
from tests.faults.harness import (
    NODES,
    Archive,
    assert_invariant,
    backed_up_timeline,
    seg_lsn,
    time_to_advance,
)
from tests.faults.tcpblackhole import TcpBlackhole
from tests.servers import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PARTITION_S = 12.0
RESUME_BAR_S = 10.0
"""SPEC §9: progress within 10 s of Redis returning (to node 1)."""
RECOVERY_BAR_S = 30.0
"""Node 1 consumes again within this of the partition's end: the dead
connections it meets each cost a socket timeout before it reconnects, and
kombu drops a silent pub/sub connection (remote control: ping) after two
health checks."""
COMMITS = tuple(
    hashlib.sha1(SCRIPT_SOURCES[name].encode()).hexdigest().encode()
    for name in ("commit_segment", "commit_and_claim")
)
"""What a commit sends: EVALSHA of one of these scripts."""


def partition(proxy: TcpBlackhole, fault: str) -> None:
    if fault == "connections-lost":
        proxy.blackhole()
    else:
        proxy.blackhole_on(COMMITS, deliver=fault == "mid-commit-reply-lost")
        wait_for(lambda: proxy.blackholed, 10, "node 1 to send a commit")


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[TcpBlackhole]:
    p = TcpBlackhole(("127.0.0.1", redis_server.port))
    yield p
    p.stop()


def node1_consumes(cluster: Cluster, client: Celery) -> None:
    """Node 1 runs a task sent to its own queue, and answers a ping."""
    # A timeline nobody has: node 1 answers "not offloader".
    task_id = client.send_task(
        "walbackup.backup_timeline", args=[f"{'a' * 32}/{'b' * 32}"], queue="node.1"
    ).id
    done = f"walbackup.backup_timeline[{task_id}] succeeded"
    wait_for(
        lambda: done in cluster.log_path("node1").read_text(errors="replace"),
        RECOVERY_BAR_S,
        f"node 1 to run a task sent to its queue\n{cluster.tail_logs()}",
    )
    wait_for(
        lambda: any(
            "node1@" in name for reply in client.control.ping(timeout=1.0) for name in reply
        ),
        RECOVERY_BAR_S,
        f"a ping reply from node 1\n{cluster.tail_logs()}",
        interval=0.5,
    )


@pytest.mark.parametrize("fault", ["connections-lost", "mid-commit-reply-lost", "mid-commit-late"])
def test_node_partitioned_from_redis(
    fault: str, make_cluster: Callable[..., Cluster], proxy: TcpBlackhole
) -> None:
    cluster = make_cluster()
    cluster.start_node(1, {"WALBACKUP_REDIS_URL": proxy.url(cluster.redis_url)})
    for n in NODES[1:]:
        cluster.start_node(n)
    cluster.start_beat()
    cluster.wait_nodes(list(NODES))
    workdirs = [cluster.workdir(n) for n in NODES]
    ttid, writer = backed_up_timeline(cluster, workdirs, offloader=1)
    client = Celery(broker=cluster.redis_url)
    client.conf.update(task_serializer="json", accept_content=["json"])
    with BackupSampler(cluster, ttid) as sampler:
        writer.start()
        try:
            partition(proxy, fault)
            start = time.monotonic()
            # The lease expires; another node takes it and backs up.
            wait_for(
                lambda: (cluster.state.r.get(lease_key(str(ttid))) or "1.")[:2] != "1.",
                PARTITION_S / 2,
                "another node to take the lease",
            )
            taken_s = time_to_advance(cluster, ttid, start, timeout=PARTITION_S / 2)
            time.sleep(max(0.0, start + PARTITION_S - time.monotonic()))
            proxy.heal(resume=fault == "mid-commit-late")
            healed = time.monotonic()
            # Node 1 is elected again at its first heartbeat, before its
            # worker met each dead connection: backup must not stall long.
            cluster.wait_backup(ttid, seg_lsn(writer.next_segno), timeout=RESUME_BAR_S)
            resumed_s = time.monotonic() - healed
            node1_consumes(cluster, client)
            recovered_s = time.monotonic() - healed
            time.sleep(1)  # WAL after node 1 recovered
        finally:
            end = writer.stop()
            client.close()
        cluster.wait_backup(ttid, seg_lsn(end), timeout=20)
    print(
        f"\n{fault}: backup moved {taken_s:.1f}s into the partition; "
        f"after it, backup reached the WAL written by then in {resumed_s:.1f}s, "
        f"node 1 consumed again in {recovered_s:.1f}s"
    )
    assert_invariant(
        cluster,
        Archive(ttid, root=cluster.root / "remote"),
        sampler,
        first_segno=1,
        written_end=end,
    )
    log = cluster.log_path("node1").read_text(errors="replace")
    assert "Unrecoverable error" not in log, log[-3000:]
