"""The header check's I/O side (``tasks.backup.walheader``) against a real Redis:
the timeline's system identifier recorded first-wins, mirrored into the node's
state file by the heartbeats, and given back to a Redis that lost it; a bad
copy marked damaged, counted, and named in the error with its field."""

from __future__ import annotations

import logging
import re
import struct
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from tasks.backup.copies import Copies
from tasks.backup.heartbeats import Heartbeats
from tasks.backup.walheader import HeaderCheck
from tasks.config import load_settings
from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.dev.simulate import simulate, simulated_system_id
from tasks.errors import InvalidWalHeader, SegmentFileError
from tasks.logutil import Complaints
from tasks.state.redis import RedisState
from tasks.state.timeline_state import TimelineState
from tasks.state.workdir import Workdir

pytestmark = pytest.mark.integration

SEG = 1 << 20
TTID = TenantTimelineId("a" * 32, "c" * 32)
SYSID = simulated_system_id(TTID)
FOREIGN = 7_000_000_000_000_000_001


def errors_counted() -> float:
    return REGISTRY.get_sample_value("invalid_wal_headers_total") or 0.0


class Node:
    """One node's header check and heartbeats over a WORKDIR of segments 1..4."""

    def __init__(self, tmp_path: Path, state: RedisState, *, check: bool = True) -> None:
        self.state = state
        workdir = tmp_path / "node1"
        simulate([workdir], [TTID], 4, SEG)
        settings = load_settings(
            node_id=1, workdir=workdir, wal_seg_size=SEG, data_dir=tmp_path, wal_header_check=check
        )
        self.disk = Workdir(workdir, SEG)
        self.copies = Copies(1, state)
        self.headers = HeaderCheck(settings, state, self.copies, self.timeline)
        self.heartbeats = Heartbeats(
            1, state, self.disk, self.copies, lambda: True,
            keep_leases=lambda offloaders: None, data_lost=lambda: None,
            complain=Complaints(logging.getLogger("test"), 1), heartbeat_timeout_s=5.0,
        )  # fmt: skip

    def timeline(self, ttid: str) -> TimelineState | None:
        return self.disk.scan_timeline(TenantTimelineId.parse(ttid))

    def path(self, segno: int) -> Path:
        return self.disk.segment_path(TTID, segno, SEG)

    def check(self, segno: int) -> object:
        path = self.path(segno)
        return self.headers.check(str(TTID), segno, SEG, path, path.name)

    def patch(self, segno: int, offset: int, fmt: str, value: int) -> None:
        """Damage the copy on disk: one header field rewritten in place."""
        with self.path(segno).open("r+b") as f:
            f.seek(offset)
            f.write(struct.pack(fmt, value))

    def heartbeat(self) -> None:
        self.heartbeats.round([st for st in self.disk.scan().values()])


def test_the_first_system_id_is_the_timelines(tmp_path: Path, state: RedisState) -> None:
    node = Node(tmp_path, state)
    header = node.check(1)
    assert getattr(header, "sysid", None) == SYSID
    assert state.timeline(str(TTID)).system_id == SYSID
    assert state.record_system_id(str(TTID), FOREIGN) == SYSID  # first wins
    node.patch(2, 24, "<Q", FOREIGN)
    before = errors_counted()
    with pytest.raises(InvalidWalHeader) as info:
        node.check(2)
    message = str(info.value)
    assert str(node.path(2)) in message
    assert f"system identifier {FOREIGN} differs from the timeline's {SYSID}" in message
    assert errors_counted() == before + 1
    # Marked damaged: the heartbeat reports it, and it becomes last_error.
    st = node.timeline(str(TTID))
    assert st is not None and node.copies.damaged_lsn(st, Lsn(SEG)) == Lsn(2 * SEG)
    assert "invalid WAL page header: system identifier" in state.timeline(str(TTID)).last_error


@pytest.mark.parametrize(
    ("offset", "fmt", "value", "field"),
    [
        (0, "<H", 0x1234, "xlp_magic 0x1234 is not a PostgreSQL 13–17 WAL page"),
        (8, "<Q", 3 * SEG, "xlp_pageaddr 0/300000, expected 0/200000 (the segment's start)"),
        (32, "<I", 16 * SEG, "xlp_seg_size 16777216, expected 1048576"),
    ],
)
def test_a_bad_field_names_the_file_and_the_field(
    tmp_path: Path, state: RedisState, offset: int, fmt: str, value: int, field: str
) -> None:
    node = Node(tmp_path, state)
    node.patch(2, offset, fmt, value)
    with pytest.raises(InvalidWalHeader, match=re.escape(field)) as info:
        node.check(2)
    assert str(info.value).startswith(f"000000010000000000000002 on node 1 ({node.path(2)}): ")
    assert state.timeline(str(TTID)).system_id is None  # nothing recorded from a bad page


def test_an_unreadable_file_is_a_segment_file_error(tmp_path: Path, state: RedisState) -> None:
    node = Node(tmp_path, state)
    node.path(2).unlink()
    with pytest.raises(SegmentFileError, match="cannot read its first page"):
        node.check(2)


def test_check_off_returns_a_header_that_parses_and_records_nothing(
    tmp_path: Path, state: RedisState
) -> None:
    node = Node(tmp_path, state, check=False)
    assert getattr(node.check(1), "sysid", None) == SYSID
    node.patch(2, 24, "<Q", FOREIGN)
    assert getattr(node.check(2), "sysid", None) == FOREIGN
    node.patch(3, 0, "<H", 0x1234)
    assert node.check(3) is None
    assert state.timeline(str(TTID)).system_id is None


def test_the_system_id_survives_redis_losing_it(tmp_path: Path, state: RedisState) -> None:
    node = Node(tmp_path, state)
    node.check(1)
    node.heartbeat()  # Redis -> the node's state file
    recorded = node.disk.read_state(TTID)
    assert recorded is not None and recorded.system_id == SYSID
    state.r.flushdb()
    node.heartbeat()  # the state file -> Redis
    assert state.timeline(str(TTID)).system_id == SYSID
    # The check compares with the state file's identifier: a copy with another
    # one is refused even while Redis has none, and records nothing.
    state.r.flushdb()
    node.patch(2, 24, "<Q", FOREIGN)
    with pytest.raises(InvalidWalHeader, match="differs from the timeline's"):
        node.check(2)
    assert state.timeline(str(TTID)).system_id is None
    node.heartbeat()
    assert state.timeline(str(TTID)).system_id == SYSID


def test_the_digest_scan_marks_a_bad_header_before_any_election(
    tmp_path: Path, state: RedisState
) -> None:
    node = Node(tmp_path, state)
    node.patch(3, 8, "<Q", 0)
    timelines = {str(t): s for t, s in node.disk.scan().items()}
    assert node.copies.refresh(timelines, {str(TTID): Lsn(SEG)}) == 4
    st = timelines[str(TTID)]
    assert node.copies.damaged_lsn(st, Lsn(SEG)) == Lsn(3 * SEG)
    assert "xlp_pageaddr 0/0, expected 0/300000" in state.timeline(str(TTID)).last_error
    assert set(state.digests(str(TTID), 3, [1])) == {1}  # published all the same


def test_the_digest_scan_checks_hashed_copies_once_the_system_id_is_known(
    tmp_path: Path, state: RedisState
) -> None:
    node = Node(tmp_path, state)
    node.patch(4, 24, "<Q", FOREIGN)
    timelines = {str(t): s for t, s in node.disk.scan().items()}
    assert node.copies.refresh(timelines, {str(TTID): Lsn(SEG)}) == 4
    assert node.copies.damaged_lsn(timelines[str(TTID)], Lsn(SEG)) is None  # no id known yet
    node.disk.record_cluster_state(TTID, None, SYSID)  # as the heartbeats copy it from Redis
    timelines = {str(t): s for t, s in node.disk.scan().items()}
    assert node.copies.refresh(timelines, {str(TTID): Lsn(SEG)}) == 0  # nothing hashed again
    assert node.copies.damaged_lsn(timelines[str(TTID)], Lsn(SEG)) == Lsn(4 * SEG)
    assert f"system identifier {FOREIGN} differs" in state.timeline(str(TTID)).last_error
