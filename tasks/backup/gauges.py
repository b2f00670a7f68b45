"""The cluster as this node sees it, for Prometheus: set once per heartbeat round.

Per timeline (``tasks.backup.heartbeats`` passes what it just read from
Redis): ``backup_lag_bytes``, ``oldest_unarchived_segment_age_seconds`` and
``timeline_offloader`` (``tasks.metrics.TimelineSeries``); per node:
``last_heartbeat_timestamp_seconds`` from the nodes' hash. A timestamp
rather than an age, so that a node whose rounds stopped (cut off from Redis)
shows the truth, an old heartbeat, not a frozen young age;
``time() - max by (node) (…)`` is the age.

The oldest unarchived segment is the first complete one at or above
``backup_lsn`` that this node holds (above a missing segment, if that is where
backup stopped: ``tasks.backup.gaps``); its mtime is when it was written. The
mtime is cached per timeline until that segment changes, so rounds stat a
file about once per segment the archive waits for, and never while it has
them all.
"""

from __future__ import annotations

import bisect
import contextlib
import os
from collections.abc import Mapping
from typing import Any

from tasks.core.lsn import Lsn
from tasks.core.segments import xlog_file_name
from tasks.metrics import LAST_HEARTBEAT, TIMELINE_SERIES
from tasks.state.timeline_state import TimelineState


class ClusterGauges:
    """Used by the node's heartbeat thread, but ``forget`` (its watcher)."""

    def __init__(self) -> None:
        self._written: dict[str, tuple[int, float]] = {}
        """Per timeline: the oldest unarchived segment's number and mtime."""
        self._nodes: set[str] = set()

    def timeline(
        self, st: TimelineState, backup_lsn: Lsn | None, offloader: int | None, now: float
    ) -> None:
        """``backup_lsn`` and ``offloader`` as Redis has them (``None``: unknown,
        none); ``now`` is the round's ``time.time()``."""
        ttid = str(st.ttid)
        later = _promoted_age(st, now)
        if st.commit_lsn is None or st.local_start_lsn is None:
            if later is not None:  # only a later PostgreSQL timeline's WAL
                TIMELINE_SERIES.set(ttid, 0, later, offloader or 0)
            return  # nothing complete on disk: not a peer, nothing to elect yet
        backup = backup_lsn or st.backup_lsn
        lag = st.commit_lsn - min(st.commit_lsn, backup)
        age = self._oldest_age(st, backup, now)
        if later is not None:
            age = max(age or 0.0, later)
        TIMELINE_SERIES.set(ttid, lag, age, offloader or 0)

    def _oldest_age(self, st: TimelineState, backup_lsn: Lsn, now: float) -> float | None:
        """Seconds since the oldest unarchived complete segment was written, 0
        when there is none; ``None`` when its file vanished under us."""
        assert st.commit_lsn is not None and st.local_start_lsn is not None
        ttid, seg_size = str(st.ttid), st.wal_seg_size
        segno = max(backup_lsn, st.local_start_lsn).segment_number(seg_size)
        if segno >= st.commit_lsn.segment_number(seg_size):
            # Complete WAL may wait behind a missing segment.
            i = bisect.bisect_left(st.stranded, segno)
            if i == len(st.stranded):
                self._written.pop(ttid, None)
                return 0.0
            segno = st.stranded[i]
        cached = self._written.get(ttid)
        if cached is None or cached[0] != segno:
            try:
                mtime = os.stat(st.path / xlog_file_name(segno, seg_size)).st_mtime
            except OSError:
                self._written.pop(ttid, None)
                return None  # removed or renamed meanwhile: the next round sees why
            cached = self._written[ttid] = (segno, mtime)
        return max(0.0, now - cached[1])

    def nodes(self, heartbeats: Mapping[int, Mapping[str, Any]]) -> None:
        """Every node's last heartbeat (``RedisState.nodes``); a node gone
        from Redis is dropped from the metric too."""
        seen = set()
        for node_id, beat in heartbeats.items():
            label = str(node_id)
            seen.add(label)
            LAST_HEARTBEAT.labels(node=label).set(float(beat["ts"]))
        for gone in self._nodes - seen:
            LAST_HEARTBEAT.remove(gone)
        self._nodes = seen

    def forget(self, ttid: str) -> None:
        """The timeline is gone from this node: so are its series here."""
        self._written.pop(ttid, None)
        TIMELINE_SERIES.remove(ttid)


def _promoted_age(st: TimelineState, now: float) -> float | None:
    """Seconds since the server was promoted, when the timeline holds WAL of
    a later PostgreSQL timeline (``tasks.backup.misconfig``): none of it is
    archived, so it counts as unarchived WAL that old. The later timeline's
    history file says when (its mtime), else its oldest segment file."""
    if st.foreign_tli is None or st.foreign_first is None:
        return None
    names = [f"{st.foreign_tli:08X}.history", st.foreign_first]
    mtimes = []
    for name in names:
        with contextlib.suppress(OSError):
            mtimes.append(os.stat(st.path / name).st_mtime)
    return max(0.0, now - min(mtimes)) if mtimes else None
