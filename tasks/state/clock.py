"""The cluster's clock: Redis's server time, as every node reads it.

Heartbeats, claim deadlines, archive reports and the like are times one node
writes into Redis and another compares with its own "now". Taken from each
node's wall clock, a node whose clock was off (a broken NTP) looked dead to
the others, or alive long after it died, and the elections followed. So
every time that goes into Redis, or is compared with one from it, is read
from ``ClusterClock.now``: Redis's ``TIME`` at the last sync, plus the
node's monotonic time since (which no wall clock step moves).
"""

from __future__ import annotations

import logging
import threading
import time

import redis

log = logging.getLogger(__name__)

SYNC_S = 10.0
"""Seconds between two reads of Redis's ``TIME``."""
RETRY_S = 1.0
"""Seconds before another read after one failed (Redis unreachable)."""
MAX_RTT_S = 0.25
"""A read of ``TIME`` that took longer is not used: it tells the time only
to within half its round trip."""


class ClusterClock:
    """Thread-safe. Until the first read of ``TIME`` succeeds, the local wall
    clock stands in."""

    def __init__(self, client: redis.Redis[str]) -> None:
        self.r = client
        # (cluster time, monotonic time) at the last sync, replaced whole
        self._anchor: tuple[float, float] | None = None
        self._due = 0.0
        self._refused = False
        self._lock = threading.Lock()

    def now(self) -> float:
        """Seconds since the epoch, by Redis's clock."""
        if time.monotonic() >= self._due and self._lock.acquire(blocking=False):
            try:
                self._sync()
            finally:
                self._lock.release()
        anchor = self._anchor
        if anchor is None:
            return time.time()
        return anchor[0] + time.monotonic() - anchor[1]

    def from_local(self, local_ts: float) -> float:
        """A time of this node's wall clock (a file's mtime) in cluster time."""
        return local_ts + self.now() - time.time()

    def _sync(self) -> None:
        sent = time.monotonic()
        try:
            seconds, micros = self.r.time()
        except redis.RedisError as exc:
            self._due = time.monotonic() + RETRY_S
            if isinstance(exc, redis.ResponseError) and not self._refused:
                self._refused = True  # an ACL without TIME, say: said once
                log.warning("Redis refuses TIME (%s): this node's own clock stands in", exc)
            return
        received = time.monotonic()
        if received - sent > MAX_RTT_S:
            # Redis read its clock somewhere in a slow round trip (a stall, a
            # partition that healed): the midpoint could be seconds off.
            self._due = received + RETRY_S
            return
        # The server read its clock about half way through the round trip.
        self._anchor = (seconds + micros / 1e6, (sent + received) / 2)
        self._due = received + SYNC_S
