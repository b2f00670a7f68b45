"""Builds a process's parts from the settings: Redis state, storage, elector, node service.

Each is created on first use inside the worker process (never at import, never
before a fork). Tasks are sent by name (``tasks.names``), so nothing here
imports the task module.
"""

from __future__ import annotations

import threading
from functools import lru_cache

from tasks.app import send
from tasks.backup.elector import Elector
from tasks.backup.handoff import UploadJob
from tasks.backup.node import NodeService
from tasks.backup.recovery import remote_backup_end
from tasks.config import get_settings
from tasks.core.election import is_alive
from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.names import (
    BACKUP_TIMELINE,
    HEAL_SEGMENT,
    SCRUB_TIMELINES,
    TRIGGER,
    UPLOAD_SEGMENT,
    UPLOAD_SEGMENTS,
    node_queue,
)
from tasks.state.redis import RedisState
from tasks.storage import open_storage
from tasks.storage.base import RemoteStorage

_lock = threading.Lock()
_node: NodeService | None = None


@lru_cache(maxsize=1)
def get_state() -> RedisState:
    s = get_settings()
    return RedisState.from_url(s.redis_url, **s.redis_options)


@lru_cache(maxsize=1)
def get_storage() -> RemoteStorage:
    """The workers' storage: one attempt per call and short timeouts, so every
    failure reaches the pipeline, whose own backoff and prober govern retries."""
    s = get_settings()
    return open_storage(
        s.effective_remote_storage,
        s3_endpoint_url=s.s3_endpoint_url,
        parallel_jobs=s.parallel_jobs,
        max_attempts=1,
        connect_timeout_s=2.0,
        read_timeout_s=10.0,
        sse=s.s3_sse,
        sse_kms_key_id=s.s3_sse_kms_key_id,
        upload_check=s.s3_upload_check,
    )


def recover_backup_lsn(ttid: str, start: Lsn, seg_size: int) -> Lsn:
    # On a node, through its guard: a listing of a storage that is not the
    # archive must never become backup_lsn (tasks.archive.identity).
    storage = get_node().storage if get_settings().node_id is not None else get_storage()
    return remote_backup_end(storage, ttid, start, seg_size, get_state())


def kick_backup(ttid: str, node_id: int) -> None:
    """Send ``backup_timeline`` for ``ttid`` to the node's own queue."""
    send(BACKUP_TIMELINE, [ttid], node_queue(node_id))


def send_upload(ttid: str, segno: int, seg_size: int, token: str, attempt: int = 0) -> None:
    """Send ``upload_segment`` to this node's own queue."""
    node_id = get_settings().node_id
    assert node_id is not None, "only a node (WALBACKUP_NODE_ID set) uploads"
    send(UPLOAD_SEGMENT, [ttid, segno, seg_size, token], node_queue(node_id), {"attempt": attempt})


def send_uploads(jobs: list[UploadJob]) -> None:
    """Send ``upload_segments`` (several claimed segments) to this node's own queue."""
    node_id = get_settings().node_id
    assert node_id is not None, "only a node (WALBACKUP_NODE_ID set) uploads"
    send(UPLOAD_SEGMENTS, [[list(job) for job in jobs]], node_queue(node_id))


def recover_later(ttids: list[str]) -> None:
    """``trigger`` (settled, no forced kick) for timelines whose backup_lsn a
    node's watcher could not recover, to that node's own queue."""
    node_id = get_settings().node_id
    assert node_id is not None, "only a node's watcher elects without listing"
    queue = node_queue(node_id)
    # Sent from the watcher thread: fail at once rather than hold it (beat
    # recovers them anyway, a round later).
    send(
        TRIGGER,
        [ttids],
        queue,
        {"force_kick": False, "settle": True},
        retry_policy={"max_retries": 0},
    )


def send_scrub(node_id: int, ttids: list[str]) -> None:
    send(SCRUB_TIMELINES, [ttids], node_queue(node_id))


def heal_elsewhere(ttid: TenantTimelineId, segno: int, seg_size: int) -> bool:
    """Send ``heal_segment`` to another live node that holds ``segno``."""
    s = get_settings()
    start = Lsn.from_segment(segno, 0, seg_size)
    state = get_state()
    now = state.clock.now()
    for record in state.peers(str(ttid)):
        p = record.peer
        if (
            p.node_id != s.node_id
            and is_alive(p, now, s.heartbeat_timeout)
            and p.local_start_lsn <= start < p.commit_lsn
        ):
            send(HEAL_SEGMENT, [str(ttid), segno, seg_size], node_queue(p.node_id))
            return True
    return False


@lru_cache(maxsize=1)
def get_elector() -> Elector:
    s = get_settings()
    return Elector(
        get_state(),
        kick_backup,
        heartbeat_timeout_s=s.heartbeat_timeout,
        max_offloader_lag_bytes=s.max_offloader_lag_bytes,
        default_seg_size=s.wal_seg_size,
        kick_hold_ms=s.kick_hold_ms,
        sweep_rounds=max(1, round(s.election_sweep_interval / s.election_interval)),
        backup_enabled=s.backup_enabled,
        recover=recover_backup_lsn,
        recover_later=recover_later,
    )


def get_node() -> NodeService:
    global _node
    with _lock:
        if _node is None:
            _node = NodeService(
                get_settings(),
                get_state(),
                get_storage(),
                get_elector(),
                send_upload,
                send_uploads,
                heal_elsewhere,
            )
        return _node
