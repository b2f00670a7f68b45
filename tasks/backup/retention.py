"""``walbackup retain`` and ``walbackup delete``: removing archived WAL, resumably.

The rules (what goes, in which order, and why lowest first) are
``tasks.core.retention``'s; this module lists, records and deletes. Both
operations work from a fresh listing, so a rerun after an interruption
finishes the job, and log one line per run with the counts, starting
``Timeline TENANT/TIMELINE:`` like every line about a timeline.

- Retain needs the timeline's backup_lsn in Redis (what is safely archived)
  and refuses a cutoff above ``retain_limit``. It records the new archive
  start (the ``_retained`` marker in the bucket, then the Redis field
  ``archive_start_lsn``) before deleting anything, so the scrub, the recovery
  of backup_lsn and any check of the archive know where it starts even if
  the run stops halfway. It runs beside a live backup: it never touches what
  the offloader writes.
- Delete refuses while a live node holds the timeline (its offloader would
  keep uploading, and the node would register it again). It deletes every
  object under the timeline's prefix, then forgets the timeline in Redis,
  last: an interrupted delete still shows in ``walbackup status``.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from tasks.archive.ledger_store import LedgerStore
from tasks.archive.retained import marker_key, read_archive_start
from tasks.core.election import is_alive
from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.core.retention import (
    ArchivedObject,
    Kind,
    Summary,
    archived_object,
    marker_bytes,
    parse_before,
    retain_limit,
    summarize,
    to_retain,
)
from tasks.core.segments import xlog_file_name
from tasks.errors import InvalidInput, WalBackupError
from tasks.state.redis import RedisState
from tasks.storage.base import DELETE_BATCH, RemoteStorage, timeline_prefix

log = logging.getLogger("walbackup.retention")


def list_archive(
    storage: RemoteStorage, ttid: TenantTimelineId, seg_size: int, below: int | None = None
) -> Iterator[ArchivedObject]:
    """The timeline's objects in key order; with ``below``, only up to the
    first key at or after that segment's name (all a retain can delete)."""
    prefix = timeline_prefix(ttid)
    stop = xlog_file_name(below, seg_size) if below is not None else None
    for info in storage.list(prefix):
        name = info.key[len(prefix) :]
        if stop is not None and name >= stop:
            return
        yield archived_object(name, info.size, seg_size)


@dataclass(frozen=True, slots=True)
class RetainPlan:
    ttid: TenantTimelineId
    seg_size: int
    backup_lsn: Lsn
    cutoff: int
    """The first segment kept."""
    limit: int
    """The highest cutoff allowed (``retain_limit``)."""
    objects: list[ArchivedObject]

    @property
    def archive_start(self) -> Lsn:
        return Lsn.from_segment(self.cutoff, 0, self.seg_size)

    def describe(self) -> dict[str, object]:
        """The plan for a person (``--json`` prints it as it is)."""
        return {
            "timeline": str(self.ttid),
            "backup_lsn": str(self.backup_lsn),
            "archive_start_lsn": str(self.archive_start),
            "kept_from": xlog_file_name(self.cutoff, self.seg_size),
            "limit": xlog_file_name(self.limit, self.seg_size),
            **summarize(self.objects).as_dict(self.seg_size),
        }


def plan_retain(
    storage: RemoteStorage,
    state: RedisState,
    ttid: TenantTimelineId,
    before: str,
    keep_segments: int,
    default_seg_size: int,
) -> RetainPlan:
    """What ``retain --before BEFORE`` would delete; ``InvalidInput`` when
    backup_lsn is unknown or BEFORE lies above the limit (nothing deleted)."""
    record = state.timeline(str(ttid))
    if record.backup_lsn is None:
        raise InvalidInput(
            f"timeline {ttid} has no backup_lsn in Redis (not registered, or not recovered "
            "yet): without it nothing is known to be safely archived; nothing deleted"
        )
    seg_size = record.wal_seg_size or default_seg_size
    cutoff = parse_before(before, seg_size)
    limit = retain_limit(record.backup_lsn, seg_size, keep_segments)
    if cutoff > limit:
        raise InvalidInput(
            f"--before {before} reaches too far: backup_lsn is {record.backup_lsn}, and "
            f"segments from {xlog_file_name(limit, seg_size)} on are kept "
            f"(WALBACKUP_RETAIN_KEEP_SEGMENTS={keep_segments} below backup_lsn's); "
            "nothing deleted"
        )
    objects = to_retain(list_archive(storage, ttid, seg_size, below=cutoff), cutoff)
    return RetainPlan(ttid, seg_size, record.backup_lsn, cutoff, limit, objects)


def _raise_marker(
    storage: RemoteStorage, plan: RetainPlan, start: Lsn, recorded: Lsn | None
) -> None:
    """Make the ``_retained`` marker, which said ``recorded``, say at least ``start``."""
    if recorded is None or recorded < start:
        storage.put_bytes(marker_key(plan.ttid), marker_bytes(start, plan.seg_size))


def retain(storage: RemoteStorage, state: RedisState, plan: RetainPlan) -> Summary:
    """Record the new archive start, then delete the plan's objects, lowest first."""
    ttid = str(plan.ttid)
    start = plan.archive_start
    # Redis first: a start a failover could undo refuses the whole run before
    # the marker says it (a segment lost below it later would pass as retained).
    recorded = read_archive_start(storage, plan.ttid)
    state.raise_archive_start(ttid, max(start, recorded or start), replicated=True)
    _raise_marker(storage, plan, start, recorded)
    done = _delete(storage, plan.ttid, plan.seg_size, "retain", plan.objects)
    # Again: a retain reaching less far that ran meanwhile may have written
    # its lower start over ours (the marker has no conditional write). A
    # restore reads below the marker's start as deleted on purpose.
    _raise_marker(storage, plan, start, read_archive_start(storage, plan.ttid))
    state.forget_partials(ttid, [o.name for o in plan.objects if o.kind is Kind.PARTIAL])
    if done.objects:
        LedgerStore(storage).record_deletion(
            plan.ttid,
            plan.seg_size,
            {"command": "retain", "archive_start_lsn": str(start),
             **done.as_dict(plan.seg_size)},
        )  # fmt: skip
    log.info(
        "Timeline %s: retain: deleted %s archive_start=%s",
        ttid,
        _counts(done, plan.seg_size),
        start,
    )
    return done


@dataclass(frozen=True, slots=True)
class DeletePlan:
    ttid: TenantTimelineId
    seg_size: int
    objects: list[ArchivedObject]
    live_nodes: list[int] = field(default_factory=list)
    """Nodes holding the timeline now: delete refuses."""
    dead_nodes: list[int] = field(default_factory=list)
    """Nodes that held it and stopped heartbeating: they upload again if they return."""

    def describe(self) -> dict[str, object]:
        return {
            "timeline": str(self.ttid),
            **summarize(self.objects).as_dict(self.seg_size),
            "live_nodes": self.live_nodes,
            "dead_nodes": self.dead_nodes,
        }


def plan_delete(
    storage: RemoteStorage,
    state: RedisState,
    ttid: TenantTimelineId,
    heartbeat_timeout_s: float,
    default_seg_size: int,
) -> DeletePlan:
    """What ``delete`` would remove, and which nodes still hold the timeline."""
    record = state.timeline(str(ttid))
    peers = state.peers(str(ttid))
    seg_size = record.wal_seg_size or (peers[0].wal_seg_size if peers else default_seg_size)
    alive, dead = _holders(state, str(ttid), heartbeat_timeout_s)
    objects = list(list_archive(storage, ttid, seg_size))
    return DeletePlan(ttid, seg_size, objects, alive, dead)


def _holders(
    state: RedisState, ttid: str, heartbeat_timeout_s: float
) -> tuple[list[int], list[int]]:
    """The nodes whose heartbeat for ``ttid`` is recorded: alive, and dead."""
    now = state.clock.now()
    peers = [p.peer for p in state.peers(ttid)]
    alive = sorted(p.node_id for p in peers if is_alive(p, now, heartbeat_timeout_s))
    return alive, sorted(p.node_id for p in peers if p.node_id not in alive)


def refuse_live(ttid: TenantTimelineId, nodes: list[int]) -> InvalidInput:
    return InvalidInput(
        f"timeline {ttid} is held by live node(s) {nodes}: remove its directory from "
        "their WORKDIR (or stop them) first, else they keep backing it up; nothing deleted"
    )


@dataclass(frozen=True, slots=True)
class DeleteResult:
    deleted: Summary
    leftover: int
    """Objects found under the prefix after deleting (written meanwhile)."""
    live_nodes: list[int]
    """Nodes found holding the timeline afterwards; Redis was not forgotten."""

    @property
    def complete(self) -> bool:
        return not self.leftover and not self.live_nodes


def delete_timeline(
    storage: RemoteStorage, state: RedisState, plan: DeletePlan, heartbeat_timeout_s: float
) -> DeleteResult:
    """Delete every object of the timeline (listed afresh, lowest first),
    then, if nothing was written meanwhile and no live node holds it, forget
    it in Redis."""
    if plan.live_nodes:
        raise refuse_live(plan.ttid, plan.live_nodes)
    ttid = str(plan.ttid)
    objects = list_archive(storage, plan.ttid, plan.seg_size)
    done = _delete(storage, plan.ttid, plan.seg_size, "delete", objects)
    leftover = sum(1 for _ in storage.list(timeline_prefix(plan.ttid)))
    live, _ = _holders(state, ttid, heartbeat_timeout_s)
    result = DeleteResult(done, leftover, live)
    if result.complete:
        state.forget(ttid)
    log.log(
        logging.INFO if result.complete else logging.WARNING,
        "Timeline %s: delete: deleted %s leftover=%d live_nodes=%s redis_state=%s",
        ttid,
        _counts(done, plan.seg_size),
        leftover,
        live,
        "forgotten" if result.complete else "kept",
    )
    return result


def _delete(
    storage: RemoteStorage,
    ttid: TenantTimelineId,
    seg_size: int,
    what: str,
    objects: Iterable[ArchivedObject],
) -> Summary:
    """Delete ``objects`` in their (key) order, ``DELETE_BATCH`` at a time. A
    failure logs how far it got (a rerun goes on from there) and is raised."""
    prefix = timeline_prefix(ttid)
    deleted: list[ArchivedObject] = []
    batch: list[ArchivedObject] = []
    pending = iter(objects)
    try:
        while batch := list(itertools.islice(pending, DELETE_BATCH)):
            storage.delete_many(prefix + o.name for o in batch)
            deleted += batch
    except WalBackupError as exc:  # a refused batch may be carried out, wholly or in part
        log.warning(
            "Timeline %s: %s: stopped after deleting %s; of the batch then (%s) some or all "
            "may be gone: %s",
            ttid, what, _counts(summarize(deleted), seg_size),
            _counts(summarize(batch), seg_size), exc,
        )  # fmt: skip
        raise
    return summarize(deleted)


def _counts(summary: Summary, seg_size: int | None) -> str:
    """``objects=N bytes=N segments=N partials=N other=N first=… last=…``."""
    text = (
        f"objects={summary.objects} bytes={summary.bytes} segments={summary.segments} "
        f"partials={summary.partials} other={summary.other}"
    )
    if seg_size is not None and summary.first_segno is not None:
        assert summary.last_segno is not None
        first = xlog_file_name(summary.first_segno, seg_size)
        text += f" first={first} last={xlog_file_name(summary.last_segno, seg_size)}"
    return text
