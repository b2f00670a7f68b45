"""RabbitMQ as the broker, SIGKILLed and restarted under load (SPEC §9): no
process dies, backup resumes by itself, nothing is lost.

Three node workers and beat use a private RabbitMQ node as their broker (Redis
still coordinates) while WAL keeps coming into the three WORKDIRs, so uploads
and their messages are in flight when the node is killed. It comes back on the
same port and data directory, with its durable queues and persistent messages:
deliveries that were unacked are delivered again (an upload runs twice at
worst: idempotent, and fenced by the lease). The time backup took to move
again, and to catch up with the WAL written meanwhile, is printed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from tests.cluster import BackupSampler, Cluster, wait_for
from tests.faults.harness import (
    NODES,
    Archive,
    WalWriter,
    assert_invariant,
    seg_lsn,
    time_to_advance,
    ttid_offloaded_by,
)
from tests.servers import RabbitServer, require_rabbitmq

pytestmark = pytest.mark.integration

ELECT = "Sending due task walbackup-elect-all"
DOWN_S = 3.0
"""How long the broker stays down: WAL and elections pile up meanwhile."""


@pytest.fixture
def rabbit() -> Iterator[RabbitServer]:
    require_rabbitmq(private=True)
    server = RabbitServer()
    server.start()
    yield server
    server.close()


def log_text(cluster: Cluster, name: str) -> str:
    return cluster.log_path(name).read_text(errors="replace")


def test_rabbitmq_killed_and_restarted_mid_upload(
    rabbit: RabbitServer, make_cluster: Callable[..., Cluster]
) -> None:
    # rabbit first: set up before the cluster, torn down after it.
    cluster = make_cluster(broker_url=rabbit.url)
    for n in NODES:
        cluster.start_node(n)
    cluster.start_beat()
    cluster.wait_nodes(list(NODES))
    workdirs = [cluster.workdir(n) for n in NODES]
    ttid = ttid_offloaded_by(1)
    writer = WalWriter(workdirs, ttid, next_segno=1, rate=8.0).start()
    with BackupSampler(cluster, ttid) as sampler:
        try:
            cluster.wait_backup(ttid, seg_lsn(6), timeout=30)
            rabbit.kill()
            time.sleep(DOWN_S)
            rabbit.start()
            back = time.monotonic()
            elections_before = log_text(cluster, "beat").count(ELECT)
            try:
                moved_s = time_to_advance(cluster, ttid, back, timeout=30)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\nqueues:\n{rabbit.queues()}") from None
            time.sleep(1)  # WAL written after the broker returned
        finally:
            written_end = writer.stop()
        try:
            cluster.wait_backup(ttid, seg_lsn(written_end), timeout=60)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nqueues:\n{rabbit.queues()}") from None
        caught_up_s = time.monotonic() - back
    assert_invariant(
        cluster,
        Archive(ttid, root=cluster.root / "remote"),
        sampler,
        first_segno=1,
        written_end=written_end,
        expected_end=written_end,
    )
    wait_for(
        lambda: log_text(cluster, "beat").count(ELECT) > elections_before + 2,
        10,
        "beat to send elections again",
    )
    for n in NODES:
        text = log_text(cluster, f"node{n}")
        assert "Connection to broker lost" in text  # the fault reached every worker
        assert "Unrecoverable error" not in text, text[-3000:]
    print(
        f"\nRabbitMQ down {DOWN_S:.0f} s: backup_lsn moved {moved_s:.1f} s after it "
        f"returned, and reached the end of the WAL ({written_end - 1} segments) "
        f"{caught_up_s:.1f} s after"
    )
