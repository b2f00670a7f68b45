"""tasks.core.archive_identity: is this node's storage the cluster's archive?"""

from __future__ import annotations

import pytest

from tasks.core.archive_identity import Action, decide, has_majority


def test_the_same_id_in_redis_and_the_marker_is_ours() -> None:
    assert decide("a1", "a1", [], majority=True).action is Action.OURS
    assert decide("a1", "a1", [2, 3], majority=False).problem is None


def test_another_id_in_the_marker_is_another_archive() -> None:
    decision = decide("a1", "b2", [], majority=True)
    assert decision.action is Action.FOREIGN
    assert decision.problem is not None
    assert "holds archive b2" in decision.problem and "archive is a1" in decision.problem


def test_redis_that_lost_its_data_takes_the_markers_id_from_the_majority_only() -> None:
    assert decide(None, "a1", [], majority=True).action is Action.ADOPT
    # A node pointed at another cluster's archive must not name it this one's.
    assert decide(None, "b2", [], majority=False).action is Action.WAIT


def test_neither_is_a_new_archive_for_a_node_with_most_nodes_settings() -> None:
    assert decide(None, None, [], majority=True).action is Action.CREATE
    # A node whose settings most nodes do not share never names the archive.
    waiting = decide(None, None, [], majority=False)
    assert waiting.action is Action.WAIT and "writes none" in (waiting.problem or "")


@pytest.mark.parametrize("seen_by", [[2], [3, 2]])
def test_a_marker_missing_here_but_found_by_others_is_not_their_storage(seen_by: list[int]) -> None:
    decision = decide("a1", None, seen_by, majority=True)
    assert decision.action is Action.FOREIGN
    assert decision.problem is not None
    assert "other node(s) 2" in decision.problem and "a1" in decision.problem


def test_a_sighting_remembered_past_redis_losing_it_counts_too() -> None:
    decision = decide("a1", None, [], majority=True, seen_lately=True)
    assert decision.action is Action.FOREIGN and "other nodes find it" in (decision.problem or "")


def test_a_marker_nobody_found_lately_is_written_again_by_the_majority_only() -> None:
    # The bucket was emptied or recreated: every node finds the marker missing.
    assert decide("a1", None, [], majority=True).action is Action.RESTORE
    assert decide("a1", None, [], majority=False).action is Action.WAIT


def test_majority_is_more_than_half_counting_this_node() -> None:
    assert has_majority("A", [])  # alone
    assert has_majority("A", ["A", "B"])  # 2 of 3
    assert not has_majority("B", ["A", "A"])  # the odd one out
    assert not has_majority("A", ["B"])  # 1 of 2: neither writes
    assert has_majority("A", ["A"])
