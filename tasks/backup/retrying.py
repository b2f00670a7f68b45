"""Failed or stuck uploads: parked retries, hedged re-sends, orphaned claims sent again.

- ``failed``: an upload attempt raised; count it, show it, park its retry
  (``tasks.backup.retries.RetryPark``, SPEC §4 backoff);
- ``park_claimed``: segments claimed for a task that failed before it
  started them;
- ``send_parked`` (the node's watcher thread, every pass): sends the retries that are
  due, or all of them once remote storage is seen to heal
  (``tasks.backup.health``), and hedges uploads that started before it healed;
- ``resend_orphans`` (after a Redis disruption): claimed segments that no
  upload of this process holds.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping

import redis

from tasks.backup.copies import Copies
from tasks.backup.handoff import SendUploadFn
from tasks.backup.health import StorageHealth
from tasks.backup.retries import RetryPark, UploadRef
from tasks.core.commit import backoff_ms
from tasks.core.ids import TenantTimelineId
from tasks.errors import (
    AccessDenied,
    AgreementPending,
    BrokerUnavailable,
    ChecksumMismatch,
    DamagedCopy,
    NoAgreement,
    SegmentFileError,
    StorageUnavailable,
)
from tasks.logutil import Complaints
from tasks.metrics import BACKUP_ERRORS, PARKED_UPLOADS
from tasks.state.redis import RedisState
from tasks.state.timeline_state import TimelineState
from tasks.state.workdir import Workdir

log = logging.getLogger("walbackup.node")

AGREEMENT_RETRY_S = 0.1
"""Delay of the retry of an upload still waiting for the peers' digests."""
SLOW_UPLOAD_S = 2.0
"""An upload still waiting after this long makes the node probe storage: if
the endpoint is down and comes back, the upload is sent again (``_hedge``)
rather than waiting out a connection the outage may have killed silently."""


class InFlight:
    """The uploads running in this process and when each started
    (``time.monotonic()``). Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._started: dict[UploadRef, float] = {}

    @contextlib.contextmanager
    def track(self, upload: UploadRef) -> Iterator[None]:
        with self._lock:
            self._started[upload] = time.monotonic()
        try:
            yield
        finally:
            with self._lock:
                self._started.pop(upload, None)

    def snapshot(self) -> dict[UploadRef, float]:
        with self._lock:
            return dict(self._started)


class Retrying:
    """``failed`` and ``park_claimed`` run in upload threads, ``resend_orphans``
    in the node's heartbeat thread, the rest in its watcher thread only (so
    ``_hedged_for`` and ``_suspected``, which only they touch, need no lock)."""

    def __init__(
        self,
        node_id: int,
        state: RedisState,
        disk: Workdir,
        copies: Copies,
        send_upload: SendUploadFn,
        in_flight: InFlight,
        *,
        health: StorageHealth,
        retries: RetryPark,
        publish_soon: Callable[[str], None],
        complain: Complaints,
    ) -> None:
        self.node_id = node_id
        self.state = state
        self.disk = disk
        self.copies = copies
        self.send_upload = send_upload
        self.in_flight = in_flight
        self.health = health
        self.retries = retries
        self.publish_soon = publish_soon
        """Publish a timeline's heartbeat now (it reports a damaged copy)."""
        self.complain = complain
        self._hedged_for = 0  # health.recoveries already acted on
        self._suspected: set[UploadRef] = set()  # slow uploads that started a probe

    # -- in upload threads -------------------------------------------------------

    def park_claimed(self, ttid: str, token: str, segnos: list[int], seg_size: int) -> None:
        """Segments claimed for a task that failed before starting them: sent
        again by the node's watcher (as soon as the broker takes messages)."""
        for segno in segnos:
            self.retries.park(UploadRef(ttid, segno, seg_size, token), 0, 0.0, 0)
        PARKED_UPLOADS.set(len(self.retries))

    def failed(self, upload: UploadRef, attempt: int, exc: Exception) -> str:
        """An upload failed after ``attempt`` earlier failures: count it, show
        it, and park its retry. Returns the task's result."""
        if isinstance(exc, AgreementPending):
            self.retries.park(upload, attempt, AGREEMENT_RETRY_S, self.health.recoveries)
            return "waiting for agreement"
        attempt += 1
        BACKUP_ERRORS.inc()
        if isinstance(exc, SegmentFileError) and not isinstance(exc, DamagedCopy):
            # Our copy failed the backend's own checks (size, open, changed).
            path = self.disk.segment_path(
                TenantTimelineId.parse(upload.ttid), upload.segno, upload.seg_size
            )
            self.copies.mark_damaged(upload.ttid, upload.segno, path, str(exc))
        loud = isinstance(exc, ChecksumMismatch | DamagedCopy | NoAgreement)
        log.log(
            logging.ERROR if loud else logging.WARNING,
            "Timeline %s: upload of segno %d failed (attempt %d): %s",
            upload.ttid,
            upload.segno,
            attempt,
            exc,
        )
        with contextlib.suppress(redis.RedisError, BrokerUnavailable):
            self.state.record_error(upload.ttid, f"segno {upload.segno}: {exc}")
        if isinstance(exc, StorageUnavailable):
            self.health.failed()
        elif isinstance(exc, AccessDenied):
            # Probed with a write: a policy denying PutObject may allow the
            # read-only probe (SPEC §9: resume within 2 s of the policy's repair).
            self.health.failed(refused_write=True)
        if isinstance(exc, DamagedCopy):
            # Our heartbeat now reports the damage: the next election moves
            # the timeline to a node with a good copy, and our retry (if we
            # are still the offloader) sees the file afresh.
            self.publish_soon(upload.ttid)
        self.retries.park(upload, attempt, backoff_ms(attempt) / 1000, self.health.recoveries)
        PARKED_UPLOADS.set(len(self.retries))
        return "retrying"

    # -- in the node's watcher and heartbeat threads ---------------------------------

    def send_parked(self) -> None:
        """Hedge, then send the retries that are due. A broker that takes no
        message keeps the rest parked, due at once."""
        self._hedge()
        due = self.retries.take_due(self.health.recoveries)
        for i, item in enumerate(due):
            u = item.upload
            try:
                self.send_upload(u.ttid, u.segno, u.seg_size, u.token, item.attempt)
            except (redis.RedisError, BrokerUnavailable, OSError) as exc:
                self.retries.put_back(due[i:])  # the broker is down: keep them
                self.complain("cannot send parked retries", exc)
                break
        if due:
            PARKED_UPLOADS.set(len(self.retries))

    def _hedge(self) -> None:
        """Storage just recovered: uploads that started before may sit on
        connections the outage killed silently, until their read timeout.
        Send each once more; the conditional write makes the second harmless."""
        now = time.monotonic()
        uploading = self.in_flight.snapshot()
        slow = {u for u, t in uploading.items() if now - t > SLOW_UPLOAD_S}
        self._suspected &= uploading.keys()
        new = slow - self._suspected
        self._suspected |= new
        if new:
            self.health.failed()  # only a probe that fails, then passes, hedges
        recoveries = self.health.recoveries
        if recoveries == self._hedged_for:
            return
        self._hedged_for = recoveries
        recovered_at = self.health.recovered_at
        stuck = [u for u, t in self.in_flight.snapshot().items() if t < recovered_at]
        for u in stuck:
            log.info(
                "Timeline %s: storage answers again; uploading segno %d once more beside "
                "the attempt still waiting",
                u.ttid,
                u.segno,
            )
            self.send_upload(u.ttid, u.segno, u.seg_size, u.token, 0)

    def resend_orphans(
        self, leases: Mapping[str, str], timelines: Mapping[str, TimelineState]
    ) -> None:
        """After a Redis disruption: segments claimed under our ``leases`` that no
        upload of ours holds. Redis may have run the claiming script, or handed
        out an upload message, and died before its reply arrived; without
        this they would wait out the claim timeout (minutes). A claimed
        segment whose message is still queued is uploaded twice: harmless."""
        busy = set(self.in_flight.snapshot()) | self.retries.uploads()
        for ttid, token in leases.items():
            st = timelines.get(ttid)
            if st is None:
                continue
            for segno in self.state.claimed(ttid):
                ref = UploadRef(ttid, segno, st.wal_seg_size, token)
                if ref not in busy:
                    log.info(
                        "Timeline %s: after a Redis disruption, sending claimed segno %d again",
                        ttid,
                        segno,
                    )
                    self.send_upload(ttid, segno, st.wal_seg_size, token, 0)
