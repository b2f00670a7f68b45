"""How claimed segments reach upload tasks (``tasks.backup.handoff``): a waiting
task of the same timeline and lease first, else the queue; and saturation."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from tasks.backup.handoff import Handoff, UploadTasks

SEG = 1 << 20
Sent = list[tuple[str, int, int, str, int]]


def recorder() -> tuple[Sent, Callable[[str, int, int, str, int], None]]:
    sent: Sent = []

    def send(ttid: str, segno: int, seg_size: int, token: str, attempt: int) -> None:
        sent.append((ttid, segno, seg_size, token, attempt))

    return sent, send


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
    tasks = UploadTasks(send, slots=4)
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
    tasks = UploadTasks(send, slots=4)
    started = time.monotonic()
    assert tasks.take("t", "1.a:5", 0.05) is None
    assert time.monotonic() - started >= 0.05
    assert tasks._handoffs == {}
    tasks.hand_out("t", "1.a:5", [9], SEG)
    assert sent == [("t", 9, SEG, "1.a:5", 0)]


def test_saturated_when_every_slot_runs_an_upload_task() -> None:
    _, send = recorder()
    tasks = UploadTasks(send, slots=2)
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
