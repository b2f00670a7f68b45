"""How claimed segments reach upload tasks (``tasks.backup.handoff``): a waiting
task of the same timeline and lease first, else the queue, one message each
while pool threads are free and in batches once the queue is backed up; and
saturation."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from tasks.backup import handoff as handoff_module
from tasks.backup.handoff import BATCH_BYTES, SENT_FORGET_S, Handoff, UploadJob, UploadTasks

SEG = 1 << 20
Sent = list[tuple[str, int, int, str, int]]


def recorder() -> tuple[Sent, Callable[[str, int, int, str, int], None]]:
    sent: Sent = []

    def send(ttid: str, segno: int, seg_size: int, token: str, attempt: int) -> None:
        sent.append((ttid, segno, seg_size, token, attempt))

    return sent, send


def no_batches(jobs: list[UploadJob]) -> None:
    raise AssertionError(f"nothing should be batched here: {jobs}")


def batching(slots: int) -> tuple[UploadTasks, Sent, list[list[UploadJob]]]:
    sent, send = recorder()
    batches: list[list[UploadJob]] = []
    return UploadTasks(send, batches.append, slots=slots), sent, batches


def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_an_offer_with_nobody_waiting_gives_everything_back() -> None:
    handoff = Handoff()
    assert handoff.offer([4, 5]) == [4, 5]
    assert handoff.idle
    assert handoff.take(0.01) is None  # nothing was kept for later


def test_an_offer_goes_to_waiters_only_as_many_as_wait() -> None:
    handoff = Handoff()
    taken: list[int | None] = []
    waiters = [threading.Thread(target=lambda: taken.append(handoff.take(10))) for _ in range(2)]
    for w in waiters:
        w.start()
    wait_until(lambda: handoff.waiting == 2)
    assert handoff.offer([7, 8, 9]) == [9]  # two waiters: two segments, one back
    for w in waiters:
        w.join(10)
    assert sorted(t for t in taken if t is not None) == [7, 8]
    assert handoff.idle


def test_a_second_offer_does_not_go_to_a_waiter_already_served() -> None:
    """``len(ready) <= waiting``: a waiter woken but not yet running still
    counts as served, so no segment is left in ``ready`` with nobody to take it."""
    handoff = Handoff()
    handoff.waiting = 1  # one waiter, already handed segment 3, not yet running
    handoff.ready.append(3)
    assert handoff.offer([4]) == [4]
    assert list(handoff.ready) == [3]


def test_hand_out_prefers_a_waiting_task_of_the_same_timeline_and_lease() -> None:
    sent, send = recorder()
    tasks = UploadTasks(send, no_batches, slots=4)
    got: list[int | None] = []
    waiter = threading.Thread(target=lambda: got.append(tasks.take("t", "1.a:5", 10)))
    waiter.start()
    wait_until(lambda: ("t", "1.a:5") in tasks._handoffs)
    tasks.hand_out("t", "1.a:6", [3], SEG)  # another lease: never to that waiter
    assert sent == [("t", 3, SEG, "1.a:6", 0)]
    tasks.hand_out("t", "1.a:5", [4, 5], SEG)
    waiter.join(10)
    assert got == [4]
    assert sent[1:] == [("t", 5, SEG, "1.a:5", 0)]
    assert tasks._handoffs == {}  # the last waiter cleans up


def test_take_times_out_with_nothing_handed_out() -> None:
    sent, send = recorder()
    tasks = UploadTasks(send, no_batches, slots=4)
    started = time.monotonic()
    assert tasks.take("t", "1.a:5", 0.05) is None
    assert time.monotonic() - started >= 0.05
    assert tasks._handoffs == {}
    tasks.hand_out("t", "1.a:5", [9], SEG)
    assert sent == [("t", 9, SEG, "1.a:5", 0)]


def test_saturated_when_every_slot_runs_an_upload_task() -> None:
    _, send = recorder()
    tasks = UploadTasks(send, no_batches, slots=2)
    assert not tasks.saturated
    with tasks.running():
        assert not tasks.saturated
        with tasks.running():
            assert tasks.saturated
        assert not tasks.saturated
    try:
        with tasks.running():
            raise RuntimeError("a failing task still leaves its slot")
    except RuntimeError:
        pass
    assert not tasks.saturated and tasks._running == 0


def jobs_of(ttid: str, segnos: range, seg_size: int = SEG) -> list[UploadJob]:
    return [UploadJob(ttid, n, seg_size, "1.a:5") for n in segnos]


def test_segments_go_one_per_message_while_pool_threads_are_free() -> None:
    tasks, sent, batches = batching(slots=4)
    tasks.send(jobs_of("t", range(1, 4)))
    assert [s[1] for s in sent] == [1, 2, 3] and batches == []


def test_a_burst_past_the_free_threads_goes_in_batches_every_segment_once() -> None:
    """A node that claims 100 segments of 1 MiB with 4 idle threads: 4 single
    messages, the other 96 in batches of at most BATCH_BYTES, in order."""
    tasks, sent, batches = batching(slots=4)
    jobs = jobs_of("t", range(1, 51)) + jobs_of("u", range(1, 51))
    tasks.send(jobs)
    assert [s[1] for s in sent] == [1, 2, 3, 4]
    assert all(1 < len(b) <= BATCH_BYTES // SEG for b in batches)
    assert len(batches) == -(-96 // (BATCH_BYTES // SEG))
    assert [UploadJob(*s[:4]) for s in sent] + [j for b in batches for j in b] == jobs


def test_a_small_burst_behind_busy_threads_is_spread_over_every_thread() -> None:
    """Batches wait for threads: at least as many messages as threads, so
    none idles while another works through a batch."""
    tasks, sent, batches = batching(slots=4)
    with tasks.running(), tasks.running(), tasks.running(), tasks.running():
        tasks.send(jobs_of("t", range(1, 7)))
    assert [[j.segno for j in b] for b in batches] == [[1, 2], [3, 4]]
    assert [s[1] for s in sent] == [5, 6]  # a batch of one is a plain upload_segment


def test_a_started_task_frees_the_count_of_one_sent_message() -> None:
    tasks, sent, batches = batching(slots=2)
    tasks.send(jobs_of("t", range(1, 3)))  # both threads will be busy
    tasks.send(jobs_of("t", range(3, 5)))
    assert len(batches) == 1 and [b.segno for b in batches[0]] == [3, 4]
    with tasks.running():  # one message started: still two waiting or running
        tasks.send(jobs_of("t", range(5, 7)))
    assert len(batches) == 2
    with tasks.running(), tasks.running():  # the other two started, then all ended
        pass
    tasks.send(jobs_of("t", range(7, 9)))
    assert [s[1] for s in sent] == [1, 2, 7, 8]


def test_a_message_never_started_stops_counting_after_a_while(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sent message lost with Redis's data must not make every later
    hand-out a batch."""
    now = [1000.0]
    monkeypatch.setattr(handoff_module.time, "monotonic", lambda: now[0])
    tasks, sent, batches = batching(slots=2)
    tasks.send(jobs_of("t", range(1, 3)))
    tasks.send(jobs_of("t", range(3, 5)))
    assert len(batches) == 1
    now[0] += SENT_FORGET_S + 1
    tasks.send(jobs_of("t", range(5, 7)))
    assert len(batches) == 1 and [s[1] for s in sent] == [1, 2, 5, 6]


def test_large_segments_are_never_batched() -> None:
    tasks, sent, batches = batching(slots=1)
    with tasks.running():
        tasks.send(jobs_of("t", range(1, 5), seg_size=16 << 20))
    assert batches == [] and [s[1] for s in sent] == [1, 2, 3, 4]
