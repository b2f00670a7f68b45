"""``TimelineState``: one timeline as a node sees it on disk (``tasks.state.scanner`` scans it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.core.timeline_scan import ScanResult, resolve_commit_lsn
from tasks.state.state_file import TimelineStateFile


@dataclass(frozen=True, slots=True)
class TimelineState:
    """One timeline as this node sees it on disk."""

    ttid: TenantTimelineId
    path: Path
    wal_seg_size: int
    local_start_lsn: Lsn | None
    """Start of the lowest segment held; ``None`` when no segment is."""
    commit_lsn: Lsn | None
    """End of the contiguous complete segments (see ``resolve_commit_lsn``)."""
    backup_lsn: Lsn
    """As recorded in the state file; ``Lsn(0)`` without one."""
    timeline_start_lsn: Lsn | None
    problems: tuple[str, ...]
    damaged: tuple[int, ...] = ()
    """Segnos whose file has a segment's name but the wrong size."""
    removal_horizon_lsn: Lsn | None = None
    """As recorded in the state file (``tasks.backup.removal``)."""
    system_id: int | None = None
    """As recorded in the state file (``tasks.backup.walheader``)."""
    foreign_seg_size: int | None = None
    """Its segment files are of this other valid segment size: a
    ``WALBACKUP_WAL_SEG_SIZE`` that does not match the server's."""
    history: tuple[str, ...] = ()
    """Its timeline history files' names (``tasks.backup.history``)."""
    stranded: tuple[int, ...] = ()
    """Complete segments above a missing one (``ScanResult.stranded``)."""
    foreign_tli: int | None = None
    """Segment files of this later PostgreSQL timeline are held (``ScanResult.foreign_tli``)."""
    foreign_first: str | None = None
    """The first of them by name (``ScanResult.foreign_first``)."""


def timeline_state(
    ttid: TenantTimelineId,
    path: Path,
    scanned: ScanResult,
    recorded: TimelineStateFile | None,
) -> TimelineState:
    """What a listing of the timeline's directory and its state file say."""
    return TimelineState(
        ttid=ttid,
        path=path,
        wal_seg_size=scanned.seg_size,
        local_start_lsn=scanned.local_start_lsn,
        commit_lsn=resolve_commit_lsn(
            scanned.commit_lsn, recorded.commit_lsn if recorded else None, scanned.seg_size
        ),
        backup_lsn=recorded.backup_lsn if recorded else Lsn(0),
        timeline_start_lsn=recorded.timeline_start_lsn if recorded else None,
        problems=scanned.problems,
        damaged=scanned.damaged,
        removal_horizon_lsn=recorded.removal_horizon_lsn if recorded else None,
        system_id=recorded.system_id if recorded else None,
        foreign_seg_size=scanned.foreign_seg_size,
        history=scanned.history,
        stranded=scanned.stranded,
        foreign_tli=scanned.foreign_tli,
        foreign_first=scanned.foreign_first,
    )
