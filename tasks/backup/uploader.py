"""Upload one segment, commit it in order, chain to the segments the commit claims.

One segment's trip from disk to S3 to ``backup_lsn``, file by file:

1. ``tasks/backup/elector.py`` ``Elector.elect`` → ``kick`` →
   ``tasks/wiring.py`` ``kick_backup``: a ``backup_timeline`` message to the
   offloader's queue;
2. ``tasks/jobs.py`` ``backup_timeline`` → ``tasks/backup/node.py``
   ``NodeService.backup`` → ``tasks/backup/leases.py`` ``Leases.backup``
   (``RedisState.acquire_lease``) → ``Leases._dispatch`` →
   ``tasks/state/redis.py`` ``RedisState.claim_segments`` (Lua
   ``claim_segments.lua``: ``window_claim`` in ``_window.lua``);
3. ``tasks/backup/handoff.py`` ``UploadTasks.hand_out`` → ``tasks/wiring.py``
   ``send_upload``: an ``upload_segment`` message to the node's own queue;
4. ``tasks/jobs.py`` ``upload_segment`` → ``NodeService.upload`` →
   ``tasks/backup/uploader.py`` ``Uploader.upload``:
   ``RedisState.start_upload`` (Lua ``start_upload.lua``: still our lease?),
   ``tasks/state/workdir.py`` ``Workdir.segment_path``;
   ``tasks/backup/walheader.py`` ``HeaderCheck.check``: the first page's
   WAL header (``tasks/core/walpage.py`` ``check_long_header``) and the
   timeline's system identifier (the state file's, else
   ``RedisState.record_system_id``);
5. ``tasks/backup/agreement.py`` ``Agreement.verify``: ``holders``
   (``RedisState.peers``), ``_read_copy`` (``tasks/storage/base.py``
   ``digest_segment_file``), ``_check`` (``Copies.publish_own``,
   ``RedisState.digests``, ``tasks/core/agreement.py`` ``judge``);
6. ``tasks/storage/s3.py`` ``S3Storage.upload_file``: a conditional
   ``put_object`` (``IfNoneMatch``) with MD5 and SHA-256, then the stored
   object verified;
7. ``RedisState.commit_and_claim`` (Lua ``commit_and_claim.lua``:
   ``window_commit`` in ``_window.lua`` moves ``backup_lsn`` to the end of the
   longest run of finished segments, as ``tasks/core/commit.py`` ``advance``
   models it; then ``window_claim``; then the lease's PEXPIRE);
8. back in ``Uploader.upload``: one claimed segment (or all, when
   ``saturated``) is returned for ``upload_segment`` to upload next, the others
   go to ``UploadTasks.hand_out``;
9. the node's heartbeat thread: ``tasks/backup/heartbeats.py`` ``Heartbeats.round``
   (``RedisState.cluster_facts``) → ``Workdir.record_cluster_state``:
   ``backup_lsn`` in the timeline's state file.

A failure on the way: ``upload_segment`` → ``NodeService.failed`` →
``tasks/backup/retrying.py`` ``Retrying.failed`` parks the retry, and
``Retrying.send_parked`` (the node's watcher) sends it again when due.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from tasks.backup.agreement import Agreement
from tasks.backup.handoff import UploadTasks
from tasks.backup.leases import Leases, claim_timeout_ms
from tasks.backup.retries import UploadRef
from tasks.backup.retrying import InFlight
from tasks.backup.walheader import HeaderCheck
from tasks.core.commit import WindowSize
from tasks.core.ids import TenantTimelineId
from tasks.core.ledger import LedgerEntry, facts_of
from tasks.core.segments import xlog_file_name
from tasks.metrics import BACKED_UP_SEGMENTS, UPLOAD_SECONDS, UPLOADED_BYTES
from tasks.state.redis import CommitRefused, RedisState
from tasks.state.timeline_state import TimelineState
from tasks.state.workdir import Workdir
from tasks.storage.base import RemoteStorage, segment_key

log = logging.getLogger("walbackup.node")

CHAIN_BUDGET_S = 3.0
"""How long one ``upload_segment`` task keeps uploading the segments that its
commits claim, before it sends them to the queue instead: a Celery task per
segment costs more CPU than uploading a small segment (bench/overhead.py),
and a 16 MiB upload takes most of a second (at 1 s nearly every one was a
task of its own; 3 s: 0.75 – 0.79 of the boto3 pool at P = 8 against 0.63
– 0.72, bench/README.md). Fencing is not delayed by it: every chained
commit checks the lease token."""

HANDOFF_WAIT_MIN_S = 0.05
HANDOFF_WAIT_MAX_S = 0.25
"""An upload task whose commit claimed nothing waits this long (twice its
upload's duration, within these bounds) for a segment that another upload task
of the same timeline claims (``tasks.backup.handoff.Handoff``): longer waits
idle the threads that the queued tasks of other timelines need."""


@dataclass(frozen=True, slots=True)
class UploadOutcome:
    status: Literal["committed", "fenced"]
    """``fenced``: the lease token is stale; nothing was committed."""
    next_segnos: tuple[int, ...] = ()
    """Segments the commit claimed for the caller to upload next (chaining)."""


class Uploader:
    """Runs in the upload threads; holds no state of its own (its
    collaborators lock theirs)."""

    def __init__(
        self,
        *,
        window: WindowSize,
        state: RedisState,
        storage: RemoteStorage,
        disk: Workdir,
        leases: Leases,
        tasks: UploadTasks,
        agreement: Agreement,
        headers: HeaderCheck,
        in_flight: InFlight,
        timeline: Callable[[str], TimelineState | None],
    ) -> None:
        self.window = window
        self.state = state
        self.storage = storage
        self.disk = disk
        self.leases = leases
        self.tasks = tasks
        self.agreement = agreement
        self.headers = headers
        self.in_flight = in_flight
        self.timeline = timeline

    def upload(
        self,
        ttid: str,
        segno: int,
        seg_size: int,
        token: str,
        *,
        started: bool = False,
        chain_until: float | None = None,
        backlog: int = 0,
    ) -> UploadOutcome:
        """Upload one segment and commit it; raises storage errors for retry.

        ``started``: the segment was claimed by this process's last commit a
        moment ago (lease checked and renewed, deadline set), so the
        ``start_upload`` round trip is skipped. Before ``chain_until``
        (monotonic), segments the commit claims are returned in
        ``next_segnos`` for the caller, which holds ``backlog`` more, to
        upload: one, or all of them when every pool thread is busy (sending
        them to the queue would only make them wait there); the others go to
        this timeline's waiting upload tasks or to the queue."""
        claim_ms = claim_timeout_ms(seg_size)
        ttl_ms = self.leases.ttl_ms
        # Fencing, twice: here before any byte is sent, and in the commit's
        # Lua, which refuses a token that went stale during the upload.
        if not started and not self.state.start_upload(
            ttid, token, ttl_ms, segno, int(self.state.clock.now() * 1000) + claim_ms
        ):
            self.leases.forget(ttid, token)
            return UploadOutcome("fenced")
        parsed = TenantTimelineId.parse(ttid)
        name = xlog_file_name(segno, seg_size)
        path = self.disk.segment_path(parsed, segno, seg_size)
        upload_started = time.monotonic()
        header = self.headers.check(ttid, segno, seg_size, path, name)
        digest = self.agreement.verify(ttid, segno, seg_size, path, name)
        # Tracked while the upload runs: the node thread re-sends it if
        # storage heals meanwhile (``Retrying._hedge``).
        with self.in_flight.track(UploadRef(ttid, segno, seg_size, token)):
            result = self.storage.upload_file(
                segment_key(parsed, name), path, seg_size, digest=digest
            )
        result_s = time.monotonic() - upload_started
        UPLOAD_SECONDS.observe(result_s)
        UPLOADED_BYTES.inc(result.size)
        # Only a verified upload is committed, with what was verified (the
        # ledger); backup_lsn moves only over a run of finished segments
        # (ordered commit, in the Lua).
        entry = LedgerEntry(result.size, result.sha256_hex, result.md5_hex, facts_of(header))
        st = self.timeline(ttid)
        try:
            if st is None or st.commit_lsn is None or st.wal_seg_size != seg_size:
                self.state.commit_segment(ttid, token, segno, seg_size, entry)
                claimed: list[int] = []
            else:
                # Commit and refill the window in one round trip.
                _, claimed = self.state.commit_and_claim(
                    ttid,
                    token,
                    segno,
                    seg_size,
                    window=self.window,
                    end_segno=st.commit_lsn.segment_number(seg_size),
                    claim_timeout_ms=claim_ms,
                    lease_ttl_ms=ttl_ms,
                    entry=entry,
                )
        except CommitRefused:
            # The object may be stored, but backup_lsn stays: the new lease
            # holder uploads the segment again (the same bytes: harmless).
            log.warning("Timeline %s: commit of %s refused: lease %s is stale", ttid, name, token)
            self.leases.forget(ttid, token)
            return UploadOutcome("fenced")
        BACKED_UP_SEGMENTS.inc()
        keep = self._next(ttid, token, claimed, seg_size, chain_until, backlog, result_s)
        return UploadOutcome("committed", tuple(keep))

    def _next(
        self,
        ttid: str,
        token: str,
        claimed: list[int],
        seg_size: int,
        chain_until: float | None,
        backlog: int,
        upload_s: float,
    ) -> list[int]:
        """Chaining: which of the segments just ``claimed`` the caller uploads
        next; the others are handed out. A caller with nothing to do waits a
        moment for a segment that another task's commit claims."""
        keep: list[int] = []
        chaining = chain_until is not None and time.monotonic() < chain_until
        if claimed and chaining:
            n = len(claimed) if self.tasks.saturated else 1
            keep, claimed = claimed[:n], claimed[n:]
        self.tasks.hand_out(ttid, token, claimed, seg_size)
        if chain_until is not None and chaining and not keep and not backlog:
            if self.tasks.saturated:
                return keep  # a waiting task would hold a thread others need
            # Our commit did not move the window (an earlier segment is still
            # uploading): the task that commits it will claim the next ones.
            wait_s = min(
                chain_until - time.monotonic(),
                HANDOFF_WAIT_MAX_S,
                max(HANDOFF_WAIT_MIN_S, 2 * upload_s),
            )
            if wait_s > 0:
                handed = self.tasks.take(ttid, token, wait_s)
                keep = [] if handed is None else [handed]
        return keep
