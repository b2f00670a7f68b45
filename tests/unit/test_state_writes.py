"""The cluster's backup_lsn and system id into the state files
(``tasks.backup.state_writes``): only what the file lacks, a bounded number a
round, and a timeline's backup_lsn at most every ``interval_s`` from the
first newer value seen — the latest one once it is due."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, cast

import pytest

from tasks.backup import state_writes as module
from tasks.backup.state_writes import STATE_WRITES_PER_HEARTBEAT, StateWrites
from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.logutil import Complaints
from tasks.state.timeline_state import TimelineState
from tasks.state.workdir import Workdir

SEG = 1 << 20
INTERVAL = 30.0


class Disk:
    """Records the writes a real Workdir would make; can fail like a full disk."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, Lsn | None, int | None]] = []
        self.full = False

    def record_cluster_state(
        self, ttid: TenantTimelineId, backup_lsn: Lsn | None, system_id: int | None
    ) -> None:
        if self.full:
            raise OSError(28, "No space left on device")
        self.writes.append((str(ttid), backup_lsn, system_id))


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [100.0]
    monkeypatch.setattr(module.time, "monotonic", lambda: now[0])
    return now


def timeline(n: int, system_id: int | None = 7) -> TimelineState:
    """Timeline ``n``, its state file at backup_lsn = segment 1."""
    return TimelineState(
        ttid=TenantTimelineId(f"{n:032x}", f"{n:032x}"),
        path=Path("/nonexistent"),
        wal_seg_size=SEG,
        local_start_lsn=Lsn(SEG),
        commit_lsn=Lsn(9 * SEG),
        backup_lsn=Lsn(SEG),
        timeline_start_lsn=None,
        problems=(),
        system_id=system_id,
    )


def writer(interval_s: float = 0.0) -> tuple[StateWrites, Disk]:
    disk = Disk()
    complain = Complaints(logging.getLogger("test"), 1)
    return StateWrites(cast(Workdir, cast(Any, disk)), complain, interval_s), disk


def test_only_what_the_file_lacks_is_written(clock: list[float]) -> None:
    writes, disk = writer()
    writes.new_round()
    writes.record(timeline(1), Lsn(SEG), 7)  # the file has both
    writes.record(timeline(2), Lsn(0), 7)  # Redis is behind the file: never lowered
    writes.record(timeline(3), None, None)  # Redis lost its data
    assert disk.writes == []
    writes.record(timeline(4), Lsn(3 * SEG), 7)
    writes.record(timeline(5, system_id=None), Lsn(SEG), 9)
    assert disk.writes == [
        (str(timeline(4).ttid), Lsn(3 * SEG), None),
        (str(timeline(5).ttid), Lsn(SEG), 9),
    ]


def test_a_moving_backup_lsn_is_written_at_most_every_interval_then_the_latest(
    clock: list[float],
) -> None:
    writes, disk = writer(INTERVAL)
    st = timeline(1)
    for segno in (2, 3, 4, 5):  # the first newer value starts the interval
        writes.new_round()
        writes.record(st, Lsn(segno * SEG), 7)
        clock[0] += INTERVAL / 4
    assert disk.writes == []
    writes.new_round()
    writes.record(st, Lsn(6 * SEG), 7)  # due: the latest
    for segno in (7, 8, 9):  # the file stays behind for another interval
        clock[0] += INTERVAL / 4
        writes.new_round()
        writes.record(dataclasses.replace(st, backup_lsn=Lsn(6 * SEG)), Lsn(segno * SEG), 7)
    clock[0] += INTERVAL / 4
    writes.new_round()
    writes.record(dataclasses.replace(st, backup_lsn=Lsn(6 * SEG)), Lsn(10 * SEG), 7)
    assert [w[1] for w in disk.writes] == [Lsn(6 * SEG), Lsn(10 * SEG)]
    # A new system id is not held back.
    writes.record(dataclasses.replace(st, backup_lsn=Lsn(10 * SEG)), Lsn(10 * SEG), 8)
    assert disk.writes[-1] == (str(st.ttid), Lsn(10 * SEG), 8)


def test_a_round_writes_a_bounded_number_the_rest_wait(clock: list[float]) -> None:
    writes, disk = writer()
    timelines = [timeline(n) for n in range(STATE_WRITES_PER_HEARTBEAT + 10)]
    writes.new_round()
    for st in timelines:
        writes.record(st, Lsn(2 * SEG), 7)
    assert len(disk.writes) == STATE_WRITES_PER_HEARTBEAT
    writes.new_round()
    for st in timelines[STATE_WRITES_PER_HEARTBEAT:]:
        writes.record(st, Lsn(2 * SEG), 7)
    assert len(disk.writes) == STATE_WRITES_PER_HEARTBEAT + 10


def test_a_full_disk_is_complained_about_and_the_round_goes_on(
    clock: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    writes, disk = writer()
    disk.full = True
    writes.new_round()
    writes.record(timeline(1), Lsn(2 * SEG), 7)
    assert "cannot record backup_lsn in the state file" in caplog.text
    disk.full = False
    clock[0] += 1.0
    writes.new_round()
    writes.record(timeline(1), Lsn(2 * SEG), 7)  # retried once due
    assert len(disk.writes) == 1
