"""What ``walbackup fetch`` makes of a missing segment (tasks/restore/absence.py),
in-process on a real ``file://`` archive with ledger pages as the offloader
writes them: only the archive's true end is "not found"."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.archive.ledger_store import LedgerStore
from tasks.core.ids import TenantTimelineId
from tasks.core.ledger import LEDGER_DIR, LedgerEntry
from tasks.core.lsn import Lsn
from tasks.core.partials import partial_object
from tasks.core.retention import RETAINED_MARKER, marker_bytes
from tasks.core.segments import xlog_file_name
from tasks.errors import InvalidInput, NotFound, SegmentLost
from tasks.restore import fetch as fetch_module
from tasks.restore.fetch import empty_timeline_ends, fetch_or_partial
from tasks.restore.ledger_check import LedgerCheck
from tasks.storage.base import ObjectInfo, segment_key, timeline_prefix
from tasks.storage.local import LocalStorage

SEG = 1 << 20


class PuttingBack(LocalStorage):
    """A ``file://`` archive where a segment comes back while the ledger is
    listed: what an upload and flush (or a scrubber's heal) between a fetch's
    GET and its ledger lookup looks like."""

    back: tuple[str, bytes] | None = None

    def list(
        self, prefix: str, start_after: str = "", limit: int | None = None
    ) -> Iterator[ObjectInfo]:
        if self.back is not None and prefix.endswith(f"{LEDGER_DIR}/"):
            key, data = self.back
            self.back = None
            self.put_bytes(key, data)
        return super().list(prefix, start_after, limit)


@pytest.fixture(autouse=True)
def no_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetch_module, "LOST_RECHECK_S", 0.0)  # fetch_or_partial's wait


@pytest.fixture
def ttid() -> TenantTimelineId:
    return TenantTimelineId(secrets.token_hex(16), secrets.token_hex(16))


def data_of(segno: int) -> bytes:
    return segno.to_bytes(4, "big") * (SEG // 4)


def archived(tmp_path: Path, ttid: TenantTimelineId, count: int = 8) -> PuttingBack:
    """Segments 1..count archived, 1..count-2 in a ledger page."""
    storage = PuttingBack(tmp_path / "archive")
    entries = {}
    for segno in range(1, count + 1):
        data = data_of(segno)
        storage.put_bytes(segment_key(ttid, xlog_file_name(segno, SEG)), data)
        entries[segno] = LedgerEntry(SEG, hashlib.sha256(data).hexdigest(), "")
    LedgerStore(storage).write(ttid, SEG, {s: entries[s] for s in range(1, count - 1)}, 1)
    return storage


def fetch(
    storage: LocalStorage, ttid: TenantTimelineId, segno: int, dest: Path, **kw: bool
) -> tuple[int, str | None]:
    check = LedgerCheck(storage, ttid, SEG, **kw)
    return fetch_or_partial(storage, ttid, xlog_file_name(segno, SEG), str(dest), 0, check)


def test_a_recorded_segment_gone_is_lost_even_with_a_partial_left_over(
    tmp_path: Path, ttid: TenantTimelineId
) -> None:
    storage = archived(tmp_path, ttid)
    name = xlog_file_name(3, SEG)
    leftover = partial_object(3, Lsn(3 * SEG + 0x300), SEG).name
    storage.put_bytes(segment_key(ttid, leftover), data_of(3))
    storage.delete(segment_key(ttid, name))
    with pytest.raises(SegmentLost, match="records it as archived: the archive lost it"):
        fetch(storage, ttid, 3, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_a_segment_back_by_the_second_look_is_served(
    tmp_path: Path, ttid: TenantTimelineId
) -> None:
    storage = archived(tmp_path, ttid)
    key = segment_key(ttid, xlog_file_name(4, SEG))
    storage.delete(key)
    storage.back = (key, data_of(4))
    assert fetch(storage, ttid, 4, tmp_path / "dest") == (SEG, None)
    assert (tmp_path / "dest").read_bytes() == data_of(4)


def test_past_the_pages_or_below_the_retained_start_is_the_end(
    tmp_path: Path, ttid: TenantTimelineId
) -> None:
    storage = archived(tmp_path, ttid)
    storage.delete(segment_key(ttid, xlog_file_name(8, SEG)))  # committed, not in a page
    for segno in (8, 9):
        with pytest.raises(NotFound):
            fetch(storage, ttid, segno, tmp_path / "dest")
    storage.put_bytes(timeline_prefix(ttid) + RETAINED_MARKER, marker_bytes(Lsn(3 * SEG), SEG))
    storage.delete(segment_key(ttid, xlog_file_name(2, SEG)))
    with pytest.raises(NotFound):
        fetch(storage, ttid, 2, tmp_path / "dest")


def test_warn_only_takes_a_loss_for_the_end_saying_so(
    tmp_path: Path, ttid: TenantTimelineId, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = archived(tmp_path, ttid)
    storage.delete(segment_key(ttid, xlog_file_name(5, SEG)))
    with pytest.raises(NotFound):
        fetch(storage, ttid, 5, tmp_path / "dest", warn_only=True)
    assert "the archive lost it" in capsys.readouterr().err


def test_a_wrong_seg_size_setting_still_finds_a_loss(
    tmp_path: Path, ttid: TenantTimelineId
) -> None:
    """The pages say which segment size they were written for."""
    storage = archived(tmp_path, ttid)
    storage.delete(segment_key(ttid, xlog_file_name(5, SEG)))
    check = LedgerCheck(storage, ttid, 16 * SEG)
    with pytest.raises(SegmentLost):
        fetch_or_partial(storage, ttid, xlog_file_name(5, SEG), str(tmp_path / "d"), 0, check)


def test_nothing_stored_at_all_is_a_wrong_prefix_nothing_of_the_timeline_a_wrong_id(
    tmp_path: Path, ttid: TenantTimelineId, capsys: pytest.CaptureFixture[str]
) -> None:
    """A wrong timeline id must stop a recovery, not end it at the base
    backup's end; ``empty_timeline_ends`` (a standby started before anything
    was archived) makes it the end, said."""
    storage = archived(tmp_path, ttid)
    other = TenantTimelineId(secrets.token_hex(16), ttid.timeline_id)
    dest = tmp_path / "dest"
    with pytest.raises(InvalidInput, match=f"nothing is archived of timeline {other}") as err:
        fetch(storage, other, 1, dest)
    assert "standby.signal" in str(err.value) and not dest.exists()
    with pytest.raises(NotFound):
        fetch_or_partial(storage, other, xlog_file_name(1, SEG), str(dest), 0, None, True)
    assert f"nothing is archived of timeline {other}" in capsys.readouterr().err
    with pytest.raises(NotFound):  # the timeline has something: the end, quietly
        fetch_or_partial(storage, ttid, xlog_file_name(99, SEG), str(dest), 0, None)
    assert capsys.readouterr().err == ""
    empty = LocalStorage(tmp_path / "empty")
    with pytest.raises(InvalidInput, match="nothing at all is stored"):
        fetch(empty, ttid, 1, dest)


@pytest.mark.parametrize(
    ("policy", "signals", "ends"),
    [
        ("auto", [], False),
        ("auto", ["recovery.signal"], False),
        ("auto", ["standby.signal"], True),
        ("auto", ["standby.signal", "recovery.signal"], True),
        ("stop", ["standby.signal"], False),
        ("end", [], True),
    ],
)
def test_an_empty_timeline_ends_only_a_standby_by_default(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    policy: str,
    signals: list[str],
    ends: bool,
) -> None:
    """PostgreSQL runs restore_command in its data directory: standby.signal
    there is standby mode, where a missing file never ends recovery."""
    for name in signals:
        (tmp_path / name).touch()
    monkeypatch.chdir(tmp_path)
    assert empty_timeline_ends(policy) is ends


@pytest.mark.parametrize(
    ("conf", "standby"),
    [
        ("standby_mode = 'on'\nprimary_conninfo = 'host=p'\n", True),
        ("standby_mode=on", True),
        ("  standby_mode = true  # a standby\n", True),
        ("standby_mode 'yes'", True),
        ("standby_mode = 'off'\n", False),
        ("standby_mode = 'on'\nstandby_mode = 'off'\n", False),  # the last one counts
        ("# standby_mode = 'on'\nrestore_command = 'x'\n", False),
        ("restore_command = 'walbackup fetch %f %p'\n", False),
    ],
)
def test_a_postgresql_11_standby_is_told_by_recovery_conf(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, conf: str, standby: bool
) -> None:
    """Before PostgreSQL 12 a standby had no standby.signal, but
    ``standby_mode = on`` in recovery.conf (found by a review: such a
    standby got an empty timeline's refusal, exit 200, as a recovery does)."""
    (tmp_path / "recovery.conf").write_text(conf)
    monkeypatch.chdir(tmp_path)
    assert empty_timeline_ends("auto") is standby


def test_a_segment_gone_with_its_page_is_lost_when_later_pages_exist(
    tmp_path: Path, ttid: TenantTimelineId
) -> None:
    """Pages are written in order over committed segments: a later page
    says the segment was archived, though its own page is gone too."""
    storage = archived(tmp_path, ttid, count=12)
    store = LedgerStore(storage)
    for ref in store.pages(ttid, SEG):
        storage.delete(ref.key)
    store.write(ttid, SEG, {s: LedgerEntry(SEG, "0" * 64, "") for s in range(1, 5)}, 1)
    store.write(ttid, SEG, {s: LedgerEntry(SEG, "0" * 64, "") for s in range(7, 11)}, 1)
    storage.delete(segment_key(ttid, xlog_file_name(6, SEG)))
    with pytest.raises(SegmentLost, match="the page of its own is gone too"):
        fetch(storage, ttid, 6, tmp_path / "dest")
    storage.delete(segment_key(ttid, xlog_file_name(12, SEG)))  # past the last page: the end
    with pytest.raises(NotFound):
        fetch(storage, ttid, 12, tmp_path / "dest")


def test_a_later_postgresql_timeline_stops_a_recovery_but_not_a_standby(
    tmp_path: Path, ttid: TenantTimelineId, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """PostgreSQL follows the archived 00000002.history and asks for timeline
    2's segments first: walbackup never has them, and 'not found' would end
    the recovery at the switch."""
    storage = archived(tmp_path, ttid)
    t2 = "000000020000000000000009"
    dest = tmp_path / "dest"
    with pytest.raises(NotFound):  # no history of timeline 2 archived: nothing known of it
        fetch_or_partial(storage, ttid, t2, str(dest), 0, None)
    storage.put_bytes(timeline_prefix(ttid) + "00000002.history", b"1\t0/9000000\tx\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidInput, match="recovery_target_timeline = '1'"):
        fetch_or_partial(storage, ttid, t2, str(dest), 0, None)
    (tmp_path / "standby.signal").touch()
    with pytest.raises(NotFound):
        fetch_or_partial(storage, ttid, t2, str(dest), 0, None)
    assert "PostgreSQL timeline 2" in capsys.readouterr().err
    assert not dest.exists()


@pytest.mark.parametrize("page", [b"{torn", b""], ids=["torn", "empty"])
def test_a_segment_gone_whose_page_cannot_be_read_is_lost(
    tmp_path: Path, ttid: TenantTimelineId, page: bytes
) -> None:
    """A page's name says which segments it records, and pages record
    committed segments only: its bytes unreadable (found by a drill: the
    loss was taken for the archive's end, exit 1, without a word) do not
    make a loss inside its span the end."""
    storage = archived(tmp_path, ttid)
    (ref,) = LedgerStore(storage).pages(ttid, SEG)
    storage.put_bytes(ref.key, page)
    storage.delete(segment_key(ttid, xlog_file_name(3, SEG)))
    with pytest.raises(SegmentLost, match=r"which cannot be read.*the archive lost it"):
        fetch(storage, ttid, 3, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()
    storage.delete(segment_key(ttid, xlog_file_name(8, SEG)))  # past its span: the end
    with pytest.raises(NotFound):
        fetch(storage, ttid, 8, tmp_path / "dest")
