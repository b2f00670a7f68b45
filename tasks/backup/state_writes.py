"""The cluster's backup_lsn and system id, copied into the timelines' state files.

The heartbeat round (``tasks.backup.heartbeats``) reads both from Redis for
every timeline its node holds and hands them here. The state file keeps them
for a Redis that loses its data (the nodes' recorded backup_lsn recovers it),
for the node's own PeerInfo, and for WAL removal (``tasks.core.horizon``
takes the lower of it and the cluster's).
"""

from __future__ import annotations

import time

from tasks.backup.blocked import BlockedRemoval, write_failed
from tasks.core.lsn import Lsn
from tasks.errors import SegmentFileError
from tasks.logutil import Complaints
from tasks.state.timeline_state import TimelineState
from tasks.state.workdir import Workdir

STATE_WRITES_PER_HEARTBEAT = 256
STATE_WRITE_BUDGET_S = 0.2
"""At most this many timeline state files (each fsynced: ~1 ms on a fast
disk, ~10 ms on a slow one) are updated with the cluster's backup_lsn per
heartbeat round, and for at most this long; the rest wait for the next
rounds. A node catching up 10,000 timelines at once otherwise stopped
heartbeating for ~10 s (bench/election.py), and on a slow disk 256 writes a
round let its leases expire (bench/fleet.py, rss shape)."""


class StateWrites:
    """Runs in the heartbeat thread only.

    A timeline's state file takes a newer backup_lsn at most every
    ``interval_s`` (``WALBACKUP_STATE_FILE_INTERVAL``): the latest, once
    due. The first interval counts from the first newer value seen, so that
    a burst just after a node's start writes nothing at once; timelines that
    come due together are spread by ``STATE_WRITES_PER_HEARTBEAT``. A new
    system id is written at once. Each write is an fsync, wakes the node's
    WORKDIR watch, which rescans the timeline, and changes the node's
    heartbeat record, which marks the timeline for election. At one write
    every 2 s, the state files took ~8 % of the nodes' CPU in
    bench/fleet.py's burst, and a quarter of a core per node for 10 s after
    their start. The file is a lower bound: WAL removal takes the lower of
    it and Redis's value, and the recovery of a Redis that lost its data
    reads the archive too, so a file behind only delays removal (Neon's
    safekeepers, likewise, persist their control file's ``backup_lsn`` only
    now and then)."""

    def __init__(
        self,
        disk: Workdir,
        complain: Complaints,
        interval_s: float,
        blocked: BlockedRemoval | None = None,
    ) -> None:
        self.disk = disk
        self.complain = complain
        self.interval_s = interval_s
        self.blocked = blocked
        """With WAL removal on: a failing write blocks it, said there."""
        self._last: dict[str, float] = {}  # ttid -> monotonic time of its last write
        self._writes = 0
        self._deadline = 0.0

    def new_round(self) -> None:
        self._writes = 0
        self._deadline = time.monotonic() + STATE_WRITE_BUDGET_S

    def record(self, st: TimelineState, backup_lsn: Lsn | None, system_id: int | None) -> None:
        """Write what ``st``'s state file lacks of the cluster's ``backup_lsn``
        and ``system_id``, if this round's budget and the timeline's
        interval allow; else a later round does."""
        raise_backup = backup_lsn is not None and backup_lsn > st.backup_lsn
        new_system_id = system_id is not None and system_id != st.system_id
        if not (raise_backup or new_system_id):
            return
        now = time.monotonic()
        if self._writes >= STATE_WRITES_PER_HEARTBEAT or now >= self._deadline:
            return
        ttid = str(st.ttid)
        last = self._last.setdefault(ttid, now)  # the first newer value starts the interval
        if not new_system_id and now - last < self.interval_s:
            return
        self._writes += 1
        self._last[ttid] = now
        try:
            self.disk.record_cluster_state(
                st.ttid, backup_lsn, system_id if new_system_id else None
            )
        except (OSError, SegmentFileError) as exc:
            # A full or failing disk must not stop heartbeats and lease
            # renewals: Redis still has backup_lsn.
            # Removal waits for the file: a blocked removal is said loudly.
            what = "cannot record backup_lsn in the state file"
            write_failed(self.blocked, self.complain, ttid, what, exc)
        else:
            if self.blocked is not None:
                self.blocked.cleared(ttid)

    def forget(self, ttid: str) -> None:
        self._last.pop(ttid, None)
