"""Bad WAL headers on the nodes' disks (SPEC §5, §9 "bad input"), in a running
3-node cluster: a copy whose first page is not the segment's long page header
is never archived. When only the offloader's copy is bad, the segment is
archived from another node's valid copy within seconds; when every copy
carries a foreign system identifier, backup stops before it, saying why, and
resumes once the copies are fixed."""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tasks.backup.status import timeline_status
from tasks.core.ids import TenantTimelineId
from tasks.dev.simulate import expected_segment_bytes, simulate, simulated_system_id
from tests.cluster import SEG_SIZE, BackupSampler, Cluster, wait_for
from tests.faults.harness import (
    NODES,
    Archive,
    assert_invariant,
    backed_up_timeline,
    seg_lsn,
    start_cluster,
    write_segment,
)

pytestmark = pytest.mark.integration

FOREIGN = 7_000_000_000_000_000_001
"""Another PostgreSQL cluster's system identifier."""


def with_field(body: bytes, offset: int, fmt: str, value: int) -> bytes:
    """``body`` with one field of its first page header rewritten."""
    raw = bytearray(body)
    struct.pack_into(fmt, raw, offset, value)
    return bytes(raw)


class ErrorSampler:
    """Every distinct ``last_error`` ``walbackup status`` shows for a timeline
    while it runs (the next commit clears it, so it is sampled every 20 ms)."""

    def __init__(self, cluster: Cluster, ttid: TenantTimelineId) -> None:
        self.cluster = cluster
        self.ttid = ttid
        self.seen: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            (row,) = timeline_status(self.cluster.state, [str(self.ttid)], 2.0)
            if row.last_error and row.last_error not in self.seen:
                self.seen.append(row.last_error)

    def __enter__(self) -> ErrorSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.mark.parametrize(
    ("offset", "fmt", "value", "field"),
    [
        (8, "<Q", seg_lsn(6), "xlp_pageaddr 0/600000, expected 0/500000 (the segment's start)"),
        (24, "<Q", FOREIGN, f"system identifier {FOREIGN} differs from the timeline's"),
    ],
    ids=["pageaddr", "system-id"],
)
def test_a_bad_header_on_the_offloader_is_archived_from_a_valid_copy(
    make_cluster: Callable[..., Cluster],
    tmp_path: Path,
    offset: int,
    fmt: str,
    value: int,
    field: str,
) -> None:
    workdirs = {n: tmp_path / f"node{n}" for n in NODES}
    cluster = start_cluster(make_cluster, workdirs)
    nodes = [workdirs[n] for n in NODES]
    ttid, writer = backed_up_timeline(cluster, nodes, offloader=1)
    archive = Archive(ttid, root=tmp_path / "remote")
    assert cluster.state.timeline(str(ttid)).system_id == simulated_system_id(ttid)
    good = expected_segment_bytes(ttid, 5, SEG_SIZE)

    with BackupSampler(cluster, ttid) as sampler, ErrorSampler(cluster, ttid) as errors:
        # Segment 5: valid on nodes 2 and 3, a bad header on the offloader's disk.
        simulate(nodes[1:], [ttid], 1, SEG_SIZE, start_segno=5)
        bad = write_segment(nodes[0], ttid, 5, with_field(good, offset, fmt, value))
        started = time.monotonic()
        # Nothing after it yet: a commit of a later segment would clear last_error.
        cluster.wait_backup(ttid, seg_lsn(6), timeout=30)
        took = time.monotonic() - started
        writer.next_segno = 6
        writer.write(4)
        cluster.wait_backup(ttid, seg_lsn(10), timeout=30)
    print(f"\nbad header on the offloader ({field}): backup past it after {took:.2f} s")
    assert_invariant(cluster, archive, sampler, first_segno=1, written_end=10, expected_end=10)
    assert archive.read(5) == good  # another node's copy, byte-identical
    assert bad.read_bytes() != good
    assert took < 10
    # One ERROR naming the file and the field on node 1, and in last_error.
    log = cluster.log_path("node1").read_text().splitlines()
    errors_logged = [e for e in log if "ERROR" in e and str(bad) in e and field in e]
    assert errors_logged, cluster.tail_logs()
    assert any(bad.name in e and field in e for e in errors.seen), errors.seen


def test_a_foreign_system_id_on_every_copy_stops_backup_before_it(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    workdirs = {n: tmp_path / f"node{n}" for n in NODES}
    cluster = start_cluster(make_cluster, workdirs)
    nodes = [workdirs[n] for n in NODES]
    ttid, writer = backed_up_timeline(cluster, nodes, offloader=2)
    archive = Archive(ttid, root=tmp_path / "remote")
    ours = simulated_system_id(ttid)
    field = f"system identifier {FOREIGN} differs from the timeline's {ours}"

    with BackupSampler(cluster, ttid) as sampler:
        # From segment 5 on, every node receives another cluster's WAL.
        for segno in range(5, 9):
            body = with_field(expected_segment_bytes(ttid, segno, SEG_SIZE), 24, "<Q", FOREIGN)
            for workdir in nodes:
                write_segment(workdir, ttid, segno, body)
        last_error = wait_for(
            lambda: (e := cluster.state.timeline(str(ttid)).last_error) and field in e and e,
            15,
            "last_error to name the foreign system identifier",
        )
        # Every node reports its copy damaged (its digest scan or its upload found it).
        wait_for(
            lambda: all(p.peer.damaged_lsn == seg_lsn(5) for p in cluster.state.peers(str(ttid))),
            10,
            "every node to report its copy of segment 5 damaged",
        )
        time.sleep(2)  # retries go on meanwhile
        (row,) = timeline_status(cluster.state, [str(ttid)], 2.0)
        assert row.backup_lsn == seg_lsn(5), row
        assert row.last_error is not None and field in row.last_error
        assert not {s for s in archive.segnos() if s >= 5}, "a foreign segment was archived"
        print(f"\nforeign system id on every copy: {last_error}")

        # The WAL is put right (the nodes receive this cluster's segments): backup resumes.
        writer.next_segno = 5
        writer.write(4)
        fixed = time.monotonic()
        cluster.wait_backup(ttid, seg_lsn(9), timeout=30)
        print(f"copies put right: backup past them after {time.monotonic() - fixed:.2f} s")
    assert_invariant(cluster, archive, sampler, first_segno=1, written_end=9, expected_end=9)
    logs = "".join(cluster.log_path(f"node{n}").read_text() for n in NODES)
    assert any("ERROR" in line and field in line for line in logs.splitlines())
