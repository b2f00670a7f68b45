"""What walbackup stores per timeline and per peer in Redis, parsed into types."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, NamedTuple

from tasks.core.election import PeerInfo
from tasks.core.lsn import Lsn


@dataclass(frozen=True, slots=True)
class TimelineRecord:
    """The cluster-wide state of one timeline, as stored in Redis."""

    backup_lsn: Lsn | None
    timeline_start_lsn: Lsn | None
    wal_seg_size: int | None
    offloader: int | None
    reason: str
    holder: int | None
    last_error: str
    archived_lsn: Lsn | None = None
    """End of the newest partial segment upload (``commit_partial.lua``)."""
    verified_lsn: Lsn | None = None
    """Where the scrubber's last pass found the first problem, or its end."""
    archive_problems: int | None = None
    """Problems the scrubber's last pass left open."""
    archive_start_lsn: Lsn | None = None
    """Where the archive starts after ``walbackup retain`` (``raise_lsn.lua``)."""
    system_id: int | None = None
    """The PostgreSQL system identifier its WAL carries (``tasks.backup.walheader``)."""

    @classmethod
    def from_hash(cls, raw: dict[str, str]) -> TimelineRecord:
        def lsn(field: str) -> Lsn | None:
            value = raw.get(field)
            return Lsn.parse(value) if value else None

        def num(field: str) -> int | None:
            value = raw.get(field)
            return int(value) if value else None

        return cls(
            backup_lsn=lsn("backup_lsn"),
            timeline_start_lsn=lsn("timeline_start_lsn"),
            wal_seg_size=num("wal_seg_size"),
            offloader=num("offloader"),
            reason=raw.get("reason", ""),
            holder=num("holder"),
            last_error=raw.get("last_error", ""),
            archived_lsn=lsn("archived_lsn"),
            verified_lsn=lsn("verified_lsn"),
            archive_problems=num("archive_problems"),
            archive_start_lsn=lsn("archive_start_lsn"),
            system_id=num("system_id"),
        )


class ClusterFacts(NamedTuple):
    """What a node's heartbeat round learns back about one timeline."""

    backup_lsn: Lsn | None
    offloader: int | None
    system_id: int | None
    verified_lsn: Lsn | None = None
    """The scrubber's: the archive below it was last found whole and intact."""


def peer_to_json(peer: PeerInfo, wal_seg_size: int, timeline_start_lsn: Lsn | None) -> str:
    body: dict[str, Any] = {
        "node_id": peer.node_id,
        "commit_lsn": str(peer.commit_lsn),
        "local_start_lsn": str(peer.local_start_lsn),
        "backup_lsn": str(peer.backup_lsn),
        "ts": peer.ts,
        "wal_seg_size": wal_seg_size,
        "timeline_start_lsn": str(timeline_start_lsn) if timeline_start_lsn is not None else None,
    }
    if peer.damaged_lsn is not None:
        body["damaged_lsn"] = str(peer.damaged_lsn)
    return json.dumps(body, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class PeerRecord:
    peer: PeerInfo
    wal_seg_size: int
    timeline_start_lsn: Lsn | None

    def beaten(self, ts: float | None) -> PeerRecord:
        """This record with a later heartbeat's time ``ts``."""
        p = self.peer
        if ts is None or ts <= p.ts:
            return self
        # Not dataclasses.replace: every read of peers calls this for every
        # record, and replace() was most of an election round's parsing.
        peer = PeerInfo(
            p.node_id, p.commit_lsn, p.local_start_lsn, p.backup_lsn, float(ts), p.damaged_lsn
        )
        return PeerRecord(peer, self.wal_seg_size, self.timeline_start_lsn)

    @classmethod
    def from_json(cls, text: str) -> PeerRecord:
        raw = json.loads(text)
        start = raw.get("timeline_start_lsn")
        damaged = raw.get("damaged_lsn")
        return cls(
            PeerInfo(
                node_id=int(raw["node_id"]),
                commit_lsn=Lsn.parse(raw["commit_lsn"]),
                local_start_lsn=Lsn.parse(raw["local_start_lsn"]),
                backup_lsn=Lsn.parse(raw["backup_lsn"]),
                ts=float(raw["ts"]),
                damaged_lsn=Lsn.parse(damaged) if damaged else None,
            ),
            wal_seg_size=int(raw["wal_seg_size"]),
            timeline_start_lsn=Lsn.parse(start) if start else None,
        )
