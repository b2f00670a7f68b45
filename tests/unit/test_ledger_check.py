"""The restore's check against the archive ledger (tasks/restore/ledger_check.py)
and the page lookup it rests on (tasks/storage/ledger_pages.py), on a real
``file://`` archive: pages written as the offloader writes them."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tasks.archive.ledger_store import LedgerStore
from tasks.core.ids import TenantTimelineId
from tasks.core.ledger import LEDGER_DIR, PAGE_MAX_SEGMENTS, LedgerEntry, page_key
from tasks.core.segments import xlog_file_name
from tasks.errors import ChecksumMismatch, InvalidInput, LedgerConflict
from tasks.restore.ledger_check import LedgerCheck
from tasks.storage.base import ObjectInfo, SegmentDigest, timeline_prefix
from tasks.storage.local import LocalStorage

SEG = 1 << 20


class CountingStorage(LocalStorage):
    """A ``file://`` archive that counts its listings (instrumented, not faked)."""

    lists = 0

    def list(
        self, prefix: str, start_after: str = "", limit: int | None = None
    ) -> Iterator[ObjectInfo]:
        self.lists += 1
        return super().list(prefix, start_after, limit)


@pytest.fixture
def storage(tmp_path: Path) -> CountingStorage:
    return CountingStorage(tmp_path / "archive")


@pytest.fixture
def ttid() -> TenantTimelineId:
    return TenantTimelineId(secrets.token_hex(16), secrets.token_hex(16))


def data_of(segno: int) -> bytes:
    return segno.to_bytes(4, "big") * (64 // 4)


def entry_of(data: bytes) -> LedgerEntry:
    return LedgerEntry(SEG, hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest())


def digest_of(data: bytes, size: int = SEG) -> SegmentDigest:
    return SegmentDigest(hashlib.sha256(data).digest(), b"", size)


def write_pages(
    storage: LocalStorage, ttid: TenantTimelineId, first: int, end: int, per: int
) -> None:
    """Pages of ``per`` entries each over ``[first, end)``, as flushes write them."""
    store = LedgerStore(storage)
    for start in range(first, end, per):
        run = {s: entry_of(data_of(s)) for s in range(start, min(end, start + per))}
        store.write(ttid, SEG, run, node_id=1)


def test_recorded_bytes_pass_and_other_bytes_are_refused_naming_both(
    storage: CountingStorage, ttid: TenantTimelineId
) -> None:
    write_pages(storage, ttid, 1, 11, per=64)
    check = LedgerCheck(storage, ttid, SEG)
    name = xlog_file_name(5, SEG)
    check.check(name, digest_of(data_of(5)))
    flipped = bytearray(data_of(5))
    flipped[7] ^= 0x01
    with pytest.raises(ChecksumMismatch) as raised:
        check.check(name, digest_of(bytes(flipped)))
    message = str(raised.value)
    assert name in message and str(ttid) in message
    assert hashlib.sha256(flipped).hexdigest() in message  # what was read
    assert hashlib.sha256(data_of(5)).hexdigest() in message  # what was archived
    assert f"{LEDGER_DIR}/{xlog_file_name(1, SEG)}-{xlog_file_name(10, SEG)}.json" in message
    with pytest.raises(ChecksumMismatch, match="1024 bytes"):  # the right hash, truncated
        check.check(name, digest_of(data_of(5), size=1024))


def test_what_the_ledger_has_no_entry_for_is_left_to_the_storage(
    storage: CountingStorage, ttid: TenantTimelineId
) -> None:
    write_pages(storage, ttid, 1, 11, per=64)
    check = LedgerCheck(storage, ttid, SEG)
    other = digest_of(b"anything")
    check.check(xlog_file_name(11, SEG), other)  # committed, not flushed to a page yet
    check.check("00000002.history", other)
    check.check(xlog_file_name(5, SEG) + "_0000000000500000.partial", other)
    check.check(xlog_file_name(5, SEG, tli=2), other)  # pages record PG_TLI's segments


def test_a_segment_deep_in_a_long_timeline_is_found_with_one_listing(
    storage: CountingStorage, ttid: TenantTimelineId
) -> None:
    """5,000 segments in pages of 64: the lookup lists from 1,023 segments
    before the one asked for (a page spans at most PAGE_MAX_SEGMENTS)."""
    write_pages(storage, ttid, 0, 5000, per=64)
    refs = LedgerStore(storage).pages(ttid, SEG, start=4000, end=4000)
    *inside, past = refs  # and the first page past it, which tells a gap from the end
    assert inside and all(4000 - PAGE_MAX_SEGMENTS < r.first <= 4000 for r in inside)
    assert past.first > 4000
    assert any(r.first <= 4000 <= r.last for r in inside)
    assert len(inside) <= PAGE_MAX_SEGMENTS // 64 + 1
    before = storage.lists
    check = LedgerCheck(storage, ttid, SEG)
    check.check(xlog_file_name(4000, SEG), digest_of(data_of(4000)))
    assert storage.lists == before + 1
    with pytest.raises(ChecksumMismatch):
        check.check(xlog_file_name(4001, SEG), digest_of(data_of(4000)))
    assert storage.lists == before + 1  # the page and its listing are cached
    # A page of the full 1,024 entries ending at the segment asked for is found.
    write_pages(storage, ttid, 6000, 6000 + PAGE_MAX_SEGMENTS, per=PAGE_MAX_SEGMENTS)
    last = 6000 + PAGE_MAX_SEGMENTS - 1
    with pytest.raises(ChecksumMismatch):
        LedgerCheck(storage, ttid, SEG).check(xlog_file_name(last, SEG), digest_of(b"x"))


def test_past_the_pages_the_listing_is_repeated_only_after_relist_s(
    storage: CountingStorage, ttid: TenantTimelineId
) -> None:
    """The prefetcher reads the newest segments, which no page covers yet:
    not one LIST per download, but one per ``relist_s``."""
    write_pages(storage, ttid, 0, 64, per=64)
    check = LedgerCheck(storage, ttid, SEG, lookahead=PAGE_MAX_SEGMENTS, relist_s=3600)
    before = storage.lists
    for segno in range(64, 80):
        check.check(xlog_file_name(segno, SEG), digest_of(b"new"))
    assert storage.lists == before + 1
    write_pages(storage, ttid, 64, 128, per=64)  # the offloader flushes
    again = LedgerCheck(storage, ttid, SEG, lookahead=PAGE_MAX_SEGMENTS, relist_s=0)
    again.check(xlog_file_name(70, SEG), digest_of(data_of(70)))
    with pytest.raises(ChecksumMismatch):
        again.check(xlog_file_name(71, SEG), digest_of(b"new"))


def test_pages_that_disagree_accept_the_bytes_of_either(
    storage: CountingStorage, ttid: TenantTimelineId
) -> None:
    """Two writers' overlapping pages that record different bytes are a
    conflict for ``verify`` to report; a restore serves what matches one."""
    store = LedgerStore(storage)
    store.write(ttid, SEG, {s: entry_of(data_of(s)) for s in range(1, 5)}, node_id=1)
    store.write(ttid, SEG, {3: entry_of(b"other"), 4: entry_of(data_of(4))}, node_id=2)
    check = LedgerCheck(storage, ttid, SEG)
    check.check(xlog_file_name(3, SEG), digest_of(data_of(3)))
    check.check(xlog_file_name(3, SEG), digest_of(b"other"))
    with pytest.raises(ChecksumMismatch, match="; sha256"):  # both recorded entries named
        check.check(xlog_file_name(3, SEG), digest_of(b"third"))


def test_an_unreadable_page_leaves_the_storage_check_and_says_so_once(
    storage: CountingStorage, ttid: TenantTimelineId, capsys: pytest.CaptureFixture[str]
) -> None:
    key = page_key(timeline_prefix(ttid), 1, 9, SEG)
    storage.put_bytes(key, b"{not json")
    check = LedgerCheck(storage, ttid, SEG)
    check.check(xlog_file_name(3, SEG), digest_of(b"anything"))
    check.check(xlog_file_name(4, SEG), digest_of(b"anything"))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("walbackup: warning: segment ")
    assert key in err and "checked by the storage's checksum only" in err
    with pytest.raises(LedgerConflict, match="cannot be read"):  # the prefetcher's mode
        LedgerCheck(storage, ttid, SEG, strict=True).check(xlog_file_name(3, SEG), digest_of(b""))


@pytest.mark.parametrize(
    "page",
    [
        b'{"format": "walbackup-ledger", "version": 1, "timeline": "%s", "wal_seg_size": %d, '
        b'"segments": {"%s": ["not", "a", "mapping"]}}',
        b'{"format": "walbackup-ledger", "version": 1, "timeline": "%s", "wal_seg_size": %d, '
        b'"segments": {"%s": {"size": 1048576, "sha256": "not-hex", "md5": ""}}}',
    ],
)
def test_a_malformed_entry_is_an_unreadable_page_not_a_crash(
    storage: CountingStorage,
    ttid: TenantTimelineId,
    page: bytes,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = xlog_file_name(3, SEG)
    data = page % (str(ttid).encode(), SEG, name.encode())
    storage.put_bytes(page_key(timeline_prefix(ttid), 3, 3, SEG), data)
    LedgerCheck(storage, ttid, SEG).check(name, digest_of(b"anything"))
    assert "cannot be read" in capsys.readouterr().err


def test_a_page_gone_after_it_was_listed_is_not_a_missing_segment(
    storage: CountingStorage, ttid: TenantTimelineId, capsys: pytest.CaptureFixture[str]
) -> None:
    """A page deleted between the listing and its GET (retention, a lifecycle
    rule) is the ledger's trouble: fetch must not read it as "segment not
    archived" (it would serve an older partial, or end recovery)."""
    write_pages(storage, ttid, 1, 21, per=10)
    check = LedgerCheck(storage, ttid, SEG, lookahead=PAGE_MAX_SEGMENTS)
    check.check(xlog_file_name(5, SEG), digest_of(data_of(5)))  # lists both pages
    storage.delete(page_key(timeline_prefix(ttid), 11, 20, SEG))
    check.check(xlog_file_name(15, SEG), digest_of(b"other"))
    assert "cannot be read" in capsys.readouterr().err


def test_a_segment_between_pages_is_a_removed_page_said_not_silent(
    storage: CountingStorage, ttid: TenantTimelineId, capsys: pytest.CaptureFixture[str]
) -> None:
    """Flushes never write past a segment without an entry: no page for a
    segment while later pages exist means one was removed."""
    write_pages(storage, ttid, 1, 31, per=10)
    storage.delete(page_key(timeline_prefix(ttid), 11, 20, SEG))
    LedgerCheck(storage, ttid, SEG).check(xlog_file_name(15, SEG), digest_of(b"other"))
    assert "though later pages exist" in capsys.readouterr().err
    with pytest.raises(LedgerConflict, match="though later pages exist"):
        LedgerCheck(storage, ttid, SEG, strict=True).check(
            xlog_file_name(15, SEG), digest_of(b"other")
        )
    LedgerCheck(storage, ttid, SEG, strict=True).check(  # past the last page: no gap
        xlog_file_name(31, SEG), digest_of(b"other")
    )


def test_a_wrong_seg_size_setting_stops_the_restore_naming_it(
    storage: CountingStorage, ttid: TenantTimelineId
) -> None:
    """A restore host with WALBACKUP_WAL_SEG_SIZE left at 16 MiB reading a
    1 MiB archive: under the wrong size no check holds (names and pages map
    to other segments, a lost segment looks like the end), so the first
    segment it reads stops the restore, naming the setting and the size the
    archive's pages say. Under the right setting, a short object is damage."""
    write_pages(storage, ttid, 1, 11, per=64)
    name = xlog_file_name(5, SEG)
    with pytest.raises(InvalidInput, match=r"WALBACKUP_WAL_SEG_SIZE is 16777216.*say 1048576"):
        LedgerCheck(storage, ttid, 16 * SEG).check(name, digest_of(data_of(5)))
    with pytest.raises(ChecksumMismatch, match=r"has 524288 bytes.*the object is damaged"):
        LedgerCheck(storage, ttid, SEG).check(name, digest_of(data_of(5), size=SEG // 2))


def test_warn_only_with_a_wrong_seg_size_still_checks_by_the_objects_size(
    storage: CountingStorage, ttid: TenantTimelineId, capsys: pytest.CaptureFixture[str]
) -> None:
    """Then the object's own size, and the size the pages declare, find the
    entries (``0x110`` is no segment name at all under 16 MiB)."""
    write_pages(storage, ttid, 1, 11, per=64)
    write_pages(storage, ttid, 0x100, 0x120, per=64)
    wrong = LedgerCheck(storage, ttid, 16 * SEG, warn_only=True)
    for segno in (5, 0x110):
        name = xlog_file_name(segno, SEG)
        wrong.check(name, digest_of(data_of(segno)))
        wrong.check(name, digest_of(b"other"))
    err = capsys.readouterr().err
    assert "WALBACKUP_WAL_SEG_SIZE is 16777216" in err and "is not the one archived" in err


def test_warn_only_serves_a_mismatch_saying_so(
    storage: CountingStorage, ttid: TenantTimelineId, capsys: pytest.CaptureFixture[str]
) -> None:
    write_pages(storage, ttid, 1, 11, per=64)
    LedgerCheck(storage, ttid, SEG, warn_only=True).check(
        xlog_file_name(5, SEG), digest_of(b"other")
    )
    err = capsys.readouterr().err
    assert "is not the one archived" in err and "WALBACKUP_RESTORE_LEDGER_CHECK=warn" in err


def test_concurrent_downloads_share_one_listing(
    storage: CountingStorage, ttid: TenantTimelineId
) -> None:
    write_pages(storage, ttid, 1, 41, per=10)
    check = LedgerCheck(storage, ttid, SEG, lookahead=PAGE_MAX_SEGMENTS, strict=True)
    before = storage.lists
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda s: check.check(xlog_file_name(s, SEG), digest_of(data_of(s))),
                      range(1, 41)))  # fmt: skip
    assert storage.lists == before + 1


def test_the_writer_keeps_pages_within_what_readers_look_back_for(
    storage: CountingStorage, ttid: TenantTimelineId
) -> None:
    run = {s: entry_of(data_of(s)) for s in (0, PAGE_MAX_SEGMENTS)}
    with pytest.raises(InvalidInput, match="at most 1024 segments"):
        LedgerStore(storage).write(ttid, SEG, run, node_id=1)


def test_a_lookup_started_before_the_download_is_the_one_check_uses(
    storage: CountingStorage, ttid: TenantTimelineId
) -> None:
    """``walbackup fetch`` starts the lookup, then downloads: one listing,
    whose answer (and errors) ``check`` takes."""
    write_pages(storage, ttid, 1, 11, per=64)
    check = LedgerCheck(storage, ttid, SEG)
    before = storage.lists
    check.look_up(xlog_file_name(5, SEG))
    check.look_up("00000002.history")  # nothing to look up
    with pytest.raises(ChecksumMismatch):
        check.check(xlog_file_name(5, SEG), digest_of(b"other"))
    assert storage.lists == before + 1
    storage.put_bytes(page_key(timeline_prefix(ttid), 20, 29, SEG), b"{not json")
    check.look_up(xlog_file_name(25, SEG))
    check.check(xlog_file_name(25, SEG), digest_of(b"other"))  # the unreadable page: a warning
    assert check.look_up(xlog_file_name(5, SEG) + "_0000000000500100.partial") is None
