"""What a segment missing from the archive means: its end (exit 1), or not.

PostgreSQL reads "not found" (``restore_command`` exit 1) as the end of the
archive: a point-in-time recovery ends there and the server promotes. Two
absences are no such end, and would cut a restore short in silence:

- nothing at all is archived under the timeline's prefix: a wrong prefix in
  ``WALBACKUP_REMOTE_STORAGE``, or a wrong timeline id (``InvalidInput``,
  exit 200);
- the archive ledger records the segment as archived and no ``walbackup
  retain`` deleted it: the archive lost it (``SegmentLost``, exit 202; a
  running offloader's scrubber uploads a node's copy again).

The segments in flight (uploaded out of order, committed in order) are not
in the ledger yet, so a standby polling for the next segment still gets 1.
"""

from __future__ import annotations

from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.core.retention import RETAINED_MARKER, parse_marker
from tasks.errors import InvalidInput, NotFound, SegmentLost, WalBackupError
from tasks.restore.ledger_check import LedgerCheck
from tasks.storage.base import RemoteStorage, timeline_prefix


def absence(
    storage: RemoteStorage, ttid: TenantTimelineId, segment: str, check: LedgerCheck | None
) -> WalBackupError:
    """The error to raise for ``segment`` (a segment name) missing from the
    archive, no partial upload of it either. Raises storage errors."""
    prefix = timeline_prefix(ttid)
    if next(iter(storage.list(prefix)), None) is None:
        return InvalidInput(
            f"the archive at {storage.url} holds nothing of timeline {ttid}: is the prefix "
            "of WALBACKUP_REMOTE_STORAGE, or the timeline id, wrong?"
        )
    not_found = NotFound(f"segment {segment} of timeline {ttid} is not archived")
    if check is None or (segno := check.segno(segment)) is None:
        return not_found
    recorded = check.recorded(segment)
    if recorded is None or not recorded.entries:
        return not_found  # not committed yet, or the ledger cannot tell
    if _retained(storage, ttid, segno, check.seg_size):
        return not_found
    return SegmentLost(
        f"segment {segment} of timeline {ttid} is not in the archive, though the archive "
        f"ledger ({', '.join(recorded.pages)}) records it as archived: the archive lost it, "
        "and a restore cannot go on past it. `walbackup verify` lists every such segment; "
        "a running offloader's scrubber uploads a node's copy again"
    )


def _retained(storage: RemoteStorage, ttid: TenantTimelineId, segno: int, seg_size: int) -> bool:
    """Whether ``walbackup retain`` deleted segment ``segno`` (below the
    archive's start, as the ``_retained`` marker says). A marker that cannot
    be read says nothing: the segment counts as lost (the restore stops)."""
    try:
        with storage.open_read(timeline_prefix(ttid) + RETAINED_MARKER) as stream:
            start = parse_marker(stream.read())
    except (NotFound, InvalidInput):
        return False
    return Lsn.from_segment(segno, 0, seg_size) < start
