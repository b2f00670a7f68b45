"""tasks.state.dirwatch and the watched scans of tasks.state.scanner: a pass
rescans what inotify named, and falls back to full scans when it must."""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.core.segments import xlog_file_name
from tasks.errors import InvalidInput
from tasks.state import scanner as scanner_module
from tasks.state import timeline_dir
from tasks.state.dirwatch import Changes, DirWatch
from tasks.state.listing import Listing
from tasks.state.timeline_state import TimelineState
from tasks.state.workdir import Workdir

SEG = 1 << 20
PAST = 1_000_000_000.0


def ttid(i: int) -> TenantTimelineId:
    return TenantTimelineId(f"{i % 3:032x}", f"{i:032x}")


def make(workdir: Path, t: TenantTimelineId, segments: int = 1) -> Path:
    path = workdir / t.tenant_id / t.timeline_id
    path.mkdir(parents=True, exist_ok=True)
    for segno in range(1, segments + 1):
        (path / xlog_file_name(segno, SEG)).write_bytes(b"\0" * SEG)
    return path


def age(workdir: Path) -> None:
    """Old mtimes everywhere, so that every listing is trusted."""
    for path in sorted(workdir.rglob("*"), key=lambda p: -len(p.parts)):
        os.utime(path, (PAST, PAST))


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Workdir]:
    for i in range(12):
        make(tmp_path, ttid(i))
    age(tmp_path)
    disk = Workdir(tmp_path, SEG)
    assert disk.watching
    assert len(disk.scan()) == 12
    disk.scan()  # the first pass watched new tenants: this one lists them again
    yield disk
    disk.close()


class Counting:
    """Which timelines a pass rescanned, and how often it listed the tenants."""

    def __init__(self, disk: Workdir, monkeypatch: pytest.MonkeyPatch) -> None:
        self.rescanned: list[TenantTimelineId] = []
        self.discoveries = 0
        real_scan, real_names = disk._scan_timeline, scanner_module.timeline_names

        def scan(d: timeline_dir.TimelineDir) -> TimelineState | None:
            self.rescanned.append(d.ttid)
            return real_scan(d)

        def names(workdir: Path) -> tuple[list[str], list[tuple[str, str]]]:
            self.discoveries += 1
            return real_names(workdir)

        monkeypatch.setattr(disk, "_scan_timeline", scan)
        monkeypatch.setattr(scanner_module, "timeline_names", names)

    def reset(self) -> None:
        self.rescanned.clear()
        self.discoveries = 0


def test_a_quiet_pass_reads_no_directory(disk: Workdir, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = Counting(disk, monkeypatch)
    first = disk.scan_changes()
    again = disk.scan_changes()
    assert seen.rescanned == [] and seen.discoveries == 0
    assert again.states is first.states and again.changed == set()


def test_a_pass_rescans_the_timeline_that_changed_only(
    disk: Workdir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = Counting(disk, monkeypatch)
    before = disk.scan_changes().states
    make(tmp_path, ttid(4), segments=2)
    states, changed = disk.scan_changes()
    assert seen.rescanned == [ttid(4)] and seen.discoveries == 0
    assert changed == {ttid(4)} and states[ttid(4)].commit_lsn == Lsn(3 * SEG)
    assert before[ttid(4)].commit_lsn == Lsn(2 * SEG)  # the last pass's dict is untouched
    assert len(states) == 12


def test_a_new_tenant_and_timeline_are_found_by_their_events(
    disk: Workdir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = Counting(disk, monkeypatch)
    new = TenantTimelineId("ab" * 16, "cd" * 16)
    make(tmp_path, new)
    states, changed = disk.scan_changes()
    assert changed == {new} and len(states) == 13
    assert seen.rescanned == [new] and seen.discoveries == 1
    # Its tenant's watch is new: the next pass lists the tenants again, for a
    # timeline made there before the watch; then quiet again.
    seen.reset()
    assert disk.scan_changes().changed == set() and seen.discoveries == 1
    seen.reset()
    disk.scan_changes()
    assert seen.discoveries == 0
    (tmp_path / new.tenant_id / new.timeline_id / xlog_file_name(2, SEG)).write_bytes(b"\0" * SEG)
    assert disk.scan_changes().changed == {new}


def test_a_removed_timeline_goes(disk: Workdir, tmp_path: Path) -> None:
    path = tmp_path / ttid(5).tenant_id / ttid(5).timeline_id
    (path / xlog_file_name(1, SEG)).unlink()
    path.rmdir()
    states = disk.scan()
    assert ttid(5) not in states and len(states) == 11


def test_lost_events_mean_a_full_scan(disk: Workdir, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = Counting(disk, monkeypatch)
    watch = disk._watch
    assert watch is not None
    monkeypatch.setattr(watch, "changes", lambda: Changes(lost=True))
    disk.scan_changes()
    assert sorted(seen.rescanned, key=str) == sorted(map(ttid, range(12)), key=str)


def test_a_full_scan_every_full_scan_s(disk: Workdir, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = Counting(disk, monkeypatch)
    now = time.monotonic()
    monkeypatch.setattr(time, "monotonic", lambda: now + scanner_module.FULL_SCAN_S - 0.1)
    disk.scan_changes()
    assert seen.rescanned == [] and seen.discoveries == 0
    monkeypatch.setattr(time, "monotonic", lambda: now + scanner_module.FULL_SCAN_S + 0.1)
    disk.scan_changes()
    assert len(seen.rescanned) == 12 and seen.discoveries == 1


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EMFILE])
def test_no_watch_left_means_scanning_every_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, code: int
) -> None:
    """The kernel refuses a watch (``fs.inotify.max_user_watches``): a
    warning, and every pass scans every directory, as without inotify."""
    for i in range(4):
        make(tmp_path, ttid(i))
    real_watch = DirWatch.watch

    def limited(self: DirWatch, key: tuple[str, ...]) -> None:
        if len(key) == 2 and key[1] == ttid(3).timeline_id:
            raise OSError(code, os.strerror(code))
        real_watch(self, key)

    monkeypatch.setattr(DirWatch, "watch", limited)
    disk = Workdir(tmp_path, SEG)
    with caplog.at_level(logging.WARNING):
        assert len(disk.scan()) == 4
    assert not disk.watching
    assert "cannot add an inotify watch" in caplog.text and os.strerror(code) in caplog.text
    make(tmp_path, ttid(3), segments=2)
    assert disk.scan_changes().changed == {ttid(3)}


def test_a_directory_that_refuses_its_watch_is_rescanned_and_inotify_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """EACCES on one timeline directory (its mode): that one goes without a
    watch, rescanned each pass, the others keep theirs; it was taken for
    running out of watches, and the whole node scanned every directory each
    pass until it restarted."""
    for i in range(4):
        make(tmp_path, ttid(i))
    age(tmp_path)
    refused = True
    real_watch = DirWatch.watch

    def picky(self: DirWatch, key: tuple[str, ...]) -> None:
        if refused and len(key) == 2 and key[1] == ttid(3).timeline_id:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        real_watch(self, key)

    monkeypatch.setattr(DirWatch, "watch", picky)
    disk = Workdir(tmp_path, SEG)
    with caplog.at_level(logging.WARNING):
        assert len(disk.scan()) == 4
        disk.scan()
    assert disk.watching
    refused_dir = tmp_path / ttid(3).tenant_id / ttid(3).timeline_id
    assert f"no inotify watch on {refused_dir} (Permission denied)" in caplog.text
    seen = Counting(disk, monkeypatch)
    disk.scan_changes()
    assert seen.rescanned == [ttid(3)] and seen.discoveries == 0
    make(tmp_path, ttid(3), segments=2)
    assert disk.scan_changes().changed == {ttid(3)}  # no event: its own rescan
    make(tmp_path, ttid(1), segments=2)
    assert disk.scan_changes().changed == {ttid(1)}  # the others: their events

    refused = False  # the next full scan watches it
    now = time.monotonic()
    monkeypatch.setattr(time, "monotonic", lambda: now + scanner_module.FULL_SCAN_S + 0.1)
    disk.scan_changes()
    age(tmp_path)
    disk.scan_changes()  # the events of the ageing
    seen.reset()
    disk.scan_changes()
    assert seen.rescanned == [] and seen.discoveries == 0


def test_a_directory_gone_before_its_watch_is_found_again(tmp_path: Path) -> None:
    watch = DirWatch(tmp_path)
    try:
        synced = watch.sync(["00" * 16], [("00" * 16, "11" * 16)], refresh=False)
        assert synced.rediscover and synced.added == set()
        make(tmp_path, TenantTimelineId("00" * 16, "11" * 16))
        synced = watch.sync(["00" * 16], [("00" * 16, "11" * 16)], refresh=False)
        assert synced.added == {("00" * 16, "11" * 16)}
        assert watch.changes().layout  # the WORKDIR's own event: a tenant came
    finally:
        watch.close()


def test_a_timeline_directory_replaced_under_its_name_is_watched_anew(
    disk: Workdir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``mv L L.old; mv L.new L``: the old watch follows L.old; the new L
    gets its own, so its next segment is an event like any other."""
    t = ttid(7)
    tenant = tmp_path / t.tenant_id
    fresh = tenant / "incoming"
    fresh.mkdir()
    (fresh / xlog_file_name(1, SEG)).write_bytes(b"\0" * SEG)
    (fresh / xlog_file_name(2, SEG)).write_bytes(b"\0" * SEG)
    (tenant / t.timeline_id).rename(tenant / "old")
    fresh.rename(tenant / t.timeline_id)
    age(tmp_path)  # listings trusted at once: only events make a pass rescan
    states, changed = disk.scan_changes()
    assert changed == {t} and states[t].commit_lsn == Lsn(3 * SEG)
    seen = Counting(disk, monkeypatch)
    disk.scan_changes()
    assert seen.rescanned == [] and seen.discoveries == 0
    (tenant / t.timeline_id / xlog_file_name(3, SEG)).write_bytes(b"\0" * SEG)
    assert disk.scan_changes().changed == {t} and seen.discoveries == 0
    (tenant / "old" / xlog_file_name(2, SEG)).write_bytes(b"\0" * SEG)  # not a timeline
    assert disk.scan_changes().changed == set()


def test_timelines_under_a_tenant_turned_symlink_go(disk: Workdir, tmp_path: Path) -> None:
    """Discovery never follows a symlink, so neither does a rescan of what it lost."""
    t = ttid(0)
    elsewhere = tmp_path.parent / f"{tmp_path.name}-moved"
    (tmp_path / t.tenant_id).rename(elsewhere)
    (tmp_path / t.tenant_id).symlink_to(elsewhere)
    states = disk.scan()
    assert len(states) == 8 and all(s.tenant_id != t.tenant_id for s in states)


def test_a_pass_that_failed_half_way_is_made_good_by_the_next(
    disk: Workdir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make(tmp_path, ttid(1), segments=2)
    make(tmp_path, ttid(2), segments=2)
    real_list = timeline_dir.list_files
    calls = []

    def failing(path: Path) -> Listing:
        calls.append(path)
        if len(calls) == 2:
            raise MemoryError  # an OSError leaves one timeline out (the next test)
        return real_list(path)

    monkeypatch.setattr(timeline_dir, "list_files", failing)
    with pytest.raises(MemoryError):
        disk.scan_changes()
    states, changed = disk.scan_changes()  # events gone with the failed pass: a full scan
    assert changed == {ttid(1), ttid(2)} and states[ttid(2)].commit_lsn == Lsn(3 * SEG)


def test_a_disk_error_on_one_timeline_leaves_it_out_and_the_others_carry_on(
    disk: Workdir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EIO listing one directory: that timeline is left out of this pass
    (``failures`` says why, with the path and the errno), every other
    timeline is scanned, and the next pass takes it up again by itself."""
    make(tmp_path, ttid(1), segments=2)
    make(tmp_path, ttid(2), segments=2)
    broken = tmp_path / ttid(2).tenant_id / ttid(2).timeline_id
    real_list = timeline_dir.list_files
    fail = True

    def failing(path: Path) -> Listing:
        if fail and path == broken:
            raise OSError(errno.EIO, "Input/output error", str(path))
        return real_list(path)

    monkeypatch.setattr(timeline_dir, "list_files", failing)
    states, changed = disk.scan_changes()
    assert ttid(2) not in states and len(states) == 11
    assert changed == {ttid(1)} and states[ttid(1)].commit_lsn == Lsn(3 * SEG)
    assert disk.failures == {ttid(2): f"cannot read {broken}: Input/output error (EIO)"}
    fail = False
    states, changed = disk.scan_changes()  # no event: a timeline left out is rescanned
    assert changed == {ttid(2)} and states[ttid(2)].commit_lsn == Lsn(3 * SEG)
    assert disk.failures == {}


@pytest.mark.parametrize("watch", [True, False], ids=["inotify", "scanning"])
def test_a_workdir_gone_while_running_leaves_every_timeline_out_and_comes_back(
    tmp_path: Path, watch: bool
) -> None:
    """A WORKDIR moved away (an unmounted disk, say) while the node runs:
    the first scan raised for a bad setting, later ones kept a frozen view."""
    root = tmp_path / "wal"
    root.mkdir()
    for i in range(3):
        make(root, ttid(i))
    age(root)
    disk = Workdir(root, SEG, watch=watch)
    assert len(disk.scan()) == 3
    root.rename(tmp_path / "away")
    assert disk.scan() == {}
    assert disk.workdir_failure == f"workdir {root} is not a directory"
    (tmp_path / "away").rename(root)
    assert set(disk.scan()) == {ttid(i) for i in range(3)}
    assert disk.workdir_failure is None and disk.failures == {}
    disk.close()
    with pytest.raises(InvalidInput, match="is not a directory"):  # at start: a bad setting
        Workdir(tmp_path / "none", SEG, watch=watch).scan()
