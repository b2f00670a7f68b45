"""The node service's upload path in one process: ``NodeService`` wired as a
worker wires it, with the real Lua scripts on the private Redis, a WORKDIR
written by the simulator, storage in a tmp dir, and a fake ``send_upload``
that records what would go to the queue. The ``upload_segment`` task itself
(``tasks.jobs``) runs in this thread, its ``get_node`` pointed at our node.

Time is faked where chaining decides (``tasks.jobs`` and
``tasks.backup.uploader`` read ``time.monotonic``): each upload takes
``UPLOAD_S`` of fake time, so the chain budget runs out after a known number
of uploads."""

from __future__ import annotations

import secrets
import sys
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

import tasks.backup.uploader as uploader_module
import tasks.jobs as jobs
from tasks.backup.elector import Elector
from tasks.backup.handoff import UploadJob
from tasks.backup.leases import Dispatched
from tasks.backup.node import NodeService
from tasks.backup.retries import RetryPark, UploadRef
from tasks.backup.uploader import UploadOutcome
from tasks.config import load_settings
from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.core.segments import parse_xlog_file_name
from tasks.dev.simulate import simulate
from tasks.errors import StorageUnavailable
from tasks.state.keys import inflight_key
from tasks.state.redis import RedisState
from tasks.storage.base import SegmentDigest, UploadResult
from tasks.storage.local import LocalStorage

pytestmark = pytest.mark.integration

SEG = 1 << 20
UPLOAD_S = 0.4
Sent = tuple[str, int, int, str, int]


class Clock:
    """Fake ``time.monotonic``; ``time.time`` stays real (Redis deadlines)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return time.time()


class Storage(LocalStorage):
    """Real local storage that records the segnos uploaded, advances the fake
    clock by ``UPLOAD_S`` per upload, and fails the segnos in ``failing``."""

    def __init__(self, root: Path, clock: Clock) -> None:
        super().__init__(root)
        self.clock = clock
        self.uploaded: list[int] = []
        self.failing: set[int] = set()
        self._lock = threading.Lock()

    def upload_file(
        self, key: str, path: Path, expected_size: int, digest: SegmentDigest | None = None
    ) -> UploadResult:
        segno = parse_xlog_file_name(key.rsplit("/", 1)[1], SEG)[1]
        if segno in self.failing:
            raise StorageUnavailable(f"{self.url}: down for the test")
        result = super().upload_file(key, path, expected_size, digest)
        with self._lock:
            self.uploaded.append(segno)
            self.clock.now += UPLOAD_S
        return result


class Harness:
    def __init__(
        self,
        tmp_path: Path,
        state: RedisState,
        parallel_jobs: int,
        reorder_horizon: int,
        timeline_id: str | None = None,
    ) -> None:
        self.state = state
        self.clock = Clock()
        self.sent: list[Sent] = []
        self.ttid_id = TenantTimelineId(secrets.token_hex(16), timeline_id or secrets.token_hex(16))
        self.ttid = str(self.ttid_id)
        workdir = tmp_path / "node1"
        simulate([workdir], [self.ttid_id], segments=8, seg_size=SEG)  # segnos 1..8
        settings = load_settings(
            node_id=1,
            workdir=workdir,
            wal_seg_size=SEG,
            data_dir=tmp_path / "data",
            parallel_jobs=parallel_jobs,
            reorder_horizon=reorder_horizon,
        )
        self.storage = Storage(tmp_path / "remote", self.clock)
        self.kicks: list[tuple[str, int]] = []
        self.elector = Elector(
            state,
            lambda ttid, node: self.kicks.append((ttid, node)),
            heartbeat_timeout_s=5.0,
            max_offloader_lag_bytes=128 * SEG,
            default_seg_size=SEG,
            kick_hold_ms=2000,
        )
        # A batch (upload_segments) is recorded as its segments' messages.
        self.node = NodeService(
            settings, state, self.storage, self.elector, self.send, self.send_batch
        )
        # What the node's threads do first: check its storage is the archive,
        # scan WORKDIR, publish a heartbeat.
        self.node.identity.check()
        self.node._refresh(trigger=False)
        [outcome] = self.elector.elect([self.ttid])
        assert outcome.election.offloader == 1
        assert self.backup_lsn() == seg(1)

    def send(self, ttid: str, segno: int, seg_size: int, token: str, attempt: int) -> None:
        self.sent.append((ttid, segno, seg_size, token, attempt))

    def send_batch(self, jobs: list[UploadJob]) -> None:
        for job in jobs:
            self.send(*job, 0)

    def start_window(self) -> str:
        """``backup_timeline``: take the lease, claim and send the first window."""
        assert isinstance(self.node.backup(self.ttid), Dispatched)
        token = self.node.leases.token(self.ttid)
        assert token is not None
        return token

    def backup_lsn(self) -> Lsn | None:
        return self.state.timeline(self.ttid).backup_lsn

    def sent_segnos(self) -> list[int]:
        return [s[1] for s in self.sent]

    def finish_ahead_of_one(self, token: str) -> None:
        """Segments 2 and 3 uploaded and finished: backup_lsn waits for 1."""
        self.sent.clear()
        for segno in (2, 3):
            self.node.upload(self.ttid, segno, SEG, token)

    def occupy_pool(self, stack: ExitStack, leave: int = 0) -> None:
        """Every pool thread but ``leave`` inside an ``upload_segment`` task."""
        for _ in range(self.node.tasks.slots - leave):
            stack.enter_context(self.node.chain())


def seg(segno: int) -> Lsn:
    return Lsn.from_segment(segno, 0, SEG)


@pytest.fixture
def make_harness(
    tmp_path: Path, state: RedisState, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Harness]:
    """A node with ``parallel_jobs`` and, unless told, the reference's window
    (``reorder_horizon`` 1: a finished segment keeps its slot until backup_lsn
    passes it), which the chaining tests below are written against."""

    def make(parallel_jobs: int, reorder_horizon: int = 1) -> Harness:
        h = Harness(tmp_path, state, parallel_jobs, reorder_horizon)
        monkeypatch.setattr(jobs, "get_node", lambda: h.node)
        monkeypatch.setattr(jobs, "time", h.clock)
        monkeypatch.setattr(uploader_module, "time", h.clock)
        return h

    return make


@pytest.fixture
def harness(make_harness: Callable[..., Harness]) -> Harness:
    return make_harness(3)


def test_backup_claims_the_window_and_sends_it(harness: Harness) -> None:
    token = harness.start_window()
    assert harness.sent == [(harness.ttid, s, SEG, token, 0) for s in (1, 2, 3)]
    assert sorted(harness.state.claimed(harness.ttid)) == [1, 2, 3]
    assert harness.node.backup(harness.ttid) == Dispatched(0)  # window full


def test_a_task_chains_the_segments_its_commits_claim_until_its_budget(
    make_harness: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch
) -> None:
    """parallel_jobs 1: each commit claims exactly the next segment. The task
    uploads 1, 2, 3 (each taking 0.4 of its budget) and sends 4, claimed by
    the commit of 3 after the budget ran out."""
    assert jobs.CHAIN_BUDGET_S is uploader_module.CHAIN_BUDGET_S  # the budget jobs.py uses
    monkeypatch.setattr(sys.modules[__name__], "UPLOAD_S", 0.4 * jobs.CHAIN_BUDGET_S)
    harness = make_harness(1)
    token = harness.start_window()
    assert harness.sent_segnos() == [1]
    harness.sent.clear()
    assert jobs.upload_segment(harness.ttid, 1, SEG, token) == "committed"
    assert harness.storage.uploaded == [1, 2, 3]
    assert harness.sent == [(harness.ttid, 4, SEG, token, 0)]
    assert harness.backup_lsn() == seg(4)
    assert harness.state.claimed(harness.ttid) == [4]


def test_a_task_with_budget_left_uploads_the_whole_backlog(
    make_harness: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch
) -> None:
    harness = make_harness(1)
    monkeypatch.setattr(jobs, "CHAIN_BUDGET_S", 100.0)
    token = harness.start_window()
    harness.sent.clear()
    assert jobs.upload_segment(harness.ttid, 1, SEG, token) == "committed"
    assert harness.storage.uploaded == list(range(1, 9))
    assert harness.sent == []
    assert harness.backup_lsn() == seg(9)
    assert harness.state.claimed(harness.ttid) == []


def test_one_claimed_segment_is_kept_the_others_are_sent(harness: Harness) -> None:
    token = harness.start_window()  # claims 1, 2, 3
    harness.sent.clear()
    far = harness.clock.now + 100
    for segno in (2, 3):  # finished, but backup_lsn waits for 1
        assert harness.node.upload(harness.ttid, segno, SEG, token).next_segnos == ()
    assert harness.backup_lsn() == seg(1)
    outcome = harness.node.upload(harness.ttid, 1, SEG, token, chain_until=far)
    assert outcome.status == "committed"
    assert harness.backup_lsn() == seg(4)
    assert outcome.next_segnos == (4,)  # the window [4, 7) is claimed
    assert harness.sent_segnos() == [5, 6]


def test_beyond_the_reference_window_a_finished_segment_frees_its_slot(
    make_harness: Callable[..., Harness],
) -> None:
    """Reorder horizon 2 x 3 segments: 2 and 3 finish above a slow 1, and
    each commit claims the next segment within [1, 7) at once."""
    harness = make_harness(3, reorder_horizon=2)
    token = harness.start_window()  # claims 1, 2, 3
    harness.sent.clear()
    for segno in (2, 3):
        assert harness.node.upload(harness.ttid, segno, SEG, token).next_segnos == ()
    assert harness.backup_lsn() == seg(1)
    assert harness.sent_segnos() == [4, 5]
    assert sorted(harness.state.claimed(harness.ttid)) == [1, 4, 5]


def test_past_its_budget_a_commit_sends_everything_it_claims(harness: Harness) -> None:
    """Even with every pool thread busy: the task is done chaining."""
    token = harness.start_window()
    harness.finish_ahead_of_one(token)
    with ExitStack() as stack:
        harness.occupy_pool(stack)
        # The upload itself takes UPLOAD_S: the budget runs out meanwhile.
        until = harness.clock.now + UPLOAD_S / 2
        outcome = harness.node.upload(harness.ttid, 1, SEG, token, chain_until=until)
    assert outcome.next_segnos == ()
    assert harness.sent_segnos() == [4, 5, 6]


def test_a_saturated_pool_keeps_every_claimed_segment(harness: Harness) -> None:
    """With every pool thread running an upload task, a queued task would only
    wait: the committing task keeps all it claims."""
    token = harness.start_window()
    harness.finish_ahead_of_one(token)
    with ExitStack() as stack:
        harness.occupy_pool(stack)
        assert harness.node.tasks.saturated
        outcome = harness.node.upload(
            harness.ttid, 1, SEG, token, chain_until=harness.clock.now + 100
        )
    assert not harness.node.tasks.saturated
    assert outcome.next_segnos == (4, 5, 6)
    assert harness.sent == []


def test_a_task_whose_commit_claims_nothing_takes_a_segment_another_task_hands_out(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Task A commits 2 while 1 is still uploading: nothing to claim, so it
    waits. Task B commits 1, claims 4, 5, 6, keeps 4, hands 5 to A, sends 6."""
    monkeypatch.setattr(uploader_module, "HANDOFF_WAIT_MAX_S", 30.0)
    token = harness.start_window()
    harness.node.upload(harness.ttid, 3, SEG, token)
    harness.sent.clear()
    far = harness.clock.now + 100
    a: list[tuple[int, ...]] = []
    task_a = threading.Thread(
        target=lambda: a.append(
            harness.node.upload(harness.ttid, 2, SEG, token, chain_until=far).next_segnos
        )
    )
    task_a.start()
    handoffs = harness.node.tasks._handoffs
    deadline = time.monotonic() + 30
    while not ((harness.ttid, token) in handoffs and handoffs[(harness.ttid, token)].waiting == 1):
        assert task_a.is_alive() and time.monotonic() < deadline, a
        time.sleep(0.005)
    b = harness.node.upload(harness.ttid, 1, SEG, token, chain_until=far)
    task_a.join(30)
    assert b.next_segnos == (4,)
    assert a == [(5,)]
    assert harness.sent_segnos() == [6]
    assert harness.backup_lsn() == seg(4)


def test_a_stale_token_is_fenced_and_commits_nothing(harness: Harness) -> None:
    old = harness.start_window()
    assert harness.state.release_lease(harness.ttid, old)  # as if it expired
    new = harness.state.acquire_lease(harness.ttid, "2.other", 2, 60_000)
    assert new is not None and new != old
    # A new task under the old token: start_upload refuses, nothing is sent.
    assert jobs.upload_segment(harness.ttid, 1, SEG, old) == "fenced"
    assert harness.storage.uploaded == []
    # A chained segment (start_upload skipped): uploaded, but its commit is refused.
    outcome = harness.node.upload(harness.ttid, 1, SEG, old, started=True)
    assert outcome.status == "fenced" and outcome.next_segnos == ()
    assert harness.storage.uploaded == [1]
    assert harness.backup_lsn() == seg(1)
    assert harness.state.claimed(harness.ttid) == []
    assert harness.node.leases.token(harness.ttid) is None  # forgotten
    assert harness.state.lease_holder_token(harness.ttid) == new  # not released


def test_a_failed_upload_parks_its_retry_and_the_segments_it_held(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A saturated task keeps 4, 5, 6; uploading 4 fails: 4 is parked with its
    backoff, 5 and 6 (never started) are parked due at once."""
    park = RetryPark(harness.clock.monotonic)
    monkeypatch.setattr(harness.node.retrying, "retries", park)
    token = harness.start_window()
    harness.finish_ahead_of_one(token)
    harness.storage.failing = {4}
    with ExitStack() as stack:
        harness.occupy_pool(stack, leave=1)  # the task itself is the last
        assert jobs.upload_segment(harness.ttid, 1, SEG, token) == "retrying"
    assert harness.storage.uploaded == [2, 3, 1]
    assert harness.backup_lsn() == seg(4)
    assert harness.sent == []
    assert park.uploads() == {UploadRef(harness.ttid, s, SEG, token) for s in (4, 5, 6)}
    assert harness.node.health.degraded  # the prober is asked to watch storage
    assert "segno 4" in harness.state.timeline(harness.ttid).last_error

    harness.node.retrying.send_parked()  # the node thread's round
    assert harness.sent == [(harness.ttid, s, SEG, token, 0) for s in (5, 6)]
    harness.clock.now += 0.02  # backoff_ms(1)
    harness.node.retrying.send_parked()
    assert harness.sent[2:] == [(harness.ttid, 4, SEG, token, 1)]
    assert len(park) == 0


def test_a_batch_uploads_its_segments_in_turn_and_a_failure_parks_only_its_own(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``upload_segments`` (several claimed segments in one message): 1, 2, 3
    in turn; 2 fails and is parked, 3 is uploaded all the same."""
    park = RetryPark(harness.clock.monotonic)
    monkeypatch.setattr(harness.node.retrying, "retries", park)
    token = harness.start_window()
    harness.storage.failing = {2}
    batch = [[harness.ttid, s, SEG, token] for s in (1, 2, 3)]
    with ExitStack() as stack:
        harness.occupy_pool(stack, leave=1)  # saturated: no chaining past the batch
        assert jobs.upload_segments(batch) == ["committed", "retrying", "committed"]
    # 1's commit claimed 4, which the saturated task uploaded next (chaining).
    assert harness.storage.uploaded == [1, 4, 3]
    assert park.uploads() == {UploadRef(harness.ttid, 2, SEG, token)}
    assert harness.backup_lsn() == seg(2)  # 2 is the hole


def test_a_bug_in_one_job_of_a_batch_sends_the_rest_back_and_fails_loudly(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Jobs after an unexpected error were claimed for this task and never
    started: they go back to the queue instead of waiting out their claims."""
    token = harness.start_window()
    harness.sent.clear()
    upload = harness.node.upload

    def buggy(ttid: str, segno: int, *args: Any, **kwargs: Any) -> UploadOutcome:
        if segno == 2:
            raise RuntimeError("a bug")
        return upload(ttid, segno, *args, **kwargs)

    monkeypatch.setattr(harness.node, "upload", buggy)
    with pytest.raises(RuntimeError, match="a bug"):
        jobs.upload_segments([[harness.ttid, s, SEG, token] for s in (1, 2, 3)])
    assert harness.storage.uploaded == [1, 4]  # 4: claimed by 1's commit, chained
    assert harness.sent_segnos() == [3]


def test_a_task_sets_its_claims_deadline_by_the_cluster_clock(harness: Harness) -> None:
    """A node whose wall clock was an hour behind Redis's set a task's claim
    deadline an hour in the past: the next refill claimed the segment again
    while it was uploading (an hour ahead: a lost message waited an hour)."""
    token = harness.start_window()
    harness.storage.failing = {1}  # its claim stays in flight, with the deadline the task set
    harness.clock.time = lambda: time.time() - 3600  # type: ignore[method-assign]
    assert jobs.upload_segment(harness.ttid, 1, SEG, token) == "retrying"
    deadline_ms = harness.state.r.zscore(inflight_key(harness.ttid), "1")
    assert deadline_ms is not None
    assert deadline_ms / 1000 > harness.state.clock.now() + 30
