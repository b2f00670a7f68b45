"""Every Redis key walbackup uses, built in one place. LSNs are stored as ``%X/%X`` text.

walbackup:timelines          ZSET   registered timeline ids -> registration time
walbackup:tl:{ttid}          HASH   backup_lsn, timeline_start_lsn, wal_seg_size,
                                    offloader, reason, epoch, holder, last_error,
                                    archived_lsn (end of the newest partial upload),
                                    verified_lsn, archive_problems (the scrubber's),
                                    archive_start_lsn (set by `walbackup retain`),
                                    system_id (of the WAL's first checked segment)
walbackup:peers:{ttid}       HASH   node id -> PeerInfo JSON, written when its facts change
                                    (its ts: then); the heartbeat's time is in walbackup:beats
walbackup:lease:{ttid}       STRING "NODE.INSTANCE:EPOCH" upload lease (fencing token)
walbackup:inflight:{ttid}    ZSET   claimed segno -> redispatch deadline (ms)
walbackup:done:{ttid}        ZSET   finished segnos not yet committed
walbackup:sums:{ttid}        HASH   "SEGNO:NODE" -> SHA-256 hex of that node's copy
                                    (segments not yet backed up: agreement)
walbackup:ledger:{ttid}      HASH   segno -> ledger entry JSON: what the upload verified
                                    (recent window; tasks.core.ledger)
walbackup:archive:{ttid}     HASH   the ledger's flushed end, the scrubber's cursors
                                    (tasks.state.archive)
walbackup:problems:{ttid}    HASH   segno -> archive problem the scrubber found open
walbackup:partials:{ttid}    HASH   partial upload object name -> "uploading" | "uploaded"
                                    (tasks.core.partials; not yet garbage-collected)
walbackup:kick:{ttid}        STRING rate limit for election-driven kicks
walbackup:nodes              HASH   node id -> {ts: last heartbeat, round: start of
                                    its last whole heartbeat round} (JSON)
walbackup:beats              ZSET   "NODE:ttid" -> that node's last heartbeat (unix s);
                                    the elector finds expiring peers here
walbackup:expired            ZSET   "NODE:ttid" -> last heartbeat of a peer the elector
                                    found expired (taken out of walbackup:beats)
walbackup:dirty              SET    timelines to elect in the next round (facts changed,
                                    a new or expired peer, work left to kick)
walbackup:sweep              STRING the election sweep's cursor (rank in timelines)
walbackup:round              STRING beat's round lock (one election round at a time)
walbackup:redbeat:*          -      RedBeat's schedule and beat lock
walbackup:archive_id         STRING the archive's id, as its marker object holds it
                                    (tasks.core.archive_identity)
walbackup:archive_seen       HASH   node id -> its last check of the id (JSON: ts, fp its
                                    storage settings' fingerprint, found)
"""

from __future__ import annotations

from collections.abc import Callable

PREFIX = "walbackup:"
TIMELINES_KEY = f"{PREFIX}timelines"
NODES_KEY = f"{PREFIX}nodes"
ROUND_LOCK_KEY = f"{PREFIX}round"
SCRUB_LOCK_KEY = f"{PREFIX}scrub_round"
BEATS_KEY = f"{PREFIX}beats"
DIRTY_KEY = f"{PREFIX}dirty"
SWEEP_KEY = f"{PREFIX}sweep"
EXPIRED_KEY = f"{PREFIX}expired"
REDBEAT_PREFIX = f"{PREFIX}redbeat:"
ARCHIVE_ID_KEY = f"{PREFIX}archive_id"
ARCHIVE_SEEN_KEY = f"{PREFIX}archive_seen"


_KINDS: list[str] = []


def _per_timeline(kind: str) -> Callable[[str], str]:
    """The builder of ``walbackup:KIND:{ttid}``, named ``KIND_key``."""
    _KINDS.append(kind)

    def key(ttid: str) -> str:
        return f"{PREFIX}{kind}:{ttid}"

    key.__name__ = key.__qualname__ = f"{kind}_key"
    return key


tl_key = _per_timeline("tl")
peers_key = _per_timeline("peers")
lease_key = _per_timeline("lease")
inflight_key = _per_timeline("inflight")
done_key = _per_timeline("done")
kick_key = _per_timeline("kick")
sums_key = _per_timeline("sums")
ledger_key = _per_timeline("ledger")
partials_key = _per_timeline("partials")
archive_key = _per_timeline("archive")
problems_key = _per_timeline("problems")


def window_keys(ttid: str) -> list[str]:
    """KEYS of the commit scripts: lease, timeline, inflight, done, ledger."""
    return [lease_key(ttid), tl_key(ttid), inflight_key(ttid), done_key(ttid), ledger_key(ttid)]


def timeline_keys(ttid: str) -> list[str]:
    """Every per-timeline key of ``ttid`` (what ``walbackup forget`` deletes)."""
    return [f"{PREFIX}{kind}:{ttid}" for kind in _KINDS]
