"""What ``walbackup retain`` and ``walbackup delete`` remove from an archive, in what order. No I/O.

A timeline's archive is every object under ``TENANT/TIMELINE/``: complete
segments, partial uploads (``tasks.core.partials``) and anything else
(``.history`` files, the ``_retained`` marker below, other metadata).

- **retain** removes the segments wholly below a cutoff segment, and the
  partial uploads of those segments (superseded: each complete segment is
  archived, being below backup_lsn). ``--before X/X`` keeps the segment
  holding that LSN; ``--before SEGMENT`` keeps that segment. The cutoff may
  never exceed ``retain_limit``: backup_lsn's segment less
  ``keep_segments`` (at least 1), so the segment holding backup_lsn and the
  ones right below it always stay.
- **delete** removes every object of the timeline.

Both delete in key order, which is segment order, lowest first, with the
``_…`` metadata last (``_`` sorts after every hex digit). An interrupted run
therefore leaves the *newer* end of the archive: one that starts later than
its metadata (the ``_retained`` marker, the timeline's start in Redis) says,
a gap that restore (the first segments are not found) and every check of the
archive from its start report. Deleting highest first would leave the older
end instead: an archive that looks whole but ends early, where a
point-in-time recovery would stop silently. A rerun lists again and finishes.

The ``_retained`` marker (``RETAINED_MARKER``, JSON) records where the
archive starts after a retain, in the bucket itself so that it survives
Redis losing its data; it is written before anything is deleted and only
ever raised.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable
from dataclasses import dataclass

from tasks.core.lsn import Lsn
from tasks.core.partials import parse_partial_name
from tasks.core.segments import PG_TLI, parse_xlog_file_name, xlog_file_name
from tasks.errors import InvalidInput

RETAINED_MARKER = "_retained"
"""The marker's object name below the timeline prefix."""


class Kind(enum.Enum):
    SEGMENT = "segment"
    PARTIAL = "partial"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class ArchivedObject:
    """One object of a timeline's archive; ``segno`` for segments and partials."""

    name: str
    """The key below ``TENANT/TIMELINE/``."""
    size: int
    kind: Kind
    segno: int | None


def archived_object(name: str, size: int, seg_size: int) -> ArchivedObject:
    """Classify the object ``name`` (below the timeline prefix)."""
    try:
        tli, segno = parse_xlog_file_name(name, seg_size)
    except InvalidInput:
        pass
    else:
        if tli == PG_TLI:
            return ArchivedObject(name, size, Kind.SEGMENT, segno)
        return ArchivedObject(name, size, Kind.OTHER, None)
    try:
        partial = parse_partial_name(name, seg_size)
    except InvalidInput:
        return ArchivedObject(name, size, Kind.OTHER, None)
    return ArchivedObject(name, size, Kind.PARTIAL, partial.segno)


@dataclass(frozen=True, slots=True)
class Summary:
    """What a set of objects amounts to (what would go, or went)."""

    objects: int
    bytes: int
    segments: int
    partials: int
    other: int
    first_segno: int | None
    last_segno: int | None
    """The lowest and highest segment among the segments and partials."""

    def as_dict(self, seg_size: int) -> dict[str, int | str | None]:
        """For ``--json``: counts, and the segment range as file names."""

        def name(segno: int | None) -> str | None:
            return xlog_file_name(segno, seg_size) if segno is not None else None

        return {
            "objects": self.objects,
            "bytes": self.bytes,
            "segments": self.segments,
            "partials": self.partials,
            "other": self.other,
            "first_segment": name(self.first_segno),
            "last_segment": name(self.last_segno),
        }


def summarize(objects: Iterable[ArchivedObject]) -> Summary:
    items = list(objects)
    segnos = [o.segno for o in items if o.segno is not None]
    return Summary(
        objects=len(items),
        bytes=sum(o.size for o in items),
        segments=sum(o.kind is Kind.SEGMENT for o in items),
        partials=sum(o.kind is Kind.PARTIAL for o in items),
        other=sum(o.kind is Kind.OTHER for o in items),
        first_segno=min(segnos, default=None),
        last_segno=max(segnos, default=None),
    )


def parse_before(text: str, seg_size: int) -> int:
    """``--before``: the first segment kept (the cutoff). ``X/X`` keeps the
    segment holding that LSN (those ending at or before it go); a segment
    name keeps that segment."""
    try:
        if "/" in text:
            return Lsn.parse(text).segment_number(seg_size)
        tli, segno = parse_xlog_file_name(text, seg_size)
    except InvalidInput as exc:
        raise InvalidInput(
            f"--before {text!r}: expected an LSN (X/X) or a segment name (24 hex digits): {exc}"
        ) from None
    if tli != PG_TLI:
        raise InvalidInput(f"--before {text!r}: the archive holds timeline {PG_TLI} only")
    return segno


def retain_limit(backup_lsn: Lsn, seg_size: int, keep_segments: int) -> int:
    """The highest cutoff allowed: the segment holding ``backup_lsn`` and the
    ``keep_segments`` (at least 1) segments below it are never retained away."""
    if keep_segments < 1:
        raise InvalidInput(f"keep_segments must be >= 1, got {keep_segments}")
    return max(0, backup_lsn.segment_number(seg_size) - keep_segments)


def to_retain(objects: Iterable[ArchivedObject], cutoff: int) -> list[ArchivedObject]:
    """The segments below ``cutoff`` and their partial uploads, in key order."""
    return sorted(
        (o for o in objects if o.segno is not None and o.segno < cutoff), key=lambda o: o.name
    )


def marker_bytes(start: Lsn, seg_size: int) -> bytes:
    """The ``_retained`` marker saying the archive starts at ``start``."""
    body = {
        "archive_start_lsn": str(start),
        "first_segment": xlog_file_name(start.segment_number(seg_size), seg_size),
        "wal_seg_size": seg_size,
    }
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def parse_marker(data: bytes) -> Lsn:
    """The archive start a ``_retained`` marker records."""
    try:
        return Lsn.parse(json.loads(data)["archive_start_lsn"])
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidInput(f"malformed {RETAINED_MARKER} marker: {exc}") from None
