"""SPEC §4 election rounds that elect only what changed (``tasks.state.beats``):
marks from heartbeats that say something new, peers that just expired, work
left to kick, and the slow sweep that covers every registered timeline."""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import REGISTRY

from tasks.backup import gaps
from tasks.backup import heartbeats as heartbeats_module
from tasks.backup.copies import Copies
from tasks.backup.elector import Elector
from tasks.backup.heartbeats import Heartbeats
from tasks.core.election import PeerInfo
from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.dev.simulate import simulate
from tasks.logutil import Complaints
from tasks.state.beats import PIPELINE_CHUNK, beat_member
from tasks.state.keys import BEATS_KEY, DIRTY_KEY, peers_key, tl_key
from tasks.state.records import peer_to_json
from tasks.state.redis import RedisState
from tasks.state.timeline_state import TimelineState
from tasks.state.workdir import Workdir
from tests.integration.test_elector import SEG, TIMEOUT_S, make_ttid, seg

pytestmark = pytest.mark.integration

SWEEP_ROUNDS = 4


def make(state: RedisState, kicks: list[tuple[str, int]]) -> Elector:
    return Elector(
        state,
        lambda ttid, node: kicks.append((ttid, node)),
        heartbeat_timeout_s=TIMEOUT_S,
        max_offloader_lag_bytes=128 << 20,
        default_seg_size=SEG,
        kick_hold_ms=60_000,
        sweep_rounds=SWEEP_ROUNDS,
    )


def make_heartbeats(node_id: int, state: RedisState, disk: Workdir) -> Heartbeats:
    return Heartbeats(
        node_id, state, disk, Copies(node_id, state), lambda: True,
        keep_leases=lambda offloaders: None, data_lost=lambda: None,
        complain=Complaints(logging.getLogger("test"), node_id), heartbeat_timeout_s=5.0,
    )  # fmt: skip


def publish(
    state: RedisState,
    node_id: int,
    ttids: list[str],
    commit: Lsn,
    *,
    changed: set[str],
    age_s: float = 0.0,
    backup: Lsn | None = None,
) -> None:
    now = time.time() - age_s
    records = [
        (t, peer_to_json(PeerInfo(node_id, commit, seg(1), backup or commit, now), SEG, seg(1)))
        for t in ttids
    ]
    state.publish_heartbeats(node_id, records, now, register=True, changed=changed)


def test_round_elects_marks_expiries_and_a_sweep_slice(state: RedisState) -> None:
    kicks: list[tuple[str, int]] = []
    elector = make(state, kicks)
    ttids = [make_ttid() for _ in range(40)]
    for node in (1, 2):
        publish(state, node, ttids, seg(5), changed=set(ttids))
    # First round: every timeline was new, so all were marked.
    assert elector.run_round() == 40
    assert state.r.scard(DIRTY_KEY) == 0  # caught up: nothing left to kick

    # Unchanged heartbeats mark nothing: a round takes only the sweep's slice.
    for node in (1, 2):
        publish(state, node, ttids, seg(5), changed=set())
    assert elector.run_round() == 40 // SWEEP_ROUNDS
    # Rounds of slices cover every timeline, then start over.
    swept = [state.election_work(0.0, SWEEP_ROUNDS, 100) for _ in range(SWEEP_ROUNDS)]
    assert sorted(t for part in swept for t in part) == sorted(ttids)

    # A changed heartbeat marks its timeline, which the next round elects,
    # kicks (work to upload) and keeps electing while the work is there.
    busy = ttids[7]
    for node in (1, 2):
        publish(state, node, [busy], seg(9), changed={busy}, backup=seg(5))
    assert state.election_work(0.0, 1_000_000, 100)[0] == busy
    state.mark_for_election([busy])
    elector.run_round()
    assert kicks == [(busy, state.timeline(busy).offloader)]
    assert state.r.smembers(DIRTY_KEY) == {busy}

    # A peer that expires is found by its heartbeat time, once; the round
    # records that it stepped down.
    quiet = ttids[3]
    state.r.delete(DIRTY_KEY)
    offloader = state.timeline(quiet).offloader
    assert offloader is not None
    publish(state, offloader, [quiet], seg(5), changed=set(), age_s=TIMEOUT_S + 1)
    assert state.election_work(time.time() - TIMEOUT_S, 1_000_000, 100)[0] == quiet
    publish(state, offloader, [quiet], seg(5), changed=set(), age_s=TIMEOUT_S + 1)
    elector.sweep_rounds = 1_000_000  # a slice of one: the expiry is the rest
    elector.run_round()
    after = state.timeline(quiet)
    assert after.offloader == 3 - offloader
    # Back alive: a peer new to the heartbeat times is marked, though its
    # facts are what they were.
    publish(state, offloader, [quiet], seg(5), changed=set())
    assert quiet in state.r.smembers(DIRTY_KEY)


def test_marks_of_unregistered_timelines_are_dropped(state: RedisState) -> None:
    gone, kept = make_ttid(), make_ttid()
    state.register([kept])
    state.mark_for_election([gone, kept])
    assert state.election_work(0.0, 1_000_000, 100) == [kept]
    state.forget(kept)
    assert state.election_work(0.0, 1, 100) == []


def test_a_round_takes_a_bounded_number_of_marks(state: RedisState) -> None:
    ttids = [make_ttid() for _ in range(10)]
    state.register(ttids)
    state.mark_for_election(ttids)
    taken = [state.election_work(0.0, 1 << 30, 4) for _ in range(3)]
    # Each round: up to 4 marks, and a sweep slice of one timeline; the
    # marks left over wait for the next round.
    assert all(len(t) <= 5 for t in taken)
    assert set().union(*taken) == set(ttids)
    assert state.r.scard(DIRTY_KEY) == 0


def test_new_registration_marks_its_timeline(state: RedisState) -> None:
    ttid = make_ttid()
    publish(state, 1, [ttid], seg(5), changed=set())  # a heartbeat that says nothing new
    state.r.delete(DIRTY_KEY)
    state.forget(ttid)  # e.g. Redis lost the registry; the peer is still known
    publish(state, 1, [ttid], seg(5), changed=set())
    assert state.r.smembers(DIRTY_KEY) == {ttid}


def test_a_beat_that_went_missing_rewrites_that_record_and_marks_it(state: RedisState) -> None:
    """Only the timeline whose beat is gone (here: taken out by hand, as an
    expiry or a Redis that lost it would) has its record written again and
    is marked, though the heartbeat writes no records (``write=()``)."""
    ttids = [make_ttid() for _ in range(3)]
    publish(state, 1, ttids, seg(5), changed=set())
    state.r.delete(DIRTY_KEY)
    state.r.zrem(BEATS_KEY, beat_member(1, ttids[1]))
    for t in ttids:
        state.r.delete(peers_key(t))
    now = time.time()
    records = [
        (t, peer_to_json(PeerInfo(1, seg(5), seg(1), seg(5), now), SEG, seg(1))) for t in ttids
    ]
    state.publish_heartbeats(1, records, now, register=True, changed=set(), write=())
    assert state.r.smembers(DIRTY_KEY) == {ttids[1]}
    assert [state.r.hexists(peers_key(t), "1") for t in ttids] == [False, True, False]
    assert state.r.zscore(BEATS_KEY, beat_member(1, ttids[1])) == pytest.approx(now)


def test_a_node_marks_only_timelines_whose_heartbeat_says_something_new(
    tmp_path: Path, state: RedisState
) -> None:
    ttids = [TenantTimelineId(f"{i:032x}", "c" * 32) for i in range(1, 4)]
    workdir = tmp_path / "node1"
    simulate([workdir], ttids, 3, 1 << 20)
    disk = Workdir(workdir, 1 << 20)
    heartbeats = make_heartbeats(1, state, disk)
    heartbeats.round(list(disk.scan().values()))
    assert state.r.smembers(DIRTY_KEY) == {str(t) for t in ttids}  # new peers
    state.r.delete(DIRTY_KEY)
    heartbeats.round(list(disk.scan().values()))
    assert state.r.scard(DIRTY_KEY) == 0  # the same facts, a newer time
    simulate([workdir], ttids[1:2], 4, 1 << 20)  # segment 4 completes on one timeline
    heartbeats.round(list(disk.scan().values()))
    assert state.r.smembers(DIRTY_KEY) == {str(ttids[1])}


def test_heartbeats_of_more_timelines_than_one_pipeline_holds(state: RedisState) -> None:
    """Published in chunks (``PIPELINE_CHUNK``): every timeline's peer is
    written and registered, the new ones in every chunk are marked, the
    node's own heartbeat is written once; ``cluster_facts`` reads them back."""
    ttids = [make_ttid() for _ in range(2 * PIPELINE_CHUNK + 3)]
    publish(state, 1, ttids[:PIPELINE_CHUNK], seg(5), changed=set())
    state.r.delete(DIRTY_KEY)
    publish(state, 1, ttids, seg(5), changed={ttids[0]})
    assert state.r.smembers(DIRTY_KEY) == {ttids[0], *ttids[PIPELINE_CHUNK:]}
    assert state.registered_count() == len(ttids)
    assert all(state.r.hexists(peers_key(t), "1") for t in ttids[-5:])
    assert set(state.nodes()) == {1}
    state.raise_backup_lsn(ttids[-1], seg(3))
    facts = state.cluster_facts(ttids)
    assert len(facts) == len(ttids) and facts[-1].backup_lsn == seg(3)
    assert facts[0].backup_lsn is None


def test_each_chunk_of_a_rounds_heartbeats_carries_the_time_it_was_built(
    tmp_path: Path, state: RedisState, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At 10,000 timelines a round's last chunk went out seconds after its
    first: had it carried the round's first timestamp, those heartbeats
    would have reached the elections already old."""
    clock = itertools.count(1_700_000_000)
    monkeypatch.setattr(heartbeats_module, "time", SimpleNamespace(time=lambda: float(next(clock))))
    timelines = [
        TimelineState(
            ttid=TenantTimelineId.parse(make_ttid()),
            path=tmp_path,
            wal_seg_size=SEG,
            local_start_lsn=seg(1),
            commit_lsn=seg(5),
            backup_lsn=Lsn(0),
            timeline_start_lsn=None,
            problems=(),
        )
        for _ in range(2 * PIPELINE_CHUNK + 1)
    ]
    heartbeats = make_heartbeats(1, state, Workdir(tmp_path, SEG))
    heartbeats.publish(timelines)

    def ts(st: TimelineState) -> float:
        payload = state.r.hget(peers_key(str(st.ttid)), "1")
        assert payload is not None
        return float(json.loads(payload)["ts"])

    chunks = [timelines[i : i + PIPELINE_CHUNK] for i in range(0, len(timelines), PIPELINE_CHUNK)]
    stamps = [{ts(st) for st in chunk} for chunk in chunks]
    assert all(len(s) == 1 for s in stamps), stamps
    firsts = [min(s) for s in stamps]
    assert firsts == sorted(set(firsts)), "each chunk is stamped after the one before"


def test_a_slow_heartbeat_round_is_a_warning_naming_the_timeout(
    tmp_path: Path,
    state: RedisState,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A round over half of ``heartbeat_timeout`` tells the operator why
    the elections may soon count this node dead; once per 30 s."""
    ticks = itertools.count(0.0, 3.0)  # every monotonic reading 3 s later
    monkeypatch.setattr(
        heartbeats_module,
        "time",
        SimpleNamespace(time=time.time, monotonic=lambda: next(ticks)),
    )
    heartbeats = make_heartbeats(7, state, Workdir(tmp_path, SEG))
    with caplog.at_level(logging.WARNING, logger="walbackup.node"):
        heartbeats.round([])
        heartbeats.round([])
    slow = [r.getMessage() for r in caplog.records if "heartbeat round took" in r.getMessage()]
    assert len(slow) == 1, slow
    assert "Node 7" in slow[0] and "WALBACKUP_HEARTBEAT_TIMEOUT" in slow[0]


def test_a_wrong_seg_size_setting_is_the_last_error_on_every_node(
    tmp_path: Path, state: RedisState
) -> None:
    """Files of another valid segment size are a setting to fix, said as such
    in ``last_error``; not a "damaged copy" report from each of 3 nodes at
    each new segment, which overwrote it."""
    ttid = TenantTimelineId("a" * 32, "b" * 32)
    nodes = []
    for node_id in (1, 2, 3):
        workdir = tmp_path / f"node{node_id}"
        simulate([workdir], [ttid], 3, 1 << 20)  # the server's wal_segment_size: 1 MiB
        disk = Workdir(workdir, 16 << 20)  # WALBACKUP_WAL_SEG_SIZE left at its default
        nodes.append((workdir, disk, make_heartbeats(node_id, state, disk)))
    for segments in (4, 5):
        for workdir, disk, heartbeats in nodes:
            simulate([workdir], [ttid], segments, 1 << 20)
            heartbeats.round(list(disk.scan().values()))
        last_error = state.timeline(str(ttid)).last_error
        assert "the segment files of this timeline are 1048576 bytes but " in last_error
        assert "WALBACKUP_WAL_SEG_SIZE is 16777216" in last_error


def test_a_missing_segment_backup_sits_at_is_the_last_error_until_it_is_back(
    tmp_path: Path, state: RedisState, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Backup stops at a hole in the WAL; commit_lsn ends there, so the lag
    reads 0: the hole is ``last_error`` once backup sat there ``GRACE_S``
    (here 0), the oldest-unarchived-segment gauge counts the WAL behind it,
    and the message goes with the hole. Not said while backup is still
    behind the hole (a backlog) or past it (another node had the segment)."""
    monkeypatch.setattr(gaps, "GRACE_S", 0.0)
    monkeypatch.setattr(gaps, "REPEAT_S", 0.0)
    ttid = TenantTimelineId("c" * 32, "d" * 32)
    workdir = tmp_path / "node1"
    simulate([workdir], [ttid], 3, 1 << 20)
    simulate([workdir], [ttid], 4, 1 << 20, start_segno=5)  # segment 4 never came
    behind = workdir / ttid.tenant_id / ttid.timeline_id / "000000010000000000000005"
    os.utime(behind, (time.time() - 600, time.time() - 600))
    disk = Workdir(workdir, 1 << 20)
    heartbeats = make_heartbeats(1, state, disk)

    def round_at(backup_segno: int) -> str:
        state.r.hset(
            tl_key(str(ttid)), "backup_lsn", str(Lsn.from_segment(backup_segno, 0, 1 << 20))
        )
        heartbeats.round(list(disk.scan().values()))
        return state.timeline(str(ttid)).last_error

    try:
        assert round_at(2) == ""  # segment 2 and 3 still to upload: not stuck yet
        assert round_at(4).endswith(
            "node 1: segment 000000010000000000000004 is missing while 4 complete segment(s) "
            "from 000000010000000000000005 follow it: backup stops before it until it is put "
            "back, or a node that has it is elected"
        )
        age = REGISTRY.get_sample_value(
            "oldest_unarchived_segment_age_seconds", {"timeline": str(ttid)}
        )
        assert age is not None and age >= 590
        assert round_at(6) == ""  # past the hole (another node had 4): said no more
        assert round_at(4) != ""
        simulate([workdir], [ttid], 1, 1 << 20, start_segno=4)  # put back
        assert round_at(4) == ""
    finally:
        disk.close()
