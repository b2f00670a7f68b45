"""Coordination state in Redis: typed reads and writes on the keys of ``tasks.state.keys``.

Nothing else touches the Redis client: writes that callers batch take ``pipe``
(from ``pipeline()``) and run when the caller executes it. The lease and the
upload window are ``window.LeaseWindow``'s, heartbeats and the election
round's work ``beats.ElectionFeed``'s, which ``RedisState`` extends.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import redis
from redis.client import Pipeline

from tasks.core.lsn import Lsn
from tasks.state.archive import ArchiveRecords
from tasks.state.beats import ElectionFeed, beat_member, chunks
from tasks.state.connect import connect
from tasks.state.keys import (
    BEATS_KEY,
    DIRTY_KEY,
    EXPIRED_KEY,
    NODES_KEY,
    ROUND_LOCK_KEY,
    TIMELINES_KEY,
    kick_key,
    lease_key,
    partials_key,
    peers_key,
    sums_key,
    timeline_keys,
    tl_key,
)
from tasks.state.lua import Scripts
from tasks.state.records import PeerRecord, TimelineRecord
from tasks.state.window import CommitRefused, LeaseWindow

__all__ = ["CommitRefused", "RedisState"]


class RedisState(LeaseWindow, ArchiveRecords, ElectionFeed):
    """Typed access to walbackup's Redis keys, with the Lua scripts registered."""

    def __init__(self, client: redis.Redis[str]) -> None:
        super().__init__(client, Scripts(client))

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        sentinels: Sequence[tuple[str, int]] = (),
        master_name: str | None = None,
        sentinel_password: str | None = None,
    ) -> RedisState:
        """Redis at ``url``, or the master that ``sentinels`` name ``master_name``
        (``tasks.state.connect``); through Sentinels every commit also waits
        for a replica (``LeaseWindow.replicas``)."""
        state = cls(connect(url, sentinels, master_name, sentinel_password))
        state.replicas = 1 if sentinels else 0
        return state

    def close(self) -> None:
        """Close the connection pool (a process that is done with Redis)."""
        self.r.close()

    def ping(self) -> None:
        """Raises ``redis.RedisError`` when Redis cannot be reached."""
        self.r.ping()

    def pipeline(self) -> Pipeline[str]:
        """A non-transactional pipeline for the ``pipe=`` writes below."""
        return self.r.pipeline(transaction=False)

    def take_round_lock(self, ttl_ms: int, key: str = ROUND_LOCK_KEY) -> bool:
        """Beat's election (or ``key``'s) round lock: ``False`` while another round holds it."""
        return bool(self.r.set(key, "1", nx=True, px=ttl_ms))

    # -- registration -------------------------------------------------------

    def register(self, ttids: Iterable[str], now: float | None = None) -> int:
        stamp = self.clock.now() if now is None else now
        mapping: dict[str | bytes, float] = {t: stamp for t in ttids}
        return int(self.r.zadd(TIMELINES_KEY, mapping, nx=True)) if mapping else 0

    def known(self, ttids: Sequence[str]) -> list[bool]:
        """Per timeline: registered, or held by some node (a heartbeat)."""
        pipe = self.pipeline()
        for ttid in ttids:
            pipe.zscore(TIMELINES_KEY, ttid)
            pipe.exists(peers_key(ttid))
        raw = pipe.execute()
        return [raw[i] is not None or bool(raw[i + 1]) for i in range(0, len(raw), 2)]

    def forget(self, ttid: str) -> None:
        """Unregister ``ttid`` and delete its coordination state (one
        transaction), its peers' beats too: a node still holding it writes
        its record again with its next beat."""
        beats = [beat_member(int(node), ttid) for node in self.r.hkeys(peers_key(ttid))]
        pipe = self.r.pipeline(transaction=True)
        if beats:
            pipe.zrem(BEATS_KEY, *beats)
            pipe.zrem(EXPIRED_KEY, *beats)
        pipe.zrem(TIMELINES_KEY, ttid)
        pipe.srem(DIRTY_KEY, ttid)
        pipe.delete(*timeline_keys(ttid))
        pipe.execute()

    def registered(self, start: int = 0, stop: int = -1) -> list[str]:
        return list(self.r.zrange(TIMELINES_KEY, start, stop))

    def registered_count(self) -> int:
        return int(self.r.zcard(TIMELINES_KEY))

    # -- segment digests (agreement) -----------------------------------------

    def publish_digests(
        self,
        node_id: int,
        digests: Sequence[tuple[str, int, str]],
        stale: Sequence[tuple[str, int]] = (),
    ) -> None:
        """Publish ``(ttid, segno, sha256 hex)`` of this node's copies and
        drop its ``stale`` ``(ttid, segno)`` entries; one round trip."""
        if not digests and not stale:
            return
        pipe = self.r.pipeline(transaction=False)
        for ttid, segno, hexdigest in digests:
            pipe.hset(sums_key(ttid), f"{segno}:{node_id}", hexdigest)
        for ttid, segno in stale:
            pipe.hdel(sums_key(ttid), f"{segno}:{node_id}")
        pipe.execute()

    def digests(self, ttid: str, segno: int, node_ids: Sequence[int]) -> dict[int, str]:
        """The published SHA-256 hex of ``segno`` by each of ``node_ids`` that has one."""
        if not node_ids:
            return {}
        values = self.r.hmget(sums_key(ttid), [f"{segno}:{n}" for n in node_ids])
        return {n: v for n, v in zip(node_ids, values, strict=True) if v}

    def peers(self, ttid: str) -> list[PeerRecord]:
        return self.beaten([ttid], [self.r.hgetall(peers_key(ttid))])[0]

    def nodes(self) -> dict[int, dict[str, Any]]:
        return {int(k): json.loads(v) for k, v in self.r.hgetall(NODES_KEY).items()}

    def nodes_then_peers(self, ttid: str) -> tuple[dict[int, dict[str, Any]], list[PeerRecord]]:
        """``nodes()`` and ``peers(ttid)`` in one round trip, the nodes read
        first: every heartbeat round a node entry says is done is in the peers."""
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(NODES_KEY)
        pipe.hgetall(peers_key(ttid))
        nodes, peers = pipe.execute()
        return (
            {int(k): json.loads(v) for k, v in nodes.items()},
            self.beaten([ttid], [peers])[0],
        )

    # -- timeline records ----------------------------------------------------

    def timeline(self, ttid: str) -> TimelineRecord:
        return TimelineRecord.from_hash(self.r.hgetall(tl_key(ttid)))

    def take_kicks(self, ttids: Sequence[str], interval_ms: int) -> list[TimelineRecord]:
        """The offloader took a kick (``backup_timeline``) for each of
        ``ttids``: the next kick that is not forced may go out
        ``interval_ms`` from now (``arm_kick`` held it longer, for a kick
        still queued). Returns their records; one round trip."""
        pipe = self.r.pipeline(transaction=False)
        for ttid in ttids:
            pipe.set(kick_key(ttid), "1", px=interval_ms)
            pipe.hgetall(tl_key(ttid))
        return [TimelineRecord.from_hash(raw) for raw in pipe.execute()[1::2]]

    def timelines_with_peers(
        self, ttids: Sequence[str]
    ) -> list[tuple[TimelineRecord, list[PeerRecord]]]:
        """Batch read for elections and status: both hashes of a thousand
        timelines per command (``hgetall_many.lua``), and the peers'
        heartbeats in one more round trip."""
        raw: list[dict[str, str]] = []
        for part in chunks(ttids):  # Redis is not held long
            keys = [k for t in part for k in (tl_key(t), peers_key(t))]
            raw += [_pairs(flat) for flat in self._scripts.run("hgetall_many", keys, [])]
        peers = self.beaten(ttids, raw[1::2])
        return [(TimelineRecord.from_hash(r), p) for r, p in zip(raw[::2], peers, strict=True)]

    def record_system_id(self, ttid: str, system_id: int) -> int:
        """The timeline's system identifier: the first one recorded (HSETNX),
        which is ``system_id`` if there was none."""
        pipe = self.r.pipeline(transaction=False)
        pipe.hsetnx(tl_key(ttid), "system_id", system_id)
        pipe.hget(tl_key(ttid), "system_id")
        _, recorded = pipe.execute()
        return int(recorded) if recorded else system_id

    def restore_system_ids(self, system_ids: Mapping[str, int]) -> None:
        """Timelines' system identifiers from the nodes' state files, for a
        Redis that lost them: set only where none is recorded; one round trip."""
        if system_ids:
            pipe = self.r.pipeline(transaction=False)
            for ttid, system_id in system_ids.items():
                pipe.hsetnx(tl_key(ttid), "system_id", system_id)
            pipe.execute()

    def raise_backup_lsn(self, ttid: str, lsn: Lsn, pipe: Pipeline[str] | None = None) -> Any:
        return self._scripts.run("raise_backup_lsn", [tl_key(ttid)], [str(lsn)], pipe)

    def raise_archive_start(self, ttid: str, lsn: Lsn, replicated: bool = False) -> Lsn:
        """Record that the archive of ``ttid`` starts at ``lsn`` (``walbackup
        retain`` deleted what lies below), never lowering it; the stored value.
        ``replicated``: with Sentinel, only once a replica has it too, else
        ``NotReplicated``: retain deletes nothing a failover could make
        the scrubber upload again and ``verify`` call missing."""
        stored = self._scripts.run("raise_lsn", [tl_key(ttid)], ["archive_start_lsn", str(lsn)])
        if replicated:
            self.confirm_replicated(f"the archive's new start {lsn}")
        return Lsn.parse(stored)

    def raise_archived_lsn(self, ttid: str, lsn: Lsn) -> Lsn:
        """Raise ``archived_lsn`` (the end of the newest partial upload) to
        ``lsn``, never lowering it; the stored value."""
        return Lsn.parse(self._scripts.run("raise_lsn", [tl_key(ttid)], ["archived_lsn", str(lsn)]))

    def archive_start(self, ttid: str) -> Lsn | None:
        """Where the archive of ``ttid`` starts, if a retain recorded it."""
        value = self.r.hget(tl_key(ttid), "archive_start_lsn")
        return Lsn.parse(value) if value else None

    def seed_timeline(self, ttid: str, start: Lsn, seg_size: int, pipe: Pipeline[str]) -> None:
        """Record the timeline's start and segment size unless already known."""
        pipe.hsetnx(tl_key(ttid), "timeline_start_lsn", str(start))
        pipe.hsetnx(tl_key(ttid), "wal_seg_size", seg_size)

    def record_election(
        self, ttid: str, offloader: int | None, reason: str, now: float, pipe: Pipeline[str]
    ) -> None:
        pipe.hset(
            tl_key(ttid),
            mapping={
                "offloader": "" if offloader is None else offloader,
                "reason": reason,
                "elected_at": now,
            },
        )

    def arm_kick(self, ttid: str, ttl_ms: int, *, force: bool, pipe: Pipeline[str]) -> None:
        """Start the kick rate-limit timer of ``ttid``. Without ``force`` it
        starts only if none runs, and the pipeline's result says whether it did
        (the kick is allowed)."""
        pipe.set(kick_key(ttid), "1", nx=not force, px=ttl_ms)

    # -- partial segment uploads (tasks.backup.partial) ----------------------

    def start_partial(self, ttid: str, token: str, ttl_ms: int, name: str) -> dict[str, str] | None:
        """Record ``name`` as being uploaded under ``token``: ``None`` when the
        token is stale (nothing written), else the partials recorded before."""
        raw = self._scripts.run(
            "start_partial", [lease_key(ttid), partials_key(ttid)], [token, ttl_ms, name]
        )
        return None if raw is None else _pairs(raw)

    def commit_partial(self, ttid: str, token: str, name: str, end: Lsn) -> dict[str, str] | None:
        """Record ``name`` as uploaded and raise ``archived_lsn`` to ``end``:
        ``None`` when the token is stale, else every partial now recorded."""
        raw = self._scripts.run(
            "commit_partial",
            [lease_key(ttid), partials_key(ttid), tl_key(ttid)],
            [token, name, str(end)],
        )
        return None if raw is None else _pairs(raw)

    def partials(self, ttid: str) -> dict[str, str]:
        """Partial uploads recorded for ``ttid``: object name -> status."""
        return dict(self.r.hgetall(partials_key(ttid)))

    def forget_partials(self, ttid: str, names: Sequence[str]) -> None:
        """Drop the records of partial uploads whose objects were deleted."""
        if names:
            self.r.hdel(partials_key(ttid), *names)

    def record_error(self, ttid: str, message: str, pipe: Pipeline[str] | None = None) -> str:
        """``last_error``: ``message`` after the time (UTC), until a commit
        clears it; returns what was written (``clear_error`` takes it)."""
        stamped = f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {message}"
        (pipe or self.r).hset(tl_key(ttid), "last_error", stamped)
        return stamped

    def clear_error(self, ttid: str, read: str, pipe: Pipeline[str] | None = None) -> None:
        """Delete ``last_error`` if it still is ``read`` (``clear_error.lua``)."""
        self._scripts.run("clear_error", [tl_key(ttid)], [read], pipe)


def _pairs(flat: Sequence[str]) -> dict[str, str]:
    """A flat ``HGETALL`` reply from Lua as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))
