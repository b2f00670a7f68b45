"""Beat's outage log: one line per kind of Redis or broker failure, not a
traceback per tick (``beat.scheduler``)."""

from __future__ import annotations

import logging
import time

import redis
from kombu.exceptions import OperationalError

from tasks.logutil import Throttle

log = logging.getLogger("celery.beat")

RETRY_S = 1.0
"""Sleep after a failed tick."""

REPORT_EVERY_S = 30.0
"""A failure that lasts is logged again at most this often."""


OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    redis.ConnectionError,  # includes BusyLoadingError (Redis loading its AOF)
    redis.TimeoutError,
    OperationalError,  # kombu: the broker could not be reached to publish
)


class OutageLog:
    """One log line per kind of failure, then at most one per ``every``
    seconds while it lasts; one line when ticks succeed again."""

    def __init__(self, every: float = REPORT_EVERY_S) -> None:
        self.every = every
        self._throttle = Throttle(every)
        self._since: dict[str, int] = {}  # failures not reported yet
        self._total = 0
        self._started: float | None = None

    def failed(self, exc: BaseException) -> None:
        kind = type(exc).__name__
        now = time.monotonic()
        self._total += 1
        if self._started is None:
            self._started = now
        if not self._throttle.allow(kind):
            self._since[kind] = self._since.get(kind, 0) + 1
            return
        more = self._since.pop(kind, 0)
        log.warning(
            "beat: tick failed: %s: %s (%s; retrying every %gs)",
            kind,
            exc,
            f"{more} more since the last report" if more else "first of its kind",
            RETRY_S,
        )

    def recovered(self) -> None:
        if self._started is None:
            return
        log.warning(
            "beat: ticking again after %d failed tick(s) over %.1fs",
            self._total,
            time.monotonic() - self._started,
        )
        self._throttle.reset()
        self._since.clear()
        self._total = 0
        self._started = None
