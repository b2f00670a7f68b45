"""tasks.core.partials: partial upload names, the newest, what garbage collection may delete."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasks.core.lsn import Lsn
from tasks.core.partials import (
    PartialObject,
    archived_lsn,
    newest,
    newest_name,
    parse_partial_name,
    parse_partials,
    partial_end,
    partial_object,
    partial_prefix,
    superseded,
)
from tasks.core.segments import xlog_file_name
from tasks.errors import InvalidInput

SEG = 1 << 24


def obj(segno: int, offset: int) -> PartialObject:
    return partial_object(segno, Lsn.from_segment(segno, offset, SEG), SEG)


def test_the_name_says_segment_and_end() -> None:
    p = obj(7, 0x1234)
    assert p.name == "000000010000000000000007_0000000007001234.partial"
    assert p.name.startswith(partial_prefix(xlog_file_name(7, SEG)))
    assert parse_partial_name(p.name, SEG) == p


@pytest.mark.parametrize(
    "name",
    [
        "000000010000000000000007",
        "000000010000000000000007.partial",
        "000000010000000000000007_0000000007001234",
        "000000010000000000000007_7001234.partial",
        "000000010000000000000007_0000000007001234.partial.tmp",
        "000000010000000000000007_0000000007000000.partial",  # the segment's start: empty
        "000000010000000000000007_0000000008000000.partial",  # its end: the complete segment
        "000000010000000000000007_0000000009000000.partial",  # another segment's LSN
        "000000010000000000000007_000000000700123a.partial",
    ],
)
def test_anything_else_is_not_a_partial_name(name: str) -> None:
    with pytest.raises(InvalidInput):
        parse_partial_name(name, SEG)
    assert parse_partials([name], SEG) == []


@given(
    st.integers(1, 2**20),
    st.lists(st.integers(1, SEG - 1), min_size=1, max_size=8),
)
def test_names_sort_as_their_ends_and_the_newest_is_the_greatest(
    segno: int, offsets: list[int]
) -> None:
    parts = [obj(segno, o) for o in offsets]
    by_name = sorted(parts, key=lambda p: p.name)
    assert [p.end_lsn for p in by_name] == sorted(p.end_lsn for p in parts)
    segment = xlog_file_name(segno, SEG)
    others = [obj(segno + 1, 5).name, segment, segment + ".partial"]
    assert newest_name([p.name for p in parts] + others, segment) == max(parts).name
    assert newest([*parts, obj(segno + 1, 1)], segno) == max(parts)


def test_gc_deletes_older_partials_of_the_segment_never_the_current() -> None:
    old, mid, cur, later = obj(7, 100), obj(7, 200), obj(7, 300), obj(7, 400)
    other = obj(8, 50)
    backup = Lsn.from_segment(7, 0, SEG)
    assert superseded([old, mid, cur, later, other], cur, backup) == [old, mid]
    # A re-upload under the same name (Neon #8383): the current is kept.
    assert superseded([cur, cur], cur, backup) == []
    assert superseded([old, mid], None, backup) == []  # nothing supersedes them yet


def test_gc_deletes_every_partial_of_a_segment_below_backup_lsn() -> None:
    a, b, c = obj(7, 100), obj(7, 200), obj(8, 100)
    assert superseded([a, b, c], None, Lsn.from_segment(8, 0, SEG)) == [a, b]
    assert superseded([a, b, c], None, Lsn.from_segment(8, 0, SEG) - 1) == []
    assert superseded([a, b, c], c, Lsn.from_segment(9, 0, SEG)) == [a, b]


@given(
    st.lists(st.tuples(st.integers(5, 8), st.integers(1, SEG - 1)), max_size=10),
    st.integers(5 * SEG, 9 * SEG),
    st.integers(0, 10),
)
def test_gc_never_leaves_a_segment_above_backup_without_its_newest(
    specs: list[tuple[int, int]], backup: int, pick: int
) -> None:
    recorded = [obj(s, o) for s, o in specs]
    current = recorded[pick] if pick < len(recorded) else None
    doomed = set(superseded(recorded, current, Lsn(backup)))
    assert current not in doomed
    for segno in {p.segno for p in recorded}:
        if (segno + 1) * SEG > backup:
            assert newest(recorded, segno) not in doomed


def test_partial_end_sources() -> None:
    start = Lsn.from_segment(3, 0, SEG)
    scanned = start + 5000
    # 1. a writer-recorded commit_lsn inside the segment wins, capped at the bytes held
    assert partial_end(start, SEG, SEG, start + 100, scanned) == start + 100
    assert partial_end(start, SEG, 50, start + 100, scanned) == start + 50
    assert partial_end(start, SEG, SEG, start, scanned) == scanned  # not inside: ignored
    # 2. a short file: its length
    assert partial_end(start, SEG, 4096, None, None) == start + 4096
    # 3. a pre-allocated file: the scan, or nothing
    assert partial_end(start, SEG, SEG, None, scanned) == scanned
    assert partial_end(start, SEG, SEG, None, None) == start


def test_archived_lsn() -> None:
    assert archived_lsn(None, None) is None
    assert archived_lsn(Lsn(5), None) == Lsn(5)
    assert archived_lsn(Lsn(5), Lsn(9)) == Lsn(9)
    assert archived_lsn(Lsn(10), Lsn(9)) == Lsn(10)
