"""The agreement rule (``tasks.core.agreement.judge``), exhaustively on small clusters."""

from __future__ import annotations

import itertools

import pytest

from tasks.core.agreement import Decision, judge

A, B = "a" * 64, "b" * 64


def test_lone_node_uploads() -> None:
    assert judge(A, [], {}, 2).decision is Decision.UPLOAD


def test_one_agreeing_peer_is_enough_and_the_odd_one_is_named() -> None:
    verdict = judge(A, [2, 3], {2: A, 3: B}, 2)
    assert verdict.decision is Decision.UPLOAD
    assert verdict.agreeing == (2,)
    assert verdict.differing == (3,)


def test_outvoted_copy_is_not_uploaded() -> None:
    verdict = judge(A, [2, 3], {2: B, 3: B}, 2)
    assert verdict.decision is Decision.OUTVOTED
    assert verdict.differing == (2, 3)


def test_waits_for_a_missing_digest_before_deciding() -> None:
    verdict = judge(A, [2, 3], {2: B}, 2)
    assert verdict.decision is Decision.WAIT
    assert verdict.pending == (3,)


def test_two_nodes_that_disagree_are_a_split() -> None:
    assert judge(A, [2], {2: B}, 2).decision is Decision.SPLIT


def test_three_different_copies_are_a_split() -> None:
    assert judge(A, [2, 3], {2: B, 3: "c" * 64}, 2).decision is Decision.SPLIT


@pytest.mark.parametrize("required", [1, 2, 3])
def test_never_uploads_bytes_fewer_than_needed_copies_hold(required: int) -> None:
    """Over every assignment of 2 possible digests (or none) to 4 peers."""
    for choice in itertools.product([A, B, None], repeat=4):
        published = {n: d for n, d in zip(range(2, 6), choice, strict=True) if d is not None}
        verdict = judge(A, [2, 3, 4, 5], published, required)
        copies = 1 + sum(1 for d in published.values() if d == A)
        if verdict.decision is Decision.UPLOAD:
            assert copies >= min(required, 5)
        if verdict.decision is Decision.OUTVOTED:
            assert sum(1 for d in published.values() if d == B) >= verdict.needed
        if copies >= min(required, 5):
            assert verdict.decision is Decision.UPLOAD
