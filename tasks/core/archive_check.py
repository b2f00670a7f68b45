"""Judging an archive against its ledger: which segments are missing, short or changed. No I/O.

The callers (``walbackup verify``, the scrubber) list the objects and read the
ledger; this module says what is wrong, segment by segment, in words an
operator can act on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from tasks.core.ledger import LedgerEntry
from tasks.core.segments import xlog_file_name


class Kind(StrEnum):
    MISSING = "missing"
    """No object, though the segment is below backup_lsn."""
    SIZE = "size"
    """The object's size is not the ledger's (truncated, or padded)."""
    CHANGED = "changed"
    """The object's ETag is not the MD5 the upload verified, or is a multipart
    one (walbackup uploads in one part): evidence only, until its bytes are
    read back (``tasks.archive.survey.confirm``)."""
    CORRUPT = "corrupt"
    """Deep check: the object's bytes do not hash to the ledger's SHA-256."""
    UNRECORDED = "unrecorded"
    """The object is there but the ledger has no entry for it."""
    EXTRA = "extra"
    """An object that should not be there (below the archive's start, or no
    name walbackup writes)."""
    CONFLICT = "conflict"
    """Two ledger pages record different bytes for the segment."""


@dataclass(frozen=True, slots=True)
class Seen:
    """What a listing says of an object."""

    size: int
    etag: str | None


@dataclass(frozen=True, slots=True)
class Problem:
    segno: int | None
    """``None`` for an object that is not a segment (``EXTRA``)."""
    name: str
    kind: Kind
    detail: str

    def line(self) -> str:
        return f"{self.name}: {self.kind} ({self.detail})"


def check_object(
    segno: int, seg_size: int, seen: Seen | None, entry: LedgerEntry | None
) -> Problem | None:
    """The shallow check of one segment below backup_lsn: listing against ledger."""
    name = xlog_file_name(segno, seg_size)
    if seen is None:
        return Problem(segno, name, Kind.MISSING, "no object in the archive")
    if entry is None:
        if seen.size != seg_size:
            return Problem(segno, name, Kind.SIZE, f"{seen.size} bytes, expected {seg_size}")
        return Problem(segno, name, Kind.UNRECORDED, "archived, but the ledger has no entry")
    if seen.size != entry.size:
        return Problem(segno, name, Kind.SIZE, f"{seen.size} bytes, the ledger says {entry.size}")
    if not (seen.etag and entry.md5) or seen.etag == entry.md5:
        return None
    if "-" in seen.etag:  # not an MD5 of the bytes, and no upload of ours
        detail = f"multipart ETag {seen.etag}: rewritten by another writer?"
    else:
        detail = f"ETag {seen.etag}, the ledger recorded MD5 {entry.md5}"
    return Problem(segno, name, Kind.CHANGED, detail)


def check_range(
    start: int,
    end: int,
    seg_size: int,
    objects: Mapping[int, Seen],
    ledger: Mapping[int, LedgerEntry],
) -> list[Problem]:
    """Shallow problems of segments ``[start, end)``, in order."""
    found = (check_object(s, seg_size, objects.get(s), ledger.get(s)) for s in range(start, end))
    return [p for p in found if p is not None]


def check_bytes(segno: int, seg_size: int, sha256_hex: str, entry: LedgerEntry) -> Problem | None:
    """The deep check: the archived bytes hash to what the upload verified."""
    if sha256_hex == entry.sha256:
        return None
    return Problem(
        segno,
        xlog_file_name(segno, seg_size),
        Kind.CORRUPT,
        f"sha256 {sha256_hex}, the ledger says {entry.sha256}",
    )


def verified_end(start: int, end: int, problems: list[Problem]) -> int:
    """The end of the run ``[start, …)`` with no problem: the scrubber's gauge
    stops at the first problem."""
    first = min(
        (p.segno for p in problems if p.segno is not None and p.segno >= start), default=end
    )
    return min(first, end)
