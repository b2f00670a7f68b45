"""A heartbeat round writes a timeline's peer record only when what it says
changed (SPEC §4, ``tasks.state.beats``): the beat itself, the PeerInfo's
time, is a score in the beats ZSET, and every reader of peers sees it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from tasks.backup import heartbeats as heartbeats_module
from tasks.backup.copies import Copies
from tasks.backup.heartbeats import Heartbeats
from tasks.core.election import is_alive
from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.logutil import Complaints
from tasks.state.keys import BEATS_KEY, DIRTY_KEY, EXPIRED_KEY, kick_key, peers_key
from tasks.state.redis import RedisState
from tasks.state.timeline_state import TimelineState
from tasks.state.workdir import Workdir
from tests.integration.test_elector import SEG, make_ttid, seg

pytestmark = pytest.mark.integration

T0 = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch, state: RedisState) -> Clock:
    """The heartbeats' time: the cluster clock's (``tasks.state.clock``)."""
    clock = Clock()
    monkeypatch.setattr(state.clock, "now", clock.time)
    return clock


def timeline(tmp_path: Path, ttid: str, commit: Lsn) -> TimelineState:
    return TimelineState(
        ttid=TenantTimelineId.parse(ttid),
        path=tmp_path,
        wal_seg_size=SEG,
        local_start_lsn=seg(1),
        commit_lsn=commit,
        backup_lsn=Lsn(0),
        timeline_start_lsn=None,
        problems=(),
    )


def node(state: RedisState, tmp_path: Path) -> Heartbeats:
    return Heartbeats(
        1, state, Workdir(tmp_path, SEG, watch=False), Copies(1, state), lambda: True,
        keep_leases=lambda offloaders: None, data_lost=lambda: None,
        complain=Complaints(logging.getLogger("test"), 1), heartbeat_timeout_s=5.0,
    )  # fmt: skip


def first_beat(state: RedisState, tmp_path: Path) -> tuple[str, Heartbeats]:
    """A new timeline and node 1's first heartbeat of it, at ``T0``."""
    ttid = make_ttid()
    beats = node(state, tmp_path)
    beats.publish([timeline(tmp_path, ttid, seg(5))])
    return ttid, beats


def record_ts(state: RedisState, ttid: str) -> float:
    payload = state.r.hget(peers_key(ttid), "1")
    assert payload is not None
    return float(json.loads(payload)["ts"])


def test_an_unchanged_timeline_is_a_beat_and_every_reader_sees_its_time(
    tmp_path: Path, state: RedisState, clock: Clock
) -> None:
    ttid, beats = first_beat(state, tmp_path)
    clock.now = T0 + 4
    beats.publish([timeline(tmp_path, ttid, seg(5))])

    assert record_ts(state, ttid) == T0  # the record was not written again
    (peer,) = state.peers(ttid)
    assert peer.peer.ts == T0 + 4 and peer.peer.commit_lsn == seg(5)
    assert state.nodes_then_peers(ttid)[1] == [peer]
    ((_, batch),) = state.timelines_with_peers([ttid])
    assert batch == [peer]
    assert is_alive(peer.peer, T0 + 8, 5.0) and not is_alive(peer.peer, T0 + 10, 5.0)


def test_a_change_writes_the_record(tmp_path: Path, state: RedisState, clock: Clock) -> None:
    ttid, beats = first_beat(state, tmp_path)
    state.r.delete(DIRTY_KEY)
    clock.now = T0 + 1
    beats.publish([timeline(tmp_path, ttid, seg(6))])
    assert record_ts(state, ttid) == T0 + 1
    (peer,) = state.peers(ttid)
    assert peer.peer.commit_lsn == seg(6)
    assert state.r.sismember(DIRTY_KEY, ttid)  # marked for election


def test_a_beat_gone_from_the_zset_writes_the_record_again(
    tmp_path: Path, state: RedisState, clock: Clock
) -> None:
    """The election round took the beat out as expired, or Redis lost its
    data: the record may be gone or stale, so the next beat writes it."""
    ttid, beats = first_beat(state, tmp_path)
    state.r.delete(peers_key(ttid), BEATS_KEY)  # as after a restart that kept nothing
    clock.now = T0 + 2
    beats.publish([timeline(tmp_path, ttid, seg(5))])
    (peer,) = state.peers(ttid)
    assert peer.peer.ts == T0 + 2 and peer.peer.commit_lsn == seg(5)
    assert state.r.sismember(DIRTY_KEY, ttid)  # a peer back from the dead is news


def test_an_unchanged_record_is_written_again_in_time(
    tmp_path: Path, state: RedisState, clock: Clock
) -> None:
    """A record deleted by hand (the beats left) comes back within
    ``REWRITE_S`` x 1.5."""
    ttid, beats = first_beat(state, tmp_path)
    state.r.hdel(peers_key(ttid), "1")
    clock.now = T0 + 1
    beats.publish([timeline(tmp_path, ttid, seg(5))])
    assert state.peers(ttid) == []
    clock.now = T0 + 1.5 * heartbeats_module.REWRITE_S + 1
    beats.publish([timeline(tmp_path, ttid, seg(5))])
    (peer,) = state.peers(ttid)
    assert peer.peer.ts == clock.now


def test_an_expired_peer_keeps_its_last_beat_time(
    tmp_path: Path, state: RedisState, clock: Clock
) -> None:
    """The election round marks a peer whose beat expired but leaves the
    beat: the agreement still waits a while for a peer a few beats late,
    by the time of its last beat, not of its last record."""
    ttid, beats = first_beat(state, tmp_path)
    clock.now = T0 + 50
    beats.publish([timeline(tmp_path, ttid, seg(5))])
    state.register([ttid])
    state.r.delete(DIRTY_KEY)
    assert ttid in state.election_work(T0 + 56, 1 << 30, 100)  # expired: marked
    assert state.r.zscore(BEATS_KEY, f"1:{ttid}") is None  # taken out, kept aside
    assert state.r.zscore(EXPIRED_KEY, f"1:{ttid}") == T0 + 50
    (peer,) = state.peers(ttid)
    assert peer.peer.ts == T0 + 50


def test_a_beat_after_expiring_writes_the_record_and_marks_the_timeline(
    tmp_path: Path, state: RedisState, clock: Clock
) -> None:
    ttid, beats = first_beat(state, tmp_path)
    state.r.hdel(peers_key(ttid), "1")  # stale or lost while the node was away
    state.register([ttid])
    state.election_work(T0 + 1, 1 << 30, 100)  # the round found it expired
    state.r.delete(DIRTY_KEY)
    clock.now = T0 + 6
    beats.publish([timeline(tmp_path, ttid, seg(5))])
    (peer,) = state.peers(ttid)
    assert peer.peer.ts == T0 + 6 and state.r.sismember(DIRTY_KEY, ttid)


def test_a_forgotten_timeline_comes_back_whole_with_the_next_beat(
    tmp_path: Path, state: RedisState, clock: Clock
) -> None:
    """``walbackup forget`` on a timeline a node still holds: its next beat
    writes its record again, not only its registration."""
    ttid = make_ttid()
    beats = node(state, tmp_path)
    beats.publish([timeline(tmp_path, ttid, seg(5))], register=True)
    state.election_work(T0 + 1, 1 << 30, 100)  # expired meanwhile
    state.forget(ttid)
    assert state.peers(ttid) == [] and state.r.zscore(EXPIRED_KEY, f"1:{ttid}") is None
    clock.now = T0 + 1
    beats.publish([timeline(tmp_path, ttid, seg(5))], register=True)
    (peer,) = state.peers(ttid)
    assert peer.peer.commit_lsn == seg(5) and state.registered_count() == 1


def test_after_redis_failed_every_record_is_written_again(
    tmp_path: Path, state: RedisState, clock: Clock
) -> None:
    ttid, beats = first_beat(state, tmp_path)
    state.r.hdel(peers_key(ttid), "1")  # a write lost in a failover: the beat survived
    beats.rewrite_all()  # what the node does once Redis answers again
    clock.now = T0 + 1
    beats.publish([timeline(tmp_path, ttid, seg(5))])
    assert record_ts(state, ttid) == T0 + 1


def test_new_wal_of_a_timeline_this_node_offloads_holds_beats_kick(
    tmp_path: Path, state: RedisState, clock: Clock
) -> None:
    """The offloader takes up its own new WAL (``tasks.backup.new_wal``): the
    heartbeat that tells of it starts the timeline's kick hold in the same
    round trip, so beat's round, which that heartbeat marks, sends no
    ``backup_timeline`` for what the node claims a moment later. Only new
    WAL does, only for the offloader, and a longer hold is kept."""
    ttid, beats = first_beat(state, tmp_path)
    other = make_ttid()
    beats.kick_interval_ms = 2000
    beats.offloaders = {ttid: 1, other: 2}
    beats.publish([timeline(tmp_path, ttid, seg(5)), timeline(tmp_path, other, seg(5))])
    assert state.r.get(kick_key(ttid)) is None  # commit_lsn as before: nothing to take up

    beats.publish([timeline(tmp_path, ttid, seg(6)), timeline(tmp_path, other, seg(6))])
    assert 0 < state.r.pttl(kick_key(ttid)) <= 2000
    assert state.r.get(kick_key(other)) is None  # node 2 offloads it: beat may kick node 2

    state.r.set(kick_key(ttid), "1", px=60_000)  # a kick sent and still queued
    beats.publish([timeline(tmp_path, ttid, seg(7))])
    assert state.r.pttl(kick_key(ttid)) > 2000
