"""The upload lease and the ordered-commit window of each timeline, through their Lua scripts.

The lease (``walbackup:lease:{ttid}``, a ``NODE.INSTANCE:EPOCH`` token) says
which node instance uploads a timeline and fences every other: each script
checks the caller's token. The window claims segments for upload (the
inflight ZSET), records finished ones (the done ZSET and the ledger) and
moves ``backup_lsn`` in order: ``window_commit`` in ``lua/_window.lua``,
whose model is ``tasks.core.commit.advance``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import redis

from tasks.core.commit import WindowSize
from tasks.core.ledger import LedgerEntry, encode
from tasks.core.lsn import Lsn
from tasks.errors import NotReplicated
from tasks.state.beats import chunks
from tasks.state.clock import ClusterClock
from tasks.state.keys import done_key, inflight_key, lease_key, tl_key, window_keys
from tasks.state.lua import Scripts

REPLICA_WAIT_MS = 100
CONFIRM_WAIT_MS = 5000
"""``confirm_replicated``'s wait (``walbackup retain``'s new archive start)."""


class ClaimRequest(NamedTuple):
    """One timeline's ``claim_segments``: its lease token, the first segno
    not complete on the claiming node, segment size, claim deadline."""

    ttid: str
    token: str
    end_segno: int
    seg_size: int
    claim_timeout_ms: int


class Uploading(NamedTuple):
    holder: int | None
    """The node whose lease has claims in flight, if any."""
    backup_lsn: Lsn | None


class CommitRefused(Exception):
    """Internal signal: the caller's lease token is stale (fenced)."""


class LeaseWindow:
    """The lease and window operations on one Redis client (``RedisState``
    is one of these, with the rest of walbackup's keys)."""

    replicas = 0
    """Replicas a commit waits for (``WAIT``) before it returns: with
    Sentinel, 1, so that a commit the offloader acts on survives a failover
    (replication is asynchronous). One that times out (no replica answering
    within ``REPLICA_WAIT_MS``) still stands: the master has it."""

    def __init__(self, client: redis.Redis[str], scripts: Scripts) -> None:
        self.r = client
        self._scripts = scripts
        self.clock = ClusterClock(client)

    def _replicated(self) -> None:
        if self.replicas:
            self.r.wait(self.replicas, REPLICA_WAIT_MS)

    def confirm_replicated(self, what: str) -> None:
        """Wait up to ``CONFIRM_WAIT_MS`` for the replicas to have every write
        so far; ``NotReplicated`` naming ``what`` if they do not, for an act
        that must not follow a write a failover could undo."""
        if self.replicas and self.r.wait(self.replicas, CONFIRM_WAIT_MS) < self.replicas:
            raise NotReplicated(
                f"no replica confirmed {what} within {CONFIRM_WAIT_MS / 1000:g} s: a failover "
                "now would undo it, so nothing was deleted; run it again once the replica answers"
            )

    def acquire_lease(self, ttid: str, owner: str, node_id: int, ttl_ms: int) -> str | None:
        """The lease token (``owner:EPOCH``), or ``None`` when someone else holds it."""
        (token,) = self.acquire_leases([ttid], owner, node_id, ttl_ms)
        return token

    def acquire_leases(
        self, ttids: Sequence[str], owner: str, node_id: int, ttl_ms: int
    ) -> list[str | None]:
        """``acquire_lease`` for each of ``ttids``, in one round trip."""
        if not ttids:
            return []
        pipe = self.r.pipeline(transaction=False)
        for ttid in ttids:
            self._scripts.run(
                "acquire_lease",
                [lease_key(ttid), tl_key(ttid), inflight_key(ttid)],
                [owner, ttl_ms, node_id],
                pipe,
            )
        return [str(token) if token else None for token in pipe.execute()]

    def start_upload(
        self, ttid: str, token: str, ttl_ms: int, segno: int, deadline_ms: int
    ) -> bool:
        return bool(
            self._scripts.run(
                "start_upload",
                [lease_key(ttid), inflight_key(ttid)],
                [token, ttl_ms, segno, deadline_ms],
            )
        )

    def renew_lease(self, ttid: str, token: str, ttl_ms: int) -> bool:
        return self.renew_leases({ttid: token}, ttl_ms)[ttid]

    def renew_leases(self, leases: Mapping[str, str], ttl_ms: int) -> dict[str, bool]:
        """Renew each ttid -> token still held, one command per ``PIPELINE_CHUNK``."""
        items = list(leases.items())
        renewed: dict[str, bool] = {}
        for part in chunks(items):
            keys = [lease_key(ttid) for ttid, _ in part]
            oks = self._scripts.run("renew_lease", keys, [ttl_ms, *(token for _, token in part)])
            renewed.update((ttid, bool(ok)) for (ttid, _), ok in zip(part, oks, strict=True))
        return renewed

    def release_lease(self, ttid: str, token: str) -> bool:
        (released,) = self.release_leases({ttid: token}).values()
        return released

    def release_leases(self, leases: Mapping[str, str]) -> dict[str, bool]:
        """``release_lease`` for each ttid -> token, a round trip per
        ``PIPELINE_CHUNK``."""
        items = list(leases.items())
        released: dict[str, bool] = {}
        for part in chunks(items):
            pipe = self.r.pipeline(transaction=False)
            for ttid, token in part:
                self._scripts.run("release_lease", [lease_key(ttid), tl_key(ttid)], [token], pipe)
            released.update(
                (ttid, bool(ok)) for (ttid, _), ok in zip(part, pipe.execute(), strict=True)
            )
        return released

    def claimed(self, ttid: str) -> list[int]:
        """The segnos claimed for upload (the inflight ZSET)."""
        return [int(m) for m in self.r.zrange(inflight_key(ttid), 0, -1)]

    def uploading(self, ttids: Sequence[str]) -> list[Uploading]:
        """Per timeline, the node whose lease has claims in flight (their
        deadline not passed), else ``None``, and the stored backup_lsn; one
        round trip."""
        now_ms = int(self.clock.now() * 1000)
        pipe = self.r.pipeline(transaction=False)
        for ttid in ttids:
            pipe.get(lease_key(ttid))
            pipe.zcount(inflight_key(ttid), f"({now_ms}", "+inf")
            pipe.hget(tl_key(ttid), "backup_lsn")
        results = pipe.execute()
        return [
            Uploading(_token_node(token) if token and live else None, Lsn.parse(b) if b else None)
            for token, live, b in zip(results[::3], results[1::3], results[2::3], strict=True)
        ]

    def lease_holder_token(self, ttid: str) -> str | None:
        value = self.r.get(lease_key(ttid))
        return str(value) if value else None

    def claim_segments(
        self,
        ttid: str,
        token: str,
        parallel_jobs: int,
        end_segno: int,
        seg_size: int,
        claim_timeout_ms: int,
        horizon: int | None = None,
    ) -> list[int] | None:
        """Segnos to upload now (``tasks.core.commit.claim``), or ``None`` when
        ``token`` is stale. ``horizon`` (segments) defaults to ``parallel_jobs``:
        the reference's window."""
        (claimed,) = self.claim_many(
            [ClaimRequest(ttid, token, end_segno, seg_size, claim_timeout_ms)],
            WindowSize(parallel_jobs, parallel_jobs if horizon is None else horizon),
        )
        return claimed

    def claim_many(
        self, requests: Sequence[ClaimRequest], window: WindowSize
    ) -> list[list[int] | None]:
        """``claim_segments`` for each of ``requests``, in one round trip."""
        if not requests:
            return []
        now_ms = int(self.clock.now() * 1000)
        pipe = self.r.pipeline(transaction=False)
        for q in requests:
            self._scripts.run(
                "claim_segments",
                [lease_key(q.ttid), tl_key(q.ttid), inflight_key(q.ttid), done_key(q.ttid)],
                [
                    q.token,
                    window.parallel_jobs,
                    q.end_segno,
                    q.seg_size,
                    now_ms,
                    now_ms + q.claim_timeout_ms,
                    window.horizon,
                ],
                pipe,
            )
        return [
            None if claimed is None else [int(s) for s in claimed] for claimed in pipe.execute()
        ]

    def commit_segment(
        self, ttid: str, token: str, segno: int, seg_size: int, entry: LedgerEntry | None = None
    ) -> Lsn:
        """Mark ``segno`` finished (``entry``: what its upload verified, for
        the ledger); returns the new backup_lsn. Clears ``last_error``.
        Raises ``CommitRefused`` when the token is stale."""
        ok, backup = self._scripts.run(
            "commit_segment", window_keys(ttid), [token, segno, seg_size, _encode(entry)]
        )
        if not int(ok):
            raise _refused(ttid, segno, token)
        self._replicated()
        return Lsn.parse(backup)

    def commit_and_claim(
        self,
        ttid: str,
        token: str,
        segno: int,
        seg_size: int,
        *,
        window: WindowSize,
        end_segno: int,
        claim_timeout_ms: int,
        lease_ttl_ms: int,
        entry: LedgerEntry | None = None,
    ) -> tuple[Lsn, list[int]]:
        """``commit_segment``, then ``claim_segments`` up to ``end_segno``, then
        renew the lease, in one round trip: the new backup_lsn and the segnos
        now claimed. Raises ``CommitRefused`` when the token is stale."""
        now_ms = int(self.clock.now() * 1000)
        ok, backup, *claimed = self._scripts.run(
            "commit_and_claim",
            window_keys(ttid),
            [
                token,
                segno,
                seg_size,
                window.parallel_jobs,
                end_segno,
                now_ms,
                now_ms + claim_timeout_ms,
                lease_ttl_ms,
                _encode(entry),
                window.horizon,
            ],
        )
        if not int(ok):
            raise _refused(ttid, segno, token)
        self._replicated()
        return Lsn.parse(backup), [int(s) for s in claimed]


def _token_node(token: str) -> int | None:
    """The node id of a ``NODE.INSTANCE:EPOCH`` lease token."""
    node, _, _ = token.partition(".")
    return int(node) if node.isdigit() else None


def _encode(entry: LedgerEntry | None) -> str:
    return "" if entry is None else encode(entry)


def _refused(ttid: str, segno: int, token: str) -> CommitRefused:
    return CommitRefused(f"timeline {ttid}: commit of segno {segno} with stale token {token}")
