"""WAL removal held up by a state file that cannot be written: said loudly.

Removal deletes nothing above the backup_lsn in a timeline's state file, and
records its horizon there before deleting (``tasks.backup.removal``). A
state file that cannot be written (a full WORKDIR whose space reserve is used
up or was never made, a read-only or failing disk) therefore stops removal
for good, and a full disk stays full: pg_receivewal stops on every node. That
must not look like a quiet timeline: an ERROR in the log and the timeline's
``last_error``, again every 30 s while it lasts; a later write that succeeds
clears what was said (unless something else was said since).
"""

from __future__ import annotations

import contextlib
import logging

import redis

from tasks.logutil import Complaints, Throttle
from tasks.state.redis import RedisState

log = logging.getLogger("walbackup.removal")


class BlockedRemoval:
    """Used by one thread (the node's heartbeat thread)."""

    def __init__(self, node_id: int, state: RedisState) -> None:
        self.node_id = node_id
        self.state = state
        self._throttle = Throttle(30.0)
        self._said: dict[str, str] = {}  # ttid -> the last_error written

    def failed(self, ttid: str, what: str, exc: BaseException) -> None:
        """A write of ``ttid``'s state file failed with ``exc``."""
        if not self._throttle.allow(ttid):
            return
        message = (
            f"node {self.node_id}: {what}: {type(exc).__name__}: {exc}: WAL removal on this "
            "node is blocked until the state file can be written (is its WORKDIR full?)"
        )
        log.error("Timeline %s: %s", ttid, message)
        with contextlib.suppress(redis.RedisError):  # said again in 30 s
            self._said[ttid] = self.state.record_error(ttid, message)

    def cleared(self, ttid: str) -> None:
        """A write of ``ttid``'s state file succeeded."""
        said = self._said.pop(ttid, None)
        if said is None:
            return
        with contextlib.suppress(redis.RedisError):
            self.state.clear_error(ttid, said)


def write_failed(
    blocked: BlockedRemoval | None, complain: Complaints, ttid: str, what: str, exc: Exception
) -> None:
    """A state file write of ``ttid`` failed: said as blocking removal when
    removal is on and the disk refused it, else complained about as before."""
    if blocked is not None and isinstance(exc, OSError):
        blocked.failed(ttid, what, exc)
    else:
        complain(what, exc, ttid)
