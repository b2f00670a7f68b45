"""Heartbeats: this node's PeerInfo out to Redis; backup_lsn and offloader back.

Every ``HEARTBEAT_INTERVAL_S`` the node's heartbeat thread calls ``round``: one PeerInfo
per timeline (SPEC §4), published with the timeline's registration, so a Redis
that lost its data learns the timelines again. The PeerInfo's time is the
beat's score in a ZSET; the rest of it, its record, is written only when it
changed (``tasks.state.beats``). What comes back per timeline:

- backup_lsn, copied into the timeline's state file, so a Redis that lost its
  data recovers it from the nodes (``tasks.backup.state_writes``: a bounded
  number a round, each timeline at most every
  ``WALBACKUP_STATE_FILE_INTERVAL``), and kept in ``backup_known`` for the
  digester, the scrubber and WAL removal;
- the scrubber's verified_lsn, for WAL removal: every fact read is kept in
  ``facts``;
- the system identifier of the timeline's WAL (``tasks.backup.walheader``),
  copied into the state file likewise; a Redis that has none is given the
  state file's;
- the offloader, for lease upkeep (``tasks.backup.leases.Leases.keep``, one
  round trip for all), and kept in ``offloaders`` for new WAL
  (``tasks.backup.new_wal``), with every node's last heartbeat (``node_seen``);
- both, and every node's last heartbeat, for the cluster's gauges
  (``tasks.backup.gauges``).
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable

import redis

from tasks.backup.blocked import BlockedRemoval
from tasks.backup.copies import Copies
from tasks.backup.gaps import MissingSegments
from tasks.backup.gauges import ClusterGauges
from tasks.backup.misconfig import SetupErrors
from tasks.backup.state_writes import StateWrites
from tasks.core.election import PeerInfo
from tasks.core.lsn import Lsn
from tasks.logutil import Complaints, Throttle
from tasks.metrics import LEFT_OUT_TIMELINES
from tasks.state.beats import PIPELINE_CHUNK
from tasks.state.records import ClusterFacts, peer_to_json
from tasks.state.redis import RedisState
from tasks.state.timeline_state import TimelineState
from tasks.state.workdir import Workdir

log = logging.getLogger("walbackup.node")

HEARTBEAT_INTERVAL_S = 1.0
ROUND_GAP_S = 0.05
"""The least pause between two rounds, when a round outlasts the interval:
the node's other threads get the GIL for a moment."""
REWRITE_S = 60.0
"""A peer record whose facts did not change is written again after
0.5-1.5 x this long (spread) all the same: a heartbeat round otherwise
writes only the records that changed (one HSET each; the beats are one ZADD
per 1,000 timelines), and a record deleted by hand would stay gone."""


class Heartbeats:
    """``round`` runs in the node's heartbeat thread only; ``publish`` also in
    its watcher (new WAL) and upload threads (``publish_soon``), ``forget`` in
    the watcher. ``backup_known``, ``facts``, ``offloaders`` and ``node_seen``
    are replaced whole each round, so readers in other threads see one
    round's dict or the next."""

    def __init__(
        self,
        node_id: int,
        state: RedisState,
        disk: Workdir,
        copies: Copies,
        storage_ours: Callable[[], bool],
        *,
        keep_leases: Callable[[dict[str, int | None]], None],
        data_lost: Callable[[], None],
        complain: Complaints,
        heartbeat_timeout_s: float,
        kick_interval_ms: int = 0,
        state_file_interval_s: float = 0.0,
        blocked: BlockedRemoval | None = None,
    ) -> None:
        self.node_id = node_id
        self.kick_interval_ms = kick_interval_ms
        """How long a heartbeat with new WAL of a timeline this node offloads
        holds back beat's kick of it (``publish_heartbeats``'s ``hold_kicks``)."""
        self.state = state
        self.disk = disk
        self.copies = copies
        self.storage_ours = storage_ours
        """Whether this node's storage is the archive (``tasks.archive.identity``):
        while not, its heartbeats report every copy unusable, and the
        elections pass it over for a node whose storage is."""
        self.keep_leases = keep_leases
        self.data_lost = data_lost
        """Called when a timeline's backup_lsn vanished from Redis."""
        self.complain = complain
        self.backup_known: dict[str, Lsn | None] = {}
        """The cluster's backup_lsn per timeline, as of the last round."""
        self.facts: dict[str, ClusterFacts] = {}
        """What the last round read back of each timeline (``backup_known``
        and ``offloaders`` are views of it)."""
        self.setup_errors = SetupErrors(node_id, state)
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self._slow = Throttle(30.0)
        self.offloaded: dict[str, Lsn] = {}
        """The timelines whose elected offloader is this node (with a
        backup_lsn), as of the last round."""
        self.offloaders: dict[str, int | None] = {}
        """Each timeline's elected offloader, as of the last round."""
        self.node_seen: dict[int, float] = {}
        """Each node's last heartbeat (wall clock), as of the last round."""
        self.gauges = ClusterGauges()
        self.state_writes = StateWrites(disk, complain, state_file_interval_s, blocked)
        self.gaps = MissingSegments(node_id, state)
        self.round_started: float | None = None
        """The last whole round (every timeline published) told the disk as
        the WORKDIR scans found it from this time (wall clock) on."""
        self._publish_lock = threading.Lock()
        self._published: dict[str, tuple[tuple[object, ...], str, float]] = {}
        """Per timeline, what the last record written to Redis said (but its
        time), that record, and when to write it again all the same: a
        heartbeat that says something new writes it and marks the timeline
        for election; the others are a beat only (``publish_heartbeats``)."""

    def publish(self, timelines: list[TimelineState], *, register: bool = False) -> None:
        """One heartbeat for each of ``timelines`` that has complete WAL on
        disk, ``PIPELINE_CHUNK`` at a time, each chunk timestamped when it is
        built: at 10,000 timelines a round's last chunk went out seconds
        after its first, carrying the older time."""
        for start in range(0, max(1, len(timelines)), PIPELINE_CHUNK):  # and the node's, at 0
            self._publish(timelines[start : start + PIPELINE_CHUNK], register)

    def rewrite_all(self) -> None:
        """Every record is written with its next beat (Redis may have lost them)."""
        with self._publish_lock:
            self._published.clear()

    def _publish(self, timelines: list[TimelineState], register: bool) -> None:
        # One publish at a time (round, watcher, uploads): a slower one's
        # older facts must not land after a newer one's and then count as
        # written, which left the stale record until its rewrite.
        with self._publish_lock:
            self._publish_locked(timelines, register)

    def _publish_locked(self, timelines: list[TimelineState], register: bool) -> None:
        now = self.state.clock.now()
        records = []
        changed: set[str] = set()
        grown: set[str] = set()
        written: dict[str, tuple[tuple[object, ...], str, float]] = {}
        for st in timelines:
            peer = self._peer(st, now)
            if peer is None:
                continue
            ttid = str(st.ttid)
            facts = (
                peer.commit_lsn,
                peer.local_start_lsn,
                peer.backup_lsn,
                peer.damaged_lsn,
                st.wal_seg_size,
                st.timeline_start_lsn,
            )
            last = self._published.get(ttid)
            if last is not None and last[0] == facts and now < last[2]:
                records.append((ttid, last[1]))  # the beat alone: its time
                continue
            payload = peer_to_json(peer, st.wal_seg_size, st.timeline_start_lsn)
            records.append((ttid, payload))
            written[ttid] = (facts, payload, now + REWRITE_S * random.uniform(0.5, 1.5))
            if last is None or last[0] != facts:
                changed.add(ttid)
            if (last is None or last[0][0] != peer.commit_lsn) and self.offloaders.get(
                ttid
            ) == self.node_id:
                grown.add(ttid)  # new WAL this node takes up itself (NewWal)
        self.state.publish_heartbeats(
            self.node_id,
            records,
            now,
            register=register,
            changed=changed,
            write=written.keys(),
            round_started=self.round_started,
            hold_kicks=grown,
            hold_ms=self.kick_interval_ms,
        )
        self._published.update(written)

    def publish_soon(self, st: TimelineState | None) -> None:
        """Now rather than at the next round; a Redis error waits for the round."""
        if st is not None:
            with contextlib.suppress(redis.RedisError):
                self.publish([st])

    def _peer(self, st: TimelineState, now: float) -> PeerInfo | None:
        if st.commit_lsn is None or st.local_start_lsn is None:
            return None  # nothing complete on disk: not a candidate yet
        damaged = self.copies.damaged_lsn(st, self.backup_known.get(str(st.ttid)))
        if damaged is None and not self.storage_ours():
            damaged = st.local_start_lsn
        return PeerInfo(
            self.node_id, st.commit_lsn, st.local_start_lsn, st.backup_lsn, now, damaged
        )

    def forget(self, ttid: str) -> None:
        """The timeline is gone from this node."""
        self.backup_known.pop(ttid, None)
        self.facts.pop(ttid, None)
        self.offloaded.pop(ttid, None)
        self.offloaders.pop(ttid, None)
        self.gauges.forget(ttid)
        self.state_writes.forget(ttid)
        self.gaps.forget(ttid)
        with self._publish_lock:
            self._published.pop(ttid, None)

    def round(self, timelines: list[TimelineState]) -> None:
        """One round, and a WARNING when it took over half of
        ``heartbeat_timeout``: the other nodes' elections count a node whose
        heartbeats are that late as dead."""
        started = time.monotonic()
        self._round(timelines)
        took = time.monotonic() - started
        if took > self.heartbeat_timeout_s / 2 and self._slow.allow(None):
            log.warning(
                "Node %s: a heartbeat round took %.1f s for %d timelines; after %.0f s "
                "without one the elections count this node dead (WALBACKUP_HEARTBEAT_TIMEOUT)",
                self.node_id, took, len(timelines), self.heartbeat_timeout_s,
            )  # fmt: skip

    def _round(self, timelines: list[TimelineState]) -> None:
        """Learn backup_lsn, offloader and system id, publish, lease upkeep;
        then per timeline: state file, gauges; then give Redis back the
        system ids it lacks; last, the nodes' heartbeats gauge."""
        # What this round publishes is what a recent WORKDIR scan found: the
        # round covers what was on disk when the scan before the last began
        # (the last may have ended after ``timelines`` were taken).
        clock = self.state.clock
        covers = min(clock.now(), clock.from_local(self.disk.scans_began[0]))
        ttids = [str(st.ttid) for st in timelines]
        known = self.state.cluster_facts(ttids)
        previous, self.backup_known = (
            self.backup_known,
            {t: facts.backup_lsn for t, facts in zip(ttids, known, strict=True)},
        )
        self.facts = dict(zip(ttids, known, strict=True))
        self.offloaders = {t: facts.offloader for t, facts in zip(ttids, known, strict=True)}
        self.offloaded = {
            t: facts.backup_lsn
            for t, facts in zip(ttids, known, strict=True)
            if facts.offloader == self.node_id and facts.backup_lsn is not None
        }
        if any(previous.get(t) is not None and b is None for t, b in self.backup_known.items()):
            # backup_lsn vanished: Redis lost its data, our digests and records with it.
            self.data_lost()
            self.rewrite_all()
        self.publish(timelines, register=True)
        # Every timeline this node held at ``covers`` has told its disk now:
        # the other nodes' agreement stops waiting for a digest from this
        # node of segments it does not report (tasks.backup.agreement).
        self.state.publish_round(self.node_id, clock.now(), covers)
        self.round_started = covers
        # Leases first: the state file writes below may take a while.
        self.keep_leases(self.offloaders)
        now = time.time()
        self.state_writes.new_round()
        restore: dict[str, int] = {}
        for st, (backup_lsn, offloader, system_id, _) in zip(timelines, known, strict=True):
            ttid = str(st.ttid)
            if system_id is None and st.system_id is not None:
                restore[ttid] = st.system_id
            self.state_writes.record(st, backup_lsn, system_id)
            self.gauges.timeline(st, backup_lsn, offloader, now)
            self.gaps.check(st, backup_lsn)
            self.setup_errors.check(st)
        left_out = dict(self.disk.failures)  # the watcher's, a copy
        for ttid_left_out, problem in left_out.items():
            self.setup_errors.left_out(str(ttid_left_out), problem)
        # Their lag gauges went with them: WalbackupTimelinesLeftOut says so instead.
        unlisted = self.disk.workdir_failure is not None  # the WORKDIR itself (unmounted, say)
        LEFT_OUT_TIMELINES.set(len(left_out) + len(self.disk.tenant_failures) + unlisted)
        self.gaps.flush()
        self.state.restore_system_ids(restore)
        nodes = self.state.nodes()
        self.node_seen = {n: float(beat["ts"]) for n, beat in nodes.items()}
        self.gauges.nodes(nodes)
