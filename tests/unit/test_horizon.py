"""tasks.core.horizon: which complete local segments a node may delete."""

from __future__ import annotations

from typing import Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasks.core.horizon import removal_horizon, segments_below
from tasks.core.lsn import LSN_MAX, Lsn

SEG = 1 << 20
SEG16 = 16 << 20


def seg(segno: int, offset: int = 0, size: int = SEG) -> Lsn:
    return Lsn.from_segment(segno, offset, size)


def horizon(
    backup: Lsn | None,
    commit: Lsn | None,
    *,
    verified: Lsn | Literal["all"] | None = "all",
    recorded_backup: Lsn | None = None,
    keep: int = 1,
    recorded_horizon: Lsn | None = None,
    size: int = SEG,
) -> int | None:
    """The horizon as a segno, for short asserts; ``verified="all"``: the
    scrubber's verified_lsn is backup_lsn."""
    lsn = removal_horizon(
        seg_size=size,
        cluster_backup_lsn=backup,
        verified_lsn=backup if verified == "all" else verified,
        recorded_backup_lsn=recorded_backup if recorded_backup is not None else (backup or Lsn(0)),
        commit_lsn=commit,
        keep_segments=keep,
        recorded_horizon_lsn=recorded_horizon,
    )
    if lsn is None:
        return None
    assert lsn % size == 0, "the horizon is a segment boundary"
    return lsn // size


def test_all_backed_up_keeps_the_keep_back() -> None:
    # Segments 1..40 complete and archived: keep 39 (keep-back 1), delete 1..38.
    assert horizon(seg(41), seg(41), keep=1) == 40
    assert horizon(seg(41), seg(41), keep=5) == 36


def test_keep_zero_still_keeps_the_newest_complete_segment() -> None:
    assert horizon(seg(41), seg(41), keep=0) == 40  # segno 40 is the newest complete
    # With unarchived WAL the segment holding backup_lsn is the first kept.
    assert horizon(seg(30), seg(41), keep=0) == 30


def test_unarchived_segments_are_never_below_the_horizon() -> None:
    # backup_lsn at segno 30: 30..40 not archived; keep 1 keeps 29 too.
    assert horizon(seg(30), seg(41)) == 29
    # backup_lsn inside segment 30: segment 30 is not wholly archived.
    assert horizon(seg(30, 123), seg(41), keep=0) == 30


def test_unknown_backup_lsn_removes_nothing() -> None:
    # Redis lost it: the state file alone is not enough.
    assert horizon(None, seg(41), recorded_backup=seg(41)) is None
    assert horizon(None, seg(41), recorded_backup=seg(41), recorded_horizon=seg(40)) is None


def test_unknown_verified_lsn_removes_nothing() -> None:
    # No scrub pass since Redis lost its data (or since the timeline began):
    # nothing is known to be intact in the archive beyond the upload itself.
    assert horizon(seg(41), seg(41), verified=None) is None
    assert horizon(seg(41), seg(41), verified=None, recorded_horizon=seg(40)) is None


def test_what_the_scrubber_has_not_verified_is_kept() -> None:
    # Archived to 40, the scrubber has found 1..19 intact (its last pass, or
    # an open problem at segno 20): 20..40 are the archive's only healing source.
    assert horizon(seg(41), seg(41), verified=seg(20)) == 19
    assert horizon(seg(41), seg(41), verified=seg(20), keep=0) == 20
    # A batch recorded before the problem was found stops at it too.
    assert horizon(seg(41), seg(41), verified=seg(20), recorded_horizon=seg(40)) == 20
    assert horizon(seg(41), seg(41), verified=Lsn(0)) == 0


def test_no_complete_wal_removes_nothing() -> None:
    assert horizon(seg(41), None) is None


def test_backup_lsn_zero_or_at_the_start_removes_nothing() -> None:
    assert horizon(Lsn(0), seg(5)) == 0
    assert horizon(seg(1), seg(5), keep=0) == 1  # segno 1 is PostgreSQL's first: nothing below
    assert horizon(seg(1), seg(5)) == 0


def test_keep_back_larger_than_held_removes_nothing() -> None:
    assert horizon(seg(41), seg(41), keep=1000) == 0


def test_the_state_file_backup_lsn_caps_the_cluster_one() -> None:
    # The cluster learned 41 but this node recorded only 20 so far.
    assert horizon(seg(41), seg(41), recorded_backup=seg(20)) == 19
    # And a state file ahead of the cluster (not supposed to happen) is capped too.
    assert horizon(seg(20), seg(41), recorded_backup=seg(41)) == 19


def test_backup_ahead_of_local_commit_keeps_what_the_node_needs() -> None:
    # A lagging node: complete up to segno 10, the cluster archived up to 40.
    assert horizon(seg(41), seg(11)) == 10
    assert horizon(seg(41), seg(11), keep=0) == 10  # its newest complete segment stays
    # A writer-recorded commit inside the partial segment 11 changes nothing.
    assert horizon(seg(41), seg(11, 4096), keep=0) == 10


def test_the_node_stays_electable_local_start_le_backup() -> None:
    for keep in range(4):
        for backup in (seg(7), seg(7, 1), seg(12), seg(20)):
            for commit in (seg(8), seg(12), seg(15, 99), seg(25)):
                end = horizon(backup, commit, keep=keep)
                assert end is not None
                # What is left starts at segno ``end`` at the lowest.
                assert seg(end) <= backup, (keep, backup, commit, end)
                assert end <= commit.segment_number(SEG) - 1 or end == 0


def test_a_recorded_horizon_is_finished_over_a_larger_keep_back() -> None:
    # A batch to 30 was cut short; keep-back since raised to 100.
    assert horizon(seg(41), seg(41), keep=100, recorded_horizon=seg(30)) == 30
    # ... but never past the caps: backup_lsn and the newest complete segment.
    assert horizon(seg(20), seg(41), keep=100, recorded_horizon=seg(30)) == 20
    assert horizon(seg(41), seg(25), keep=100, recorded_horizon=seg(30)) == 24
    # A recorded horizon below the fresh one changes nothing.
    assert horizon(seg(41), seg(41), keep=1, recorded_horizon=seg(3)) == 40


def test_segment_boundaries_and_other_sizes() -> None:
    # backup_lsn one byte short of segment 10's end: segment 9 is the last archived.
    assert horizon(seg(10) + SEG - 1, seg(20), keep=0) == 10
    assert horizon(seg(10) - 1, seg(20), keep=0) == 9
    size = 1 << 30
    assert horizon(seg(6, 0, size), seg(6, 0, size), keep=1, size=size) == 5
    assert horizon(seg(3, 5, SEG16), seg(9, 0, SEG16), keep=2, size=SEG16) == 1


def test_huge_lsns() -> None:
    top = Lsn(LSN_MAX)
    last = LSN_MAX // SEG16
    assert horizon(top, top, keep=1, size=SEG16) == last - 1
    assert horizon(top, top, keep=0, size=SEG16) == last - 1  # last is the one being written
    assert horizon(top, top, keep=1, recorded_horizon=top, size=SEG16) == last - 1


def test_negative_keep_back_is_refused() -> None:
    with pytest.raises(ValueError, match="keep_segments"):
        horizon(seg(41), seg(41), keep=-1)


def test_segments_below_is_ascending_bounded_and_strict() -> None:
    assert segments_below(range(5, 20), seg(10), SEG, 100) == [5, 6, 7, 8, 9]
    assert segments_below({9, 3, 7, 12}, seg(10), SEG, 2) == [3, 7]
    assert segments_below(range(10, 20), seg(10), SEG, 100) == []
    assert segments_below(range(1, 5), seg(10), SEG, 0) == []


lsns = st.integers(min_value=0, max_value=LSN_MAX).map(Lsn)


@given(
    backup=lsns,
    verified=lsns,
    recorded_backup=lsns,
    commit=lsns,
    keep=st.integers(min_value=0, max_value=1 << 20),
    recorded=st.none() | lsns,
)
def test_the_horizon_never_passes_any_cap(
    backup: Lsn, verified: Lsn, recorded_backup: Lsn, commit: Lsn, keep: int, recorded: Lsn | None
) -> None:
    end = horizon(
        backup,
        commit,
        verified=verified,
        recorded_backup=recorded_backup,
        keep=keep,
        recorded_horizon=recorded,
    )
    assert end is not None and end >= 0
    # Nothing deleted at or above the segment holding either backup_lsn or verified_lsn.
    assert end <= min(backup, recorded_backup, verified).segment_number(SEG)
    # The newest complete segment stays (unless there is none to delete at all).
    assert end == 0 or end <= commit.segment_number(SEG) - 1
    # The keep-back holds unless a recorded horizon asks for more.
    base = min(backup, recorded_backup, verified, commit).segment_number(SEG)
    if recorded is None:
        assert end <= max(0, base - keep)
