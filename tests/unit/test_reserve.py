"""tasks.state.reserve: a WORKDIR's space reserve, and the state file write
that gives it up on a full disk (``Workdir.update_state``). The real full
disk is in tests/integration/test_removal_full_disk.py (a tmpfs)."""

from __future__ import annotations

import errno
import logging
from pathlib import Path

import pytest

from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.state import reserve as reserve_module
from tasks.state import workdir as workdir_module
from tasks.state.reserve import RESERVE_BYTES, RESERVE_NAME, DiskReserve
from tasks.state.state_file import TimelineStateFile, write_state_file
from tasks.state.workdir import Workdir

SEG = 1 << 20
TTID = TenantTimelineId("0123456789abcdef0123456789abcdef", "00000000000000000000000000000001")
FULL = OSError(errno.ENOSPC, "No space left on device")


def test_keep_makes_it_of_real_blocks_once(tmp_path: Path) -> None:
    reserve = DiskReserve(tmp_path)
    assert reserve.keep()
    st = reserve.path.stat()
    assert reserve.path == tmp_path / RESERVE_NAME
    assert st.st_size == RESERVE_BYTES and st.st_blocks * 512 >= RESERVE_BYTES
    assert len(set(reserve.path.read_bytes()[:4096])) > 1  # not zeros: nothing to compress
    assert reserve.keep()
    assert reserve.path.stat().st_ino == st.st_ino  # there already: left alone
    assert [p.name for p in tmp_path.iterdir()] == [RESERVE_NAME]  # no temp file left


def test_keep_leaves_the_last_free_blocks_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reserve_module, "_free_bytes", lambda path: 2 * RESERVE_BYTES - 1)
    assert not DiskReserve(tmp_path).keep()
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(reserve_module, "_free_bytes", lambda path: 2 * RESERVE_BYTES)
    assert DiskReserve(tmp_path).keep()


def test_release_deletes_it_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reserve = DiskReserve(tmp_path)
    reserve.keep()
    with caplog.at_level(logging.WARNING, logger="walbackup.reserve"):
        assert reserve.release(FULL)
        assert not reserve.release(FULL)  # gone: nothing to write in
    (line,) = [r.getMessage() for r in caplog.records]
    assert "is full (No space left on device)" in line and str(tmp_path) in line
    assert not reserve.path.exists()


def test_the_scan_ignores_it(tmp_path: Path) -> None:
    disk = Workdir(tmp_path, SEG, watch=False)
    path = tmp_path / TTID.tenant_id / TTID.timeline_id
    path.mkdir(parents=True)
    assert disk.reserve.keep()
    assert disk.discover() == {TTID: path}
    assert set(disk.scan()) == {TTID}
    assert disk.failures == {}


class FlakyWrites:
    """``write_state_file`` failing with ``errors`` first."""

    def __init__(self, *errors: OSError) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self, path: Path, state: TimelineStateFile) -> None:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        write_state_file(path, state)


@pytest.fixture
def disk(tmp_path: Path) -> Workdir:
    (tmp_path / TTID.tenant_id / TTID.timeline_id).mkdir(parents=True)
    return Workdir(tmp_path, SEG, watch=False)


def test_a_full_disk_spends_the_reserve_and_writes_again(
    disk: Workdir, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk.reserve.keep()
    writes = FlakyWrites(FULL)
    monkeypatch.setattr(workdir_module, "write_state_file", writes)
    assert disk.record_backup_lsn(TTID, Lsn(SEG)) == Lsn(SEG)
    assert writes.calls == 2
    assert not disk.reserve.path.exists()
    recorded = disk.read_state(TTID)
    assert recorded is not None and recorded.backup_lsn == Lsn(SEG)


def test_without_a_reserve_or_for_another_error_the_write_fails(
    disk: Workdir, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes = FlakyWrites(FULL)
    monkeypatch.setattr(workdir_module, "write_state_file", writes)
    with pytest.raises(OSError, match="No space left"):
        disk.record_backup_lsn(TTID, Lsn(SEG))  # none was made: nothing to give up
    assert writes.calls == 1
    disk.reserve.keep()
    writes.errors = [OSError(errno.EIO, "Input/output error"), FULL, FULL]
    with pytest.raises(OSError, match="Input/output"):
        disk.record_backup_lsn(TTID, Lsn(SEG))
    assert disk.reserve.path.exists()  # deleting it would not have helped
    with pytest.raises(OSError, match="No space left"):
        disk.record_backup_lsn(TTID, Lsn(SEG))  # given up, and still full: once more only
    assert writes.calls == 4 and not disk.reserve.path.exists()


def test_drop_deletes_a_leftover(tmp_path: Path) -> None:
    reserve = DiskReserve(tmp_path)
    reserve.drop()  # none: nothing to do
    reserve.keep()
    reserve.drop()
    assert list(tmp_path.iterdir()) == []
