"""tasks.core.timeline_scan: a timeline directory's listing -> local_start_lsn, commit_lsn."""

from __future__ import annotations

import pytest

from tasks.core.lsn import Lsn
from tasks.core.segments import xlog_file_name
from tasks.core.timeline_scan import resolve_commit_lsn, scan_entries

SEG = 16 << 20


def seg(segno: int, size: int = SEG, suffix: str = "") -> tuple[str, int]:
    return xlog_file_name(segno, SEG) + suffix, size


def lsn(segno: int) -> Lsn:
    return Lsn(segno * SEG)


def test_empty_dir() -> None:
    result = scan_entries([], SEG)
    assert result.local_start_lsn is None and result.commit_lsn is None
    assert result.segnos == range(0)
    assert result.partial is None and result.problems == () and result.notes == ()


def test_contiguous_run() -> None:
    result = scan_entries([seg(3), seg(1), seg(2)], SEG)
    assert result.segnos == range(1, 4)
    assert (result.local_start_lsn, result.commit_lsn) == (lsn(1), lsn(4))
    assert result.problems == ()


def test_pg_receivewal_dir() -> None:
    # What `pg_receivewal -D` leaves: complete segments, one .partial, maybe
    # a timeline history file; no walbackup state file.
    entries = [seg(1), seg(2), seg(3), seg(4, 123456, ".partial"), ("00000001.history", 40)]
    result = scan_entries(entries, SEG)
    assert (result.local_start_lsn, result.commit_lsn) == (lsn(1), lsn(4))
    assert result.partial == "000000010000000000000004.partial"
    assert result.problems == ()
    assert result.history == ("00000001.history",)


def test_history_files_are_listed_even_without_segments() -> None:
    entries = [("00000003.history", 80), ("00000002.history", 40), ("0000000a.history", 9)]
    assert scan_entries(entries, SEG).history == ("00000002.history", "00000003.history")


def test_only_partial_of_first_segment() -> None:
    result = scan_entries([seg(1, 8192, ".partial")], SEG)
    assert result.local_start_lsn == result.commit_lsn == lsn(1)
    assert result.segnos == range(1, 1)
    assert result.partial == "000000010000000000000001.partial"


def test_gap_ends_run_and_is_noted() -> None:
    result = scan_entries([seg(1), seg(2), seg(5), seg(6)], SEG)
    assert result.segnos == range(1, 3)
    assert result.commit_lsn == lsn(3)
    assert result.stranded == (5, 6)
    assert result.problems == ()
    (note,) = result.notes
    assert "not contiguous" in note and "segno 5 to 6" in note


@pytest.mark.parametrize("size", [0, 1000, SEG - 1, SEG + 1, 2 * SEG])
def test_wrong_size_is_a_problem_and_ends_run(size: int) -> None:
    result = scan_entries([seg(1), seg(2), seg(3, size), seg(4)], SEG)
    assert result.segnos == range(1, 3)
    assert result.commit_lsn == lsn(3)
    (problem,) = result.problems
    expected = f"000000010000000000000003: {size} bytes, expected wal_seg_size {SEG}"
    assert problem.startswith(expected)
    assert result.notes  # segment 4 lies beyond the broken one
    # A valid segment size of its own: WAL of another wal_segment_size? The
    # problem says so, but beside good segments it is damage, not the setting.
    assert ("WALBACKUP_WAL_SEG_SIZE" in problem) == (size == 2 * SEG)
    assert result.foreign_seg_size is None


def test_files_all_of_another_valid_size_are_the_setting_to_fix() -> None:
    result = scan_entries([seg(1, SEG // 2), seg(2, SEG // 2), seg(3, SEG // 4)], SEG)
    assert result.foreign_seg_size == SEG // 2 and result.damaged == (1, 2, 3)


def test_wrong_size_lowest_segment_blocks_everything() -> None:
    result = scan_entries([seg(1, 10), seg(2), seg(3)], SEG)
    assert result.local_start_lsn == result.commit_lsn == lsn(1)
    assert len(result.problems) == 1


def test_segment_files_of_a_different_seg_size() -> None:
    # 1 MiB files read with a 16 MiB wal_seg_size: all wrong-size.
    entries = [(xlog_file_name(s, SEG), 1 << 20) for s in (1, 2)]
    result = scan_entries(entries, SEG)
    assert result.commit_lsn == lsn(1)
    assert len(result.problems) == 2


def test_other_timeline_ignored_with_problem() -> None:
    result = scan_entries([seg(1), ("000000020000000000000002", SEG)], SEG)
    assert result.segnos == range(1, 2)
    (problem,) = result.problems
    assert "timeline 2" in problem


def test_name_invalid_for_seg_size() -> None:
    # segment 0x100 of xlogid 0 does not exist with 16 MiB segments
    result = scan_entries([seg(1), ("000000010000000000000100", SEG)], SEG)
    assert result.segnos == range(1, 2)
    (problem,) = result.problems
    assert "not a valid segment name" in problem


def test_unknown_names_ignored() -> None:
    entries = [
        seg(1),
        ("walbackup.state", 200),
        ("walbackup.state.abc123.tmp", 0),
        ("000000010000000000000002.gz", 100),
        ("00000001000000000000000a", SEG),  # lower case: not PostgreSQL's
        ("notes.txt", 5),
    ]
    result = scan_entries(entries, SEG)
    assert result.segnos == range(1, 2)
    assert result.problems == ()


def test_oversized_partial_is_a_problem() -> None:
    result = scan_entries([seg(1), seg(2, SEG + 1, ".partial")], SEG)
    assert result.commit_lsn == lsn(2)
    assert result.partial == "000000010000000000000002.partial"
    (problem,) = result.problems
    assert "more than wal_seg_size" in problem


def test_several_partials() -> None:
    result = scan_entries([seg(1), seg(2, 5, ".partial"), seg(3, 5, ".partial")], SEG)
    assert result.partial == "000000010000000000000003.partial"
    assert result.commit_lsn == lsn(2)
    assert any("2 .partial files" in p for p in result.problems)


def test_full_size_partial_is_not_complete() -> None:
    result = scan_entries([seg(1), seg(2, SEG, ".partial")], SEG)
    assert result.commit_lsn == lsn(2)


@pytest.mark.parametrize(
    ("scanned", "recorded", "expected"),
    [
        (None, None, None),
        (None, lsn(5), None),  # nothing on disk: the record is not trusted
        (lsn(3), None, lsn(3)),
        (lsn(3), lsn(2), lsn(3)),  # disk wins over a stale record
        (lsn(3), lsn(3) + 100, lsn(3) + 100),  # inside the segment being written
        (lsn(3), lsn(9), lsn(4) - 1),  # capped at that segment's last byte
    ],
)
def test_resolve_commit_lsn(
    scanned: Lsn | None, recorded: Lsn | None, expected: Lsn | None
) -> None:
    result = resolve_commit_lsn(scanned, recorded, SEG)
    assert result == expected
    if scanned is not None and result is not None:
        assert result.segment_number(SEG) == scanned.segment_number(SEG)


def test_wrong_size_segments_are_listed_as_damaged() -> None:
    entries = [seg(1), seg(2, SEG // 2), seg(3), seg(4, SEG + 1), seg(5, 10, ".partial")]
    result = scan_entries(entries, SEG)
    assert result.damaged == (2, 4)
    assert result.commit_lsn == lsn(2)  # the damaged copy still ends the run
    assert scan_entries([seg(1), seg(2, 100, ".partial")], SEG).damaged == ()


def test_an_entry_named_like_a_segment_that_is_no_file_is_a_damaged_copy() -> None:
    """Not a hole: a hole leaves this node elected and stuck at it, a damaged
    copy hands the timeline to a node with a good one."""
    entries = [seg(1), seg(2), seg(4), seg(5)]
    others = [
        (xlog_file_name(3, SEG), "a directory"),
        ("archive_status", "a directory"),  # not WAL: ignored
        ("00000002.history", "a dangling symlink"),  # not archived, said
    ]
    result = scan_entries(entries, SEG, others)
    assert result.damaged == (3,) and result.commit_lsn == lsn(3)
    assert result.problems == (
        "000000010000000000000003: is a directory, not a file",
        "00000002.history: is a dangling symlink, not a file",
    )
    assert result.history == ()
    link = scan_entries([seg(1)], SEG, [(xlog_file_name(2, SEG), "a dangling symlink")])
    assert link.damaged == (2,) and link.commit_lsn == lsn(2)


def test_a_later_postgresql_timeline_is_named_and_ignored() -> None:
    """A promoted server writes segments of timeline 2 (and its history file):
    none is counted, and the scan says which timeline and its first file."""
    t2 = [("00000002000000000000000B", SEG), ("00000002000000000000000C.partial", 10)]
    result = scan_entries([seg(9), seg(10), ("00000002.history", 40), *t2], SEG)
    assert result.segnos == range(9, 11)
    assert (result.foreign_tli, result.foreign_first) == (2, "00000002000000000000000B")
    assert result.history == ("00000002.history",)
    assert len(result.problems) == 2
    later = scan_entries([("00000003000000000000000D", SEG), *t2], SEG)
    assert (later.foreign_tli, later.foreign_first) == (3, "00000003000000000000000D")
    assert later.commit_lsn is None
    assert scan_entries([seg(9)], SEG).foreign_tli is None
