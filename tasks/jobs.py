"""Celery tasks: thin wrappers with stable names around the elector and node service.

walbackup.trigger          shared queue  register timelines, elect them now
walbackup.elect_all        shared queue  beat's tick: elect what changed, and a sweep slice
walbackup.backup_timeline  node.<id>     offloader: take the lease, fill the upload window
walbackup.upload_segment   node.<id>     upload one segment, ordered commit, refill
walbackup.upload_segments  node.<id>     the same for several segments, when the queue is backed up
walbackup.scrub_all        shared queue  beat's tick: ask each offloader to scrub its timelines
walbackup.scrub_timelines  node.<id>     scrub these timelines (in the node's archive thread)
walbackup.heal_segment     node.<id>     upload this node's copy of a segment the archive lost
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from typing import Any

import redis

from tasks import names
from tasks.app import app
from tasks.backup.handoff import UploadJob
from tasks.backup.node import NodeService
from tasks.backup.retries import UploadRef
from tasks.backup.scrub_round import scrub_round
from tasks.backup.uploader import CHAIN_BUDGET_S
from tasks.config import get_settings
from tasks.core.ids import TenantTimelineId
from tasks.errors import BrokerUnavailable, WalBackupError
from tasks.wiring import get_elector, get_node, get_state, send_scrub

log = logging.getLogger("walbackup.jobs")


@app.task(name=names.TRIGGER)
def trigger(ttids: list[str], force_kick: bool = True, settle: bool = False) -> dict[str, Any]:
    """Register timelines as needing backup and elect them at once (listing
    the archive where backup_lsn is unknown). ``force_kick``: kick the
    offloader even if it was kicked lately (``walbackup trigger``); a node's
    watcher sends neither that nor ``settle`` (``Elector.recover_later``)."""
    ids = [str(TenantTimelineId.parse(t)) for t in ttids]
    get_state().register(ids)
    outcomes = get_elector().elect(ids, force_kick=force_kick, settle=math.inf if settle else None)
    return {o.ttid: o.election.offloader for o in outcomes}


# No task events: a round a second would bury the uploads in Flower's task list.
@app.task(name=names.ELECT_ALL, send_events=False)
def elect_all() -> int:
    """One election round: the timelines marked or with an expired peer,
    and a slice of the sweep over every registered timeline.

    A round lock shorter than the interval keeps a second beat (or a backlog
    of ticks) from running rounds back to back."""
    interval_ms = int(get_settings().election_interval * 1000)
    try:
        if not get_state().take_round_lock(max(100, interval_ms * 9 // 10)):
            return 0
        return get_elector().run_round()
    except (redis.RedisError, BrokerUnavailable) as exc:
        # Redis went away mid-round (a restart): one line, and the next tick
        # elects again; the timelines' marks are still there or re-made.
        log.warning("Election round failed, the next tick retries: %s: %s", type(exc).__name__, exc)
        return 0


@app.task(name=names.SCRUB_ALL, send_events=False)
def scrub_all() -> int:
    """Beat's scrub tick: one ``scrub_timelines`` message per offloader."""
    try:
        return scrub_round(get_state(), send_scrub, get_settings().scrub_interval)
    except (redis.RedisError, BrokerUnavailable) as exc:
        # As an election round: one line during an outage, not a traceback a tick.
        log.warning("Scrub round failed, the next tick retries: %s: %s", type(exc).__name__, exc)
        return 0


@app.task(name=names.SCRUB_TIMELINES)
def scrub_timelines(ttids: list[str]) -> int:
    return get_node().scrub(ttids)


@app.task(name=names.HEAL_SEGMENT)
def heal_segment(ttid: str, segno: int, seg_size: int) -> bool:
    return get_node().heal(ttid, segno, seg_size)


@app.task(name=names.BACKUP_TIMELINE)
def backup_timeline(ttid: str) -> str:
    return str(get_node().backup(ttid))


# What a failed upload attempt may raise; anything else is a bug and lets the
# task fail loudly. A lost broker surfaces as BrokerUnavailable (tasks.wiring).
_RETRIED = (WalBackupError, redis.RedisError, OSError)


@app.task(name=names.UPLOAD_SEGMENT)
def upload_segment(ttid: str, segno: int, seg_size: int, token: str, attempt: int = 0) -> str:
    """Upload ``segno``, then, for up to ``CHAIN_BUDGET_S``, the segments its
    commits claim. ``attempt``: failures of this segment so far. A failure
    parks the segment in the node until its retry is due (``tasks.backup.retries``)."""
    node = get_node()
    with node.chain():
        return _upload_chain(node, ttid, segno, seg_size, token, attempt, started=False)


@app.task(name=names.UPLOAD_SEGMENTS)
def upload_segments(jobs: list[list[Any]]) -> list[str]:
    """Claimed segments ``[ttid, segno, seg_size, token]``, of any timelines,
    uploaded in turn as ``upload_segment`` would, the chaining within one
    ``CHAIN_BUDGET_S``: sent in one message when the node's queue is backed up
    (``tasks.backup.handoff.UploadTasks.send``). A failure parks only its
    own segment (and what its chain claimed); the next ones still run. An
    unexpected error (a bug) sends the jobs not started yet back to the
    queue, then fails the task loudly."""
    node = get_node()
    chain_until = time.monotonic() + CHAIN_BUDGET_S
    todo = deque(UploadJob(str(t), int(n), int(z), str(k)) for t, n, z, k in jobs)
    results: list[str] = []
    with node.chain():
        while todo:
            job = todo.popleft()
            try:
                # The batch's other jobs count as this one's backlog: it
                # does not wait for a segment handed out by another task.
                results.append(_upload_chain(node, *job, 0, False, chain_until, len(todo)))
            except Exception:
                node.tasks.send(list(todo))  # claimed for this task, never started
                raise
    return results


def _upload_chain(
    node: NodeService,
    ttid: str,
    segno: int,
    seg_size: int,
    token: str,
    attempt: int,
    started: bool,
    chain_until: float | None = None,
    queued: int = 0,
) -> str:
    """Upload ``segno`` and, until ``chain_until`` (monotonic; default
    ``CHAIN_BUDGET_S`` from now), the segments its commits claim; the task
    has ``queued`` more jobs of its own."""
    if chain_until is None:
        chain_until = time.monotonic() + CHAIN_BUDGET_S
    pending: deque[int] = deque()  # claimed for this task, not started yet
    try:
        while True:
            outcome = node.upload(
                ttid,
                segno,
                seg_size,
                token,
                started=started,
                chain_until=chain_until,
                backlog=len(pending) + queued,
            )
            if outcome.status != "committed":
                return outcome.status  # fenced: the new lease holder claims anew
            pending.extend(outcome.next_segnos)
            if not pending:
                return outcome.status
            if time.monotonic() >= chain_until:
                node.hand_out(ttid, token, list(pending), seg_size)
                return outcome.status
            # The attempt count resets on success: a chained segment is
            # on its first attempt.
            segno, started, attempt = pending.popleft(), True, 0
    except _RETRIED as exc:
        node.park_claimed(ttid, token, list(pending), seg_size)
        return node.failed(UploadRef(ttid, segno, seg_size, token), attempt, exc)
