"""Per-process singletons: Redis state, remote storage, elector, node service.

Created on first use inside the worker process (never at import, never before
a fork), from the settings.
"""

from __future__ import annotations

import threading
from functools import lru_cache

from tasks.config import get_settings
from tasks.core.lsn import Lsn
from tasks.elector import Elector
from tasks.node import NodeService
from tasks.recovery import remote_backup_end
from tasks.state.redis import RedisState
from tasks.storage import open_storage
from tasks.storage.base import RemoteStorage

_lock = threading.Lock()
_node: NodeService | None = None


@lru_cache(maxsize=1)
def get_state() -> RedisState:
    return RedisState.from_url(get_settings().redis_url)


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
    )


def recover_backup_lsn(ttid: str, start: Lsn, seg_size: int) -> Lsn:
    return remote_backup_end(get_storage(), ttid, start, seg_size)


def kick_backup(ttid: str, node_id: int) -> None:
    """Send ``backup_timeline`` for ``ttid`` to the node's own queue."""
    from tasks.app import app, node_queue

    app.send_task("walbackup.backup_timeline", args=[ttid], queue=node_queue(node_id))


@lru_cache(maxsize=1)
def get_elector() -> Elector:
    s = get_settings()
    return Elector(
        get_state(),
        kick_backup,
        heartbeat_timeout_s=s.heartbeat_timeout,
        max_offloader_lag_bytes=s.max_offloader_lag_bytes,
        default_seg_size=s.wal_seg_size,
        kick_interval_ms=max(2000, int(2 * s.election_interval * 1000)),
        backup_enabled=s.backup_enabled,
        recover=recover_backup_lsn,
    )


def get_node() -> NodeService:
    global _node
    with _lock:
        if _node is None:
            from tasks.jobs import send_upload

            _node = NodeService(
                get_settings(), get_state(), get_storage(), get_elector(), send_upload
            )
        return _node
