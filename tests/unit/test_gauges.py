"""tasks.backup.gauges: the per-timeline and per-node gauges a heartbeat round
sets, from real segment files on disk, read back from prometheus_client's
registry as a scrape would see them."""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

from prometheus_client import REGISTRY

from tasks.backup.gauges import ClusterGauges
from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.core.segments import xlog_file_name
from tasks.state.timeline_state import TimelineState
from tasks.state.workdir import Workdir

SEG = 1 << 20


def _timeline(workdir: Path, segnos: range, written_at: float) -> TimelineState:
    """A timeline holding complete segments ``segnos``, each written at
    ``written_at`` plus its position (so their mtimes differ)."""
    ttid = TenantTimelineId(secrets.token_hex(16), secrets.token_hex(16))
    path = workdir / ttid.tenant_id / ttid.timeline_id
    path.mkdir(parents=True)
    for i, segno in enumerate(segnos):
        seg = path / xlog_file_name(segno, SEG)
        seg.write_bytes(b"\0" * SEG)
        os.utime(seg, (written_at + i, written_at + i))
    st = Workdir(workdir, SEG).scan_timeline(ttid)
    assert st is not None and st.commit_lsn == Lsn.from_segment(segnos.stop, 0, SEG)
    return st


def _value(name: str, st: TimelineState) -> float | None:
    return REGISTRY.get_sample_value(name, {"timeline": str(st.ttid)})


def test_lag_oldest_unarchived_segment_and_offloader(tmp_path: Path) -> None:
    now = time.time()
    st = _timeline(tmp_path, range(1, 5), written_at=now - 100)  # segments 1-4
    gauges = ClusterGauges()

    gauges.timeline(st, Lsn.from_segment(2, 0, SEG), 2, now)
    assert _value("backup_lag_bytes", st) == 3 * SEG
    assert _value("oldest_unarchived_segment_age_seconds", st) == 99.0  # segment 2
    assert _value("timeline_offloader", st) == 2

    # Archived up to the end: nothing waits, whatever the files' age.
    gauges.timeline(st, Lsn.from_segment(5, 0, SEG), None, now)
    assert _value("backup_lag_bytes", st) == 0
    assert _value("oldest_unarchived_segment_age_seconds", st) == 0
    assert _value("timeline_offloader", st) == 0  # none elected


def test_unknown_backup_lsn_falls_back_to_the_state_file_and_the_held_segments(
    tmp_path: Path,
) -> None:
    """Redis lost backup_lsn and the state file has none (0): the oldest
    unarchived segment is the first this node holds."""
    now = time.time()
    st = _timeline(tmp_path, range(3, 6), written_at=now - 50)
    ClusterGauges().timeline(st, None, 1, now)
    assert _value("backup_lag_bytes", st) == Lsn.from_segment(6, 0, SEG)
    assert _value("oldest_unarchived_segment_age_seconds", st) == 50.0


def test_the_mtime_is_read_once_per_oldest_segment(tmp_path: Path) -> None:
    """Rounds that find the same oldest segment reuse its mtime: a file's
    mtime changed behind our back is seen only once backup_lsn moves."""
    now = time.time()
    st = _timeline(tmp_path, range(1, 4), written_at=now - 30)
    gauges = ClusterGauges()
    gauges.timeline(st, Lsn.from_segment(1, 0, SEG), 3, now)
    assert _value("oldest_unarchived_segment_age_seconds", st) == 30.0
    for segno in (1, 2):
        os.utime(st.path / xlog_file_name(segno, SEG), (now - 5, now - 5))
    gauges.timeline(st, Lsn.from_segment(1, 0, SEG), 3, now + 10)
    assert _value("oldest_unarchived_segment_age_seconds", st) == 40.0  # cached
    gauges.timeline(st, Lsn.from_segment(2, 0, SEG), 3, now + 10)
    assert _value("oldest_unarchived_segment_age_seconds", st) == 15.0  # stat'ed


def test_a_vanished_segment_keeps_the_last_value(tmp_path: Path) -> None:
    now = time.time()
    st = _timeline(tmp_path, range(1, 4), written_at=now - 20)
    gauges = ClusterGauges()
    gauges.timeline(st, Lsn.from_segment(1, 0, SEG), 1, now)
    (st.path / xlog_file_name(2, SEG)).unlink()
    gauges.timeline(st, Lsn.from_segment(2, 0, SEG), 1, now + 1)
    assert _value("oldest_unarchived_segment_age_seconds", st) == 20.0


def test_a_timeline_without_wal_has_no_series(tmp_path: Path) -> None:
    """Not a peer yet (a directory waiting for its first WAL): no election,
    so no "no offloader" either."""
    ttid = TenantTimelineId(secrets.token_hex(16), secrets.token_hex(16))
    (tmp_path / ttid.tenant_id / ttid.timeline_id).mkdir(parents=True)
    st = Workdir(tmp_path, SEG).scan_timeline(ttid)
    assert st is not None and st.commit_lsn is None
    ClusterGauges().timeline(st, None, None, time.time())
    for name in ("backup_lag_bytes", "oldest_unarchived_segment_age_seconds", "timeline_offloader"):
        assert _value(name, st) is None, name


def test_a_forgotten_timeline_loses_its_series(tmp_path: Path) -> None:
    now = time.time()
    st = _timeline(tmp_path, range(1, 3), written_at=now)
    gauges = ClusterGauges()
    gauges.timeline(st, Lsn.from_segment(1, 0, SEG), 1, now)
    gauges.forget(str(st.ttid))
    gauges.forget(str(st.ttid))  # twice: harmless
    for name in ("backup_lag_bytes", "oldest_unarchived_segment_age_seconds", "timeline_offloader"):
        assert _value(name, st) is None, name


def test_every_nodes_last_heartbeat_and_a_node_gone_from_redis() -> None:
    base = 1000 + secrets.randbelow(10**6)  # node ids no other test uses
    gauges = ClusterGauges()
    gauges.nodes({base: {"ts": 1700000000.5, "timelines": 3}, base + 1: {"ts": 1700000001.0}})

    def ts(node: int) -> float | None:
        return REGISTRY.get_sample_value("last_heartbeat_timestamp_seconds", {"node": str(node)})

    assert (ts(base), ts(base + 1)) == (1700000000.5, 1700000001.0)
    gauges.nodes({base: {"ts": 1700000002.0}})
    assert (ts(base), ts(base + 1)) == (1700000002.0, None)


def test_wal_of_a_later_postgresql_timeline_is_unarchived_wal_since_the_promotion(
    tmp_path: Path,
) -> None:
    """None of it is archived (tasks.backup.misconfig): its age is the history
    file's, so the unarchived-WAL alert fires after the RPO."""
    now = time.time()
    st = _timeline(tmp_path, range(1, 5), written_at=now - 100)
    (st.path / "00000002.history").write_text("1\t0/4000000\tno recovery target specified\n")
    os.utime(st.path / "00000002.history", (now - 2000, now - 2000))
    (st.path / "000000020000000000000004").write_bytes(b"\0" * SEG)
    st = Workdir(tmp_path, SEG).scan_timeline(st.ttid)
    assert st is not None and st.foreign_tli == 2
    ClusterGauges().timeline(st, Lsn.from_segment(5, 0, SEG), 1, now)
    assert _value("backup_lag_bytes", st) == 0  # timeline 1 is all archived
    assert 1999 <= (_value("oldest_unarchived_segment_age_seconds", st) or 0) <= 2001
