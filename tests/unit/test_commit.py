"""SPEC §4 ordered commit (``advance``), the window's claim rule (``claim``) and
retry backoff (``backoff_ms``)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasks.core.commit import WindowSize, advance, backoff_ms, claim
from tasks.core.lsn import Lsn

MiB = 1 << 20
GiB = 1 << 30
SEG = 16 * MiB
SEG_SIZES = [MiB, SEG, 64 * MiB, GiB]


def seg(segno: int, offset: int = 0, seg_size: int = SEG) -> Lsn:
    return Lsn.from_segment(segno, offset, seg_size)


# -- advance: table tests ------------------------------------------------------


def test_nothing_finished_stays() -> None:
    assert advance(Lsn(0), set(), SEG) == (Lsn(0), set())
    assert advance(seg(3), frozenset(), SEG) == (seg(3), set())


def test_in_order() -> None:
    lsn, pending = advance(seg(1), {1}, SEG)
    assert (lsn, pending) == (seg(2), set())
    assert isinstance(lsn, Lsn)
    assert advance(seg(1), {1, 2, 3}, SEG) == (seg(4), set())


def test_out_of_order_waits_for_the_first_segment() -> None:
    backup, pending = advance(seg(1), {3, 2}, SEG)
    assert (backup, pending) == (seg(1), {2, 3})
    backup, pending = advance(backup, pending | {1}, SEG)
    assert (backup, pending) == (seg(4), set())


def test_holes_stop_the_advance() -> None:
    assert advance(seg(1), {1, 2, 4, 5}, SEG) == (seg(3), {4, 5})
    assert advance(seg(3), {4, 5}, SEG) == (seg(3), {4, 5})
    assert advance(seg(3), {3, 4, 5, 7}, SEG) == (seg(6), {7})


def test_segnos_below_backup_are_dropped() -> None:
    assert advance(seg(5), {1, 2, 3, 5, 7}, SEG) == (seg(6), {7})
    assert advance(seg(5), {0, 4}, SEG) == (seg(5), set())


def test_never_backwards() -> None:
    mid = seg(5, 0x123)
    for finished in [set(), {0}, {4}, {1, 2, 3, 4}, {6}]:
        lsn, _ = advance(mid, finished, SEG)
        assert lsn >= mid
        assert lsn == mid


def test_backup_mid_segment() -> None:
    """A timeline starting mid-segment: finishing that segment moves to its end."""
    start = seg(1, 0x6A8)
    assert advance(start, {1}, SEG) == (seg(2), set())
    assert advance(start, {2}, SEG) == (start, {2})
    assert advance(start, {1, 2}, SEG) == (seg(3), set())
    assert advance(start, {0, 1}, SEG) == (seg(2), set())


@pytest.mark.parametrize("seg_size", SEG_SIZES)
def test_segment_sizes(seg_size: int) -> None:
    assert advance(seg(7, 0, seg_size), {7, 8}, seg_size) == (seg(9, 0, seg_size), set())
    assert advance(seg(7, 1, seg_size), {7, 9}, seg_size) == (seg(8, 0, seg_size), {9})


def test_near_the_top_of_the_lsn_space() -> None:
    backup = Lsn.parse("FFFFFFFF/FE000000")
    segno = backup.segment_number(SEG)
    assert segno == 2**40 - 2
    lsn, pending = advance(backup, {segno}, SEG)
    assert str(lsn) == "FFFFFFFF/FF000000"
    assert pending == set()
    high = Lsn.parse("FFFFFFFF/F0000000")
    first = high.segment_number(SEG)
    lsn, pending = advance(high, {first + 1, first, first + 3}, SEG)
    assert (str(lsn), pending) == ("FFFFFFFF/F2000000", {first + 3})
    assert advance(Lsn.parse("FFFFFFFF/80000000"), {2**34 - 2}, GiB)[0] == Lsn.parse(
        "FFFFFFFF/C0000000"
    )


def test_input_not_mutated() -> None:
    finished = {1, 2, 4}
    advance(seg(1), finished, SEG)
    assert finished == {1, 2, 4}


# -- advance: properties -----------------------------------------------------------


@st.composite
def commit_runs(draw: st.DrawFn) -> tuple[Lsn, list[int], int]:
    seg_size = draw(st.sampled_from(SEG_SIZES))
    start_segno = draw(st.integers(min_value=0, max_value=(2**64 // seg_size) - 80))
    offset = draw(st.sampled_from([0, 1, seg_size // 2, seg_size - 1]))
    backup = Lsn.from_segment(start_segno, offset, seg_size)
    candidates = range(max(0, start_segno - 3), start_segno + 60)
    finished = draw(st.lists(st.sampled_from(candidates), unique=True, max_size=60))
    return backup, finished, seg_size


@given(commit_runs(), st.randoms(use_true_random=False))
def test_any_finish_order_reaches_the_same_lsn(
    run: tuple[Lsn, list[int], int], rnd: random.Random
) -> None:
    backup, finished, seg_size = run
    expected, expected_pending = advance(backup, set(finished), seg_size)
    start = backup.segment_number(seg_size)
    contiguous = start
    while contiguous in finished:
        contiguous += 1
    assert expected_pending == {s for s in finished if s > contiguous}
    if contiguous > start:
        assert expected == Lsn.from_segment(contiguous, 0, seg_size)
    else:
        assert expected == backup
    for order in (sorted(finished), finished, rnd.sample(finished, len(finished))):
        lsn, pending = backup, set[int]()
        for segno in order:
            new_lsn, pending = advance(lsn, pending | {segno}, seg_size)
            assert new_lsn >= lsn
            lsn = new_lsn
        assert (lsn, pending) == (expected, expected_pending)


# -- claim ----------------------------------------------------------------------------

NOW = 1_000_000
LIVE = NOW + 60_000
LOST = NOW - 1


def claim_at(
    backup: Lsn,
    inflight: dict[int, int],
    done: set[int],
    window: WindowSize,
    end_segno: int = 10**6,
) -> list[int]:
    return claim(
        backup, inflight, done, window=window, end_segno=end_segno, seg_size=SEG, now_ms=NOW
    )


def test_claim_fills_parallel_jobs_lowest_first() -> None:
    assert claim_at(seg(3), {}, set(), WindowSize(4, 16)) == [3, 4, 5, 6]
    assert claim_at(seg(3), {}, set(), WindowSize(4, 16), end_segno=5) == [3, 4]
    assert claim_at(seg(3), {}, set(), WindowSize(4, 16), end_segno=3) == []


def test_a_finished_segment_frees_its_slot_within_the_horizon() -> None:
    # 3 is slow; 4, 5 and 6 finished above it: three slots are free again.
    inflight = {3: LIVE}
    assert claim_at(seg(3), inflight, {4, 5, 6}, WindowSize(4, 8)) == [7, 8, 9]
    # The reference's window (horizon = parallel_jobs) keeps them pinned.
    assert claim_at(seg(3), inflight, {4, 5, 6}, WindowSize(4, 4)) == []
    # Never past the horizon [3, 3 + 6).
    assert claim_at(seg(3), inflight, {4, 5, 6}, WindowSize(4, 6)) == [7, 8]


def test_claim_skips_live_claims_and_hands_out_lost_ones() -> None:
    inflight = {3: LOST, 4: LIVE, 5: NOW, 7: LIVE}
    assert claim_at(seg(3), inflight, {6}, WindowSize(4, 16)) == [3, 5]
    assert claim_at(seg(3), inflight, {6}, WindowSize(5, 16)) == [3, 5, 8]


def test_claims_below_backup_do_not_count() -> None:
    assert claim_at(seg(5), {1: LIVE, 2: LIVE, 6: LIVE}, set(), WindowSize(2, 8)) == [5]


@st.composite
def window_runs(draw: st.DrawFn) -> tuple[WindowSize, int, list[tuple[str, int]]]:
    jobs = draw(st.integers(1, 6))
    window = WindowSize(jobs, jobs * draw(st.integers(1, 4)))
    end = draw(st.integers(0, 40))
    steps = draw(
        st.lists(
            st.tuples(st.sampled_from(["finish", "lose", "grow"]), st.integers(0, 2**16)),
            max_size=80,
        )
    )
    return window, end, steps


@given(window_runs())
def test_any_finish_order_keeps_the_window_bounded(
    run: tuple[WindowSize, int, list[tuple[str, int]]],
) -> None:
    """Uploads finish, and claims get lost, in any order; each event refills the
    window. Never more than parallel_jobs in flight, never a claim past the
    horizon or of a finished or live segment, no slot left idle while there is
    one to claim; backup_lsn = contiguous prefix."""
    window, end, steps = run
    backup = seg(2)
    inflight: dict[int, int] = {}
    done: set[int] = set()
    committed: set[int] = set()
    for op, pick in [("grow", 0), *steps]:
        live = sorted(s for s, deadline in inflight.items() if deadline > NOW)
        if op == "finish" and live:
            segno = live[pick % len(live)]
            del inflight[segno]
            committed.add(segno)
            backup, done = advance(backup, done | {segno}, SEG)
        elif op == "lose" and live:
            inflight[live[pick % len(live)]] = LOST
        elif op == "grow":
            end += pick % 5
        start = backup.segment_number(SEG)
        inflight = {s: d for s, d in inflight.items() if s >= start}
        claimed = claim_at(backup, inflight, done, window, end)
        assert claimed == sorted(set(claimed))
        assert not set(claimed) & (done | {s for s, d in inflight.items() if d > NOW})
        assert all(start <= s < min(end, start + window.horizon) for s in claimed)
        inflight.update(dict.fromkeys(claimed, LIVE))
        live_now = {s for s, d in inflight.items() if d > NOW}
        assert len(live_now) <= window.parallel_jobs
        # Work-conserving: a free slot means nothing in the horizon is left to claim.
        if len(live_now) < window.parallel_jobs:
            assert set(range(start, min(end, start + window.horizon))) <= done | live_now
        assert done <= set(range(start, start + window.horizon))
        assert backup == advance(seg(2), committed, SEG)[0]


# -- backoff_ms ----------------------------------------------------------------------


def test_backoff_sequence() -> None:
    assert [backoff_ms(a) for a in range(12)] == [
        10,
        20,
        40,
        80,
        160,
        320,
        640,
        1280,
        2560,
        5000,
        5000,
        5000,
    ]


@pytest.mark.parametrize("attempt", [9, 30, 31, 32, 33, 63, 64, 65, 1000, 10**6, 2**62])
def test_backoff_capped_without_overflow(attempt: int) -> None:
    assert backoff_ms(attempt) == 5000


def test_backoff_custom_bounds() -> None:
    assert [backoff_ms(a, 1, 8) for a in range(6)] == [1, 2, 4, 8, 8, 8]


@given(st.integers(min_value=0, max_value=10_000))
def test_backoff_formula(attempt: int) -> None:
    value = backoff_ms(attempt)
    assert value == min(5000, 10 * 2**attempt)
    assert backoff_ms(attempt + 1) >= value
