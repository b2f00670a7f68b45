"""Celery tasks: thin wrappers with stable names around the elector and node service.

walbackup.trigger          shared queue  register timelines, elect them now
walbackup.elect_all        shared queue  beat's tick: elect every registered timeline
walbackup.backup_timeline  node.<id>     offloader: take the lease, fill the upload window
walbackup.upload_segment   node.<id>     upload one segment, ordered commit, refill
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from typing import Any

import redis
from celery import Task

from tasks.app import app, node_queue
from tasks.config import get_settings
from tasks.core.commit import backoff_ms
from tasks.core.ids import TenantTimelineId
from tasks.errors import ChecksumMismatch, WalBackupError
from tasks.metrics import BACKUP_ERRORS
from tasks.node import CHAIN_BUDGET_S
from tasks.runtime import get_elector, get_node, get_state

log = logging.getLogger("walbackup.jobs")

ROUND_LOCK_KEY = "walbackup:round"


@app.task(name="walbackup.trigger")
def trigger(ttids: list[str]) -> dict[str, Any]:
    """Register timelines as needing backup and elect them at once."""
    ids = [str(TenantTimelineId.parse(t)) for t in ttids]
    get_state().register(ids)
    outcomes = get_elector().elect(ids, force_kick=True)
    return {o.ttid: o.election.offloader for o in outcomes}


@app.task(name="walbackup.elect_all")
def elect_all() -> int:
    """One election round over every registered timeline.

    A round lock shorter than the interval keeps a second beat (or a backlog
    of ticks) from running rounds back to back."""
    interval_ms = int(get_settings().election_interval * 1000)
    state = get_state()
    if not state.r.set(ROUND_LOCK_KEY, "1", nx=True, px=max(100, interval_ms * 9 // 10)):
        return 0
    return get_elector().run_round()


@app.task(name="walbackup.backup_timeline")
def backup_timeline(ttid: str) -> str:
    return get_node().backup(ttid)


def send_upload(ttid: str, segno: int, seg_size: int, token: str) -> None:
    node_id = get_settings().node_id
    assert node_id is not None
    upload_segment.apply_async(args=[ttid, segno, seg_size, token], queue=node_queue(node_id))


@app.task(name="walbackup.upload_segment", bind=True, max_retries=None)
def upload_segment(self: Task, ttid: str, segno: int, seg_size: int, token: str) -> str:
    """Upload ``segno``, then, for up to ``CHAIN_BUDGET_S``, the segments its
    commits claim; a failure retries the segment that failed."""
    node = get_node()
    chain_until = time.monotonic() + CHAIN_BUDGET_S
    pending: deque[int] = deque()  # claimed for this task, not started yet
    started = False
    with node.chain():
        try:
            while True:
                outcome = node.upload(
                    ttid,
                    segno,
                    seg_size,
                    token,
                    started=started,
                    chain_until=chain_until,
                    backlog=len(pending),
                )
                if outcome.status != "committed":
                    return outcome.status  # fenced: the new lease holder claims anew
                pending.extend(outcome.next_segnos)
                if not pending:
                    return outcome.status
                if time.monotonic() >= chain_until:
                    node.hand_out(ttid, token, list(pending), seg_size)
                    return outcome.status
                segno, started = pending.popleft(), True
        except (WalBackupError, redis.RedisError, OSError) as exc:
            if pending:  # claimed for us: someone must upload them
                with contextlib.suppress(Exception):
                    node.hand_out(ttid, token, list(pending), seg_size)
            return _retry_later(self, exc, ttid, segno, seg_size, token, chained=started)


def _retry_later(
    task: Task,
    exc: Exception,
    ttid: str,
    segno: int,
    seg_size: int,
    token: str,
    *,
    chained: bool,
) -> str:
    BACKUP_ERRORS.inc()
    # The attempt count resets on success: a chained segment that fails is on
    # its first attempt, whatever this task's own retry count.
    attempt = 1 if chained else task.request.retries + 1
    level = logging.ERROR if isinstance(exc, ChecksumMismatch) else logging.WARNING
    log.log(
        level,
        "Timeline %s: upload of segno %d failed (attempt %d): %s",
        ttid,
        segno,
        attempt,
        exc,
    )
    with contextlib.suppress(redis.RedisError):
        get_state().record_error(ttid, f"segno {segno}: {exc}")
    # min(5000 ms, 10 ms * 2**attempt); a new task run starts the count again.
    countdown = backoff_ms(attempt) / 1000
    if chained:
        node_id = get_settings().node_id
        assert node_id is not None
        upload_segment.apply_async(
            args=[ttid, segno, seg_size, token], countdown=countdown, queue=node_queue(node_id)
        )
        return "retrying"
    raise task.retry(countdown=countdown, exc=exc) from exc
