"""This process's upload tasks: how many run, which wait, how claimed segments reach them.

A commit claims the next segments of its timeline (``commit_and_claim``). The
task that committed keeps one of them to upload itself (chaining,
``tasks.backup.uploader``), or all of them when every pool thread already runs
an upload task (``saturated``: a task sent to the queue would only wait
there). ``hand_out`` gives the others to upload tasks of the same timeline and
lease that wait for work in this process (``Handoff``), and sends the rest to
the node's queue as new ``upload_segment`` tasks — or, when the queue is backed
up, several segments per ``upload_segments`` task (``UploadTasks.send``).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

SendUploadFn = Callable[[str, int, int, str, int], None]
"""Sends ``upload_segment(ttid, segno, seg_size, token, attempt)`` to this node's queue."""


class UploadJob(NamedTuple):
    """A claimed segment to upload (as a message: ``[ttid, segno, seg_size, token]``)."""

    ttid: str
    segno: int
    seg_size: int
    token: str


SendBatchFn = Callable[[list[UploadJob]], None]
"""Sends ``upload_segments(jobs)`` to this node's queue: one task uploads them in turn."""

BATCH_BYTES = 8 << 20
"""At most this much WAL per ``upload_segments`` message (and always one
segment): a batch of 1 MiB segments costs one Celery message (publish,
delivery, events, ack: more CPU than copying one such segment) instead of
eight, and takes its thread a few ms per segment; a 16 MiB segment is sent on
its own, where a message costs little next to the upload."""

SENT_FORGET_S = 30.0
"""A message sent longer ago than this and not started yet counts as lost
(Redis lost its data, another worker took it): it no longer counts as
waiting in the queue. Counting it too long only sends more batches, too
short only more single messages: neither loses a segment."""


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

    def __init__(self, send_upload: SendUploadFn, send_batch: SendBatchFn, slots: int) -> None:
        self.send_upload = send_upload
        self.send_batch = send_batch
        self.slots = slots
        """The threads of the worker's pool (``tasks.app``)."""
        self._lock = threading.Lock()
        self._running = 0
        # When each upload message we sent and no task started yet was sent
        # (monotonic, oldest first): the node's queue holds only its own.
        self._sent: deque[float] = deque()
        self._handoffs: dict[tuple[str, str], Handoff] = {}  # (ttid, token) -> waiting tasks

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Counts an upload task running in this process (see ``saturated``)."""
        with self._lock:
            self._running += 1
            if self._sent:
                self._sent.popleft()
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
        self.send(self.offer(ttid, token, segnos, seg_size))

    def offer(self, ttid: str, token: str, segnos: list[int], seg_size: int) -> list[UploadJob]:
        """Claimed segments to this timeline's waiting upload tasks; returns
        the others, for ``send``."""
        if segnos:
            with self._lock:
                handoff = self._handoffs.get((ttid, token))
            if handoff is not None:
                segnos = handoff.offer(segnos)
        return [UploadJob(ttid, segno, seg_size, token) for segno in segnos]

    def send(self, jobs: Sequence[UploadJob]) -> None:
        """Send claimed segments to the queue: one message each while pool
        threads would be free to take them, the rest in batches
        (``BATCH_BYTES``), which wait for a thread anyway."""
        with self._lock:
            horizon = time.monotonic() - SENT_FORGET_S
            while self._sent and self._sent[0] < horizon:
                self._sent.popleft()
            waiting = len(self._sent)
            free = max(0, self.slots - self._running - waiting)
        # The first ``free`` go alone; then enough messages that no thread
        # idles while another works through a batch, counting those waiting.
        messages = [[job] for job in jobs[:free]]
        messages += _batches(jobs[free:], max(1, self.slots - waiting))
        for message in messages:
            if len(message) == 1:
                self.send_upload(*message[0], 0)
            else:
                self.send_batch(message)
            self._count_sent()

    def _count_sent(self) -> None:
        with self._lock:
            self._sent.append(time.monotonic())

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


def _batches(jobs: Sequence[UploadJob], spread: int) -> list[list[UploadJob]]:
    """``jobs`` in order, in at least ``spread`` messages (as many as there
    are jobs, if fewer) of at most ``BATCH_BYTES`` each, as even as can be."""
    if not jobs:
        return []
    per = max(1, BATCH_BYTES // max(job.seg_size for job in jobs))
    n = max(min(len(jobs), spread), -(-len(jobs) // per))
    size, extra = divmod(len(jobs), n)
    out, at = [], 0
    for i in range(n):
        end = at + size + (i < extra)
        out.append(list(jobs[at:end]))
        at = end
    return out
