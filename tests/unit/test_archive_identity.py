"""tasks.core.archive_identity: is this node's storage the cluster's archive?"""

from __future__ import annotations

import pytest

from tasks.core.archive_identity import Action, decide


def test_the_same_id_in_redis_and_the_marker_is_ours() -> None:
    assert decide("a1", "a1", []).action is Action.OURS
    assert decide("a1", "a1", [2, 3]).problem is None


def test_another_id_in_the_marker_is_another_archive() -> None:
    decision = decide("a1", "b2", [])
    assert decision.action is Action.FOREIGN
    assert decision.problem is not None
    assert "holds archive b2" in decision.problem and "archive is a1" in decision.problem


def test_redis_that_lost_its_data_takes_the_markers_id() -> None:
    assert decide(None, "a1", []).action is Action.ADOPT
    assert decide(None, "a1", [2]).action is Action.ADOPT  # nodes' sightings went with Redis


def test_neither_is_a_new_archive() -> None:
    assert decide(None, None, []).action is Action.CREATE


@pytest.mark.parametrize("seen_by", [[2], [3, 2]])
def test_a_marker_missing_here_but_found_by_others_is_not_their_storage(seen_by: list[int]) -> None:
    decision = decide("a1", None, seen_by)
    assert decision.action is Action.FOREIGN
    assert decision.problem is not None
    assert "node(s) 2" in decision.problem and "a1" in decision.problem


def test_a_marker_nobody_found_lately_is_written_again() -> None:
    # The bucket was emptied or recreated: every node finds the marker missing.
    assert decide("a1", None, []).action is Action.RESTORE
