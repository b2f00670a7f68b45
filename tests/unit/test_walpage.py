"""tasks.core.walpage on real WAL: a pg_receivewal ``.partial`` written by PostgreSQL 15.

``tests/data/wal/000000010000000000000007.partial.gz``: ``initdb
--wal-segsize=1``, ``pg_receivewal --synchronous`` into an empty directory, a
table created, ``pg_switch_wal()``, 300 rows inserted, then pg_receivewal
stopped (``tests/pg.py`` runs the same programs). The primary's
``pg_current_wal_flush_lsn()`` was then ``0/70BC48``.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from tasks.core.walpage import (
    LONG_HEADER_BYTES,
    LongHeader,
    WalEndScanner,
    end_in_page,
    make_page_header,
    page_valid,
    parse_long_header,
)

SAMPLE = Path(__file__).resolve().parents[1] / "data/wal/000000010000000000000007.partial.gz"
SEG = 1 << 20
SEG_START = 7 * SEG
FLUSH_LSN = 0x70BC48
PAGE = 8192


@pytest.fixture(scope="module")
def wal() -> bytes:
    return gzip.decompress(SAMPLE.read_bytes())


def scan(data: bytes, chunk: int = 1 << 20, seg_start: int = SEG_START) -> int | None:
    scanner = WalEndScanner(seg_start, SEG)
    for i in range(0, len(data), chunk):
        scanner.feed(data[i : i + chunk])
    return scanner.finish()


def test_the_sample_is_a_preallocated_postgresql_15_partial(wal: bytes) -> None:
    assert len(wal) == SEG  # pre-allocated by pg_receivewal
    first = parse_long_header(wal, SEG_START, SEG)
    assert first is not None
    assert (first.pg_version, first.tli, first.block_size, first.seg_size) == (15, 1, PAGE, SEG)
    assert wal[FLUSH_LSN - SEG_START :].count(0) == SEG - (FLUSH_LSN - SEG_START)


@pytest.mark.parametrize("chunk", [1 << 20, PAGE, 1000, 24, 7])
def test_the_end_of_valid_wal_is_the_flush_lsn(wal: bytes, chunk: int) -> None:
    assert scan(wal, chunk) == FLUSH_LSN


def test_a_page_from_an_older_segment_ends_the_wal(wal: bytes) -> None:
    # A recycled segment holds old pages: pageaddr of another segment.
    data = bytearray(wal)
    page3 = 3 * PAGE
    data[page3 + 8 : page3 + 16] = (SEG_START - SEG + page3).to_bytes(8, "little")
    end = scan(bytes(data))
    first = parse_long_header(wal, SEG_START, SEG)
    assert first is not None
    assert not page_valid(bytes(data[page3:]), first, SEG_START + page3)
    assert end == end_in_page(wal[2 * PAGE : 3 * PAGE], SEG_START + 2 * PAGE, 24)
    assert SEG_START + 2 * PAGE < end <= SEG_START + 3 * PAGE


@pytest.mark.parametrize(
    ("offset", "value"),
    [(0, b"\x13\xd1"), (4, b"\x02\x00\x00\x00"), (2, b"\x10\x00")],
    ids=["other-version-magic", "other-timeline", "unknown-flag"],
)
def test_a_page_header_that_disagrees_with_the_first_ends_the_wal(
    wal: bytes, offset: int, value: bytes
) -> None:
    data = bytearray(wal)
    at = 4 * PAGE + offset
    data[at : at + len(value)] = value
    assert scan(bytes(data)) == SEG_START + 4 * PAGE


def test_no_valid_first_page_means_no_wal(wal: bytes) -> None:
    assert scan(bytes(SEG)) is None  # all zeros: nothing was written
    assert scan(wal, seg_start=SEG_START + SEG) is None  # pageaddr is not the segment's
    assert scan(wal[:30]) is None  # not even a long header
    assert parse_long_header(wal, SEG_START, 2 * SEG) is None  # xlp_seg_size


def test_a_trailing_short_page_counts_when_its_header_is_valid(wal: bytes) -> None:
    # The file ends half way through page 5: what is there counts, no more.
    assert scan(wal[: 5 * PAGE + 100]) == SEG_START + 5 * PAGE + 100
    assert scan(wal[: 5 * PAGE + 10]) is not None
    assert scan(wal[: 5 * PAGE + 10]) == SEG_START + 5 * PAGE  # no whole header: not counted


def test_end_in_page() -> None:
    page = bytearray(PAGE)
    page[:24] = b"\x01" * 24
    assert end_in_page(bytes(page), 1000 * PAGE, 24) == 1000 * PAGE + 24
    page[24 + 9] = 5
    assert end_in_page(bytes(page), 0, 24) == 40  # byte 33 is the last: MAXALIGN(34)
    page[-1] = 1
    assert end_in_page(bytes(page), 0, 24) == PAGE
    assert end_in_page(bytes(LONG_HEADER_BYTES), 0, LONG_HEADER_BYTES) == LONG_HEADER_BYTES


def test_made_headers_round_trip() -> None:
    first = LongHeader(0xD110, 1, SEG_START, 123, SEG, PAGE)
    long = make_page_header(first, SEG_START)
    assert parse_long_header(long, SEG_START, SEG) == first
    short = make_page_header(first, SEG_START + PAGE, rem_len=8)
    assert page_valid(short, first, SEG_START + PAGE)
    assert not page_valid(short, first, SEG_START + 2 * PAGE)
    assert not page_valid(long, first, SEG_START)  # a long header is not a later page
