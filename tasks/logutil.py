"""Logging helpers: one line per kind of trouble, not one per second."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable


class Throttle:
    """``allow(key)`` is true at most once per ``interval_s`` for each key."""

    def __init__(self, interval_s: float = 30.0, clock: Callable[[], float] | None = None):
        self.interval_s = interval_s
        self._clock = clock
        self._last: dict[Hashable, float] = {}
        self._lock = threading.Lock()

    def allow(self, key: Hashable) -> bool:
        now = self._clock() if self._clock is not None else time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval_s:
                return False
            if len(self._last) > 10_000:
                self._last.clear()
            self._last[key] = now
            return True

    def reset(self) -> None:
        """Every key may speak again at once."""
        with self._lock:
            self._last.clear()


class Complaints:
    """A node's warnings about recurring trouble: one WARNING line per kind
    (what, timeline, exception type) every ``interval_s``; the traceback at DEBUG."""

    def __init__(self, logger: logging.Logger, node_id: int, interval_s: float = 30.0) -> None:
        self._log = logger
        self.node_id = node_id
        self._throttle = Throttle(interval_s)

    def __call__(self, what: str, exc: BaseException, ttid: str = "") -> None:
        if self._throttle.allow((what, ttid, type(exc))):
            where = f"Timeline {ttid}: node {self.node_id}" if ttid else f"Node {self.node_id}"
            self._log.warning("%s: %s: %s: %s", where, what, type(exc).__name__, exc)
        self._log.debug("%s", what, exc_info=exc)
