"""Heartbeats in Redis, and what the election round has to look at.

A round elects only what may have changed (SPEC §4, 100,000 timelines):

walbackup:dirty  SET   timelines whose facts a node saw change (commit_lsn,
                       start, backup_lsn, damage), with a new peer, a peer
                       gone, or work the round must keep kicking; a round
                       takes a bounded number, the rest wait for the next
walbackup:beats  ZSET  "NODE:ttid" -> last heartbeat: the time of a peer
                       (its record in the peers hash is written when its
                       facts change, when its beat was missing, and every
                       30-90 s); the round moves those older than
                       heartbeat_timeout (the peers that just died) out
walbackup:expired ZSET to here, where readers still find a peer's last beat;
                       its next heartbeat adds it back to beats, as new
walbackup:sweep  STRING cursor of the slow sweep over every registered
                       timeline (a lost mark, a Redis that lost its data)
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import TypeVar

import redis

from tasks.core.lsn import Lsn
from tasks.state.keys import (
    BEATS_KEY,
    DIRTY_KEY,
    EXPIRED_KEY,
    NODES_KEY,
    SWEEP_KEY,
    TIMELINES_KEY,
    kick_key,
    peers_key,
    tl_key,
)
from tasks.state.lua import Scripts
from tasks.state.records import ClusterFacts, PeerRecord


def beat_member(node_id: int, ttid: str) -> str:
    return f"{node_id}:{ttid}"


PIPELINE_CHUNK = 1000
"""Timelines per pipeline in a node's per-round reads and writes."""

T = TypeVar("T")


def chunks(items: Sequence[T], size: int = PIPELINE_CHUNK) -> Iterator[Sequence[T]]:
    """``items`` in runs of ``size``: one command, pipeline or batch each."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


_FACTS: dict[str, tuple[list[str | None], ClusterFacts]] = {}
"""``cluster_facts``'s last reading per timeline, raw and parsed."""


_RECORDS: dict[str, PeerRecord] = {}
"""Peer records parsed, by their JSON: a node now writes its record only when
it changes, so elections read the same JSON round after round."""
MAX_MEMO = 10_000
"""``_RECORDS`` starts over past this many (a few MiB)."""


def _record(text: str) -> PeerRecord:
    record = _RECORDS.get(text)
    if record is None:
        record = _RECORDS[text] = PeerRecord.from_json(text)
    return record


def _parse_facts(
    backup: str | None, offloader: str | None, system_id: str | None, verified: str | None
) -> ClusterFacts:
    return ClusterFacts(
        Lsn.parse(backup) if backup else None,
        int(offloader) if offloader else None,
        int(system_id) if system_id else None,
        Lsn.parse(verified) if verified else None,
    )


def node_entry(now: float, round_started: float | None) -> str:
    """A node's entry in the nodes hash: ``ts``, its last heartbeat (liveness);
    ``round``: its last whole heartbeat round told of every timeline its
    WORKDIR held from this time on (the start of the scan it published)."""
    entry: dict[str, float] = {"ts": now}
    if round_started is not None:
        entry["round"] = round_started
    return json.dumps(entry)


class ElectionFeed:
    """A part of ``RedisState`` (which provides ``r`` and ``_scripts``)."""

    r: redis.Redis[str]
    _scripts: Scripts

    def publish_heartbeats(
        self,
        node_id: int,
        records: Sequence[tuple[str, str]],
        now: float,
        *,
        register: bool = False,
        changed: Collection[str] | None = None,
        write: Collection[str] | None = None,
        round_started: float | None = None,
        hold_kicks: Collection[str] = (),
        hold_ms: int = 0,
    ) -> None:
        """A heartbeat, at ``now``, for each of ``records`` (``(ttid, peer JSON)``):
        one pipelined round trip per ``PIPELINE_CHUNK`` of them, after
        redis-py's check that ``beat.lua`` is loaded (one more when a peer or
        timeline is new). A heartbeat's time is the peer's score in the beats
        ZSET (``beat.lua``); its record in the timeline's peers hash is written only
        for the timelines in ``write`` (``None``: all), and for any whose score
        was missing (a first heartbeat, one after expiring, a Redis that lost
        its data): one more round trip.
        ``register``: also (re-)register those timelines, so a Redis
        that lost its data learns them again from the nodes, without new WAL.
        ``changed``: the timelines whose facts changed since this node's last
        heartbeat (``None``: all of them); they are marked for election, as
        are those whose beat was missing.
        ``round_started``: the node's entry's ``round`` (``node_entry``).
        ``hold_kicks``: timelines whose new WAL this node, their offloader,
        takes up itself: their kick hold starts (``hold_ms``, unless one runs)
        in the same round trip, so beat's round, marked by this heartbeat,
        sends no kick for what the node claims a moment later."""
        fresh: list[str] = []
        # In chunks: one pipeline of 10,000 timelines held ~15 MB of command
        # buffers at once, which the node's RSS kept afterwards.
        for start in range(0, max(1, len(records)), PIPELINE_CHUNK):
            part = records[start : start + PIPELINE_CHUNK]
            pipe = self.r.pipeline(transaction=False)
            if start == 0:
                pipe.hset(NODES_KEY, str(node_id), node_entry(now, round_started))
            written = [(t, p) for t, p in part if write is None or t in write]
            for ttid, payload in written:
                pipe.hset(peers_key(ttid), str(node_id), payload)
            if part:
                # One command and one argument for the chunk's beats (and
                # registrations): packing arguments was most of a round's CPU.
                ids = ",".join(ttid for ttid, _ in part)
                args = [node_id, repr(now), "1" if register else "0", ids]
                self._scripts.run("beat", [BEATS_KEY, TIMELINES_KEY], args, pipe)
            if hold_ms > 0:  # PX 0 is an error
                for ttid in (t for t, _ in part if t in hold_kicks):
                    pipe.set(kick_key(ttid), "1", nx=True, px=hold_ms)
            marked = [t for t, _ in part if changed is None or t in changed]
            if marked:
                pipe.sadd(DIRTY_KEY, *marked)
            results = pipe.execute()[(1 if start == 0 else 0) + len(written) :]
            if not part:
                continue
            registered, *absent = results[0]
            missing = [part[i - 1] for i in absent]
            unwritten = [(t, p) for t, p in missing if write is not None and t not in write]
            if unwritten:
                # No live beat to go with: its record may be gone too (a Redis
                # that lost its data) or stale; written now.
                again = self.r.pipeline(transaction=False)
                for ttid, payload in unwritten:
                    again.hset(peers_key(ttid), str(node_id), payload)
                again.execute()
            if changed is None:
                continue
            if registered:
                # New registrations (rare: new timelines, a Redis that lost its data).
                fresh += [t for t, _ in part]
            else:
                # A peer new to the beats ZSET: first heartbeat, or back after expiring.
                fresh += [t for t, _ in missing]
        if fresh:
            self.r.sadd(DIRTY_KEY, *fresh)

    def beaten(
        self, ttids: Sequence[str], raws: Sequence[Mapping[str, str]]
    ) -> list[list[PeerRecord]]:
        """The peer records of each of ``ttids`` (``raws``: its peers hash),
        each with the time of its last heartbeat: its score in the beats ZSET
        (else, once the election round took it out as expired, in the expired
        ZSET) where newer than the record's own ``ts`` (when it was written)."""
        if len(_RECORDS) > MAX_MEMO:
            _RECORDS.clear()
        parsed = [[_record(v) for v in raw.values()] for raw in raws]
        members = [
            beat_member(r.peer.node_id, ttid)
            for ttid, recs in zip(ttids, parsed, strict=True)
            for r in recs
        ]
        if not members:
            return parsed
        pipe = self.r.pipeline(transaction=False)
        pipe.zmscore(BEATS_KEY, members)  # type: ignore[no-untyped-call]
        pipe.zmscore(EXPIRED_KEY, members)  # type: ignore[no-untyped-call]
        live, expired = pipe.execute()
        last = iter(e if b is None else b for b, e in zip(live, expired, strict=True))
        return [[r.beaten(next(last)) for r in recs] for recs in parsed]

    def cluster_facts(self, ttids: Sequence[str]) -> list[ClusterFacts]:
        """backup_lsn, offloader, system id and verified_lsn of each of ``ttids``; one
        command (``cluster_facts.lua``) per ``PIPELINE_CHUNK``. Parsed once
        while they stay the same: every heartbeat round reads them for every
        timeline, and parsing was a fifth of a round at 10,000."""
        facts = []
        for part in chunks(ttids):
            flat = self._scripts.run("cluster_facts", [tl_key(t) for t in part], [])
            for i, ttid in enumerate(part):
                raw = flat[4 * i : 4 * i + 4]
                known = _FACTS.get(ttid)
                if known is None or known[0] != raw:
                    known = _FACTS[ttid] = (raw, _parse_facts(*raw))
                facts.append(known[1])
        return facts

    def publish_round(self, node_id: int, now: float, round_started: float) -> None:
        """The node's heartbeat round that began at ``round_started`` is out."""
        self.r.hset(NODES_KEY, str(node_id), node_entry(now, round_started))

    def drop_peer(self, ttid: str, node_id: int) -> None:
        """The node no longer holds the timeline: its heartbeat goes at once,
        rather than after ``heartbeat_timeout``, and the timeline is re-elected."""
        pipe = self.r.pipeline(transaction=False)
        pipe.hdel(peers_key(ttid), str(node_id))
        pipe.zrem(BEATS_KEY, beat_member(node_id, ttid))
        pipe.zrem(EXPIRED_KEY, beat_member(node_id, ttid))
        pipe.sadd(DIRTY_KEY, ttid)
        pipe.execute()

    def registered_at(self, ttids: Sequence[str]) -> list[float | None]:
        """When each of ``ttids`` was registered (``None``: it is not)."""
        return list(self.r.zmscore(TIMELINES_KEY, list(ttids)))  # type: ignore[no-untyped-call]

    def mark_for_election(self, ttids: Collection[str]) -> None:
        if ttids:
            self.r.sadd(DIRTY_KEY, *ttids)

    def election_work(self, expired_before: float, sweep_rounds: int, max_marked: int) -> list[str]:
        """Take the timelines one round must elect: up to ``max_marked``
        marked ones (those with a peer whose last heartbeat is at or before
        ``expired_before`` are marked first), then the next ``1/sweep_rounds``
        of the registered timelines. Only registered timelines."""
        take = self.r.pipeline(transaction=True)  # a heartbeat in between waits
        self._scripts.run("expire_beats", [BEATS_KEY, EXPIRED_KEY], [repr(expired_before)], take)
        take.get(SWEEP_KEY)
        take.zcard(TIMELINES_KEY)
        expired, cursor, total = take.execute()
        start = int(cursor or 0)
        start = start if start < total else 0
        stop = min(total, start + -(-total // max(1, sweep_rounds)))
        read = self.r.pipeline(transaction=False)
        if expired:
            read.sadd(DIRTY_KEY, *{m.split(":", 1)[1] for m in expired})
        read.spop(DIRTY_KEY, max_marked)
        read.zrange(TIMELINES_KEY, start, stop - 1)
        read.set(SWEEP_KEY, stop if stop < total else 0)
        *_, marked, swept, _ = read.execute()
        check = self.r.pipeline(transaction=False)
        for ttid in marked:
            check.zscore(TIMELINES_KEY, ttid)
        scores = check.execute() if marked else []
        registered = [t for t, score in zip(marked, scores, strict=True) if score is not None]
        return list(dict.fromkeys([*registered, *swept]))
