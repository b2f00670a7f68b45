"""A node's own copies (``tasks.backup.copies``) against a real Redis: digests are
published for the window above backup_lsn and withdrawn below it, damage
marks last while the file is unchanged."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tasks.backup.copies import PUBLISH_EVERY, Copies
from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.dev.simulate import expected_segment_bytes, simulate
from tasks.state.redis import RedisState
from tasks.state.workdir import Workdir

pytestmark = pytest.mark.integration

SEG = 1 << 20
TTID = TenantTimelineId("a" * 32, "b" * 32)


def lsn(segno: int) -> Lsn:
    return Lsn.from_segment(segno, 0, SEG)


def test_a_lease_taken_while_hashing_stops_it(state: RedisState, tmp_path: Path) -> None:
    """The offloader's uploads hash their segments themselves: once this node
    holds the lease (asked before each segment), the digester stops."""
    simulate([tmp_path], [TTID], 6, SEG)
    timelines = {str(t): s for t, s in Workdir(tmp_path, SEG).scan().items()}

    class LeaseAfterTwoLooks:
        looks = 0

        def __contains__(self, ttid: object) -> bool:
            self.looks += 1
            return self.looks > 2

    assert Copies(7, state).refresh(timelines, {str(TTID): lsn(1)}, LeaseAfterTwoLooks()) == 2


def test_digests_go_out_as_they_are_hashed_in_timeline_order(
    state: RedisState, tmp_path: Path
) -> None:
    """An offloader's upload waits for its peers' digests (``Agreement``): a
    peer hashes in timeline id order, the order offloaders take up new WAL,
    and publishes ``PUBLISH_EVERY`` digests at a time, not once the whole
    budget is hashed."""
    ttids = [TenantTimelineId(f"{n:032x}", "b" * 32) for n in (7, 2, 9, 4, 1, 8, 3, 6, 5, 10)]
    simulate([tmp_path], ttids, 4, SEG)
    timelines = {str(t): s for t, s in Workdir(tmp_path, SEG).scan().items()}
    first = min(timelines)

    class Probe:
        """Asked before each segment: records the order, and whether the
        first timeline's digest is in Redis yet."""

        def __init__(self) -> None:
            self.looked: list[str] = []
            self.published: list[bool] = []

        def __contains__(self, ttid: object) -> bool:
            assert isinstance(ttid, str)
            if ttid not in self.looked:
                self.looked.append(ttid)
            self.published.append(bool(state.digests(first, 1, [7])))
            return False

    probe = Probe()
    hashed = Copies(7, state).refresh(timelines, dict.fromkeys(timelines, lsn(1)), probe)
    assert hashed > 2 * PUBLISH_EVERY
    assert probe.looked == sorted(timelines)
    # Out before the refresh ended: from the look after the PUBLISH_EVERY-th segment on.
    assert not probe.published[0]
    assert probe.published[PUBLISH_EVERY:] == [True] * (hashed - PUBLISH_EVERY)


def test_digests_follow_backup_lsn(state: RedisState, tmp_path: Path) -> None:
    simulate([tmp_path], [TTID], 6, SEG)
    timelines = {str(t): s for t, s in Workdir(tmp_path, SEG).scan().items()}
    copies = Copies(7, state)
    assert copies.refresh(timelines, {str(TTID): lsn(3)}) == 4  # segnos 3..6
    digests = state.digests(str(TTID), 4, [7, 8])
    assert digests == {7: hashlib.sha256(expected_segment_bytes(TTID, 4, SEG)).hexdigest()}
    assert copies.refresh(timelines, {str(TTID): lsn(3)}) == 0  # nothing new to hash
    copies.refresh(timelines, {str(TTID): lsn(5)})
    assert state.digests(str(TTID), 4, [7]) == {}  # backed up: withdrawn
    assert set(state.digests(str(TTID), 6, [7])) == {7}


def test_damage_marks_last_while_the_file_is_unchanged(state: RedisState, tmp_path: Path) -> None:
    simulate([tmp_path], [TTID], 4, SEG)
    (st,) = Workdir(tmp_path, SEG).scan().values()
    path = st.path / "000000010000000000000002"
    copies = Copies(7, state)
    assert copies.damaged_lsn(st, lsn(1)) is None
    copies.mark_damaged(str(TTID), 2, path, "outvoted")
    assert copies.damaged_lsn(st, lsn(1)) == lsn(2)
    assert (
        "damaged copy of 000000010000000000000002: outvoted" in state.timeline(str(TTID)).last_error
    )
    assert copies.damaged_lsn(st, lsn(3)) is None  # backed up meanwhile: irrelevant
    copies.mark_damaged(str(TTID), 2, path, "outvoted")
    path.write_bytes(expected_segment_bytes(TTID, 2, SEG))  # repaired
    assert copies.damaged_lsn(st, lsn(1)) is None


def test_removed_segments_digests_are_withdrawn_at_once(state: RedisState, tmp_path: Path) -> None:
    """Local removal deleted segnos 1..4: the node's digests of them go at
    once, not at the digester's next refresh."""
    simulate([tmp_path], [TTID], 6, SEG)
    timelines = {str(t): s for t, s in Workdir(tmp_path, SEG).scan().items()}
    copies = Copies(7, state)
    copies.refresh(timelines, {str(TTID): lsn(1)})
    assert all(state.digests(str(TTID), s, [7]) for s in range(1, 7))
    assert copies.forget_below(str(TTID), 5) == 4
    assert [s for s in range(1, 7) if state.digests(str(TTID), s, [7])] == [5, 6]
    assert copies.forget_below(str(TTID), 5) == 0
