"""Where a timeline's archive starts after ``walbackup retain``: the ``_retained`` marker.

The marker (``tasks.core.retention`` has its format) lives in the bucket, so
it outlives Redis; Redis keeps a copy in the timeline's ``archive_start_lsn``.
"""

from __future__ import annotations

from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.core.retention import RETAINED_MARKER, parse_marker
from tasks.errors import NotFound
from tasks.storage.base import RemoteStorage, timeline_prefix


def marker_key(ttid: TenantTimelineId) -> str:
    """The key of the timeline's ``_retained`` marker."""
    return timeline_prefix(ttid) + RETAINED_MARKER


def read_archive_start(storage: RemoteStorage, ttid: TenantTimelineId) -> Lsn | None:
    """Where the archive starts, as its ``_retained`` marker says; ``None``
    when nothing was ever retained. Raises storage errors."""
    try:
        with storage.open_read(marker_key(ttid)) as stream:
            data = stream.read()
    except NotFound:
        return None
    return parse_marker(data)
