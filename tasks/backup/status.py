"""Cluster status per timeline, read from Redis (``walbackup status``)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from tasks.core.election import is_alive
from tasks.state.redis import RedisState


def timeline_status(
    state: RedisState, ttids: Sequence[str] | None, heartbeat_timeout_s: float
) -> list[dict[str, Any]]:
    """Per timeline: peers, backup_lsn, offloader and reason, lag in bytes."""
    ids = list(ttids) if ttids else state.registered()
    now = time.time()
    out: list[dict[str, Any]] = []
    for start in range(0, len(ids), 1000):
        batch = ids[start : start + 1000]
        for ttid, (record, peers) in zip(batch, state.timelines_with_peers(batch), strict=True):
            commit = max((p.peer.commit_lsn for p in peers), default=None)
            backup = record.backup_lsn
            out.append(
                {
                    "timeline": ttid,
                    "registered": record.backup_lsn is not None or bool(peers),
                    "backup_lsn": str(backup) if backup is not None else None,
                    "commit_lsn": str(commit) if commit is not None else None,
                    "lag_bytes": max(0, commit - backup)
                    if commit is not None and backup is not None
                    else None,
                    "offloader": record.offloader,
                    "reason": record.reason,
                    "lease_holder": record.holder,
                    "timeline_start_lsn": str(record.timeline_start_lsn)
                    if record.timeline_start_lsn
                    else None,
                    "wal_seg_size": record.wal_seg_size,
                    "last_error": record.last_error or None,
                    "peers": [
                        {
                            "node_id": p.peer.node_id,
                            "commit_lsn": str(p.peer.commit_lsn),
                            "local_start_lsn": str(p.peer.local_start_lsn),
                            "backup_lsn": str(p.peer.backup_lsn),
                            "last_seen_s": round(now - p.peer.ts, 3),
                            "alive": is_alive(p.peer, now, heartbeat_timeout_s),
                            "damaged_lsn": str(p.peer.damaged_lsn)
                            if p.peer.damaged_lsn is not None
                            else None,
                        }
                        for p in sorted(peers, key=lambda p: p.peer.node_id)
                    ],
                }
            )
    return out
