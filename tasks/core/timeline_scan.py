"""What a timeline directory's listing says about its WAL (SPEC §2, §3), no I/O.

The caller lists ``WORKDIR/TENANT/TIMELINE`` and passes ``(name, size)`` pairs;
``scan_entries`` derives the node's ``local_start_lsn`` and ``commit_lsn``.

Rules, chosen so that a broken or missing file never lets ``commit_lsn`` claim
WAL the node cannot upload:

- A complete segment is a file named ``XLogFileName(1, segno, seg_size)`` of
  exactly ``seg_size`` bytes. A file with that name and any other size is a
  problem: never complete, and it ends the run where it stands. So is an
  entry with that name that is no regular file (a directory, a symlink):
  a damaged copy, never a hole that leaves this node elected and stuck.
- The run starts at the lowest segment held in any form (complete, wrong-size
  or ``.partial``) and covers the consecutive complete segments from there.
  ``local_start_lsn`` is its start, ``commit_lsn`` its end. A directory holding
  only the ``.partial`` of its first segment thus reports
  ``local_start_lsn == commit_lsn``: nothing to upload yet, position known.
- Complete segments after a gap are noted, not counted.
- Segment names of a timeline other than 1 (``PG_TLI``: the server was
  promoted), or invalid for ``seg_size``, are problems and ignored; the
  highest such timeline is ``foreign_tli``. ``.history`` files are listed
  (``history``). Other names (the state file, temp files) are ignored silently.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tasks.core.lsn import Lsn
from tasks.core.segments import (
    HISTORY_NAME_RE,
    PARTIAL_SUFFIX,
    PG_TLI,
    SEGMENT_NAME_RE,
    parse_xlog_file_name,
    validate_seg_size,
)
from tasks.errors import InvalidInput


@dataclass(frozen=True, slots=True)
class ScanResult:
    seg_size: int
    segnos: range
    """The complete segments counted: the contiguous run from the lowest held."""
    local_start_lsn: Lsn | None
    commit_lsn: Lsn | None
    partial: str | None
    """Name of the ``.partial`` file (the highest, if there are several)."""
    problems: tuple[str, ...]
    """Files that are wrong: wrong size, foreign timeline, bad name."""
    notes: tuple[str, ...]
    """Information: complete segments beyond a gap, not counted."""
    damaged: tuple[int, ...] = ()
    """Segnos of files named as a complete segment but of the wrong size."""
    foreign_seg_size: int | None = None
    """The size of those files when it is another valid segment size (the
    most common one) and no file has the configured size: WAL of another
    ``wal_segment_size``, a setting to fix."""
    history: tuple[str, ...] = ()
    """Timeline history files (``0000000N.history``), sorted."""
    stranded: tuple[int, ...] = ()
    """Complete segments above a missing one (the segment at ``commit_lsn``),
    sorted: not counted, so backup stops at the hole."""
    foreign_tli: int | None = None
    """The highest PostgreSQL timeline other than ``PG_TLI`` that segment
    files are named for: the server was promoted, and its WAL since is not
    backed up (``Heartbeats`` makes that the timeline's error)."""
    foreign_first: str | None = None
    """The first such file by name (the oldest of the newest such timeline's)."""


def scan_entries(
    entries: Iterable[tuple[str, int]], seg_size: int, others: Iterable[tuple[str, str]] = ()
) -> ScanResult:
    """Derive a timeline's WAL extent from its directory listing.

    ``entries`` are ``(file name, size in bytes)`` of its regular files,
    ``others`` ``(name, what it is)`` of its other entries; ``seg_size`` is
    the timeline's ``wal_seg_size`` (already validated by the caller).
    """
    complete: set[int] = set()
    wrong_size: set[int] = set()
    other_sizes: dict[int, int] = {}
    partials: list[tuple[int, str]] = []
    problems: list[str] = []
    for name, what in sorted(others):
        segno = _segment_named(name, seg_size)
        if segno is not None or HISTORY_NAME_RE.fullmatch(name):
            problems.append(f"{name}: is {what}, not a file")
        if segno is not None:
            wrong_size.add(segno)
    history: list[str] = []
    later_tlis: dict[int, str] = {}  # PostgreSQL timeline -> its first file's name

    for name, size in sorted(entries):
        if HISTORY_NAME_RE.fullmatch(name):
            history.append(name)
            continue
        is_partial = name.endswith(PARTIAL_SUFFIX)
        base = name[: -len(PARTIAL_SUFFIX)] if is_partial else name
        if SEGMENT_NAME_RE.fullmatch(base) is None:
            continue
        try:
            tli, segno = parse_xlog_file_name(base, seg_size)
        except InvalidInput:
            problems.append(f"{name}: not a valid segment name for wal_seg_size {seg_size}")
            continue
        if tli != PG_TLI:
            problems.append(f"{name}: timeline {tli} segment ignored (only timeline {PG_TLI})")
            later_tlis.setdefault(tli, name)
            continue
        if is_partial:
            if size > seg_size:
                problems.append(f"{name}: {size} bytes, more than wal_seg_size {seg_size}")
            partials.append((segno, name))
        elif size == seg_size:
            complete.add(segno)
        else:
            wrong_size.add(segno)
            if _valid_seg_size(size):
                other_sizes[size] = other_sizes.get(size, 0) + 1
                problems.append(
                    f"{name}: {size} bytes, expected wal_seg_size {seg_size}: WAL of "
                    f"wal_segment_size {size}? WALBACKUP_WAL_SEG_SIZE must match the server's"
                )
            else:
                problems.append(f"{name}: {size} bytes, expected wal_seg_size {seg_size}")

    if len(partials) > 1:
        problems.append(
            f"{len(partials)} .partial files ({', '.join(n for _, n in partials)}): "
            "expected at most one"
        )
    partial = max(partials)[1] if partials else None
    foreign_tli = max(later_tlis, default=None)
    foreign_first = later_tlis[foreign_tli] if foreign_tli is not None else None

    held = complete | wrong_size | {segno for segno, _ in partials}
    # A setting to fix only when no segment has the configured size: one copy
    # truncated to a power of two among good ones is damage, not WAL of another size.
    foreign = None
    if other_sizes and not complete:
        foreign = max(other_sizes, key=lambda k: other_sizes[k])
    if not held:
        return ScanResult(
            seg_size,
            range(0),
            None,
            None,
            partial,
            tuple(problems),
            (),
            history=tuple(history),
            foreign_tli=foreign_tli,
            foreign_first=foreign_first,
        )

    first = min(held)
    end = first
    while end in complete:
        end += 1
    beyond = sorted(s for s in complete if s > end)
    notes: tuple[str, ...] = ()
    if beyond:
        notes = (
            f"{len(beyond)} complete segment(s) from segno {beyond[0]} to {beyond[-1]} "
            f"are not contiguous with the run ending at segno {end}: not counted",
        )
    return ScanResult(
        seg_size=seg_size,
        segnos=range(first, end),
        local_start_lsn=Lsn.from_segment(first, 0, seg_size),
        commit_lsn=Lsn.from_segment(end, 0, seg_size),
        partial=partial,
        problems=tuple(problems),
        notes=notes,
        damaged=tuple(sorted(wrong_size)),
        foreign_seg_size=foreign,
        history=tuple(history),
        stranded=tuple(beyond),
        foreign_tli=foreign_tli,
        foreign_first=foreign_first,
    )


def _segment_named(name: str, seg_size: int) -> int | None:
    """The segno of a complete segment of ``PG_TLI`` named ``name``, if it is one."""
    if SEGMENT_NAME_RE.fullmatch(name) is None:
        return None
    try:
        tli, segno = parse_xlog_file_name(name, seg_size)
    except InvalidInput:
        return None
    return segno if tli == PG_TLI else None


def _valid_seg_size(size: int) -> bool:
    try:
        validate_seg_size(size)
    except InvalidInput:
        return False
    return True


def resolve_commit_lsn(scanned: Lsn | None, recorded: Lsn | None, seg_size: int) -> Lsn | None:
    """The effective ``commit_lsn`` of a timeline on a node.

    ``scanned`` (end of the complete segments on disk) is authoritative. A
    writer may record a finer ``recorded`` value in the state file; it is used
    only where it lies inside the segment being written, i.e. capped at that
    segment's last byte, so ``segno(commit_lsn)`` and hence the uploadable
    range never go past the complete segments. Nothing on disk means ``None``.
    """
    if scanned is None:
        return None
    if recorded is None or recorded <= scanned:
        return scanned
    return Lsn(min(int(recorded), int(scanned) + seg_size - 1))
