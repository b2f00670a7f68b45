"""The node service: wires a safekeeper node's parts together and runs their threads.

It runs beside the Celery consumer (``tasks.steps.NodeStep``). Its watcher
(``_run``), every 0.1-1 s, scans WORKDIR (``tasks.state.scanner``): a new
complete segment publishes a heartbeat and starts its upload (``.new_wal``);
a timeline whose directory went, or cannot be read, is dropped; due parked
retries are sent (``.retrying``). Its heartbeat thread
(``_beat``), every ``HEARTBEAT_INTERVAL_S``: a heartbeat round (``.heartbeats``),
which also keeps its leases alive and releases those whose timeline elected
another node (``.leases``); then, with ``WALBACKUP_REMOVE_WAL``, old WAL
below the removal horizon goes (``.removal``). Two more threads publish its copies' digests
(``tasks.backup.copies``) and keep the archive it offloads (``.keeper``).

The node tasks (``tasks.jobs``) call ``backup``, ``chain``, ``upload``,
``hand_out``, ``park_claimed`` and ``failed``, which go to ``Leases``,
``UploadTasks``, ``Uploader`` (whose docstring follows a segment's whole trip)
and ``Retrying``. The storage is used only once ``ArchiveIdentity`` confirmed
it is the cluster's archive (``tasks.archive.guarded``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator

import redis

from tasks import memory
from tasks.archive.guarded import GuardedStorage
from tasks.archive.identity import ArchiveIdentity
from tasks.archive.scrubber import HealElsewhere
from tasks.backup.agreement import Agreement
from tasks.backup.blocked import BlockedRemoval
from tasks.backup.copies import Copies
from tasks.backup.elector import Elector
from tasks.backup.handoff import SendBatchFn, SendUploadFn, UploadTasks
from tasks.backup.health import StorageHealth
from tasks.backup.heartbeats import HEARTBEAT_INTERVAL_S, ROUND_GAP_S, Heartbeats
from tasks.backup.keeper import ArchiveKeeper
from tasks.backup.leases import Dispatched, Leases, Skipped
from tasks.backup.new_wal import NewWal
from tasks.backup.partial import PartialBackup
from tasks.backup.removal import WalRemoval
from tasks.backup.retries import RetryPark, UploadRef
from tasks.backup.retrying import InFlight, Retrying
from tasks.backup.uploader import Uploader
from tasks.backup.walheader import HeaderCheck
from tasks.config import Settings
from tasks.core.ids import TenantTimelineId
from tasks.errors import BrokerUnavailable, InvalidInput
from tasks.logutil import Complaints
from tasks.metrics import serve as serve_metrics
from tasks.state.redis import RedisState
from tasks.state.timeline_state import TimelineState
from tasks.state.workdir import Workdir
from tasks.storage.base import RemoteStorage

log = logging.getLogger("walbackup.node")


class NodeService:
    """``_timelines`` (the last WORKDIR scan) is replaced whole by the
    watcher; other threads read whichever dict is current."""

    def __init__(
        self,
        settings: Settings,
        state: RedisState,
        storage: RemoteStorage,
        elector: Elector,
        send_upload: SendUploadFn,
        send_batch: SendBatchFn,
        heal_elsewhere: HealElsewhere = lambda ttid, segno, seg_size: False,
    ) -> None:
        assert settings.node_id is not None and settings.workdir is not None
        self.node_id = node_id = settings.node_id
        self.settings = settings
        self.state = state
        self._stop = threading.Event()
        self.identity = ArchiveIdentity.for_node(settings, storage, state, self._stop)
        self.storage = storage = GuardedStorage(storage, self.identity)
        self.elector = elector
        self.disk = Workdir(settings.workdir, settings.wal_seg_size)
        self._timelines: dict[str, TimelineState] = {}
        self._scanned: object = None  # the scan that made _timelines
        self._threads: list[threading.Thread] = []
        self._digest_wake = threading.Event()
        self._redis_failed = False  # a heartbeat round failed since the last success
        self._complain = Complaints(log, node_id)
        self.copies = Copies(node_id, state, header_check=settings.wal_header_check)
        self.health = StorageHealth(storage.probe)
        # As many threads as app.py gives the pool: with as many upload tasks
        # running, a segment sent to the queue only waits there.
        self.tasks = UploadTasks(send_upload, send_batch, slots=settings.parallel_jobs + 4)
        self.leases = Leases(settings, state, self.tasks, self._timeline, elector.kick)
        # One voice for "removal is blocked", the state writes' and removal's own.
        blocked = BlockedRemoval(node_id, state) if settings.remove_wal else None
        self.heartbeats = Heartbeats(
            node_id, state, self.disk, self.copies, self.identity.ours,
            keep_leases=self.leases.keep, data_lost=self._republish_digests,
            complain=self._complain, heartbeat_timeout_s=settings.heartbeat_timeout,
            kick_interval_ms=settings.kick_interval_ms,
            state_file_interval_s=settings.state_file_interval, blocked=blocked,
        )  # fmt: skip
        self.new_wal = NewWal(
            node_id, state, elector, self.leases, self.heartbeats, settings.heartbeat_timeout
        )
        in_flight = InFlight()
        self.retrying = Retrying(
            node_id, state, self.disk, self.copies, send_upload, in_flight, health=self.health,
            retries=RetryPark(), publish_soon=self._heartbeat_soon, complain=self._complain,
        )  # fmt: skip
        self.uploader = Uploader(
            window=settings.window, state=state, storage=storage, disk=self.disk,
            leases=self.leases, tasks=self.tasks, in_flight=in_flight, timeline=self._timeline,
            agreement=Agreement(settings, state, self.disk, self.copies, lambda: storage.needs_md5),
            headers=HeaderCheck(settings, state, self.copies, self._timeline),
        )  # fmt: skip
        # upload_segment's step: upload one segment, commit it, chain.
        self.upload = self.uploader.upload
        # Quiet timelines' .partial tails, from a thread of their own.
        self.partials = PartialBackup(
            settings, state, storage, self.disk, self.leases, lambda: self._timelines,
            lambda ttid: self.heartbeats.backup_known.get(ttid), self._complain,
        )  # fmt: skip
        self.removal = WalRemoval.if_on(
            settings, state, self.disk, self.copies, self._complain, blocked
        )
        self.keeper = ArchiveKeeper(
            settings, state, storage, self.disk, lambda: self._timelines,
            lambda: self.heartbeats.offloaded, heal_elsewhere, self._complain,
        )  # fmt: skip

    # -- what the node tasks call (tasks.jobs) ---------------------------------

    def backup(self, ttid: str) -> Skipped | Dispatched:
        """``backup_timeline``: take the lease and fill the upload window."""
        return self.leases.backup(ttid)

    def chain(self) -> contextlib.AbstractContextManager[None]:
        """Around an ``upload_segment`` task: counts it (``UploadTasks.saturated``)."""
        return self.tasks.running()

    def hand_out(self, ttid: str, token: str, segnos: list[int], seg_size: int) -> None:
        self.tasks.hand_out(ttid, token, segnos, seg_size)

    def park_claimed(self, ttid: str, token: str, segnos: list[int], seg_size: int) -> None:
        self.retrying.park_claimed(ttid, token, segnos, seg_size)

    def failed(self, upload: UploadRef, attempt: int, exc: Exception) -> str:
        return self.retrying.failed(upload, attempt, exc)

    def scrub(self, ttids: list[str]) -> int:
        """``scrub_timelines``: scrub those of ``ttids`` this node offloads, soon."""
        return self.keeper.request(ttids)

    def heal(self, ttid: str, segno: int, seg_size: int) -> bool:
        """``heal_segment``: upload our copy again at another offloader's request."""
        return self.keeper.heal(ttid, segno, seg_size)

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        if self._threads:
            return
        if (port := self.settings.metrics_port) is not None:
            try:
                serve_metrics(port, self.settings.wal_seg_size)
            except OSError as exc:  # in use: another node on this host?
                problem = exc.strerror or exc
                raise InvalidInput(f"WALBACKUP_METRICS_PORT {port}: {problem}") from None
        try:
            self._refresh(trigger=False)
        except OSError as exc:  # the watcher's first pass scans everything again
            self._complain("first WORKDIR scan failed", exc)
        # Known on disk, so known to beat: a restarted cluster (or a Redis that
        # lost its data) picks its timelines up again without new WAL.
        self.state.register(t for t, st in self._timelines.items() if st.commit_lsn is not None)
        self.identity.start(f"walbackup-identity-{self.node_id}")  # before the heartbeats
        for target, what in ((self._run, "node"), (self._beat, "heartbeat"),
                             (self._digest_loop, "digests")):  # fmt: skip
            self._threads.append(self._spawn(target, what))
        self.keeper.start(f"walbackup-archive-{self.node_id}")
        self.health.start()
        self.partials.start(f"walbackup-partial-{self.node_id}")
        log.info("Node %s: serving %s (%d timelines)", self.node_id, self.settings.workdir,
                 len(self._timelines))  # fmt: skip

    def _spawn(self, target: Callable[[], None], what: str) -> threading.Thread:
        name = f"walbackup-{what}-{self.node_id}"
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()
        self._digest_wake.set()
        self.health.stop()
        self.partials.stop()
        self.keeper.stop()
        for thread in self._threads:
            thread.join(timeout=5)
        self.leases.release_all("node stopping")
        self.disk.close()

    def _run(self) -> None:
        """The watcher: WORKDIR scans, new WAL, parked retries."""
        while not self._stop.wait(self._poll_interval()):
            with self._round("watch round"):
                self.retrying.send_parked()
                self._refresh(trigger=True)

    def _beat(self) -> None:
        """Heartbeats and lease upkeep, in a thread of their own, at a fixed rate:
        a scan of 10,000 dirs before them, or 1 s of sleep after a 3 s round,
        made the elections count a busy node dead."""
        due = time.monotonic()
        while True:
            due = max(due + HEARTBEAT_INTERVAL_S, time.monotonic() + ROUND_GAP_S)
            if self._stop.wait(due - time.monotonic()):
                return
            with self._round("heartbeat round"):
                self.heartbeats.round(list(self._timelines.values()))
                if self.removal is not None and self.identity.ours():  # else not our archive's
                    self.removal.round(self._timelines, self.heartbeats.facts)
                if self._redis_failed:
                    self._redis_failed = False
                    self._republish_digests()
                    self.heartbeats.rewrite_all()  # records written meanwhile may be lost
                    self.retrying.resend_orphans(self.leases.held(), self._timelines)
            memory.trim()

    @contextlib.contextmanager
    def _round(self, what: str) -> Iterator[None]:
        """Keep the node alive through Redis restarts and disk hiccups."""
        try:
            yield
        except Exception as exc:
            if isinstance(exc, redis.RedisError | BrokerUnavailable):
                self._redis_failed = True
            self._complain(f"{what} failed", exc)

    def _poll_interval(self) -> float:
        # Watched, a pass reads inotify's queue; else stat'ing 10,000 dirs 10 times a second.
        return 0.1 if self.disk.watching else min(1.0, max(0.1, len(self._timelines) / 10_000))

    def _digest_loop(self) -> None:
        """Publish digests of newly complete segments (woken by the watcher)."""
        while not self._stop.is_set():
            self._digest_wake.wait(1.0)
            self._digest_wake.clear()
            try:
                backup = dict(self.heartbeats.backup_known)
                if self.copies.refresh(dict(self._timelines), backup, self.leases):
                    self._digest_wake.set()  # the budget ran out: go on at once
            except Exception as exc:
                self._complain("publishing segment digests failed", exc)
                self._stop.wait(0.5)

    def _republish_digests(self) -> None:
        """Redis may have lost our digests: publish them all again, now."""
        self.copies.republish()
        self._digest_wake.set()

    # -- watching WORKDIR and heartbeats -----------------------------------------

    def _refresh(self, *, trigger: bool) -> None:
        states, changed = self.disk.scan_changes()
        if states is not self._scanned:  # else nothing changed on disk
            self._scanned = states
            previous, self._timelines = self._timelines, {str(t): s for t, s in states.items()}
            for gone in previous.keys() - self._timelines.keys():
                self._drop(gone)
        changed_ids = sorted(str(t) for t in changed)
        if changed_ids:
            self._digest_wake.set()
            self.heartbeats.publish([self._timelines[t] for t in changed_ids])
        if trigger:  # also takes up what an earlier pass left waiting
            self.new_wal.completed(changed_ids)

    def _drop(self, ttid: str) -> None:
        """The timeline's directory is gone from this node, or unreadable: stop being its peer."""
        log.warning("Timeline %s: node %s no longer holds it or cannot read it", ttid, self.node_id)
        self.heartbeats.forget(ttid)
        self.new_wal.forget(ttid)
        token = self.leases.token(ttid)
        if token is not None:
            self.leases.release(ttid, token, "its directory is gone or unreadable")
        self.state.drop_peer(ttid, self.node_id)

    def _heartbeat_soon(self, ttid: str) -> None:
        self.heartbeats.publish_soon(self._timelines.get(ttid))

    def _timeline(self, ttid: str) -> TimelineState | None:
        """The last scan's view of ``ttid``, else a scan of it now."""
        return self._timelines.get(ttid) or self.disk.scan_timeline(TenantTimelineId.parse(ttid))
