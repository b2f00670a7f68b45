"""Whether this node's storage is the cluster's archive, checked against its marker.

``ArchiveIdentity.require`` runs before the node touches its storage
(``tasks.archive.guarded.GuardedStorage``): the first call checks, and then
again every ``CHECK_S`` (``RECHECK_S`` while the answer is no, or could not be
had). A check is one GET of the marker object ``MARKER_KEY`` at the storage's
root and three small Redis commands; ``tasks.core.archive_identity.decide``
says what they mean. Until a check confirms the storage, the node uploads,
scrubs and heals nothing (``ForeignArchive``), logs an ERROR, and its
heartbeats report its copies unusable, so the elections pass it over while
another node's storage is the archive.

A bucket emptied or recreated loses its marker: every node then finds it
missing, and once no node has found it for ``SEEN_FRESH_S``, the next check
writes it again with Redis's id (until then the nodes wait, loudly).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis

from tasks.config import Settings
from tasks.core.archive_identity import Action, decide, has_majority
from tasks.errors import ForeignArchive, NotFound, WalBackupError
from tasks.fsutil import atomic_write
from tasks.logutil import Throttle
from tasks.state.redis import RedisState
from tasks.storage.base import RemoteStorage

log = logging.getLogger("walbackup.node")

MARKER_KEY = "walbackup-archive-id"
CHECK_S = 60.0
RECHECK_S = 5.0
SEEN_FRESH_S = 3 * CHECK_S
"""How recently another node must have found the marker for its absence
from this node's storage to say this storage is not theirs."""
NOT_CHECKED = "not yet checked that this node's storage is the cluster's archive"
UNREADABLE = "(an unreadable marker"
MEMORY_NAME = ".walbackup-archive"
"""In WORKDIR: the archive id this node last knew, and when other nodes last
found it (``Memory``)."""


@dataclass
class Memory:
    """What this node knew at its last check, kept in its WORKDIR: Redis
    losing its data (or the node restarting meanwhile) must not let a node
    whose storage lacks the marker make a new id, or write the marker, as if
    the cluster were new or its bucket emptied."""

    path: Path | None
    archive_id: str | None = None
    others_found_at: float = 0.0
    _written: float = 0.0

    @classmethod
    def load(cls, path: Path | None) -> Memory:
        try:
            raw = json.loads(path.read_bytes()) if path is not None else {}
            return cls(path, raw.get("archive_id") or None, float(raw.get("others_found_at", 0)))
        except (OSError, ValueError, TypeError, AttributeError):
            return cls(path)

    def remember(self, archive_id: str | None, others_found_at: float) -> None:
        """Kept in memory at once; on disk when the id changes, or the time
        moved a minute on since it was last written."""
        if archive_id is None:
            return
        write = archive_id != self.archive_id or others_found_at - self._written >= CHECK_S
        self.archive_id, self.others_found_at = archive_id, others_found_at
        if self.path is None or not write:
            return
        self._written = others_found_at
        try:
            with atomic_write(self.path) as out:
                out.write(json.dumps({"archive_id": archive_id,
                                      "others_found_at": others_found_at}).encode())  # fmt: skip
        except OSError as exc:  # a full WORKDIR: remembered in memory meanwhile
            log.warning("cannot write %s: %s", self.path, exc)


class ArchiveIdentity:
    """Thread-safe: one check at a time, the verdict read without a lock."""

    def __init__(
        self,
        node_id: int,
        storage: RemoteStorage,
        state: RedisState,
        stop: threading.Event,
        *,
        fingerprint: str = "",
        memory: Memory | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node_id = node_id
        self.storage = storage
        self.state = state
        self.fingerprint = fingerprint
        """Of the storage settings: a node with others than most nodes' never
        writes a marker."""
        self._memory = memory if memory is not None else Memory(None)
        self._stop = stop
        self._clock = clock
        self._lock = threading.Lock()
        self._due = 0.0
        self.problem: str | None = NOT_CHECKED
        """``None`` once a check confirmed the storage; else what is wrong."""
        self._loud = Throttle(60.0)

    @classmethod
    def for_node(
        cls, settings: Settings, storage: RemoteStorage, state: RedisState, stop: threading.Event
    ) -> ArchiveIdentity:
        assert settings.node_id is not None and settings.workdir is not None
        where = f"{settings.effective_remote_storage}|{settings.s3_endpoint_url or ''}"
        fingerprint = hashlib.sha256(where.encode()).hexdigest()[:16]
        memory = Memory.load(settings.workdir / MEMORY_NAME)
        return cls(settings.node_id, storage, state, stop, fingerprint=fingerprint, memory=memory)

    def start(self, name: str) -> None:
        """Check in a thread of its own whenever due, until ``stop`` is set: a
        node that was never elected would otherwise never check, and stay
        passed over."""
        threading.Thread(target=self._loop, name=name, daemon=True).start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.check()
            except Exception as exc:  # storage or Redis down: checked again in RECHECK_S
                if self._loud.allow("failed"):
                    log.warning("Node %s: cannot check that its storage %s is the archive: %s",
                                self.node_id, self.storage.url, exc)  # fmt: skip
            self._stop.wait(max(0.05, self._due - self._clock()))

    def ours(self) -> bool:
        """The last check's verdict (no I/O): the heartbeats' question."""
        return self.problem is None

    def require(self) -> None:
        """Return if this node's storage is the archive, else raise
        ``ForeignArchive``; checks when due, and every time until a check has
        answered. A check that fails (storage or Redis unreachable) keeps a
        verdict it had and raises its error otherwise (the caller's own
        failure: a missing bucket, an outage the prober watches)."""
        if self.problem == NOT_CHECKED or self._clock() >= self._due:
            try:
                self.check()
            except (WalBackupError, redis.RedisError, OSError):
                if self.problem is not None:
                    raise
        if self.problem is not None:
            raise ForeignArchive(f"node {self.node_id}: {self.problem}")

    def check(self) -> None:
        with self._lock:
            if self._clock() < self._due and self.problem != NOT_CHECKED:
                return  # another thread just checked
            self._due = self._clock() + RECHECK_S  # also when this check raises
            problem = self._check()
            if problem is None and self.problem is not None and self.problem != NOT_CHECKED:
                log.warning("Node %s: its storage %s is the archive again", self.node_id,
                            self.storage.url)  # fmt: skip
            self.problem = problem
            if problem is None:
                self._due = self._clock() + CHECK_S
            elif self._loud.allow(None):
                log.error("Node %s: %s (%s); it uploads nothing there until this is fixed",
                          self.node_id, problem, self.storage.url)  # fmt: skip

    def _check(self) -> str | None:
        now = self.state.clock.now()
        cluster = self.state.archive_id()
        if cluster is None and self._memory.archive_id is not None:
            # Redis lost its data: the id this node knew, never a new one.
            cluster = self.state.claim_archive_id(self._memory.archive_id)
        marker = self._marker()
        if marker is not None and marker.startswith(UNREADABLE):
            return self._reported(now, f"{marker} in this node's storage: not the archive's")
        reports = {n: r for n, r in self.state.archive_reports().items() if n != self.node_id}
        fresh = {n: r for n, r in reports.items() if now - float(r.get("ts", 0)) < SEEN_FRESH_S}
        seen = sorted(n for n, r in fresh.items() if r.get("found"))
        # When others last found it, remembered: Redis may have lost their reports.
        others_found_at = max([self._memory.others_found_at,
                               *(float(fresh[n]["ts"]) for n in seen)])  # fmt: skip
        lately = now - others_found_at < SEEN_FRESH_S
        majority = has_majority(self.fingerprint, [str(r.get("fp")) for r in fresh.values()])
        decision = decide(cluster, marker, seen, majority=majority, seen_lately=lately)
        if decision.action in (Action.CREATE, Action.RESTORE):
            self.storage.create_bytes(MARKER_KEY, self._body(cluster or uuid.uuid4().hex))
            marker = self._marker()  # ours, or the one a racing node wrote first
            if cluster is None:
                log.info("Node %s: the archive at %s is %s", self.node_id, self.storage.url,
                         marker)  # fmt: skip
            else:
                log.warning("Node %s: the archive's marker was missing from %s (the bucket "
                            "emptied or recreated?); written again", self.node_id,
                            self.storage.url)  # fmt: skip
        if decision.action in (Action.ADOPT, Action.CREATE, Action.RESTORE) and marker:
            cluster = self.state.claim_archive_id(marker)
            decision = decide(cluster, marker, seen, majority=majority, seen_lately=lately)
        self._memory.remember(cluster, others_found_at)
        return self._reported(now, None if decision.action is Action.OURS else decision.problem)

    def _reported(self, now: float, problem: str | None) -> str | None:
        """``problem`` (``None``: this storage is the archive), told the other nodes."""
        found = problem is None
        self.state.report_archive(self.node_id, {"ts": now, "fp": self.fingerprint, "found": found})
        return problem

    def _marker(self) -> str | None:
        """The id the storage's marker holds (``None``: no marker)."""
        try:
            raw = self.storage.read_bytes(MARKER_KEY)
        except NotFound:
            return None
        try:
            archive_id = json.loads(raw)["archive_id"]
        except (ValueError, TypeError, KeyError):
            archive_id = None
        if not isinstance(archive_id, str) or not archive_id:
            return f"{UNREADABLE} {MARKER_KEY}: {raw[:64]!r})"
        return archive_id

    def _body(self, archive_id: str) -> bytes:
        return json.dumps(
            {"archive_id": archive_id, "written_by_node": self.node_id, "written_at": time.time()}
        ).encode()
