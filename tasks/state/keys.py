"""Every Redis key walbackup uses, built in one place. LSNs are stored as ``%X/%X`` text.

walbackup:timelines          ZSET   registered timeline ids -> registration time
walbackup:tl:{ttid}          HASH   backup_lsn, timeline_start_lsn, wal_seg_size,
                                    offloader, reason, epoch, holder, last_error
walbackup:peers:{ttid}       HASH   node id -> PeerInfo JSON (heartbeats)
walbackup:lease:{ttid}       STRING "NODE.INSTANCE:EPOCH" upload lease (fencing token)
walbackup:inflight:{ttid}    ZSET   claimed segno -> redispatch deadline (ms)
walbackup:done:{ttid}        ZSET   finished segnos not yet committed
walbackup:sums:{ttid}        HASH   "SEGNO:NODE" -> SHA-256 hex of that node's copy
                                    (segments not yet backed up: agreement)
walbackup:ledger:{ttid}      HASH   segno -> MD5 hex the upload verified (recent window)
walbackup:kick:{ttid}        STRING rate limit for election-driven kicks
walbackup:nodes              HASH   node id -> last heartbeat JSON
walbackup:round              STRING beat's round lock (one election round at a time)
walbackup:redbeat:*          -      RedBeat's schedule and beat lock
"""

from __future__ import annotations

PREFIX = "walbackup:"
TIMELINES_KEY = f"{PREFIX}timelines"
NODES_KEY = f"{PREFIX}nodes"
ROUND_LOCK_KEY = f"{PREFIX}round"
REDBEAT_PREFIX = f"{PREFIX}redbeat:"


def tl_key(ttid: str) -> str:
    return f"{PREFIX}tl:{ttid}"


def peers_key(ttid: str) -> str:
    return f"{PREFIX}peers:{ttid}"


def lease_key(ttid: str) -> str:
    return f"{PREFIX}lease:{ttid}"


def inflight_key(ttid: str) -> str:
    return f"{PREFIX}inflight:{ttid}"


def done_key(ttid: str) -> str:
    return f"{PREFIX}done:{ttid}"


def kick_key(ttid: str) -> str:
    return f"{PREFIX}kick:{ttid}"


def sums_key(ttid: str) -> str:
    return f"{PREFIX}sums:{ttid}"


def ledger_key(ttid: str) -> str:
    return f"{PREFIX}ledger:{ttid}"


def window_keys(ttid: str) -> list[str]:
    """KEYS of the commit scripts: lease, timeline, inflight, done, ledger."""
    return [lease_key(ttid), tl_key(ttid), inflight_key(ttid), done_key(ttid), ledger_key(ttid)]
