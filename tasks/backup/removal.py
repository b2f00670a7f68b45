"""Local WAL removal (opt-in): delete a node's complete segments below the timeline's horizon.

``NodeService`` runs ``WalRemoval.round`` in its thread right after each
heartbeat round, when ``WALBACKUP_REMOVE_WAL`` is on. Per timeline, at most
every ``REMOVAL_INTERVAL_S``:

1. the horizon (``tasks.core.horizon.removal_horizon``) from the cluster's
   backup_lsn and the scrubber's verified_lsn the heartbeat round just read
   from Redis (``None`` while Redis lost them: nothing is removed until beat
   recovered backup_lsn and a scrub pass found the archive intact again), the
   state file's backup_lsn and horizon, and the scan's commit_lsn;
2. when the node holds segments below it: the horizon goes into the state
   file first (with the cluster's ``timeline_start_lsn`` if the file had
   none, so a Redis that loses its data later does not take the node's new
   lowest segment for the timeline's start), fsynced; a write that fails
   blocks removal, which is said loudly (``tasks.backup.blocked``);
3. the complete segments of the run below it are deleted lowest first (what
   remains stays contiguous if the process dies half way, and the recorded
   horizon finishes the batch after a restart), then the directory is fsynced;
4. one log line, ``removed_wal_segments_total``, and the node's digests of
   those segments withdrawn from Redis.

``local_start_lsn`` rises at the next WORKDIR scan, which sees the files gone.
A round deletes at most ``MAX_REMOVALS_PER_ROUND`` files; a timeline cut short
goes on at the next round. Each round ends by keeping the WORKDIR's space
reserve (``tasks.state.reserve``): a state file write that finds the disk
full deletes it and writes in its space, so that a WORKDIR filled by WAL
while the archive was away can still record the horizon and be freed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import replace

import redis

from tasks.backup.blocked import BlockedRemoval, write_failed
from tasks.backup.copies import Copies
from tasks.config import Settings
from tasks.core.horizon import removal_horizon, segments_below
from tasks.core.lsn import Lsn
from tasks.core.segments import xlog_file_name
from tasks.core.timeline_scan import scan_entries
from tasks.fsutil import fsync_dir
from tasks.logutil import Complaints
from tasks.metrics import REMOVED_WAL_SEGMENTS
from tasks.state.listing import list_files
from tasks.state.records import ClusterFacts
from tasks.state.redis import RedisState
from tasks.state.state_file import TimelineStateFile
from tasks.state.timeline_state import TimelineState
from tasks.state.workdir import Workdir

log = logging.getLogger("walbackup.removal")

UNKNOWN = ClusterFacts(None, None, None)

REMOVAL_INTERVAL_S = 5.0
"""Seconds between two looks at one timeline's horizon (Neon's is 5 s too)."""

MAX_REMOVALS_PER_ROUND = 128
"""Segment files deleted per round, all timelines together: the heartbeat thread
heartbeats too, and must never stall on a backlog of deletions."""

# ttid -> the cluster's timeline_start_lsn (Redis), None if not known yet.
TimelineStartFn = Callable[[str], Lsn | None]
# (ttid, first segno kept) -> withdraw this node's digests of the segments below.
ForgetDigestsFn = Callable[[str, int], object]


class WalRemoval:
    """Used by the node's heartbeat thread only."""

    def __init__(
        self,
        node_id: int,
        disk: Workdir,
        keep_segments: int,
        *,
        timeline_start: TimelineStartFn,
        forget_digests: ForgetDigestsFn,
        complain: Complaints,
        blocked: BlockedRemoval | None = None,
        interval_s: float = REMOVAL_INTERVAL_S,
        max_per_round: int = MAX_REMOVALS_PER_ROUND,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if keep_segments < 0:
            raise ValueError(f"keep_segments must be >= 0, got {keep_segments}")
        self.node_id = node_id
        self.disk = disk
        self.keep_segments = keep_segments
        self.timeline_start = timeline_start
        self.forget_digests = forget_digests
        self.complain = complain
        self.blocked = blocked
        """Where a state file that cannot be written is said (else ``complain``)."""
        self.interval_s = interval_s
        self.max_per_round = max_per_round
        self._clock = clock
        self._due: dict[str, float] = {}

    @classmethod
    def if_on(
        cls,
        settings: Settings,
        state: RedisState,
        disk: Workdir,
        copies: Copies,
        complain: Complaints,
        blocked: BlockedRemoval | None = None,
    ) -> WalRemoval | None:
        """The node's removal, ``None`` unless ``WALBACKUP_REMOVE_WAL`` is on
        (then a space reserve an earlier run left in WORKDIR is deleted)."""
        if not settings.remove_wal:
            disk.reserve.drop()
            return None
        assert settings.node_id is not None
        return cls(
            settings.node_id,
            disk,
            settings.wal_keep_segments,
            timeline_start=lambda ttid: state.timeline(ttid).timeline_start_lsn,
            forget_digests=copies.forget_below,
            complain=complain,
            blocked=blocked,
        )

    def round(
        self,
        timelines: Mapping[str, TimelineState],
        facts: Mapping[str, ClusterFacts],
    ) -> int:
        """Remove what the due timelines may; returns the files deleted.
        ``facts``: the cluster's backup_lsn and the scrubber's verified_lsn,
        as the heartbeat round read them from Redis."""
        now = self._clock()
        for gone in self._due.keys() - timelines.keys():
            del self._due[gone]
        budget = self.max_per_round
        for ttid, st in timelines.items():
            if budget <= 0:
                break
            if self._due.get(ttid, now) > now:
                continue
            self._due[ttid] = now + self.interval_s
            try:
                known = facts.get(ttid, UNKNOWN)
                removed, more = self.remove(st, known.backup_lsn, known.verified_lsn, budget)
            except Exception as exc:  # one timeline's disk trouble must not stop the others
                self.complain("removing old WAL failed", exc, ttid)
                continue
            budget -= removed
            if more:
                self._due[ttid] = now  # cut short by the budget: next round
        try:
            self.disk.reserve.keep()
        except OSError as exc:  # not a full disk: read-only, say
            self.complain("cannot make the WORKDIR's space reserve", exc)
        return self.max_per_round - budget

    def remove(
        self,
        st: TimelineState,
        cluster_backup_lsn: Lsn | None,
        verified_lsn: Lsn | None,
        limit: int,
    ) -> tuple[int, bool]:
        """Delete at most ``limit`` segments of ``st`` below its horizon;
        returns ``(deleted, more are left below the horizon)``."""
        seg_size = st.wal_seg_size
        horizon = removal_horizon(
            seg_size=seg_size,
            cluster_backup_lsn=cluster_backup_lsn,
            verified_lsn=verified_lsn,
            recorded_backup_lsn=st.backup_lsn,
            commit_lsn=st.commit_lsn,
            keep_segments=self.keep_segments,
            recorded_horizon_lsn=st.removal_horizon_lsn,
        )
        if horizon is None or st.local_start_lsn is None or st.local_start_lsn >= horizon:
            return 0, False
        ttid = str(st.ttid)
        start = st.timeline_start_lsn
        if start is None:
            start = self.timeline_start(ttid)
            if start is None:
                return 0, False  # not elected yet: the start is not known either
        try:
            self.disk.update_state(st.ttid, lambda s: _with_horizon(s, horizon, start))
        except OSError as exc:
            what = "cannot record the removal horizon in the state file"
            write_failed(self.blocked, self.complain, ttid, what, exc)
            return 0, False
        if self.blocked is not None:
            self.blocked.cleared(ttid)
        listing = list_files(st.path)
        run = scan_entries(listing.files, seg_size, listing.others).segnos
        doomed = segments_below(run, horizon, seg_size, limit + 1)
        more = len(doomed) > limit
        doomed = doomed[:limit]
        if not doomed:
            return 0, False
        done = 0
        try:
            for segno in doomed:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(st.path / xlog_file_name(segno, seg_size))
                done += 1
        finally:  # a failing unlink still leaves the ones before it counted and logged
            doomed = doomed[:done]
            if doomed:
                self._removed(st, doomed, horizon)
        return len(doomed), more

    def _removed(self, st: TimelineState, doomed: list[int], horizon: Lsn) -> None:
        ttid, seg_size = str(st.ttid), st.wal_seg_size
        fsync_dir(st.path)
        REMOVED_WAL_SEGMENTS.inc(len(doomed))
        log.info(
            "Timeline %s: node %s removed %d WAL segment(s) %s..%s below horizon %s",
            ttid,
            self.node_id,
            len(doomed),
            xlog_file_name(doomed[0], seg_size),
            xlog_file_name(doomed[-1], seg_size),
            horizon,
        )
        with contextlib.suppress(redis.RedisError):  # else the digester withdraws them
            self.forget_digests(ttid, doomed[-1] + 1)


def _with_horizon(s: TimelineStateFile, horizon: Lsn, start: Lsn) -> TimelineStateFile:
    """The state file with ``horizon`` recorded (never lowered) and a
    ``timeline_start_lsn`` (never replaced)."""
    recorded = s.removal_horizon_lsn
    return replace(
        s,
        removal_horizon_lsn=horizon if recorded is None else max(recorded, horizon),
        timeline_start_lsn=start if s.timeline_start_lsn is None else s.timeline_start_lsn,
    )
