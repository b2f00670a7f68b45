"""Logging helpers: one line per kind of trouble, not one per second."""

from __future__ import annotations

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
