"""A missing segment with complete ones above it (``TimelineState.stranded``).

Only the contiguous run of complete segments is backed up (a hole cannot be
committed over), so backup stops at the missing one, and nothing else would
say so: ``commit_lsn`` ends at the hole, so the lag reads 0. Once backup has
sat at the hole for ``GRACE_S`` (segments complete in order; a hole is not a
moment of a scan), it is the timeline's ``last_error`` and a WARNING, again
every ``REPEAT_S`` while it lasts; the message goes once the hole does
(compare-and-delete: another error written since stays). The
oldest-unarchived-segment gauge counts the stranded segments
(``tasks.backup.gauges``), so its alert fires too.

Said only while backup sits at the hole: a node missing a segment that the
cluster is still behind on (a backlog), or already past (another node had
it), says nothing. A damaged file at the hole is Copies' report, not this.
"""

from __future__ import annotations

import logging
import time

import redis

from tasks.core.lsn import Lsn
from tasks.core.segments import xlog_file_name
from tasks.state.redis import RedisState
from tasks.state.timeline_state import TimelineState

log = logging.getLogger("walbackup.node")

GRACE_S = 10.0
REPEAT_S = 30.0


class MissingSegments:
    """``check`` each timeline in the node's heartbeat round, then ``flush``
    (one pipeline); ``forget`` from its watcher."""

    def __init__(self, node_id: int, state: RedisState) -> None:
        self.node_id = node_id
        self.state = state
        self._since: dict[str, tuple[int, float, float]] = {}
        """Per timeline at a hole: the missing segno, since when, last said."""
        self._said: dict[str, str] = {}
        """Per timeline: the ``last_error`` written, to take back when it is over."""
        self._due: list[tuple[str, str]] = []
        self._over: list[str] = []

    def check(self, st: TimelineState, backup_lsn: Lsn | None) -> None:
        """``backup_lsn``: the cluster's, as Redis has it (``None``: unknown,
        then the state file's)."""
        ttid = str(st.ttid)
        missing = self._hole(st, backup_lsn if backup_lsn is not None else st.backup_lsn)
        if missing is None:
            self.forget(ttid)
            return
        now = time.monotonic()
        segno, since, said = self._since.get(ttid, (missing, now, 0.0))
        if segno != missing:
            since, said = now, 0.0
        if now - since >= GRACE_S and now - said >= REPEAT_S:
            said = now
            self._due.append((ttid, self._message(st, missing)))
        self._since[ttid] = (missing, since, said)

    def _hole(self, st: TimelineState, backup_lsn: Lsn) -> int | None:
        """The missing segment backup sits at, if any."""
        if not st.stranded or st.commit_lsn is None:
            return None
        missing = st.commit_lsn.segment_number(st.wal_seg_size)
        if backup_lsn.segment_number(st.wal_seg_size) != missing or missing in st.damaged:
            return None
        return missing

    def _message(self, st: TimelineState, missing: int) -> str:
        seg_size = st.wal_seg_size
        return (
            f"node {self.node_id}: segment {xlog_file_name(missing, seg_size)} is missing "
            f"while {len(st.stranded)} complete segment(s) from "
            f"{xlog_file_name(st.stranded[0], seg_size)} follow it: backup stops before it "
            "until it is put back, or a node that has it is elected"
        )

    def flush(self) -> None:
        """Write what this round found (one pipeline); a Redis error waits
        for the next report."""
        due, self._due = self._due, []
        over, self._over = self._over, []
        if not (due or over):
            return
        pipe = self.state.pipeline()
        for ttid in over:
            if (said := self._said.pop(ttid, None)) is not None:
                self.state.clear_error(ttid, said, pipe=pipe)
        for ttid, message in due:
            log.warning("Timeline %s: %s", ttid, message)
            self._said[ttid] = self.state.record_error(ttid, message, pipe=pipe)
        try:
            pipe.execute()
        except redis.RedisError:
            for ttid, _ in due:  # said again next round
                if (entry := self._since.get(ttid)) is not None:
                    self._since[ttid] = (entry[0], entry[1], 0.0)

    def forget(self, ttid: str) -> None:
        self._since.pop(ttid, None)
        if ttid in self._said:
            self._over.append(ttid)
