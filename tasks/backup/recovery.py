"""Recover a timeline's backup_lsn, and where its archive starts, from the archive itself (SPEC §9).

Every committed segment is in remote storage, so after Redis lost its data the
longest contiguous run of complete remote segments from the timeline's start
is a lower bound that is never below the lost backup_lsn: unlike the nodes'
state files, which may lag it by ``WALBACKUP_STATE_FILE_INTERVAL``.

After ``walbackup retain`` the archive starts later than the timeline: the
``_retained`` marker in the bucket (``tasks.core.retention``) says where, and
the run is counted from there (everything below it was archived before).
"""

from __future__ import annotations

from tasks.archive.retained import read_archive_start
from tasks.archive.survey import list_timeline
from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.core.partials import newest, parse_partials
from tasks.core.segments import PG_TLI
from tasks.state.redis import RedisState
from tasks.storage.base import RemoteStorage


def remote_backup_end(
    storage: RemoteStorage, ttid: str, start: Lsn, seg_size: int, state: RedisState | None = None
) -> Lsn:
    """End of the contiguous run of full-size remote segments from ``start``,
    or from the archive's retained start when that is later (``start`` itself
    when its segment is not there). A retained start found, and the end of
    the newest partial upload of the segment after the run, are recorded in
    ``state`` too, when given. Raises storage errors."""
    parsed = TenantTimelineId.parse(ttid)
    archive_start = read_archive_start(storage, parsed)
    if archive_start is not None:
        if state is not None:
            state.raise_archive_start(ttid, archive_start)
        start = max(start, archive_start)
    segno = start.segment_number(seg_size)
    listing = list_timeline(storage, parsed, seg_size, segno)
    present = listing.segments
    while segno in present and present[segno].size == seg_size:
        segno += 1
    # The partial upload that continues the run: archived_lsn, which Redis
    # lost too (status and the gauge would show backup_lsn until the next one).
    # Written outside the election's pipeline and unfenced: it only reports
    # WAL that is in the archive (partials hold WAL the nodes had completed).
    ours = [n for n in listing.partials if n.startswith(f"{PG_TLI:08X}")]
    partial = newest(parse_partials(ours, seg_size), segno)
    if partial is not None and state is not None:
        state.raise_archived_lsn(ttid, partial.end_lsn)
    return max(start, Lsn.from_segment(segno, 0, seg_size))
