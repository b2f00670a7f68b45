"""SPEC §4 ordered commit (``advance``) and retry backoff (``backoff_ms``)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasks.core.commit import advance, backoff_ms
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
