"""PostgreSQL WAL page headers: which pages of a segment hold valid WAL, and where it ends. No I/O.

A page starts with ``XLogPageHeaderData`` (little-endian, as on every
platform PostgreSQL's WAL is read here): ``xlp_magic`` u16, ``xlp_info`` u16,
``xlp_tli`` u32, ``xlp_pageaddr`` u64, ``xlp_rem_len`` u32 (24 bytes with
padding); a segment's first page has the long header, adding ``xlp_sysid``
u64, ``xlp_seg_size`` u32 and ``xlp_xlog_blcksz`` u32 (40 bytes).

``pg_receivewal`` pre-allocates its ``.partial`` file zero-filled, and
PostgreSQL's recycled segments hold old WAL whose ``xlp_pageaddr`` is that of
an older segment: so valid WAL ends at the first page whose header is not
valid for its position (``page_valid``), within the last valid page after its
last non-zero byte, MAXALIGNed (``end_in_page``). WAL records start
MAXALIGNed and a flush position is a record's MAXALIGNed end, so that end is
never past the writer's flush position; it can be below it only by trailing
zero bytes of the last record, which the zero padding restores anyway.

Before a complete segment is uploaded, ``check_long_header`` holds its first
page to the long header PostgreSQL 13–17 writes for that segment (SPEC §5),
naming the first field that is wrong.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from tasks.core.lsn import Lsn
from tasks.errors import InvalidWalHeader

XLOG_PAGE_MAGICS = {
    0xD097: 10,
    0xD098: 11,
    0xD101: 12,
    0xD106: 13,
    0xD10D: 14,
    0xD110: 15,
    0xD113: 16,
    0xD116: 17,
}
"""``XLOG_PAGE_MAGIC`` -> PostgreSQL major version."""
KNOWN_PG_VERSIONS = range(min(XLOG_PAGE_MAGICS.values()), max(XLOG_PAGE_MAGICS.values()) + 1)
SUPPORTED_PG_VERSIONS = range(13, 18)
"""The versions whose complete segments ``check_long_header`` accepts."""

XLP_FIRST_IS_CONTRECORD = 0x0001
XLP_LONG_HEADER = 0x0002
XLP_ALL_FLAGS = 0x000F
SHORT_HEADER_BYTES = 24
LONG_HEADER_BYTES = 40
MAXALIGN = 8
BLOCK_SIZES = (1024, 2048, 4096, 8192, 16384, 32768)
"""``XLOG_BLCKSZ`` values PostgreSQL can be built with."""

_SHORT = struct.Struct("<HHIQI")
_LONG_TAIL = struct.Struct("<QII")


@dataclass(frozen=True, slots=True)
class LongHeader:
    """The facts of a segment's first page that every later page must agree with."""

    magic: int
    tli: int
    pageaddr: int
    sysid: int
    seg_size: int
    block_size: int

    @property
    def pg_version(self) -> int:
        return XLOG_PAGE_MAGICS[self.magic]


def check_long_header(
    first_page: bytes,
    seg_start_lsn: int,
    seg_size: int,
    expected_sysid: int | None,
    *,
    versions: range = SUPPORTED_PG_VERSIONS,
) -> LongHeader:
    """The long header at the start of ``first_page`` (40 bytes suffice), if
    it is valid for the segment starting at ``seg_start_lsn`` of ``seg_size``
    bytes and, unless ``expected_sysid`` is ``None``, carries that system
    identifier. Else raises ``InvalidWalHeader`` naming the first wrong field
    with what it holds and what was expected (the caller adds the file)."""
    if len(first_page) < LONG_HEADER_BYTES:
        raise InvalidWalHeader(
            f"too short: {len(first_page)} bytes, a long page header is {LONG_HEADER_BYTES}"
        )
    magic, info, tli, pageaddr, _rem = _SHORT.unpack_from(first_page)
    sysid, hdr_seg_size, block_size = _LONG_TAIL.unpack_from(first_page, SHORT_HEADER_BYTES)
    if XLOG_PAGE_MAGICS.get(magic) not in versions:
        known = f" (PostgreSQL {XLOG_PAGE_MAGICS[magic]})" if magic in XLOG_PAGE_MAGICS else ""
        raise InvalidWalHeader(
            f"xlp_magic 0x{magic:04X}{known} is not a PostgreSQL "
            f"{versions[0]}–{versions[-1]} WAL page"
        )
    if info & ~XLP_ALL_FLAGS:
        raise InvalidWalHeader(f"xlp_info 0x{info:04X} has unknown flag bits")
    if not info & XLP_LONG_HEADER:
        raise InvalidWalHeader(
            f"xlp_info 0x{info:04X} lacks XLP_LONG_HEADER: not a segment's first page"
        )
    if tli == 0:
        raise InvalidWalHeader("xlp_tli 0 is not a timeline")
    if pageaddr != seg_start_lsn:
        raise InvalidWalHeader(
            f"xlp_pageaddr {Lsn(pageaddr)}, expected {Lsn(seg_start_lsn)} (the segment's start)"
        )
    if hdr_seg_size != seg_size:
        raise InvalidWalHeader(
            f"xlp_seg_size {hdr_seg_size}, expected {seg_size} "
            "(the timeline's wal_seg_size, WALBACKUP_WAL_SEG_SIZE)"
        )
    if block_size not in BLOCK_SIZES:
        raise InvalidWalHeader(
            f"xlp_xlog_blcksz {block_size} is not a power of two from "
            f"{BLOCK_SIZES[0]} to {BLOCK_SIZES[-1]}"
        )
    if expected_sysid is not None and sysid != expected_sysid:
        raise InvalidWalHeader(
            f"system identifier {sysid} differs from the timeline's {expected_sysid}"
        )
    return LongHeader(magic, tli, pageaddr, sysid, hdr_seg_size, block_size)


def parse_long_header(page: bytes, seg_start_lsn: int, seg_size: int) -> LongHeader | None:
    """The segment's first page header, if it is a valid long header (of any
    known version) for a segment starting at ``seg_start_lsn`` of ``seg_size``
    bytes; else ``None``."""
    try:
        return check_long_header(page, seg_start_lsn, seg_size, None, versions=KNOWN_PG_VERSIONS)
    except InvalidWalHeader:
        return None


def page_valid(header: bytes, first: LongHeader, page_lsn: int) -> bool:
    """Whether ``header`` (at least 24 bytes) is a valid short page header
    for the page at ``page_lsn`` of the segment whose first page is ``first``:
    same magic and timeline, ``xlp_pageaddr == page_lsn``, known flags only."""
    if len(header) < SHORT_HEADER_BYTES:
        return False
    magic, info, tli, pageaddr, _rem = _SHORT.unpack_from(header)
    return (
        magic == first.magic
        and tli == first.tli
        and pageaddr == page_lsn
        and not info & ~XLP_ALL_FLAGS
        and not info & XLP_LONG_HEADER
    )


def end_in_page(page: bytes, page_lsn: int, header_bytes: int) -> int:
    """The LSN where the WAL in a valid page ends: after its last non-zero
    byte, MAXALIGNed, capped at the page's end; just after the header when
    the page holds nothing else."""
    body = page.rstrip(b"\x00")
    used = max(len(body), header_bytes)
    aligned = -(-used // MAXALIGN) * MAXALIGN
    return page_lsn + min(aligned, len(page))


def header_bytes(page_index: int) -> int:
    return LONG_HEADER_BYTES if page_index == 0 else SHORT_HEADER_BYTES


def make_page_header(first: LongHeader, page_lsn: int, *, rem_len: int = 0, info: int = 0) -> bytes:
    """A page header as PostgreSQL writes it (the long one on the segment's
    first page): for tests and the simulator."""
    if page_lsn == first.pageaddr:
        info |= XLP_LONG_HEADER
        return _SHORT.pack(first.magic, info, first.tli, page_lsn, rem_len) + (
            b"\x00" * 4 + _LONG_TAIL.pack(first.sysid, first.seg_size, first.block_size)
        )
    return _SHORT.pack(first.magic, info, first.tli, page_lsn, rem_len) + b"\x00" * 4


class WalEndScanner:
    """Finds where valid WAL ends in a segment's bytes, fed in order in
    chunks of any size (``feed``); ``end`` is then ``None`` when the first
    page is not a valid long header, else the end of the WAL (``end_in_page``
    of the last valid page)."""

    def __init__(self, seg_start_lsn: int, seg_size: int) -> None:
        self.seg_start = seg_start_lsn
        self.seg_size = seg_size
        self.first: LongHeader | None = None
        self.end: int | None = None
        self._buf = b""
        self._index = 0
        self._done = False

    def feed(self, chunk: bytes) -> None:
        if self._done:
            return
        buf = self._buf + chunk if self._buf else chunk
        pos = 0
        if self.first is None:
            if len(buf) < LONG_HEADER_BYTES:
                self._buf = buf
                return
            self.first = parse_long_header(buf, self.seg_start, self.seg_size)
            if self.first is None:
                self._done = True
                return
        page = self.first.block_size
        while not self._done and len(buf) - pos >= page:
            self._page(buf[pos : pos + page])
            pos += page
        self._buf = buf[pos:]

    def finish(self) -> int | None:
        """After the last chunk: a trailing short page counts if its header is valid."""
        if not self._done and self.first is not None and len(self._buf) >= SHORT_HEADER_BYTES:
            self._page(self._buf)
        self._done = True
        return self.end

    def _page(self, page: bytes) -> None:
        assert self.first is not None
        lsn = self.seg_start + self._index * self.first.block_size
        if self._index > 0 and not page_valid(page, self.first, lsn):
            self._done = True
            return
        self.end = end_in_page(page, lsn, header_bytes(self._index))
        self._index += 1
