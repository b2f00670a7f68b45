"""A node's new WAL (``tasks.backup.new_wal``) against the private redis-server:
who claims, who takes the lease, who elects, and who does nothing; and the
hand-over kick when a heartbeat round finds another node elected."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tasks.core.election import PeerInfo
from tasks.state.keys import tl_key
from tasks.state.records import peer_to_json
from tasks.state.redis import RedisState
from tests.cluster import wait_for
from tests.integration.test_uploader import SEG, Harness, seg

pytestmark = pytest.mark.integration

Kicks = list[tuple[str, int]]


@pytest.fixture
def make(tmp_path: Path, state: RedisState) -> Callable[..., tuple[Harness, Kicks]]:
    """Node 1 of a timeline with segments 1..8 on its disk, elected its
    offloader, window of 3; its kicks recorded. ``timeline_int``: of two
    caught-up nodes 1 and 2, an even one elects node 1, an odd one node 2."""

    def build(timeline_int: int = 0) -> tuple[Harness, Kicks]:
        h = Harness(tmp_path, state, 3, 4, timeline_id=f"{timeline_int:032x}")
        h.kicks.clear()  # the set-up's own election kicked node 1
        return h, h.kicks

    return build


def heartbeat_round(h: Harness) -> None:
    """What the node's heartbeat thread does every second."""
    h.node.heartbeats.round(list(h.node._timelines.values()))


def node2_beats(h: Harness, *, age_s: float = 0.0) -> None:
    """Node 2 holds the timeline too, and heartbeats (``age_s`` ago)."""
    now = time.time() - age_s
    peer = PeerInfo(2, seg(9), seg(1), seg(1), now)
    h.state.publish_heartbeats(2, [(h.ttid, peer_to_json(peer, SEG, None))], now)


def test_the_offloader_of_record_takes_the_lease_without_a_message(
    make: Callable[..., tuple[Harness, Kicks]],
) -> None:
    h, kicks = make()
    heartbeat_round(h)  # learns: node 1 offloads it
    h.node.new_wal.completed([h.ttid])
    token = h.node.leases.token(h.ttid)
    assert token is not None
    assert h.sent_segnos() == [1, 2, 3]
    assert kicks == []


def test_the_lease_holder_claims_new_segments_itself(
    make: Callable[..., tuple[Harness, Kicks]],
) -> None:
    h, kicks = make()
    token = h.start_window()  # segments 1..3 claimed and sent
    heartbeat_round(h)
    h.state.commit_segment(h.ttid, token, 1, SEG)  # an upload finished: a slot frees
    h.sent.clear()
    h.node.new_wal.completed([h.ttid])
    assert h.sent_segnos() == [4]
    assert kicks == []
    assert h.node.leases.token(h.ttid) == token


def test_a_node_that_does_not_offload_leaves_it_to_the_offloader_and_beat(
    make: Callable[..., tuple[Harness, Kicks]],
) -> None:
    h, kicks = make()
    node2_beats(h)
    h.state.r.hset(tl_key(h.ttid), "offloader", 2)
    heartbeat_round(h)
    h.node.new_wal.completed([h.ttid])
    assert kicks == [] and h.sent == []
    assert h.node.leases.token(h.ttid) is None
    assert h.state.timeline(h.ttid).offloader == 2


def test_an_offloader_that_stopped_heartbeating_is_replaced_at_once(
    make: Callable[..., tuple[Harness, Kicks]],
) -> None:
    h, kicks = make()
    node2_beats(h, age_s=60.0)
    h.state.r.hset(tl_key(h.ttid), "offloader", 2)
    heartbeat_round(h)
    h.node.new_wal.completed([h.ttid])
    assert h.state.timeline(h.ttid).offloader == 1
    assert h.sent_segnos() == [1, 2, 3]  # elected here: no message to itself
    assert kicks == []


def test_no_offloader_known_elects_and_the_elected_node_starts_itself(
    make: Callable[..., tuple[Harness, Kicks]],
) -> None:
    h, kicks = make()
    node2_beats(h)
    h.state.r.hdel(tl_key(h.ttid), "offloader")
    h.node.new_wal.completed([h.ttid])  # no heartbeat round yet: nothing known
    assert h.state.timeline(h.ttid).offloader == 1
    assert h.sent_segnos() == [1, 2, 3]
    assert kicks == []


def test_a_first_election_waits_for_every_live_node_and_hands_nothing_over(
    make: Callable[..., tuple[Harness, Kicks]],
) -> None:
    """Node 2 heartbeats but has not told of the timeline yet: the watcher's
    election decides nothing, and a lease node 1 holds (taken meanwhile)
    stays; once node 2 tells of it, node 1 is elected."""
    h, kicks = make()
    token = h.start_window()
    h.state.publish_heartbeats(2, [], time.time())  # live, no word of the timeline
    h.state.r.hdel(tl_key(h.ttid), "offloader")
    h.node.new_wal.elect_now([h.ttid])
    assert h.state.timeline(h.ttid).offloader is None
    assert h.node.leases.token(h.ttid) == token == h.state.lease_holder_token(h.ttid)
    node2_beats(h)
    h.node.new_wal.elect_now([h.ttid])
    assert h.state.timeline(h.ttid).offloader == 1
    assert kicks == []


def test_no_offloader_known_elects_and_kicks_the_other_elected_node(
    make: Callable[..., tuple[Harness, Kicks]],
) -> None:
    h, kicks = make(timeline_int=1)
    node2_beats(h)
    h.state.r.hdel(tl_key(h.ttid), "offloader")
    h.node.new_wal.completed([h.ttid])
    assert h.state.timeline(h.ttid).offloader == 2
    assert kicks == [(h.ttid, 2)]
    assert h.sent == []
    # Node 2 has not taken that kick yet: new WAL here sends no other.
    h.state.r.hdel(tl_key(h.ttid), "offloader")
    h.state.r.hset(tl_key(h.ttid), "offloader", 2)
    h.node.new_wal.elect_now([h.ttid])
    assert kicks == [(h.ttid, 2)]


def test_a_heartbeat_round_hands_the_lease_over_and_kicks_the_new_offloader(
    make: Callable[..., tuple[Harness, Kicks]],
) -> None:
    h, kicks = make()
    token = h.start_window()
    node2_beats(h)
    h.state.r.hset(tl_key(h.ttid), "offloader", 2)  # beat elected node 2
    heartbeat_round(h)
    assert h.node.leases.token(h.ttid) is None
    assert h.state.lease_holder_token(h.ttid) is None, f"lease {token} still held"
    wait_for(lambda: kicks == [(h.ttid, 2)], 5, "the hand-over kick, from its own thread")


def test_a_mass_of_new_wal_is_taken_a_batch_per_pass(
    make: Callable[..., tuple[Harness, Kicks]],
) -> None:
    h, kicks = make()
    heartbeat_round(h)
    h.node.new_wal.BATCH = 1
    first = "0" * 32 + "/" + "0" * 32  # sorts first; held by no node
    h.node.new_wal.completed([first, h.ttid])
    assert h.sent == []  # this pass took only the first
    h.node.new_wal.completed([])  # the watcher's next pass
    assert h.sent_segnos() == [1, 2, 3]
    h.node.new_wal.completed([])
    assert h.sent_segnos() == [1, 2, 3] and kicks == []
