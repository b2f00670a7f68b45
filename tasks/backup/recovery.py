"""Recover a timeline's backup_lsn, and where its archive starts, from the archive itself (SPEC §9).

Every committed segment is in remote storage, so after Redis lost its data the
longest contiguous run of complete remote segments from the timeline's start
is a lower bound that is never below the lost backup_lsn: unlike the nodes'
state files, which may lag it by a heartbeat.

After ``walbackup retain`` the archive starts later than the timeline: the
``_retained`` marker in the bucket (``tasks.core.retention``) says where, and
the run is counted from there (everything below it was archived before).
"""

from __future__ import annotations

from tasks.archive.retained import read_archive_start
from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.core.segments import PG_TLI, parse_xlog_file_name, xlog_file_name
from tasks.errors import InvalidInput
from tasks.state.redis import RedisState
from tasks.storage.base import ObjectInfo, RemoteStorage, timeline_prefix


def remote_objects(
    storage: RemoteStorage, ttid: TenantTimelineId, seg_size: int, from_segno: int = 0
) -> dict[int, ObjectInfo]:
    """segno -> the timeline's remote objects named as complete segments,
    from ``from_segno`` on (segment names sort by segno: the listing starts
    there instead of at the timeline's first object)."""
    prefix = timeline_prefix(ttid)
    after = prefix + xlog_file_name(from_segno - 1, seg_size) if from_segno > 0 else ""
    found: dict[int, ObjectInfo] = {}
    for info in storage.list(prefix, start_after=after):
        name = info.key[len(prefix) :]
        if "/" in name:
            continue
        try:
            tli, segno = parse_xlog_file_name(name, seg_size)
        except InvalidInput:
            continue  # .partial, .history, anything else
        if tli == PG_TLI:
            found[segno] = info
    return found


def remote_backup_end(
    storage: RemoteStorage, ttid: str, start: Lsn, seg_size: int, state: RedisState | None = None
) -> Lsn:
    """End of the contiguous run of full-size remote segments from ``start``,
    or from the archive's retained start when that is later (``start`` itself
    when its segment is not there). A retained start found is recorded in
    ``state`` too, when given. Raises storage errors."""
    parsed = TenantTimelineId.parse(ttid)
    archive_start = read_archive_start(storage, parsed)
    if archive_start is not None:
        if state is not None:
            state.raise_archive_start(ttid, archive_start)
        start = max(start, archive_start)
    segno = start.segment_number(seg_size)
    present = remote_objects(storage, parsed, seg_size, segno)
    while segno in present and present[segno].size == seg_size:
        segno += 1
    return max(start, Lsn.from_segment(segno, 0, seg_size))
