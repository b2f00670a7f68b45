"""The node service: what makes a worker a safekeeper node.

It runs beside the Celery consumer (``NodeStep``) and

- watches WORKDIR: a newly completed segment publishes a heartbeat and
  triggers the timeline's election at once (no waiting for beat);
- publishes a heartbeat (PeerInfo) per timeline every second;
- keeps the upload leases it holds alive, and releases any whose timeline
  elected another node (stepping down within one election interval);
- copies the cluster's backup_lsn into each timeline's state file, so a Redis
  that lost its data recovers it from the nodes, and re-registers its
  timelines with every heartbeat, so such a Redis learns them again;
- publishes the SHA-256 of its copies of segments still to back up, and marks
  its damaged copies (``tasks.backup.copies``), so a segment is archived only when the
  nodes agree on its bytes;
- holds failed uploads until their retry is due or remote storage is seen to
  heal (``tasks.backup.retries``, ``tasks.backup.health``).

The two node tasks (``backup_timeline`` and ``upload_segment``) call
``NodeService.backup`` and ``NodeService.upload``.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

from tasks.backup.copies import Copies
from tasks.backup.elector import Elector
from tasks.backup.health import StorageHealth
from tasks.backup.retries import RetryPark, UploadRef
from tasks.backup.scrub import scrub_timeline
from tasks.config import Settings
from tasks.core.agreement import Decision, judge
from tasks.core.commit import backoff_ms
from tasks.core.election import PeerInfo, is_alive
from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.core.segments import xlog_file_name
from tasks.errors import (
    AgreementPending,
    BrokerUnavailable,
    ChecksumMismatch,
    DamagedCopy,
    NoAgreement,
    SegmentFileError,
    StorageUnavailable,
)
from tasks.logutil import Throttle
from tasks.metrics import (
    BACKED_UP_SEGMENTS,
    BACKUP_ERRORS,
    BACKUP_LAG_BYTES,
    PARKED_UPLOADS,
    UPLOAD_SECONDS,
    UPLOADED_BYTES,
)
from tasks.metrics import serve as serve_metrics
from tasks.state.records import PeerRecord, peer_to_json
from tasks.state.redis import CommitRefused, RedisState
from tasks.state.workdir import TimelineState, Workdir
from tasks.storage.base import RemoteStorage, SegmentDigest, digest_segment_file, segment_key

log = logging.getLogger("walbackup.node")

HEARTBEAT_INTERVAL_S = 1.0
STATE_WRITES_PER_HEARTBEAT = 256
"""At most this many timeline state files (each fsynced, ~1 ms) are updated
with the cluster's backup_lsn per heartbeat round; the rest wait for the next
rounds. A node catching up 10,000 timelines at once otherwise stopped
heartbeating for ~10 s (bench/election.py), past heartbeat_timeout."""

# Sends ``upload_segment(ttid, segno, seg_size, token, attempt)`` to this node's queue.
SendUploadFn = Callable[[str, int, int, str, int], None]

AGREEMENT_POLL_S = 0.5
"""How long an upload waits in its thread for the peers' digests before it
parks and tries again (``AGREEMENT_RETRY_S`` later)."""
AGREEMENT_RETRY_S = 0.1
AGREEMENT_WAIT_S = 10.0
"""After this long, a live peer that still has not published its digest of a
segment is no longer waited for: the segment is judged on the others."""
PEERS_CACHE_S = 0.5
SLOW_UPLOAD_S = 2.0
"""An upload still waiting after this long makes the node probe storage: if
the endpoint is down and comes back, the upload is sent again (``_hedge``)
rather than waiting out a connection the outage may have killed silently."""


CHAIN_BUDGET_S = 1.0
"""How long one ``upload_segment`` task keeps uploading the segments that its
commits claim, before it sends them to the queue instead: a Celery task per
segment costs more CPU than uploading a small segment (bench/overhead.py)."""


HANDOFF_WAIT_MIN_S = 0.05
HANDOFF_WAIT_MAX_S = 0.25
"""An upload task whose commit claimed nothing waits this long (twice its
upload's duration, within these bounds) for a segment that another upload task
of the same timeline claims (see ``_Handoff``): longer waits idle the threads
that the queued tasks of other timelines need."""


class _Handoff:
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


@dataclass(frozen=True, slots=True)
class UploadOutcome:
    status: str  # "committed" | "fenced"
    backup_lsn: Lsn | None = None
    next_segnos: tuple[int, ...] = ()
    """Segments the commit claimed for the caller to upload next (chaining)."""


class NodeService:
    def __init__(
        self,
        settings: Settings,
        state: RedisState,
        storage: RemoteStorage,
        elector: Elector,
        send_upload: SendUploadFn,
    ) -> None:
        assert settings.node_id is not None and settings.workdir is not None
        self.node_id = settings.node_id
        self.settings = settings
        self.state = state
        self.storage = storage
        self.elector = elector
        self.send_upload = send_upload
        # A new owner per process: a restarted node never reuses the lease of
        # its previous life, whose in-flight claims died with it.
        self.owner = f"{self.node_id}.{secrets.token_hex(4)}"
        self.disk = Workdir(settings.workdir, settings.wal_seg_size)
        self.lease_ttl_ms = int(settings.lease_ttl_s * 1000)
        self._leases: dict[str, str] = {}  # ttid -> token held by this process
        self._timelines: dict[str, TimelineState] = {}
        self._handoffs: dict[tuple[str, str], _Handoff] = {}  # (ttid, token) -> waiting tasks
        self._chains = 0  # upload tasks running in this process
        # The threads app.py gives the pool: with as many upload tasks
        # running, a segment sent to the queue only waits there.
        self.upload_slots = settings.parallel_jobs + 4
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.copies = Copies(self.node_id, state)
        self.health = StorageHealth(storage.probe)
        self.retries = RetryPark()
        self._backup_known: dict[str, Lsn | None] = {}  # from the last heartbeat round
        self._peers: dict[str, tuple[float, list[PeerRecord]]] = {}
        self._pending_since: dict[tuple[str, int], float] = {}
        self._uploading: dict[UploadRef, float] = {}  # -> time.monotonic() it started
        self._hedged_for = 0  # health.recoveries already acted on
        self._suspected: set[UploadRef] = set()  # slow uploads that started a probe
        self._redis_failed = False  # a heartbeat round failed since the last success
        self._digest_wake = threading.Event()
        self._digester: threading.Thread | None = None
        self._scrubber: threading.Thread | None = None
        self._throttle = Throttle(30.0)

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        if self.settings.metrics_port is not None:
            serve_metrics(self.settings.metrics_port)
        self._refresh(trigger=False)
        # Known on disk, so known to beat: a restarted cluster (or a Redis that
        # lost its data) picks its timelines up again without new WAL.
        self.state.register(t for t, st in self._timelines.items() if st.commit_lsn is not None)
        self._thread = threading.Thread(
            target=self._run, name=f"walbackup-node-{self.node_id}", daemon=True
        )
        self._thread.start()
        self._digester = threading.Thread(
            target=self._digest_loop, name=f"walbackup-digests-{self.node_id}", daemon=True
        )
        self._digester.start()
        self._scrubber = threading.Thread(
            target=self._scrub_loop, name=f"walbackup-scrub-{self.node_id}", daemon=True
        )
        self._scrubber.start()
        self.health.start()
        log.info(
            "Node %s: serving %s (%d timelines)",
            self.node_id,
            self.settings.workdir,
            len(self._timelines),
        )

    def stop(self) -> None:
        self._stop.set()
        self._digest_wake.set()
        self.health.stop()
        for thread in (self._thread, self._digester, self._scrubber):
            if thread is not None:
                thread.join(timeout=5)
        with self._lock:
            leases = dict(self._leases)
            self._leases.clear()
        for ttid, token in leases.items():
            self._release(ttid, token, "node stopping")

    def _run(self) -> None:
        next_heartbeat = time.monotonic() + HEARTBEAT_INTERVAL_S
        while not self._stop.wait(self._poll_interval()):
            try:
                self._send_parked()
                self._refresh(trigger=True)
                if time.monotonic() >= next_heartbeat:
                    next_heartbeat = time.monotonic() + HEARTBEAT_INTERVAL_S
                    self._heartbeat_all()
                    if self._redis_failed:
                        self._redis_failed = False
                        self.copies.republish()
                        self._digest_wake.set()
                        self._resend_orphans()
            except Exception as exc:  # keep the node alive through Redis restarts and disk hiccups
                if isinstance(exc, redis.RedisError | BrokerUnavailable):
                    self._redis_failed = True
                self._complain("heartbeat/watch round failed", exc)

    def _complain(self, what: str, exc: BaseException, ttid: str = "") -> None:
        """One WARNING line per kind of trouble every 30 s; the traceback at DEBUG."""
        if self._throttle.allow((what, ttid, type(exc))):
            where = f"Timeline {ttid}: node {self.node_id}" if ttid else f"Node {self.node_id}"
            log.warning("%s: %s: %s: %s", where, what, type(exc).__name__, exc)
        log.debug("%s", what, exc_info=exc)

    def _scrub_loop(self) -> None:
        """Check the recent archive of the timelines this node offloads."""
        while not self._stop.wait(self.settings.scrub_interval):
            with self._lock:
                held = list(self._leases)
            for ttid in held:
                st = self._timelines.get(ttid)
                backup_lsn = self._backup_known.get(ttid)
                if st is None or backup_lsn is None:
                    continue
                try:
                    scrub_timeline(self.storage, self.state, st, backup_lsn)
                except Exception as exc:
                    self._complain("archive scrub failed", exc, ttid)

    def _digest_loop(self) -> None:
        """Publish digests of newly complete segments (woken by the watcher)."""
        while not self._stop.is_set():
            self._digest_wake.wait(1.0)
            self._digest_wake.clear()
            try:
                with self._lock:
                    uploading = frozenset(self._leases)
                if self.copies.refresh(dict(self._timelines), dict(self._backup_known), uploading):
                    self._digest_wake.set()  # the budget ran out: go on at once
            except Exception as exc:
                self._complain("publishing segment digests failed", exc)
                self._stop.wait(0.5)

    def _poll_interval(self) -> float:
        # Stat'ing thousands of timeline dirs ten times a second is wasteful.
        return min(1.0, max(0.1, len(self._timelines) / 10_000))

    # -- watching and heartbeats ---------------------------------------------

    def _refresh(self, *, trigger: bool) -> None:
        states, changed = self.disk.scan_changes()
        previous, self._timelines = self._timelines, {str(t): s for t, s in states.items()}
        for gone in previous.keys() - self._timelines.keys():
            self._drop(gone)
        if not changed:
            return
        self._digest_wake.set()
        changed_ids = sorted(str(t) for t in changed)
        self._publish([self._timelines[t] for t in changed_ids])
        if trigger:
            self.state.register(changed_ids)
            # Recovering a lost backup_lsn lists remote storage: beat's rounds
            # do that, never this thread, whose heartbeats must not wait on S3.
            for outcome in self.elector.elect(changed_ids, force_kick=True, recover=False):
                offloader = outcome.election.offloader
                with self._lock:
                    holding = outcome.ttid in self._leases
                if holding and offloader != self.node_id:
                    # Step down now rather than at the next heartbeat, and
                    # kick the new offloader again: its first kick may have
                    # found our lease still held.
                    self._keep_lease(outcome.ttid, offloader)
                    if offloader is not None:
                        self.elector.kick(outcome.ttid, offloader)

    def _drop(self, ttid: str) -> None:
        """The timeline's directory is gone from this node: stop being its peer."""
        log.warning("Timeline %s: node %s no longer holds it on disk", ttid, self.node_id)
        self._backup_known.pop(ttid, None)
        with self._lock:
            token = self._leases.get(ttid)
        if token is not None:
            self._release(ttid, token, "its directory is gone")
        self.state.drop_peer(ttid, self.node_id)

    def _peer(self, st: TimelineState, now: float) -> PeerInfo | None:
        if st.commit_lsn is None or st.local_start_lsn is None:
            return None  # nothing complete on disk: not a candidate yet
        damaged = self.copies.damaged_lsn(st, self._backup_known.get(str(st.ttid)))
        return PeerInfo(
            self.node_id, st.commit_lsn, st.local_start_lsn, st.backup_lsn, now, damaged
        )

    def _publish(self, timelines: list[TimelineState], *, register: bool = False) -> None:
        now = time.time()
        records = []
        for st in timelines:
            peer = self._peer(st, now)
            if peer is not None:
                records.append(
                    (str(st.ttid), peer_to_json(peer, st.wal_seg_size, st.timeline_start_lsn))
                )
        self.state.publish_heartbeats(self.node_id, records, now, register=register)

    def _heartbeat_all(self) -> None:
        timelines = list(self._timelines.values())
        ttids = [str(st.ttid) for st in timelines]
        known = self.state.backup_and_offloader(ttids)
        previous, self._backup_known = (
            self._backup_known,
            {t: b for t, (b, _) in zip(ttids, known, strict=True)},
        )
        if any(previous.get(t) is not None and b is None for t, b in self._backup_known.items()):
            # backup_lsn vanished: Redis lost its data, our digests with it.
            self.copies.republish()
            self._digest_wake.set()
        self._publish(timelines, register=True)
        writes = 0
        for st, (backup_lsn, offloader) in zip(timelines, known, strict=True):
            ttid = str(st.ttid)
            if (
                backup_lsn is not None
                and backup_lsn > st.backup_lsn
                and writes < STATE_WRITES_PER_HEARTBEAT
            ):
                writes += 1
                try:
                    self.disk.record_backup_lsn(st.ttid, backup_lsn)
                except (OSError, SegmentFileError) as exc:
                    # A full or failing disk must not stop heartbeats and
                    # lease renewals: Redis still has backup_lsn.
                    self._complain("cannot record backup_lsn in the state file", exc, ttid)
            if st.commit_lsn is not None:
                lag = st.commit_lsn - min(st.commit_lsn, backup_lsn or st.backup_lsn)
                BACKUP_LAG_BYTES.labels(timeline=ttid).set(lag)
            self._keep_lease(ttid, offloader)

    def _keep_lease(self, ttid: str, offloader: int | None) -> None:
        with self._lock:
            token = self._leases.get(ttid)
        if token is None:
            return
        if offloader != self.node_id:
            self._release(ttid, token, f"node {offloader} elected")
        elif not self.state.renew_lease(ttid, token, self.lease_ttl_ms):
            log.warning("Timeline %s: node %s lost its lease %s", ttid, self.node_id, token)
            self._forget(ttid, token)

    def _release(self, ttid: str, token: str, why: str) -> None:
        self._forget(ttid, token)
        if self.state.release_lease(ttid, token):
            log.info("Timeline %s: node %s stepping down from backup (%s)", ttid, self.node_id, why)

    def _forget(self, ttid: str, token: str) -> None:
        with self._lock:
            if self._leases.get(ttid) == token:
                del self._leases[ttid]

    # -- the two node tasks ----------------------------------------------------

    def backup(self, ttid: str) -> str:
        """Start or refill the upload window of ``ttid`` if this node is its offloader."""
        if not self.settings.backup_enabled:
            return "backup disabled"
        record = self.state.timeline(ttid)
        if record.offloader != self.node_id:
            with self._lock:
                token = self._leases.get(ttid)
            if token is not None:
                self._release(ttid, token, f"node {record.offloader} elected")
            return "not offloader"
        token = self.state.acquire_lease(ttid, self.owner, self.node_id, self.lease_ttl_ms)
        if token is None:
            return "lease busy"
        with self._lock:
            if self._leases.get(ttid) != token:
                log.info("Timeline %s: node %s took the lease %s", ttid, self.node_id, token)
            self._leases[ttid] = token
        st = self._timeline(ttid)
        if st is None:
            return "no local timeline"
        return f"dispatched {self._dispatch(ttid, token, st)}"

    @contextlib.contextmanager
    def chain(self) -> Iterator[None]:
        """Counts an upload task running in this process (see ``saturated``)."""
        with self._lock:
            self._chains += 1
        try:
            yield
        finally:
            with self._lock:
                self._chains -= 1

    @property
    def saturated(self) -> bool:
        """Every pool thread runs an upload task."""
        return self._chains >= self.upload_slots

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
        claim_ms = self._claim_timeout_ms(seg_size)
        if not started and not self.state.start_upload(
            ttid, token, self.lease_ttl_ms, segno, int(time.time() * 1000) + claim_ms
        ):
            self._forget(ttid, token)
            return UploadOutcome("fenced")
        parsed = TenantTimelineId.parse(ttid)
        name = xlog_file_name(segno, seg_size)
        path = self.disk.segment_path(parsed, segno, seg_size)
        upload_started = time.monotonic()
        # With no other live node holding the segment there is nothing to
        # agree with: the backend hashes the bytes as it sends them, in the
        # one read pass an upload needs anyway.
        digest = None
        if self._holders(ttid, segno, seg_size):
            digest = self._read_copy(ttid, segno, path, seg_size)
            self._check_agreement(ttid, segno, seg_size, digest, name)
        ref = UploadRef(ttid, segno, seg_size, token)
        with self._lock:
            self._uploading[ref] = time.monotonic()
        try:
            result = self.storage.upload_file(
                segment_key(parsed, name), path, seg_size, digest=digest
            )
        finally:
            with self._lock:
                self._uploading.pop(ref, None)
        result_s = time.monotonic() - upload_started
        UPLOAD_SECONDS.observe(result_s)
        UPLOADED_BYTES.inc(result.size)
        st = self._timeline(ttid)
        try:
            if st is None or st.commit_lsn is None or st.wal_seg_size != seg_size:
                backup_lsn = self.state.commit_segment(ttid, token, segno, seg_size, result.md5_hex)
                claimed: list[int] = []
            else:
                # Commit and refill the window in one round trip.
                backup_lsn, claimed = self.state.commit_and_claim(
                    ttid,
                    token,
                    segno,
                    seg_size,
                    parallel_jobs=self.settings.parallel_jobs,
                    end_segno=st.commit_lsn.segment_number(seg_size),
                    claim_timeout_ms=claim_ms,
                    lease_ttl_ms=self.lease_ttl_ms,
                    md5_hex=result.md5_hex,
                )
        except CommitRefused:
            log.warning("Timeline %s: commit of %s refused: lease %s is stale", ttid, name, token)
            self._forget(ttid, token)
            return UploadOutcome("fenced")
        BACKED_UP_SEGMENTS.inc()
        keep: list[int] = []
        chaining = chain_until is not None and time.monotonic() < chain_until
        if claimed and chaining:
            n = len(claimed) if self.saturated else 1
            keep, claimed = claimed[:n], claimed[n:]
        self.hand_out(ttid, token, claimed, seg_size)
        if chain_until is not None and chaining and not keep and not backlog and not self.saturated:
            # Our commit did not move the window (an earlier segment is still
            # uploading): the task that commits it will claim the next ones.
            wait_s = min(
                chain_until - time.monotonic(),
                HANDOFF_WAIT_MAX_S,
                max(HANDOFF_WAIT_MIN_S, 2 * result_s),
            )
            if wait_s > 0:
                handed = self._take_handed(ttid, token, wait_s)
                keep = [] if handed is None else [handed]
        return UploadOutcome("committed", backup_lsn, tuple(keep))

    # -- agreement and damage --------------------------------------------------

    def _read_copy(self, ttid: str, segno: int, path: Path, seg_size: int) -> SegmentDigest:
        """Our copy's digests (one read pass); a copy we cannot read is damaged."""
        try:
            return digest_segment_file(path, seg_size, self.storage.needs_md5)
        except (SegmentFileError, OSError) as exc:
            self.copies.mark_damaged(ttid, segno, path, str(exc))
            raise DamagedCopy(f"node {self.node_id}'s copy {path}: {exc}") from exc

    def _check_agreement(
        self, ttid: str, segno: int, seg_size: int, digest: SegmentDigest, name: str
    ) -> None:
        """Return when enough nodes' copies equal ours (SPEC §4 "Agreement");
        raise ``DamagedCopy`` when the others outvote ours, ``NoAgreement`` when
        no bytes have a majority, ``AgreementPending`` while digests are missing."""
        own = digest.sha256.hex()
        deadline = time.monotonic() + AGREEMENT_POLL_S
        if len(self._pending_since) > 10_000:  # entries of uploads that were fenced
            self._pending_since.clear()
        first_pending = self._pending_since.setdefault((ttid, segno), time.monotonic())
        published_own = False
        while True:
            holders = self._holders(ttid, segno, seg_size)
            if holders and not published_own:
                # For the node that may take over this upload (a lone node
                # skips the round trip: nobody would read it).
                path = self.disk.segment_path(TenantTimelineId.parse(ttid), segno, seg_size)
                self.copies.publish_own(ttid, segno, path, own)
                published_own = True
            published = self.state.digests(ttid, segno, holders)
            if time.monotonic() - first_pending > AGREEMENT_WAIT_S:
                holders = [n for n in holders if n in published]
            verdict = judge(own, holders, published, self.settings.agreement_copies)
            if verdict.decision is Decision.UPLOAD:
                self._pending_since.pop((ttid, segno), None)
                if verdict.differing:
                    log.error(
                        "Timeline %s: %s of node(s) %s differs from the copy of node(s) %s; "
                        "archiving the majority's bytes (sha256 %s)",
                        ttid,
                        name,
                        list(verdict.differing),
                        [self.node_id, *verdict.agreeing],
                        own,
                    )
                return
            if verdict.decision is Decision.WAIT and time.monotonic() < deadline:
                time.sleep(0.02)
                continue
            break
        copies = ", ".join(f"node {n}: {published[n][:16]}" for n in sorted(published))
        if verdict.decision is Decision.OUTVOTED:
            self._pending_since.pop((ttid, segno), None)
            reason = (
                f"sha256 {own[:16]}… differs from the copies of nodes "
                f"{list(verdict.differing)} ({copies}), which agree"
            )
            path = self.disk.segment_path(TenantTimelineId.parse(ttid), segno, seg_size)
            self.copies.mark_damaged(ttid, segno, path, reason)
            raise DamagedCopy(f"{name} on node {self.node_id}: {reason}; not uploaded")
        if verdict.decision is Decision.SPLIT:
            raise NoAgreement(
                f"{name}: the nodes' copies differ (node {self.node_id}: {own[:16]}, {copies}) "
                f"and fewer than {verdict.needed} agree; not uploaded"
            )
        raise AgreementPending(f"{name}: waiting for the digests of nodes {list(verdict.pending)}")

    def _holders(self, ttid: str, segno: int, seg_size: int) -> list[int]:
        """Other live nodes that hold ``segno`` complete or are writing it now
        (their digest will come), and do not report it damaged."""
        now = time.time()
        cached = self._peers.get(ttid)
        if cached is None or now - cached[0] > PEERS_CACHE_S:
            cached = (now, self.state.peers(ttid))
            self._peers[ttid] = cached
        start = Lsn.from_segment(segno, 0, seg_size)
        return sorted(
            p.node_id
            for p in (r.peer for r in cached[1])
            if p.node_id != self.node_id
            and is_alive(p, now, self.settings.heartbeat_timeout)
            and p.local_start_lsn <= start <= p.commit_lsn
            and p.damaged_lsn != start
        )

    # -- failures and retries --------------------------------------------------

    def park_claimed(self, ttid: str, token: str, segnos: list[int], seg_size: int) -> None:
        """Segments claimed for a task that failed before starting them: sent
        again by the node thread (as soon as the broker takes messages)."""
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
        if isinstance(exc, DamagedCopy):
            # Our heartbeat now reports the damage: the next election moves
            # the timeline to a node with a good copy, and our retry (if we
            # are still the offloader) sees the file afresh.
            self._heartbeat_soon(upload.ttid)
        self.retries.park(upload, attempt, backoff_ms(attempt) / 1000, self.health.recoveries)
        PARKED_UPLOADS.set(len(self.retries))
        return "retrying"

    def _resend_orphans(self) -> None:
        """After a Redis disruption: segments claimed under our leases that no
        upload of ours holds. Redis may have run the claiming script, or handed
        out an upload message, and died before its reply arrived; without
        this they would wait out the claim timeout (minutes). A claimed
        segment whose message is still queued is uploaded twice: harmless."""
        with self._lock:
            leases = dict(self._leases)
            busy = set(self._uploading)
        busy |= self.retries.uploads()
        for ttid, token in leases.items():
            st = self._timelines.get(ttid)
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

    def _heartbeat_soon(self, ttid: str) -> None:
        st = self._timelines.get(ttid)
        if st is not None:
            with contextlib.suppress(redis.RedisError):
                self._publish([st])

    def _hedge(self) -> None:
        """Storage just recovered: uploads that started before may sit on
        connections the outage killed silently, until their read timeout.
        Send each once more; the conditional write makes the second harmless."""
        now = time.monotonic()
        with self._lock:
            slow = {u for u, t in self._uploading.items() if now - t > SLOW_UPLOAD_S}
            self._suspected &= self._uploading.keys()
            new = slow - self._suspected
            self._suspected |= new
        if new:
            self.health.failed()  # only a probe that fails, then passes, hedges
        recoveries = self.health.recoveries
        if recoveries == self._hedged_for:
            return
        self._hedged_for = recoveries
        with self._lock:
            stuck = [u for u, t in self._uploading.items() if t < self.health.recovered_at]
        for u in stuck:
            log.info(
                "Timeline %s: storage answers again; uploading segno %d once more beside "
                "the attempt still waiting",
                u.ttid,
                u.segno,
            )
            self.send_upload(u.ttid, u.segno, u.seg_size, u.token, 0)

    def _send_parked(self) -> None:
        self._hedge()
        due = self.retries.take_due(self.health.recoveries)
        for i, item in enumerate(due):
            u = item.upload
            try:
                self.send_upload(u.ttid, u.segno, u.seg_size, u.token, item.attempt)
            except (redis.RedisError, BrokerUnavailable, OSError) as exc:
                self.retries.put_back(due[i:])  # the broker is down: keep them
                self._complain("cannot send parked retries", exc)
                break
        if due:
            PARKED_UPLOADS.set(len(self.retries))

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

    def _take_handed(self, ttid: str, token: str, timeout_s: float) -> int | None:
        key = (ttid, token)
        with self._lock:
            handoff = self._handoffs.setdefault(key, _Handoff())
        try:
            return handoff.take(timeout_s)
        finally:
            with self._lock:
                if handoff.idle and self._handoffs.get(key) is handoff:
                    del self._handoffs[key]

    def _timeline(self, ttid: str) -> TimelineState | None:
        st = self._timelines.get(ttid)
        if st is None:
            st = self.disk.scan_timeline(TenantTimelineId.parse(ttid))
        return st

    def _claim_timeout_ms(self, seg_size: int) -> int:
        # Long enough for a slow upload of the segment; a claim older than
        # this is presumed lost (its message vanished) and handed out again.
        return max(120_000, seg_size // (1 << 20) * 2000)

    def _dispatch(self, ttid: str, token: str, st: TimelineState) -> int:
        if st.commit_lsn is None:
            return 0
        end_segno = st.commit_lsn.segment_number(st.wal_seg_size)
        claimed = self.state.claim_segments(
            ttid,
            token,
            self.settings.parallel_jobs,
            end_segno,
            st.wal_seg_size,
            self._claim_timeout_ms(st.wal_seg_size),
        )
        if claimed is None:
            self._forget(ttid, token)
            return 0
        self.hand_out(ttid, token, claimed, st.wal_seg_size)
        return len(claimed)
