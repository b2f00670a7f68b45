"""tasks.state.workdir and state_file: timeline discovery, cached rescans, the state file."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.core.segments import xlog_file_name
from tasks.errors import InvalidInput, SegmentFileError
from tasks.state import state_file, timeline_dir
from tasks.state.listing import Listing
from tasks.state.state_file import (
    STATE_FILE_NAME,
    TimelineStateFile,
    read_state_file,
    write_state_file,
)
from tasks.state.workdir import Workdir

SEG = 1 << 20
TENANT = "0123456789abcdef0123456789abcdef"
TTID = TenantTimelineId(TENANT, "00000000000000000000000000000001")
OTHER = TenantTimelineId(TENANT, "00000000000000000000000000000002")
PAST = time.time() - 3600


def make_timeline(workdir: Path, ttid: TenantTimelineId) -> Path:
    path = workdir / ttid.tenant_id / ttid.timeline_id
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_segment(path: Path, segno: int, size: int = SEG, partial: bool = False) -> Path:
    name = xlog_file_name(segno, SEG) + (".partial" if partial else "")
    (path / name).write_bytes(b"\0" * size)
    return path / name


def age_dir(path: Path) -> None:
    """Move the mtimes of the directory and its state file into the past, so
    that its listing may be cached. Always the same instant, so only the
    contents can tell two aged states apart."""
    if (path / STATE_FILE_NAME).exists():
        os.utime(path / STATE_FILE_NAME, (PAST, PAST))
    os.utime(path, (PAST, PAST))


@pytest.fixture(params=[True, False], ids=["inotify", "scanning"])
def state(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Workdir]:
    """Every scan test runs with inotify and without (where it is not to be had)."""
    disk = Workdir(tmp_path, SEG, watch=request.param)
    assert disk.watching is request.param
    yield disk
    disk.close()


# -- state file --------------------------------------------------------------


def test_state_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / STATE_FILE_NAME
    written = TimelineStateFile(SEG, Lsn(0x3000000), Lsn(0x100000), Lsn(0x3100000))
    write_state_file(path, written)
    assert read_state_file(path) == written
    body = json.loads(path.read_bytes())
    assert body["magic"] == "walbackup-timeline-state" and body["version"] == 1
    assert body["backup_lsn"] == "0/3000000" and body["timeline_start_lsn"] == "0/100000"
    assert len(body["sha256"]) == 64
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_FILE_NAME]  # no temp left


def test_state_file_missing_is_none(tmp_path: Path) -> None:
    assert read_state_file(tmp_path / STATE_FILE_NAME) is None


def test_state_file_write_failure_keeps_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / STATE_FILE_NAME
    old = TimelineStateFile(SEG, Lsn(5))
    write_state_file(path, old)

    def broken_fsync(fd: int) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk on fire"):
        write_state_file(path, TimelineStateFile(SEG, Lsn(9)))
    assert read_state_file(path) == old
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_FILE_NAME]


def _tamper(path: Path, **changes: object) -> None:
    body = json.loads(path.read_bytes())
    body.update(changes)
    path.write_text(json.dumps(body))


@pytest.mark.parametrize(
    ("corrupt", "reason"),
    [
        (lambda p: p.write_bytes(b"\x00\xff garbage"), "not valid JSON"),
        (lambda p: p.write_text("[1, 2]"), "not a JSON object"),
        (lambda p: p.write_bytes(p.read_bytes()[:20]), "not valid JSON"),
        (lambda p: _tamper(p, backup_lsn="0/9000000"), "checksum mismatch"),
        (lambda p: _tamper(p, magic="something-else"), "magic"),
        (lambda p: _tamper(p, version=2), "unsupported version 2"),
    ],
)
def test_corrupt_state_file_is_a_clear_error(
    tmp_path: Path, corrupt: Callable[[Path], object], reason: str
) -> None:
    path = tmp_path / STATE_FILE_NAME
    write_state_file(path, TimelineStateFile(SEG, Lsn(0x2000000)))
    corrupt(path)
    with pytest.raises(InvalidInput, match=reason) as excinfo:
        read_state_file(path)
    assert str(path) in str(excinfo.value)


def test_state_file_with_bad_values_rejected(tmp_path: Path) -> None:
    path = tmp_path / STATE_FILE_NAME
    body: dict[str, object] = {
        "magic": "walbackup-timeline-state",
        "version": 1,
        "wal_seg_size": 3 << 20,
        "backup_lsn": "0/0",
    }
    body["sha256"] = state_file._body_digest(body)
    path.write_text(json.dumps(body))
    with pytest.raises(InvalidInput, match="wal_seg_size"):
        read_state_file(path)


def test_corrupt_state_file_is_never_overwritten(state: Workdir, tmp_path: Path) -> None:
    path = make_timeline(tmp_path, TTID) / STATE_FILE_NAME
    path.write_bytes(b"garbage")
    with pytest.raises(InvalidInput, match=str(path)):
        state.record_backup_lsn(TTID, Lsn(0x200000))
    assert path.read_bytes() == b"garbage"


# -- backup_lsn --------------------------------------------------------------


def test_record_backup_lsn_is_monotonic(state: Workdir, tmp_path: Path) -> None:
    make_timeline(tmp_path, TTID)
    assert state.record_backup_lsn(TTID, Lsn(0x300000)) == Lsn(0x300000)
    assert state.record_backup_lsn(TTID, Lsn(0x100000)) == Lsn(0x300000)
    assert state.record_backup_lsn(TTID, Lsn(0x400000)) == Lsn(0x400000)
    stored = state.read_state(TTID)
    assert stored is not None and stored.backup_lsn == Lsn(0x400000)
    assert stored.wal_seg_size == SEG  # the default, for a dir without a state file


def test_record_backup_lsn_keeps_other_fields(state: Workdir, tmp_path: Path) -> None:
    path = make_timeline(tmp_path, TTID)
    write_state_file(path / STATE_FILE_NAME, TimelineStateFile(2 * SEG, Lsn(0), Lsn(2 * SEG)))
    state.record_backup_lsn(TTID, Lsn(4 * SEG))
    assert state.read_state(TTID) == TimelineStateFile(2 * SEG, Lsn(4 * SEG), Lsn(2 * SEG))


def test_record_backup_lsn_without_timeline_dir(state: Workdir) -> None:
    with pytest.raises(SegmentFileError, match="does not exist"):
        state.record_backup_lsn(TTID, Lsn(1))


def test_record_backup_lsn_threads(state: Workdir, tmp_path: Path) -> None:
    make_timeline(tmp_path, TTID)
    values = [Lsn(i * 0x1000) for i in range(1, 201)]

    def record(chunk: list[Lsn]) -> None:
        for value in chunk:
            state.record_backup_lsn(TTID, value)

    threads = [threading.Thread(target=record, args=(values[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stored = state.read_state(TTID)
    assert stored is not None and stored.backup_lsn == max(values)


def _record_many(workdir: str, start: int) -> None:
    state = Workdir(Path(workdir), SEG)
    for i in range(start, 400, 4):
        state.record_backup_lsn(TTID, Lsn(i * 0x1000))


def test_record_backup_lsn_processes(tmp_path: Path) -> None:
    make_timeline(tmp_path, TTID)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_record_many, args=(str(tmp_path), i)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    stored = Workdir(tmp_path, SEG).read_state(TTID)
    assert stored is not None and stored.backup_lsn == Lsn(399 * 0x1000)


# -- discovery and scanning --------------------------------------------------


def test_paths(state: Workdir, tmp_path: Path) -> None:
    assert state.timeline_dir(TTID) == tmp_path / TTID.tenant_id / TTID.timeline_id
    assert state.segment_path(TTID, 1, 16 << 20) == (
        tmp_path / TTID.tenant_id / TTID.timeline_id / "000000010000000000000001"
    )


def test_discovery_ignores_invalid_names(state: Workdir, tmp_path: Path) -> None:
    make_timeline(tmp_path, TTID)
    (tmp_path / TENANT / ("A" * 32)).mkdir()  # upper case
    (tmp_path / TENANT / ("a" * 31)).mkdir()
    (tmp_path / TENANT / ("a" * 33)).mkdir()
    (tmp_path / TENANT / ("b" * 32)).write_text("a file, not a dir")
    (tmp_path / TENANT / ("c" * 32)).symlink_to(state.timeline_dir(TTID))
    (tmp_path / "not-a-tenant" / ("d" * 32)).mkdir(parents=True)
    (tmp_path / ("e" * 32)).symlink_to(tmp_path / TENANT)
    (tmp_path / ("f" * 32)).write_text("")
    assert set(state.scan()) == {TTID}
    assert state.discover() == {TTID: state.timeline_dir(TTID)}


def test_missing_workdir(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="workdir"):
        Workdir(tmp_path / "nope", SEG).scan()


def test_pg_receivewal_dir(state: Workdir, tmp_path: Path) -> None:
    path = make_timeline(tmp_path, TTID)
    for segno in (1, 2, 3):
        write_segment(path, segno)
    write_segment(path, 4, 5000, partial=True)
    (tli,) = state.scan().values()
    assert (tli.local_start_lsn, tli.commit_lsn) == (Lsn(SEG), Lsn(4 * SEG))
    assert tli.backup_lsn == Lsn(0) and tli.timeline_start_lsn is None
    assert tli.wal_seg_size == SEG and tli.problems == ()


def test_state_file_seg_size_and_commit_lsn(state: Workdir, tmp_path: Path) -> None:
    path = make_timeline(tmp_path, TTID)
    big = 2 * SEG
    (path / xlog_file_name(1, big)).write_bytes(b"\0" * big)
    (path / xlog_file_name(2, big)).write_bytes(b"\0" * SEG)  # wrong size for 2 MiB
    write_state_file(
        path / STATE_FILE_NAME,
        TimelineStateFile(big, Lsn(big), Lsn(big), commit_lsn=Lsn(2 * big + 10)),
    )
    tli = state.scan()[TTID]
    assert tli.wal_seg_size == big
    assert tli.commit_lsn == Lsn(2 * big + 10)  # recorded, inside the segment being written
    assert tli.backup_lsn == Lsn(big) and tli.timeline_start_lsn == Lsn(big)
    (problem,) = tli.problems
    assert f"expected wal_seg_size {big}" in problem


def test_rescan_picks_up_completed_segment(state: Workdir, tmp_path: Path) -> None:
    path = make_timeline(tmp_path, TTID)
    write_segment(path, 1)
    partial = write_segment(path, 2, SEG, partial=True)
    age_dir(path)

    states, changed = state.scan_changes()
    assert changed == {TTID} and states[TTID].commit_lsn == Lsn(2 * SEG)
    assert state.scan_changes().changed == set()

    partial.rename(path / xlog_file_name(2, SEG))
    states, changed = state.scan_changes()
    assert changed == {TTID} and states[TTID].commit_lsn == Lsn(3 * SEG)


def test_unchanged_old_dir_is_not_relisted(
    state: Workdir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = make_timeline(tmp_path, TTID)
    write_segment(path, 1)
    state.record_backup_lsn(TTID, Lsn(SEG))
    age_dir(path)
    state.scan()

    listed: list[Path] = []
    real_list = timeline_dir.list_files

    def counting_list(p: Path) -> Listing:
        listed.append(p)
        return real_list(p)

    monkeypatch.setattr(timeline_dir, "list_files", counting_list)
    for _ in range(3):
        assert state.scan()[TTID].commit_lsn == Lsn(2 * SEG)
    assert listed == []

    write_segment(path, 2)
    assert state.scan()[TTID].commit_lsn == Lsn(3 * SEG)
    assert listed == [path]


def test_change_within_same_mtime_tick_is_seen(state: Workdir, tmp_path: Path) -> None:
    # Two renames within one mtime tick leave the directory's mtime unchanged;
    # a listing taken that recently must not be trusted.
    path = make_timeline(tmp_path, TTID)
    write_segment(path, 1)
    mtime_ns = os.stat(path).st_mtime_ns
    assert state.scan()[TTID].commit_lsn == Lsn(2 * SEG)
    write_segment(path, 2)
    os.utime(path, ns=(mtime_ns, mtime_ns))
    assert state.scan()[TTID].commit_lsn == Lsn(3 * SEG)


def test_state_file_change_is_seen(state: Workdir, tmp_path: Path) -> None:
    path = make_timeline(tmp_path, TTID)
    write_segment(path, 1)
    age_dir(path)
    assert state.scan()[TTID].backup_lsn == Lsn(0)
    state.record_backup_lsn(TTID, Lsn(2 * SEG))
    age_dir(path)  # only the state file's stat tells now
    assert state.scan()[TTID].backup_lsn == Lsn(2 * SEG)


def test_corrupt_timeline_left_out_of_scan(state: Workdir, tmp_path: Path) -> None:
    good = make_timeline(tmp_path, TTID)
    write_segment(good, 1)
    bad = make_timeline(tmp_path, OTHER)
    write_segment(bad, 1)
    (bad / STATE_FILE_NAME).write_text("{}")

    states = state.scan()
    assert set(states) == {TTID}
    assert str(bad / STATE_FILE_NAME) in state.failures[OTHER]
    with pytest.raises(InvalidInput, match="magic"):
        state.scan_timeline(OTHER)

    (bad / STATE_FILE_NAME).unlink()
    states, changed = state.scan_changes()
    assert set(states) == {TTID, OTHER} and changed == {OTHER}
    assert state.failures == {}


@pytest.mark.parametrize("what", ["directory", "dangling symlink"])
def test_a_directory_or_dangling_symlink_named_like_a_segment_is_a_damaged_copy(
    state: Workdir, tmp_path: Path, what: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The drill: a directory (or a dangling symlink) in place of segment 3
    was a hole ("segment …03 is missing while 2 complete segment(s) follow
    it"): the node stayed offloader, backup_lsn stuck. It is a damaged copy,
    as a mode-000 file there is, so the election hands the timeline over."""
    path = make_timeline(tmp_path, TTID)
    for segno in (1, 2, 4, 5):
        write_segment(path, segno)
    bad = path / xlog_file_name(3, SEG)
    if what == "directory":
        bad.mkdir()
    else:
        bad.symlink_to(path / "nowhere")
    with caplog.at_level(logging.ERROR):
        st = state.scan()[TTID]
    assert st.damaged == (3,) and st.commit_lsn == Lsn(3 * SEG)
    assert st.problems == (f"{bad.name}: is a {what}, not a file",)
    assert f"Timeline {TTID}: damaged copy {bad}: is a {what}" in caplog.text


def test_removed_timeline_disappears(state: Workdir, tmp_path: Path) -> None:
    path = make_timeline(tmp_path, TTID)
    write_segment(path, 1)
    assert set(state.scan()) == {TTID}
    (path / xlog_file_name(1, SEG)).unlink()
    path.rmdir()
    assert state.scan() == {}
    assert state.scan_timeline(TTID) is None


def test_rescans_reuse_ids_and_paths_and_see_a_recreated_dir(
    state: Workdir, tmp_path: Path
) -> None:
    """A scan of thousands of timelines every second builds no new id or
    path for a directory it already knew; one removed and made again is
    scanned afresh."""
    path = make_timeline(tmp_path, TTID)
    write_segment(path, 1)
    first = state.discover()
    (ttid,) = first
    again = state.discover()
    (same,) = again
    assert same is ttid and again[same] is first[ttid]
    assert state.scan()[TTID].commit_lsn == Lsn(2 * SEG)  # the end of segment 1
    (path / xlog_file_name(1, SEG)).unlink()
    path.rmdir()
    assert state.scan() == {}
    path = make_timeline(tmp_path, TTID)
    write_segment(path, 1)
    write_segment(path, 2)
    assert state.scan()[TTID].commit_lsn == Lsn(3 * SEG)


def test_state_file_partial_uploads_optional_and_old_files_still_read(tmp_path: Path) -> None:
    import hashlib
    import json

    from tasks.state.state_file import TimelineStateFile

    # A file as written before partial uploads existed.
    body = {"magic": "walbackup-timeline-state", "version": 1, "wal_seg_size": SEG,
            "backup_lsn": "0/300000"}  # fmt: skip
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    old = json.dumps({**body, "sha256": hashlib.sha256(canonical).hexdigest()}).encode()
    parsed = TimelineStateFile.from_bytes(old, tmp_path / "x")
    assert parsed.partial_uploads == ()
    assert parsed.to_bytes() == TimelineStateFile(SEG, Lsn(3 * SEG)).to_bytes()
    assert b"partial_uploads" not in parsed.to_bytes()
    names = ("000000010000000000000003_0000000003001000.partial",)
    with_names = TimelineStateFile(SEG, Lsn(3 * SEG), partial_uploads=names)
    assert TimelineStateFile.from_bytes(with_names.to_bytes(), tmp_path / "x") == with_names
    bad = json.loads(with_names.to_bytes())
    bad["partial_uploads"] = "x"
    bad.pop("sha256")
    canonical = json.dumps(bad, sort_keys=True, separators=(",", ":")).encode()
    bad["sha256"] = hashlib.sha256(canonical).hexdigest()
    with pytest.raises(InvalidInput, match="partial_uploads"):
        TimelineStateFile.from_bytes(json.dumps(bad).encode(), tmp_path / "x")


# -- system identifier (tasks.backup.walheader) ------------------------------


def test_record_cluster_state_keeps_the_system_id(state: Workdir, tmp_path: Path) -> None:
    make_timeline(tmp_path, TTID)
    assert state.scan_timeline(TTID).system_id is None  # type: ignore[union-attr]
    stored = state.record_cluster_state(TTID, Lsn(0x300000), 7301234567890123456)
    assert (stored.backup_lsn, stored.system_id) == (Lsn(0x300000), 7301234567890123456)
    stored = state.record_cluster_state(TTID, Lsn(0x100000), None)  # neither lowered nor cleared
    assert (stored.backup_lsn, stored.system_id) == (Lsn(0x300000), 7301234567890123456)
    assert state.record_backup_lsn(TTID, Lsn(0x400000)) == Lsn(0x400000)
    st = state.scan_timeline(TTID)
    assert st is not None and st.system_id == 7301234567890123456


@pytest.mark.parametrize("value", [-1, 2**64, "7301234567890123456", True, 1.5])
def test_a_bad_system_id_in_the_state_file_is_rejected(tmp_path: Path, value: object) -> None:
    body = json.loads(TimelineStateFile(SEG, Lsn(SEG), system_id=1).to_bytes())
    body.pop("sha256")
    body["system_id"] = value
    body["sha256"] = state_file._body_digest(body)
    with pytest.raises(InvalidInput, match="system_id"):
        TimelineStateFile.from_bytes(json.dumps(body).encode(), tmp_path / "x")
    good = TimelineStateFile(SEG, Lsn(SEG), system_id=2**64 - 1)
    assert TimelineStateFile.from_bytes(good.to_bytes(), tmp_path / "x") == good
