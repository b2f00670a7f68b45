"""Failed uploads waiting for their retry, held by the node instead of the broker.

A failed upload is retried after ``min(5000 ms, 10 ms * 2**attempt)`` (SPEC §4),
or sooner when the storage prober saw the endpoint come back after a failure
(``StorageHealth.recoveries`` moved): backoff keeps a broken endpoint from
being hammered, the prober gets backup going within a fraction of a second of
it healing (SPEC §9). Holding the retries here rather than as Celery countdown
messages also keeps them through a broker outage, when no message can be sent.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class UploadRef:
    """One segment upload of a timeline under one lease token."""

    ttid: str
    segno: int
    seg_size: int
    token: str


@dataclass(order=True, slots=True)
class Parked:
    due: float
    upload: UploadRef = field(compare=False)
    attempt: int = field(compare=False)
    """Failed attempts so far."""
    recoveries: int = field(compare=False)
    """``StorageHealth.recoveries`` when parked."""


class RetryPark:
    """Thread-safe; ``clock`` is monotonic seconds (injectable for tests)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._heap: list[Parked] = []
        self._lock = threading.Lock()

    def park(self, upload: UploadRef, attempt: int, delay_s: float, recoveries: int) -> None:
        with self._lock:
            heapq.heappush(self._heap, Parked(self._clock() + delay_s, upload, attempt, recoveries))

    def take_due(self, recoveries: int) -> list[Parked]:
        """Remove and return the retries that are due: their backoff ran out,
        or the storage recovered since they were parked."""
        now = self._clock()
        with self._lock:
            due: list[Parked] = []
            kept: list[Parked] = []
            for item in self._heap:
                (due if item.due <= now or item.recoveries < recoveries else kept).append(item)
            if due:
                heapq.heapify(kept)
                self._heap = kept
        return due

    def put_back(self, items: list[Parked]) -> None:
        """Retries that could not be sent (broker down): due again at once."""
        with self._lock:
            for item in items:
                heapq.heappush(self._heap, item)

    def uploads(self) -> set[UploadRef]:
        with self._lock:
            return {p.upload for p in self._heap}

    def __len__(self) -> int:
        with self._lock:
            return len(self._heap)
