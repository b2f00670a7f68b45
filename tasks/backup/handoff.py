"""This process's upload tasks: how many run, which wait, how claimed segments reach them.

A commit claims the next segments of its timeline (``commit_and_claim``). The
task that committed keeps one of them to upload itself (chaining,
``tasks.backup.uploader``), or all of them when every pool thread already runs
an upload task (``saturated``: a task sent to the queue would only wait
there). ``hand_out`` gives the others to upload tasks of the same timeline and
lease that wait for work in this process (``Handoff``), and sends the rest to
the node's queue as new ``upload_segment`` tasks.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable, Iterator

SendUploadFn = Callable[[str, int, int, str, int], None]
"""Sends ``upload_segment(ttid, segno, seg_size, token, attempt)`` to this node's queue."""


class Handoff:
    """Segments just claimed for one timeline and lease, passed from the upload
    task whose commit claimed them to upload tasks of this process that wait
    for work, instead of one Celery message each.

    Invariant (under ``cond``): ``len(ready) <= waiting``, so every segment put
    in ``ready`` is taken by a waiter: none is left claimed and unsent."""

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.waiting = 0
        self.ready: deque[int] = deque()

    def offer(self, segnos: list[int]) -> list[int]:
        """Give segnos to waiting tasks; returns those nobody waits for."""
        with self.cond:
            n = min(len(segnos), self.waiting - len(self.ready))
            if n <= 0:
                return segnos
            self.ready.extend(segnos[:n])
            self.cond.notify(n)
            return segnos[n:]

    def take(self, timeout_s: float) -> int | None:
        """Wait up to ``timeout_s`` for a segment offered to this waiter."""
        with self.cond:
            self.waiting += 1
            try:
                self.cond.wait_for(lambda: self.ready, timeout_s)
            finally:
                self.waiting -= 1
            return self.ready.popleft() if self.ready else None

    @property
    def idle(self) -> bool:
        return self.waiting == 0 and not self.ready


class UploadTasks:
    """Thread-safe: ``_lock`` guards the count and the registry of handoffs;
    each ``Handoff`` guards its own queue."""

    def __init__(self, send_upload: SendUploadFn, slots: int) -> None:
        self.send_upload = send_upload
        self.slots = slots
        """The threads of the worker's pool (``tasks.app``)."""
        self._lock = threading.Lock()
        self._running = 0
        self._handoffs: dict[tuple[str, str], Handoff] = {}  # (ttid, token) -> waiting tasks

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Counts an upload task running in this process (see ``saturated``)."""
        with self._lock:
            self._running += 1
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1

    @property
    def saturated(self) -> bool:
        """Every pool thread runs an upload task."""
        return self._running >= self.slots

    def hand_out(self, ttid: str, token: str, segnos: list[int], seg_size: int) -> None:
        """Claimed segments go to this timeline's waiting upload tasks, the
        rest to the queue as new tasks."""
        if segnos:
            with self._lock:
                handoff = self._handoffs.get((ttid, token))
            if handoff is not None:
                segnos = handoff.offer(segnos)
        for segno in segnos:
            self.send_upload(ttid, segno, seg_size, token, 0)

    def take(self, ttid: str, token: str, timeout_s: float) -> int | None:
        """Wait up to ``timeout_s`` for a segment that another upload task of
        this timeline and lease claims and hands out."""
        key = (ttid, token)
        with self._lock:
            handoff = self._handoffs.setdefault(key, Handoff())
        try:
            return handoff.take(timeout_s)
        finally:
            # The last waiter removes the entry, unless a newer one replaced it.
            with self._lock:
                if handoff.idle and self._handoffs.get(key) is handoff:
                    del self._handoffs[key]
