"""SPEC §4 election: ``determine_offloader`` as the reference's pure function,
and ``is_alive``'s heartbeat-timeout boundary."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasks.core.election import (
    Election,
    PeerInfo,
    determine_offloader,
    is_alive,
    live_nodes,
    reported_by,
)
from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import LSN_MAX, Lsn

MiB = 1 << 20
LAG = 128 * MiB  # the default max_offloader_lag_bytes
NO_PEERS = "no connected peers to elect from"
BIG = 2**127  # a 128-bit timeline id base, a multiple of every small len


def peer(
    node_id: int,
    commit: int,
    local_start: int = 0,
    backup: int = 0,
    ts: float = 1000.0,
) -> PeerInfo:
    return PeerInfo(node_id, Lsn(commit), Lsn(local_start), Lsn(backup), ts)


def timeline_int_for(index: int, length: int) -> int:
    """A full 128-bit timeline id (via its hex form) that picks ``index`` of ``length``."""
    value = (2**128 - 1) - ((2**128 - 1) % length) - length + index
    assert value % length == index
    ttid = TenantTimelineId("0" * 32, f"{value:032x}")
    return ttid.timeline_int


# -- table tests ---------------------------------------------------------------


def test_no_peers() -> None:
    assert determine_offloader([], Lsn(0), 0, LAG) == Election(None, NO_PEERS)
    assert determine_offloader(iter([]), Lsn(5 * MiB), 12345, LAG) == Election(None, NO_PEERS)


def test_all_peers_start_after_backup_lsn() -> None:
    peers = [peer(1, 100 * MiB, local_start=3 * MiB), peer(2, 90 * MiB, local_start=2 * MiB + 1)]
    assert determine_offloader(peers, Lsn(2 * MiB), 0, LAG) == Election(None, NO_PEERS)


def test_local_start_equal_to_backup_lsn_is_capable() -> None:
    peers = [peer(1, 100 * MiB, local_start=2 * MiB), peer(2, 90 * MiB, local_start=2 * MiB + 1)]
    assert determine_offloader(peers, Lsn(2 * MiB), 0, LAG).offloader == 1


@pytest.mark.parametrize("timeline_int", [0, 1, 2, 3, 7, BIG, BIG + 1, 2**128 - 1])
def test_all_lagging_but_one_elects_that_one(timeline_int: int) -> None:
    lag = 100
    peers = [peer(1, 800), peer(2, 899), peer(5, 1000), peer(9, 0)]
    result = determine_offloader(peers, Lsn(0), timeline_int, lag)
    assert result.offloader == 5
    assert "with 1 of them being caughtup" in result.reason


def test_caught_up_boundary_is_inclusive() -> None:
    lag = 100
    # threshold = 1000 - 100 = 900: 900 is caught up, 899 is not.
    peers = [peer(1, 1000), peer(2, 900), peer(3, 899)]
    result = determine_offloader(peers, Lsn(0), 0, lag)
    assert "with 2 of them being caughtup" in result.reason
    assert determine_offloader(peers, Lsn(0), 1, lag).offloader == 2
    assert determine_offloader(peers, Lsn(0), 2, lag).offloader == 1


@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_threshold_floored_at_zero(index: int) -> None:
    # max commit (50) < max lag: threshold is 0, so even commit_lsn 0 is caught up.
    peers = [peer(4, 50), peer(1, 0), peer(3, 10), peer(2, 49)]
    result = determine_offloader(peers, Lsn(0), timeline_int_for(index, 4), LAG)
    assert result.offloader == [1, 2, 3, 4][index]
    assert "with 4 of them being caughtup" in result.reason


def test_incapable_peer_excluded_even_when_most_caught_up() -> None:
    backup = Lsn(100 * MiB)
    peers = [
        # Far ahead, but its WAL starts after backup_lsn: it cannot fill the gap,
        # and its commit_lsn must not raise the threshold for the others either.
        peer(1, 10_000 * MiB, local_start=101 * MiB),
        peer(2, 500 * MiB, local_start=0),
        peer(3, 450 * MiB, local_start=100 * MiB),
    ]
    lag = 100 * MiB
    winners = {determine_offloader(peers, backup, i, lag).offloader for i in range(10)}
    assert winners == {2, 3}
    result = determine_offloader(peers, backup, 0, lag)
    assert result.offloader == 2
    assert "(1," not in result.reason
    assert "with 2 of them being caughtup" in result.reason


@pytest.mark.parametrize("length", [1, 2, 3, 5, 7])
def test_pick_is_sorted_caught_up_at_timeline_modulo(length: int) -> None:
    node_ids = [97, 3, 41, 12, 8, 60, 25][:length]
    peers = [peer(n, 1000 + n) for n in node_ids]
    peers.append(peer(1000, 0))  # lagging: never picked, not counted
    lag = 100
    ordered = sorted(node_ids)
    for index in range(length):
        for timeline_int in (index, timeline_int_for(index, length), length * 11 + index):
            result = determine_offloader(peers, Lsn(0), timeline_int, lag)
            assert result.offloader == ordered[index], (length, index, timeline_int)


def test_pick_uses_real_timeline_ids() -> None:
    peers = [peer(30, 5 * MiB), peer(10, 5 * MiB), peer(20, 5 * MiB)]
    for hex_id, expected in [
        ("00000000000000000000000000000000", 10),
        ("00000000000000000000000000000001", 20),
        ("00000000000000000000000000000002", 30),
        ("ffffffffffffffffffffffffffffffff", 10),  # (2**128 - 1) % 3 == 0
        ("fffffffffffffffffffffffffffffffe", 30),
        ("0000000000000000000000000000000a", 20),
    ]:
        timeline_int = TenantTimelineId("ab" * 16, hex_id).timeline_int
        assert determine_offloader(peers, Lsn(0), timeline_int, LAG).offloader == expected


def test_reason_string_names_elected_node_and_counts() -> None:
    peers = [
        peer(7, 0x3000000),
        peer(2, 0x2000000),
        peer(5, 0x100, local_start=0x5000000),  # incapable: not listed
        peer(9, 0x1000000),
    ]
    lag = 0x1000000
    result = determine_offloader(peers, Lsn(0x4000000), 1, lag)
    assert result.offloader == 7
    assert result.reason == (
        "elected 7 among [(2, 0/2000000), (7, 0/3000000), (9, 0/1000000)] peers, "
        "with 2 of them being caughtup"
    )


def test_reason_lsns_above_32_bits() -> None:
    result = determine_offloader([peer(1, 0x1_0000_0010)], Lsn(0), 0, LAG)
    assert result == Election(1, "elected 1 among [(1, 1/10)] peers, with 1 of them being caughtup")


def test_accepts_any_iterable_once() -> None:
    peers = [peer(1, 10), peer(2, 20)]
    assert determine_offloader(iter(peers), Lsn(0), 1, LAG).offloader == 2


# -- is_alive --------------------------------------------------------------------


def alive_peers(peers: list[PeerInfo], now: float, timeout: float) -> list[PeerInfo]:
    return [p for p in peers if is_alive(p, now, timeout)]


def test_alive_peers_boundary() -> None:
    now = 100.0
    peers = [
        peer(1, 0, ts=95.0),  # age == timeout: dead
        peer(2, 0, ts=95.25),  # younger: alive
        peer(3, 0, ts=94.0),  # older: dead
        peer(4, 0, ts=100.0),  # just now
        peer(5, 0, ts=101.0),  # clock skew into the future: alive
        peer(6, 0, ts=105.0),  # as far ahead as the timeout: stale
    ]
    assert [p.node_id for p in alive_peers(peers, now, 5.0)] == [2, 4, 5]
    assert alive_peers(peers, now, 0.0) == []
    assert alive_peers([], now, 5.0) == []


# -- properties --------------------------------------------------------------------

LSNS = st.integers(min_value=0, max_value=LSN_MAX)
SMALL_LSNS = st.integers(min_value=0, max_value=1 << 12)


@st.composite
def peer_lists(draw: st.DrawFn) -> list[PeerInfo]:
    lsns = draw(st.sampled_from([SMALL_LSNS, LSNS]))
    node_ids = draw(st.lists(st.integers(0, 2**32), unique=True, max_size=8))
    return [PeerInfo(n, Lsn(draw(lsns)), Lsn(draw(lsns)), Lsn(draw(lsns)), 0.0) for n in node_ids]


def election_inputs() -> st.SearchStrategy[tuple[list[PeerInfo], Lsn, int, int]]:
    return st.tuples(
        peer_lists(),
        st.one_of(SMALL_LSNS, LSNS).map(Lsn),
        st.integers(min_value=0, max_value=2**128 - 1),
        st.one_of(st.sampled_from([0, 1, 100, LAG, LSN_MAX]), st.integers(0, 1 << 13)),
    )


@given(election_inputs())
def test_winner_is_capable_and_caught_up(args: tuple[list[PeerInfo], Lsn, int, int]) -> None:
    peers, backup, timeline_int, lag = args
    result = determine_offloader(peers, backup, timeline_int, lag)
    capable = [p for p in peers if p.local_start_lsn <= backup]
    if result.offloader is None:
        return
    (winner,) = [p for p in peers if p.node_id == result.offloader]
    assert winner.local_start_lsn <= backup
    threshold = max(0, max(int(p.commit_lsn) for p in capable) - lag)
    assert winner.commit_lsn >= threshold
    caught_up = sorted(p.node_id for p in capable if p.commit_lsn >= threshold)
    assert result.offloader == caught_up[timeline_int % len(caught_up)]
    assert result.reason.startswith(f"elected {result.offloader} among [")
    assert result.reason.endswith(f"with {len(caught_up)} of them being caughtup")
    assert result.reason.count("(") == len(capable)


@given(election_inputs(), st.randoms(use_true_random=False))
def test_permutation_invariance(
    args: tuple[list[PeerInfo], Lsn, int, int], rnd: random.Random
) -> None:
    peers, backup, timeline_int, lag = args
    shuffled = list(peers)
    rnd.shuffle(shuffled)
    assert determine_offloader(shuffled, backup, timeline_int, lag) == determine_offloader(
        peers, backup, timeline_int, lag
    )
    reversed_peers = list(reversed(peers))
    assert determine_offloader(reversed_peers, backup, timeline_int, lag) == determine_offloader(
        peers, backup, timeline_int, lag
    )


@given(election_inputs())
def test_none_iff_no_capable_peer(args: tuple[list[PeerInfo], Lsn, int, int]) -> None:
    peers, backup, timeline_int, lag = args
    result = determine_offloader(peers, backup, timeline_int, lag)
    has_capable = any(p.local_start_lsn <= backup for p in peers)
    assert (result.offloader is None) == (not has_capable)
    if result.offloader is None:
        assert result.reason == NO_PEERS


@given(
    peer_lists(),
    st.floats(min_value=0, max_value=1e9, allow_nan=False),
    st.floats(min_value=0, max_value=60, allow_nan=False),
)
def test_alive_peers_property(peers: list[PeerInfo], now: float, timeout: float) -> None:
    stamped = [
        PeerInfo(p.node_id, p.commit_lsn, p.local_start_lsn, p.backup_lsn, now - i)
        for i, p in enumerate(peers)
    ]
    alive = alive_peers(stamped, now, timeout)
    assert alive == [p for p in stamped if now - p.ts < timeout]
    assert all(now - p.ts < timeout for p in alive)


# -- damaged copies (SPEC §4 "Agreement": not in the reference) -----------------


def damaged(node_id: int, commit: int, at: int) -> PeerInfo:
    return PeerInfo(node_id, Lsn(commit), Lsn(0), Lsn(0), 1000.0, damaged_lsn=Lsn(at))


@pytest.mark.parametrize("timeline_int", range(6))
def test_damaged_peer_is_never_elected_while_a_healthy_one_is_capable(timeline_int: int) -> None:
    peers = [damaged(1, 10 * MiB, 7 * MiB), peer(2, 6 * MiB), peer(3, 10 * MiB)]
    result = determine_offloader(peers, Lsn(0), timeline_int, LAG)
    assert result.offloader in (2, 3)
    assert "skipping damaged (1, damaged at 0/700000)" in result.reason


def test_damage_skipping_can_elect_a_lagging_healthy_peer() -> None:
    # The only healthy copy lags past max_offloader_lag_bytes: it is still
    # better than uploading a damaged copy (which would never be committed).
    peers = [damaged(1, 300 * MiB, 7 * MiB), peer(2, 10 * MiB)]
    assert determine_offloader(peers, Lsn(0), 0, LAG).offloader == 2


def test_all_damaged_falls_back_to_the_reference_rule() -> None:
    peers = [damaged(1, 10 * MiB, 7 * MiB), damaged(2, 10 * MiB, 8 * MiB)]
    result = determine_offloader(peers, Lsn(0), 1, LAG)
    assert result.offloader == 2
    assert "skipping" not in result.reason


def test_incapable_healthy_peer_does_not_exclude_a_damaged_capable_one() -> None:
    peers = [damaged(1, 10 * MiB, 7 * MiB), peer(2, 10 * MiB, local_start=5 * MiB)]
    assert determine_offloader(peers, Lsn(0), 0, LAG).offloader == 1


def test_live_nodes_are_those_heard_within_the_timeout() -> None:
    nodes = {1: {"ts": 100.0}, 2: {"ts": 94.9}, 3: {"ts": 96.0}, 4: {}}
    assert live_nodes(nodes, now=100.0, heartbeat_timeout_s=5.0) == {1, 3}
    assert live_nodes({}, now=100.0, heartbeat_timeout_s=5.0) == frozenset()


def test_a_heartbeat_from_further_ahead_than_the_timeout_is_stale() -> None:
    """Written before Redis's clock was stepped back (an NTP step, a
    failover to a replica behind): it kept a dead node alive for the step."""
    nodes = {1: {"ts": 104.0}, 2: {"ts": 105.0}, 3: {"ts": 3700.0}}
    assert live_nodes(nodes, now=100.0, heartbeat_timeout_s=5.0) == {1}


def test_reported_by_every_live_node() -> None:
    live = frozenset({1, 3})
    assert reported_by(live, [1, 2, 3])
    assert reported_by(live, iter([3, 1]))
    assert not reported_by(live, [1, 2])
    assert reported_by(frozenset(), [])
