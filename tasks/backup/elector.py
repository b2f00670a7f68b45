"""Election rounds: read heartbeats from Redis, run ``determine_offloader``,
record the result, and kick the offloader's node queue when it has work.

A beat tick elects what may have changed (``tasks.state.beats``): timelines
whose heartbeats changed or are new, those with a peer that just expired,
those with work left to kick, and a slice of a slow sweep that covers every
registered timeline each ``sweep_rounds`` rounds. Each batch of timelines is
one pipelined read and one pipelined write.

A timeline without a backup_lsn in Redis (new, or Redis lost its data) gets
one only once the archive was listed (``tasks.backup.recovery``): the nodes' state
files alone may lag the lost value, and backup_lsn must never move backwards.
A caller that may not list (a node's watcher) hands them to ``recover_later``
(a task, on a worker thread) rather than wait for beat's next round.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from redis.client import Pipeline

from tasks.backup.recovery_budget import RECOVERY_ERROR, RecoverFn, RecoveryBudget
from tasks.core.election import Election, determine_offloader, is_alive, live_nodes, reported_by
from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.logutil import Throttle
from tasks.state.beats import chunks
from tasks.state.records import PeerRecord, TimelineRecord
from tasks.state.redis import RedisState

log = logging.getLogger("walbackup.election")

KickFn = Callable[[str, int], None]  # backup_timeline to a node's queue
RecoverLaterFn = Callable[[list[str]], None]  # elect soon, where listing is allowed
RECOVER_LATER_HOLD_S = 5.0
"""A timeline handed to ``recover_later`` is not handed again this soon."""

NOT_RECOVERED = "backup_lsn not recovered yet"
NOT_REPORTED = "not every live node has told of it yet"
FIRST_SETTLE_S = 3.0
"""Beat's rounds wait this long after a timeline registered for every live
node to tell of it before its first election (the watcher's, without end):
a round that elected it when one node had told of it gave it to a node that
the next round moved it from once the others had."""
MAX_MARKED_PER_ROUND = 5000
"""Marked timelines one round elects at most (~0.5 s on the 2-core machine): a
mass of marks (Redis lost its data, a node gone) takes several rounds."""


@dataclass(frozen=True, slots=True)
class Outcome:
    ttid: str
    election: Election
    backup_lsn: Lsn | None
    changed: bool
    kicked: bool
    pending: bool  # elect again next round: work to kick, or backup_lsn not recovered


def timeline_start(peers: Sequence[PeerRecord]) -> Lsn:
    """An explicit ``timeline_start_lsn`` a writer recorded, else the start of
    the lowest segment any of ``peers`` (at least one) holds now (SPEC §3)."""
    explicit = [p.timeline_start_lsn for p in peers if p.timeline_start_lsn is not None]
    if explicit:
        return min(explicit)
    return min(p.peer.local_start_lsn for p in peers)


class Elector:
    def __init__(
        self,
        state: RedisState,
        kick: KickFn,
        *,
        heartbeat_timeout_s: float,
        max_offloader_lag_bytes: int,
        default_seg_size: int,
        kick_hold_ms: int,
        sweep_rounds: int = 1,
        backup_enabled: bool = True,
        recover: RecoverFn | None = None,
        recover_later: RecoverLaterFn | None = None,
    ) -> None:
        self.state = state
        self.kick = kick
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.max_lag = max_offloader_lag_bytes
        self.default_seg_size = default_seg_size
        self.kick_hold_ms = kick_hold_ms
        """How long a kick holds back the next one that is not forced, unless
        the offloader takes it sooner (``Leases.backup`` then shortens the
        hold to ``Settings.kick_interval_ms``)."""
        self.sweep_rounds = sweep_rounds
        self.backup_enabled = backup_enabled
        self.recover = recover
        self.recover_later = recover_later
        self._handed: dict[str, float] = {}  # ttid -> when handed to recover_later
        self._throttle = Throttle(30.0)

    def run_round(self, batch_size: int = 1000) -> int:
        """Elect what may have changed, and the sweep's slice; returns how
        many timelines were looked at."""
        expired_before = self.state.clock.now() - self.heartbeat_timeout_s
        ttids = self.state.election_work(expired_before, self.sweep_rounds, MAX_MARKED_PER_ROUND)
        again: list[str] = []
        for part in chunks(ttids, batch_size):
            outcomes = self.elect(part, settle=FIRST_SETTLE_S)
            again += [o.ttid for o in outcomes if o.pending]
        self.state.mark_for_election(again)
        return len(ttids)

    def elect(
        self,
        ttids: Sequence[str],
        *,
        force_kick: bool = False,
        recover: bool = True,
        local: int | None = None,
        settle: float | None = None,
    ) -> list[Outcome]:
        """Elect ``ttids``; ``force_kick`` skips the kick rate limit (triggers);
        ``recover``: list the archive of timelines that have no backup_lsn
        (without it they wait for a call that may); ``local``: the calling
        node, which starts its own uploads itself: no kick is sent to it, and
        ``Outcome.kicked`` says whether it has work. ``settle``: the first
        election of a timeline registered less than this many seconds ago
        waits until every live node told of it (``math.inf``: always; beat's
        next round does it): one node's new WAL alone elects whom the
        others' move away."""
        now = self.state.clock.now()
        nodes = self.state.nodes() if settle is not None else None
        live = None if nodes is None else live_nodes(nodes, now, self.heartbeat_timeout_s)
        rows = self.state.timelines_with_peers(ttids)
        young = self._young(ttids, rows, now, settle) if live is not None else set()
        writes = self.state.pipeline()
        recovery = RecoveryBudget(self.recover if recover else None, self._throttle)
        planned: list[tuple[str, Election, Lsn | None, bool, bool]] = []
        pending: set[str] = set()
        for ttid, (record, peers) in zip(ttids, rows, strict=True):
            settle_for = live if ttid in young else None
            election, backup_lsn, wants_kick = self._decide(
                ttid, record, peers, now, writes, recovery, settle_for
            )
            changed = election.offloader != record.offloader
            if changed:
                self._log_change(ttid, record, election)
                self.state.record_election(
                    ttid, election.offloader, election.reason, now, pipe=writes
                )
            planned.append((ttid, election, backup_lsn, changed, wants_kick))
            if wants_kick or (backup_lsn is None and election.reason == NOT_RECOVERED):
                pending.add(ttid)
        to_send = [p for p in planned if p[4] and p[1].offloader != local]
        # Kicks forced by a trigger or a new offloader go out now. The others
        # go out only when the last one's hold ran out (``kick_hold_ms``, or
        # the shorter ``kick_interval_ms`` once it was taken), and not at all
        # while the offloader has uploads in flight (it refills its window on
        # every commit and on new WAL, tasks.backup.new_wal) or committed
        # since this round read backup_lsn (at a thousand busy timelines such
        # kicks found every segment done; the next round looks again). A
        # backlog of queued kicks thus never grows by a kick per round.
        rate_limited = [p for p in to_send if not (force_kick or p[3])]
        if rate_limited:
            read = {ttid: record.backup_lsn for ttid, (record, _) in zip(ttids, rows, strict=True)}
            current = self.state.uploading([p[0] for p in rate_limited])
            rate_limited = [
                p
                for p, u in zip(rate_limited, current, strict=True)
                if u.holder != p[1].offloader and u.backup_lsn == read[p[0]]
            ]
        for ttid, *_ in (p for p in to_send if force_kick or p[3]):
            self.state.arm_kick(ttid, self.kick_hold_ms, force=True, pipe=writes)
        for ttid, *_ in rate_limited:
            self.state.arm_kick(ttid, self.kick_hold_ms, force=False, pipe=writes)
        results = writes.execute()
        allowed = (
            {
                t
                for (t, *_), ok in zip(rate_limited, results[-len(rate_limited) :], strict=True)
                if ok
            }
            if rate_limited
            else set()
        )
        outcomes = []
        for ttid, election, backup_lsn, changed, wants_kick in planned:
            if election.offloader is not None and election.offloader == local:
                kicked = wants_kick
            else:
                kicked = wants_kick and (force_kick or changed or ttid in allowed)
                if kicked and election.offloader is not None:
                    self.kick(ttid, election.offloader)
            outcomes.append(Outcome(ttid, election, backup_lsn, changed, kicked, ttid in pending))
        waiting = [o.ttid for o in outcomes if o.election.reason == NOT_REPORTED]
        self.state.mark_for_election(waiting)  # beat's next round elects them, unsettled
        if not recovery.allowed:
            self._hand_over_recovery(outcomes)
        return outcomes

    def _young(self, ttids: Sequence[str], rows: Sequence[tuple[TimelineRecord, object]],
               now: float, settle: float | None) -> set[str]:  # fmt: skip
        """The timelines with no offloader yet registered within ``settle`` s."""
        new = [t for t, (record, _) in zip(ttids, rows, strict=True) if record.offloader is None]
        if not new or settle is None or settle == math.inf:
            return set(new) if settle is not None else set()
        since = self.state.registered_at(new)
        return {t for t, at in zip(new, since, strict=True) if at is not None and at > now - settle}

    def _hand_over_recovery(self, outcomes: list[Outcome]) -> None:
        """``recover_later`` what this call could not recover, each timeline at most
        once per ``RECOVER_LATER_HOLD_S``; if that fails, beat's rounds do it."""
        now, hold = time.monotonic(), RECOVER_LATER_HOLD_S
        due = [o.ttid for o in outcomes if o.election.reason == NOT_RECOVERED
               and now - self._handed.get(o.ttid, -hold) >= hold]  # fmt: skip
        if not due or self.recover_later is None:
            return
        if len(self._handed) > 10_000:
            self._handed = {t: at for t, at in self._handed.items() if now - at < hold}
        self._handed.update(dict.fromkeys(due, now))
        try:
            self.recover_later(due)
        except Exception as exc:  # a nudge: never the caller's failure
            if self._throttle.allow(("recover_later", type(exc))):
                log.warning("%d timelines wait for beat to recover backup_lsn: %s", len(due), exc)

    def _decide(
        self,
        ttid: str,
        record: TimelineRecord,
        peers: list[PeerRecord],
        now: float,
        pipe: Pipeline[str],
        recovery: RecoveryBudget,
        settle_for: frozenset[int] | None,
    ) -> tuple[Election, Lsn | None, bool]:
        alive = [r for r in peers if is_alive(r.peer, now, self.heartbeat_timeout_s)]
        seg_size = record.wal_seg_size or (
            peers[0].wal_seg_size if peers else self.default_seg_size
        )
        start = record.timeline_start_lsn
        if start is None and alive:
            start = timeline_start(alive)
            self.state.seed_timeline(ttid, start, seg_size, pipe=pipe)
        # backup_lsn = max(stored, timeline start, what nodes persisted, the
        # contiguous archive): the last two recover a Redis that lost its data.
        candidates = [lsn for lsn in (record.backup_lsn, start) if lsn is not None]
        candidates += [r.peer.backup_lsn for r in peers]
        if not candidates:
            return Election(None, "no connected peers to elect from"), None, False
        if record.backup_lsn is None and self.recover is not None:
            archived = recovery.archive_end(ttid, start or min(candidates), seg_size)
            if archived is None:
                if recovery.error:
                    self.state.record_error(ttid, recovery.error, pipe=pipe)
                return Election(record.offloader, NOT_RECOVERED), None, False
            if RECOVERY_ERROR in record.last_error:
                self.state.clear_error(ttid, record.last_error, pipe=pipe)  # it lists again
            candidates.append(archived)
        backup_lsn = max(candidates)
        if record.backup_lsn is None or backup_lsn > record.backup_lsn:
            self.state.raise_backup_lsn(ttid, backup_lsn, pipe=pipe)
        if settle_for is not None and not reported_by(settle_for, (r.peer.node_id for r in alive)):
            return Election(None, NOT_REPORTED), backup_lsn, False
        election = determine_offloader(
            [r.peer for r in alive],
            backup_lsn,
            TenantTimelineId.parse(ttid).timeline_int,
            self.max_lag,
        )
        wants_kick = False
        if self.backup_enabled and election.offloader is not None:
            mine = next(r.peer for r in alive if r.peer.node_id == election.offloader)
            wants_kick = mine.commit_lsn.segment_number(seg_size) > backup_lsn.segment_number(
                seg_size
            )
        return election, backup_lsn, wants_kick

    @staticmethod
    def _log_change(ttid: str, record: TimelineRecord, election: Election) -> None:
        what, reason = election.offloader, election.reason
        if record.offloader is not None:
            log.info("Timeline %s: node %s stepping down from backup: %s",
                     ttid, record.offloader, reason)  # fmt: skip
        if what is not None:
            log.info("Timeline %s: elected node %s for backup: %s", ttid, what, reason)
        else:
            log.info("Timeline %s: no offloader: %s", ttid, reason)
