"""A missing segment with complete ones above it (``TimelineState.stranded``).

Only the contiguous run of complete segments is backed up (a hole cannot be
committed over), so backup stops at the missing one, and nothing else would
say so: ``commit_lsn`` ends at the hole, so the lag reads 0. Once the hole has
lasted ``GRACE_S`` (segments complete in order; a hole is not a moment of a
scan), it is the timeline's ``last_error`` and a WARNING, again every
``REPEAT_S`` while it lasts; the oldest-unarchived-segment gauge counts the
stranded segments (``tasks.backup.gauges``), so its alert fires too. Not
while the cluster's ``backup_lsn`` is past the hole: another node had it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

import redis

from tasks.core.lsn import Lsn
from tasks.core.segments import xlog_file_name
from tasks.logutil import Throttle
from tasks.state.timeline_state import TimelineState

log = logging.getLogger("walbackup.node")

GRACE_S = 10.0
REPEAT_S = 30.0


class MissingSegments:
    """Used by the node's heartbeat thread, but ``forget`` (its watcher)."""

    def __init__(self, node_id: int, record_error: Callable[[str, str], None]) -> None:
        self.node_id = node_id
        self.record_error = record_error
        self._since: dict[str, float] = {}
        self._throttle = Throttle(REPEAT_S)

    def check(self, st: TimelineState, backup_lsn: Lsn | None) -> None:
        """``backup_lsn``: the cluster's, as Redis has it (``None``: unknown)."""
        ttid = str(st.ttid)
        if not st.stranded or st.commit_lsn is None:
            self._since.pop(ttid, None)
            return
        seg_size = st.wal_seg_size
        missing = st.commit_lsn.segment_number(seg_size)
        if backup_lsn is not None and backup_lsn.segment_number(seg_size) > missing:
            self._since.pop(ttid, None)
            return
        since = self._since.setdefault(ttid, time.monotonic())
        if time.monotonic() - since < GRACE_S or not self._throttle.allow(ttid):
            return
        message = (
            f"node {self.node_id}: segment {xlog_file_name(missing, seg_size)} is missing "
            f"while {len(st.stranded)} complete segment(s) from "
            f"{xlog_file_name(st.stranded[0], seg_size)} follow it: backup stops before it "
            "until a node that has it uploads it, or it is put back"
        )
        log.warning("Timeline %s: %s", ttid, message)
        with contextlib.suppress(redis.RedisError):
            self.record_error(ttid, message)

    def forget(self, ttid: str) -> None:
        self._since.pop(ttid, None)
