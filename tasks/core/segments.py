"""WAL segment naming (PostgreSQL's ``XLogFileName``) and segment sizes, no I/O."""

from __future__ import annotations

import functools
import re

from tasks.errors import InvalidInput

PG_TLI = 1
MIN_SEG_SIZE = 1 << 20
MAX_SEG_SIZE = 1 << 30
DEFAULT_SEG_SIZE = 16 << 20
PARTIAL_SUFFIX = ".partial"

HISTORY_NAME_RE = re.compile(r"[0-9A-F]{8}\.history")
"""A timeline history file's name (``fullmatch``): ``0000000N.history``."""

SEGMENT_NAME_RE = re.compile(r"[0-9A-F]{24}")
"""The shape of every segment file name (``fullmatch``): 24 upper-case hex
characters, 8 each for timeline, log and segment. The one copy in ``core``;
``parse_xlog_file_name`` says whether a name is valid for a segment size."""


def validate_seg_size(seg_size: int) -> int:
    """A power of two from 1 MiB to 1 GiB, as PostgreSQL allows."""
    if (
        isinstance(seg_size, bool)
        or not isinstance(seg_size, int)
        or not MIN_SEG_SIZE <= seg_size <= MAX_SEG_SIZE
        or seg_size & (seg_size - 1)
    ):
        raise InvalidInput(
            f"invalid wal_seg_size {seg_size!r}: must be a power of two from 1 MiB to 1 GiB"
        )
    return seg_size


def segments_per_xlogid(seg_size: int) -> int:
    return 0x100000000 // seg_size


def xlog_file_name(segno: int, seg_size: int, tli: int = PG_TLI) -> str:
    """``XLogFileName(tli, segno, seg_size)``, e.g. ``000000010000000000000001``."""
    n = segments_per_xlogid(validate_seg_size(seg_size))
    if not 0 <= segno < n * 0x100000000 or not 0 < tli <= 0xFFFFFFFF:
        raise InvalidInput(f"segment number {segno} or timeline {tli} out of range")
    return f"{tli:08X}{segno // n:08X}{segno % n:08X}"


@functools.lru_cache(maxsize=4096)
def parse_xlog_file_name(name: str, seg_size: int) -> tuple[int, int]:
    """Inverse of ``xlog_file_name``: ``(tli, segno)``; rejects anything else.

    Cached: a node rescans a busy timeline directory ten times a second and
    parses the same names each time."""
    n = segments_per_xlogid(validate_seg_size(seg_size))
    if not isinstance(name, str) or SEGMENT_NAME_RE.fullmatch(name) is None:
        raise InvalidInput(
            f"invalid WAL segment name {name!r}: expected 24 upper-case hex characters"
        )
    tli, log, seg = int(name[:8], 16), int(name[8:16], 16), int(name[16:], 16)
    if tli == 0 or seg >= n:
        raise InvalidInput(f"invalid WAL segment name {name!r} for wal_seg_size {seg_size}")
    return tli, log * n + seg
