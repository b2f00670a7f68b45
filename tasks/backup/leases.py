"""Upload leases of this process: taking one (and the first window), keeping, giving up.

A timeline's lease (SPEC §4) is held under a token ``owner:EPOCH``; every
write of the upload pipeline carries the token and Redis refuses a stale one
(fencing). This process remembers the token it holds per timeline. It forgets
it when Redis says it is stale, and releases it when another node is elected,
when the timeline's directory goes, or when the node stops.
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from tasks.backup.handoff import UploadJob, UploadTasks
from tasks.config import Settings
from tasks.errors import BrokerUnavailable
from tasks.state.redis import RedisState
from tasks.state.timeline_state import TimelineState
from tasks.state.window import ClaimRequest

log = logging.getLogger("walbackup.node")


def claim_timeout_ms(seg_size: int) -> int:
    """Long enough for a slow upload of the segment; a claim older than this
    is presumed lost (its message vanished) and handed out again."""
    return max(120_000, seg_size // (1 << 20) * 2000)


class Skipped(StrEnum):
    """Why ``backup_timeline`` started no upload."""

    DISABLED = "backup disabled"
    NOT_OFFLOADER = "not offloader"
    LEASE_BUSY = "lease busy"
    NO_LOCAL_TIMELINE = "no local timeline"


@dataclass(frozen=True, slots=True)
class Dispatched:
    """``backup_timeline`` holds the lease and sent ``count`` new uploads."""

    count: int

    def __str__(self) -> str:
        return f"dispatched {self.count}"


class Leases:
    """Thread-safe: ``_lock`` guards ``_held``; Redis calls are made outside it."""

    def __init__(
        self,
        settings: Settings,
        state: RedisState,
        tasks: UploadTasks,
        timeline: Callable[[str], TimelineState | None],
        kick: Callable[[str, int], None],
    ) -> None:
        assert settings.node_id is not None
        self.node_id = settings.node_id
        self.settings = settings
        self.state = state
        self.tasks = tasks
        self.timeline = timeline
        self.kick = kick
        """Sends ``backup_timeline`` to a node's queue (``Elector.kick``)."""
        # A new owner per process: a restarted node never reuses the lease of
        # its previous life, whose in-flight claims died with it.
        self.owner = f"{self.node_id}.{secrets.token_hex(4)}"
        self.ttl_ms = int(settings.lease_ttl_s * 1000)
        self._lock = threading.Lock()
        self._held: dict[str, str] = {}  # ttid -> token held by this process
        self._kicks: queue.SimpleQueue[dict[str, int]] = queue.SimpleQueue()
        self._kicker: threading.Thread | None = None

    def token(self, ttid: str) -> str | None:
        with self._lock:
            return self._held.get(ttid)

    def __contains__(self, ttid: object) -> bool:
        """Whether this node holds ``ttid``'s lease now."""
        with self._lock:
            return ttid in self._held

    def held(self) -> dict[str, str]:
        """A snapshot: ttid -> token."""
        with self._lock:
            return dict(self._held)

    # -- taking a lease and starting the window ------------------------------

    def backup(self, ttid: str) -> Skipped | Dispatched:
        """Start or refill the upload window of ``ttid`` if this node is its
        offloader (the ``backup_timeline`` task)."""
        (outcome,) = self.backup_many([ttid]).values()
        return outcome

    def backup_many(self, ttids: Sequence[str]) -> dict[str, Skipped | Dispatched]:
        """``backup`` for each of ``ttids``: three round trips in all, so that
        a node whose thousands of timelines complete a segment at once
        starts them all within its heartbeat interval."""
        if not self.settings.backup_enabled:
            return dict.fromkeys(ttids, Skipped.DISABLED)
        outcomes: dict[str, Skipped | Dispatched] = {}
        mine: list[str] = []
        elsewhere: dict[str, int | None] = {}
        records = self.state.take_kicks(ttids, self.settings.kick_interval_ms)
        for ttid, record in zip(ttids, records, strict=True):
            if record.offloader == self.node_id:
                mine.append(ttid)
            else:
                outcomes[ttid] = Skipped.NOT_OFFLOADER
                elsewhere[ttid] = record.offloader
        tokens = self.state.acquire_leases(mine, self.owner, self.node_id, self.ttl_ms)
        held: dict[str, str] = {}
        for ttid, token in zip(mine, tokens, strict=True):
            if token is None:
                outcomes[ttid] = Skipped.LEASE_BUSY
                continue
            with self._lock:
                if self._held.get(ttid) != token:
                    log.info("Timeline %s: node %s took the lease %s", ttid, self.node_id, token)
                self._held[ttid] = token
            held[ttid] = token
        for ttid, count in self._dispatch(held).items():
            outcomes[ttid] = Skipped.NO_LOCAL_TIMELINE if count is None else Dispatched(count)
        self.hand_over(elsewhere)
        return outcomes

    def refill(self, ttids: Sequence[str]) -> list[str]:
        """New WAL: for those of ``ttids`` whose lease this process holds,
        claim what the window allows, with no election and no message (one
        round trip). Returns the others: no lease (any more), or no local copy."""
        held = {t: token for t in ttids if (token := self.token(t)) is not None}
        counts = self._dispatch(held)
        return [t for t in ttids if counts.get(t) is None or t not in self]

    def _dispatch(self, held: Mapping[str, str]) -> dict[str, int | None]:
        """Claim the free segments of each timeline's window under its token,
        and hand them out: how many per timeline, ``None`` for one with no
        local copy. A fenced claim forgets its token."""
        counts: dict[str, int | None] = {}
        requests: list[tuple[ClaimRequest, TimelineState]] = []
        for ttid, token in held.items():
            st = self.timeline(ttid)
            if st is None or st.commit_lsn is None:
                counts[ttid] = None if st is None else 0
                continue
            end = st.commit_lsn.segment_number(st.wal_seg_size)
            timeout = claim_timeout_ms(st.wal_seg_size)
            requests.append((ClaimRequest(ttid, token, end, st.wal_seg_size, timeout), st))
        results = self.state.claim_many([q for q, _ in requests], self.settings.window)
        jobs: list[UploadJob] = []
        for (q, st), claimed in zip(requests, results, strict=True):
            if claimed is None:  # fenced between acquire and claim
                self.forget(q.ttid, q.token)
                counts[q.ttid] = 0
                continue
            jobs += self.tasks.offer(q.ttid, q.token, claimed, st.wal_seg_size)
            counts[q.ttid] = len(claimed)
        # All timelines' segments at once: a burst fills the free pool
        # threads, and the rest of it goes in batches.
        self.tasks.send(jobs)
        return counts

    # -- keeping and giving up -------------------------------------------------

    def keep(self, offloaders: Mapping[str, int | None]) -> None:
        """Heartbeat upkeep, given each timeline's elected offloader: renew
        the leases of the timelines this node still offloads, all in one
        round trip (a node holding thousands must renew them well within the
        lease TTL), and hand the others' over at once."""
        renew: dict[str, str] = {}
        elsewhere: dict[str, int | None] = {}
        for ttid, token in self.held().items():
            if ttid not in offloaders:
                continue
            if offloaders[ttid] == self.node_id:
                renew[ttid] = token
            else:
                elsewhere[ttid] = offloaders[ttid]
        for ttid, renewed in self.state.renew_leases(renew, self.ttl_ms).items():
            if not renewed:
                token = renew[ttid]
                log.warning("Timeline %s: node %s lost its lease %s", ttid, self.node_id, token)
                self.forget(ttid, token)
        self.hand_over(elsewhere)

    def hand_over(self, elected: Mapping[str, int | None]) -> None:
        """Other nodes (or none) are elected for these timelines: release our
        leases of them, then kick each new offloader, whose first kick may
        have found the lease still held (it would otherwise wait up to
        ``kick_hold_ms``). Callers hand over after their own Redis work, and
        a broker that cannot take a kick costs a WARNING, not the caller's
        lease renewals: the kicks go out from a thread of their own (a publish
        waits up to ~30 s for a broker that is down, and the heartbeat round
        that called us must not: its node would look dead and lose its leases)."""
        held = {t: token for t in elected if (token := self.token(t)) is not None}
        self._release(held, {t: f"node {elected[t]} elected" for t in held})
        kicks = {t: offloader for t in held if (offloader := elected[t]) is not None}
        if not kicks:
            return
        self._kicks.put(kicks)
        with self._lock:
            if self._kicker is None or not self._kicker.is_alive():
                kicker = threading.Thread(target=self._kick_loop, name="kicks", daemon=True)
                kicker.start()
                self._kicker = kicker

    def _kick_loop(self) -> None:
        while True:
            kicks = self._kicks.get()
            for sent, (ttid, offloader) in enumerate(kicks.items()):
                try:
                    self.kick(ttid, offloader)
                except BrokerUnavailable as exc:
                    log.warning("Node %s: %d hand-over kicks not sent: %s",
                                self.node_id, len(kicks) - sent, exc)  # fmt: skip
                    break
                except Exception:  # a bug: logged, the thread goes on
                    log.exception("Node %s: hand-over kick of %s failed", self.node_id, ttid)

    def release(self, ttid: str, token: str, why: str) -> None:
        self._release({ttid: token}, {ttid: why})

    def release_all(self, why: str) -> None:
        with self._lock:
            held, self._held = self._held, {}
        self._release(held, dict.fromkeys(held, why))

    def _release(self, leases: Mapping[str, str], why: Mapping[str, str]) -> None:
        """Release ``leases`` (ttid -> token) in one round trip: after a mass
        re-election, one per lease held the heartbeat round up for seconds."""
        for ttid, token in leases.items():
            self.forget(ttid, token)
        for ttid, released in self.state.release_leases(leases).items():
            if released:
                log.info(
                    "Timeline %s: node %s stepping down from backup (%s)",
                    ttid, self.node_id, why[ttid],
                )  # fmt: skip

    def forget(self, ttid: str, token: str) -> None:
        """Redis refused ``token`` (a newer lease exists): stop using it. A
        newer token of ours, taken meanwhile, is kept."""
        with self._lock:
            if self._held.get(ttid) == token:
                del self._held[ttid]
