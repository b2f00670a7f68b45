"""Cluster status per timeline, read from Redis (``walbackup status``, the demo's view)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tasks.core.election import is_alive
from tasks.core.lsn import Lsn
from tasks.core.partials import archived_lsn
from tasks.state.beats import chunks
from tasks.state.records import PeerRecord, TimelineRecord
from tasks.state.redis import RedisState

_BATCH = 1000
"""Timelines read from Redis per round trip."""


def _lsn_text(lsn: Lsn | None) -> str | None:
    return str(lsn) if lsn is not None else None


@dataclass(frozen=True, slots=True)
class PeerStatus:
    """What one node last said about the timeline."""

    node_id: int
    commit_lsn: Lsn
    local_start_lsn: Lsn
    backup_lsn: Lsn
    last_seen_s: float
    """Seconds since its last heartbeat, rounded to milliseconds."""
    alive: bool
    damaged_lsn: Lsn | None
    """Where its damaged copy starts, if it reported one."""

    def as_dict(self) -> dict[str, Any]:
        """One entry of ``peers`` in ``walbackup status --json``."""
        return {
            "node_id": self.node_id,
            "commit_lsn": str(self.commit_lsn),
            "local_start_lsn": str(self.local_start_lsn),
            "backup_lsn": str(self.backup_lsn),
            "last_seen_s": self.last_seen_s,
            "alive": self.alive,
            "damaged_lsn": _lsn_text(self.damaged_lsn),
        }


@dataclass(frozen=True, slots=True)
class TimelineStatus:
    """One timeline: its record in Redis and its peers (sorted by node id)."""

    timeline: str
    registered: bool
    """Redis knows it: a ``backup_lsn`` or at least one peer."""
    backup_lsn: Lsn | None
    commit_lsn: Lsn | None
    """The highest ``commit_lsn`` among the peers."""
    archived_lsn: Lsn | None
    """The highest LSN archived, partial segment uploads included
    (``tasks.backup.partial``): at least ``backup_lsn``."""
    verified_lsn: Lsn | None
    """The scrubber's: the archive is whole and as its ledger says up to here."""
    archive_problems: int | None
    """Problems the scrubber's last pass left open (``walbackup verify`` names them)."""
    lag_bytes: int | None
    """``commit_lsn - backup_lsn`` floored at 0, when both are known."""
    offloader: int | None
    reason: str
    lease_holder: int | None
    timeline_start_lsn: Lsn | None
    archive_start_lsn: Lsn | None
    """Where the archive starts after ``walbackup retain``; ``None``: never retained."""
    wal_seg_size: int | None
    system_id: int | None
    """The PostgreSQL system identifier of its WAL (``tasks.backup.walheader``)."""
    last_error: str | None
    peers: tuple[PeerStatus, ...]

    @classmethod
    def from_records(
        cls,
        ttid: str,
        record: TimelineRecord,
        peers: Sequence[PeerRecord],
        now: float,
        heartbeat_timeout_s: float,
    ) -> TimelineStatus:
        commit = max((p.peer.commit_lsn for p in peers), default=None)
        backup = record.backup_lsn
        return cls(
            timeline=ttid,
            registered=backup is not None or bool(peers),
            backup_lsn=backup,
            commit_lsn=commit,
            archived_lsn=archived_lsn(backup, record.archived_lsn),
            verified_lsn=record.verified_lsn,
            archive_problems=record.archive_problems,
            lag_bytes=int(commit.saturating_sub(backup))
            if commit is not None and backup is not None
            else None,
            offloader=record.offloader,
            reason=record.reason,
            lease_holder=record.holder,
            # 0/0 is shown as unknown (null), as status always did.
            timeline_start_lsn=record.timeline_start_lsn or None,
            archive_start_lsn=record.archive_start_lsn,
            wal_seg_size=record.wal_seg_size,
            system_id=record.system_id,
            last_error=record.last_error or None,
            peers=tuple(
                PeerStatus(
                    node_id=p.peer.node_id,
                    commit_lsn=p.peer.commit_lsn,
                    local_start_lsn=p.peer.local_start_lsn,
                    backup_lsn=p.peer.backup_lsn,
                    last_seen_s=round(now - p.peer.ts, 3),
                    alive=is_alive(p.peer, now, heartbeat_timeout_s),
                    damaged_lsn=p.peer.damaged_lsn,
                )
                for p in sorted(peers, key=lambda p: p.peer.node_id)
            ),
        )

    def as_dict(self) -> dict[str, Any]:
        """One entry of ``timelines`` in ``walbackup status --json`` (LSNs as ``X/X``)."""
        return {
            "timeline": self.timeline,
            "registered": self.registered,
            "backup_lsn": _lsn_text(self.backup_lsn),
            "commit_lsn": _lsn_text(self.commit_lsn),
            "archived_lsn": _lsn_text(self.archived_lsn),
            "verified_lsn": _lsn_text(self.verified_lsn),
            "archive_problems": self.archive_problems,
            "lag_bytes": self.lag_bytes,
            "offloader": self.offloader,
            "reason": self.reason,
            "lease_holder": self.lease_holder,
            "timeline_start_lsn": _lsn_text(self.timeline_start_lsn),
            "archive_start_lsn": _lsn_text(self.archive_start_lsn),
            "wal_seg_size": self.wal_seg_size,
            # A string: 64 bits, which JSON readers that use doubles would round.
            "system_id": str(self.system_id) if self.system_id is not None else None,
            "last_error": self.last_error,
            "peers": [p.as_dict() for p in self.peers],
        }


def timeline_status(
    state: RedisState, ttids: Sequence[str] | None, heartbeat_timeout_s: float
) -> list[TimelineStatus]:
    """The status of ``ttids`` (default: every registered timeline), in that order."""
    ids = list(ttids) if ttids else state.registered()
    now = state.clock.now()
    out: list[TimelineStatus] = []
    for batch in chunks(ids, _BATCH):
        for ttid, (record, peers) in zip(batch, state.timelines_with_peers(batch), strict=True):
            out.append(TimelineStatus.from_records(ttid, record, peers, now, heartbeat_timeout_s))
    return out


def status_json(
    rows: Sequence[TimelineStatus], storage: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The document ``walbackup status --json`` prints; ``storage`` describes
    the remote storage (URL and server-side encryption, never credentials)."""
    document: dict[str, Any] = {"storage": dict(storage)} if storage is not None else {}
    return document | {"timelines": [row.as_dict() for row in rows]}
