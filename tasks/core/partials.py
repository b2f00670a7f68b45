"""Partial segment uploads: their remote names, which is newest, what may be deleted. No I/O.

A partial upload of segment ``S`` covering WAL up to ``END`` is stored as
``S_EEEEEEEEEEEEEEEE.partial``: the 24-character segment name, ``_``, the end
LSN as 16 upper-case hex digits (``%016X`` of the 64-bit LSN), ``.partial``.
It holds the whole ``wal_seg_size`` bytes, zero after ``END``. So:

- names of one segment share the prefix ``S_`` (nothing else starts so:
  the complete segment is ``S`` itself), and sort by end LSN;
- a name says what it covers, so an object is never replaced with other
  bytes: a longer tail is a new name (SPEC §5 holds for partials too);
- ``tasks.storage``'s listings, the scrub and the recovery of ``backup_lsn``
  from the archive, which parse names as complete segments, skip them.

Garbage collection (``superseded``): a partial may be deleted once a newer
partial of its segment, or the segment itself, is committed; never the one
just uploaded, even when a re-upload gave it the same name (Neon #8383).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from tasks.core.lsn import Lsn
from tasks.core.segments import parse_xlog_file_name, xlog_file_name
from tasks.errors import InvalidInput

PARTIAL_OBJECT_RE = re.compile(r"([0-9A-F]{24})_([0-9A-F]{16})\.partial")
"""A partial upload's object name (``fullmatch``)."""


@dataclass(frozen=True, slots=True, order=True)
class PartialObject:
    """One partial upload: the segment and the end of the WAL it holds."""

    segno: int
    end_lsn: Lsn
    seg_size: int

    @property
    def name(self) -> str:
        return f"{xlog_file_name(self.segno, self.seg_size)}_{int(self.end_lsn):016X}.partial"

    @property
    def start_lsn(self) -> Lsn:
        return Lsn.from_segment(self.segno, 0, self.seg_size)


def partial_object(segno: int, end_lsn: Lsn, seg_size: int) -> PartialObject:
    """The partial upload of ``segno`` up to ``end_lsn``, which must lie
    strictly inside the segment (its start holds nothing, its end is the
    complete segment)."""
    start = segno * seg_size
    if not start < end_lsn < start + seg_size:
        raise InvalidInput(
            f"end LSN {Lsn(end_lsn)} is not inside segment {xlog_file_name(segno, seg_size)}"
        )
    return PartialObject(segno, Lsn(end_lsn), seg_size)


def parse_partial_name(name: str, seg_size: int) -> PartialObject:
    """Inverse of ``PartialObject.name``; ``InvalidInput`` for anything else."""
    match = PARTIAL_OBJECT_RE.fullmatch(name) if isinstance(name, str) else None
    if match is None:
        raise InvalidInput(f"invalid partial segment object name {name!r}")
    _tli, segno = parse_xlog_file_name(match.group(1), seg_size)
    return partial_object(segno, Lsn(int(match.group(2), 16)), seg_size)


def parse_partials(names: Iterable[str], seg_size: int) -> list[PartialObject]:
    """The names that are partial uploads, parsed; anything else is skipped."""
    out: list[PartialObject] = []
    for name in names:
        try:
            out.append(parse_partial_name(name, seg_size))
        except InvalidInput:
            continue
    return out


def partial_prefix(segment_name: str) -> str:
    """What every partial upload of ``segment_name`` (and nothing else) starts with."""
    return segment_name + "_"


def newest_name(names: Iterable[str], segment_name: str) -> str | None:
    """The partial upload of ``segment_name`` among ``names`` (object names,
    without the timeline prefix) that covers the most WAL: the greatest, as
    the end LSN is fixed-width hex; needs no ``wal_seg_size``."""
    found = [
        n
        for n in names
        if (m := PARTIAL_OBJECT_RE.fullmatch(n)) is not None and m.group(1) == segment_name
    ]
    return max(found, default=None)


def newest(partials: Iterable[PartialObject], segno: int | None = None) -> PartialObject | None:
    """The partial covering the most WAL (of ``segno``, when given)."""
    return max((p for p in partials if segno is None or p.segno == segno), default=None)


def superseded(
    recorded: Iterable[PartialObject], current: PartialObject | None, backup_lsn: Lsn
) -> list[PartialObject]:
    """The partials garbage collection may delete, given the partial just
    committed (``current``, if any) and the timeline's ``backup_lsn``:

    - those of a segment wholly below ``backup_lsn`` (the complete segment is
      committed);
    - those of ``current``'s segment that end before it.

    Never ``current`` itself, never one that ends at or after it, never one
    of a segment still above ``backup_lsn`` otherwise."""
    out = []
    for p in set(recorded):
        if current is not None and p.name == current.name:
            continue
        below_backup = p.start_lsn + p.seg_size <= backup_lsn
        older = current is not None and p.segno == current.segno and p.end_lsn < current.end_lsn
        if below_backup or older:
            out.append(p)
    return sorted(out)


def partial_end(
    seg_start: Lsn,
    seg_size: int,
    file_size: int,
    recorded: Lsn | None,
    scanned: Lsn | None,
) -> Lsn:
    """The end of the WAL a ``.partial`` file holds; sources, first wins:

    1. ``recorded``: a writer's ``commit_lsn`` in the state file, when it
       lies inside the segment (capped at the bytes the file has);
    2. a file shorter than ``seg_size`` (a writer that appends, such as
       ``walbackup simulate``): its length;
    3. a pre-allocated file (``pg_receivewal``): ``scanned``, the end of the
       valid WAL pages (``tasks.core.walpage``); ``seg_start`` (nothing)
       when there is none."""
    have = seg_start + min(file_size, seg_size)
    if recorded is not None and seg_start < recorded < seg_start + seg_size:
        return Lsn(min(recorded, have))
    if file_size < seg_size:
        return have
    return scanned if scanned is not None else seg_start


def archived_lsn(backup_lsn: Lsn | None, partial_end_lsn: Lsn | None) -> Lsn | None:
    """The highest LSN archived, partials included."""
    known = [x for x in (backup_lsn, partial_end_lsn) if x is not None]
    return max(known) if known else None
