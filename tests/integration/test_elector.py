"""SPEC §3-§4 election rounds against the private redis-server: recorded
offloader and reason, kicks and their rate limit, timeline start and
backup_lsn recovery, dead peers, and batched rounds over many timelines."""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from tasks.backup.elector import FIRST_SETTLE_S, NOT_RECOVERED, NOT_REPORTED, Elector, Outcome
from tasks.core.election import Election, PeerInfo, determine_offloader
from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.errors import BrokerUnavailable, BucketMissing
from tasks.state.keys import DIRTY_KEY, TIMELINES_KEY, kick_key, lease_key, tl_key
from tasks.state.records import PeerRecord, TimelineRecord, peer_to_json
from tasks.state.redis import RedisState
from tasks.state.window import Uploading

pytestmark = pytest.mark.integration

MiB = 1 << 20
SEG = 16 * MiB
LAG = 128 * MiB
TIMEOUT_S = 5.0
KICK_MS = 60_000
ZERO = Lsn(0)

Kicks = list[tuple[str, int]]


def seg(segno: int, offset: int = 0) -> Lsn:
    return Lsn.from_segment(segno, offset, SEG)


def make_ttid(timeline_int: int | None = None) -> str:
    timeline = secrets.token_hex(16) if timeline_int is None else f"{timeline_int:032x}"
    return f"{secrets.token_hex(16)}/{timeline}"


@pytest.fixture
def kicks() -> Kicks:
    return []


@pytest.fixture
def make_elector(state: RedisState, kicks: Kicks) -> Callable[..., Elector]:
    def make(kick_hold_ms: int = KICK_MS, max_lag: int = LAG, **extra: Any) -> Elector:
        return Elector(
            state,
            lambda ttid, node: kicks.append((ttid, node)),
            heartbeat_timeout_s=TIMEOUT_S,
            max_offloader_lag_bytes=max_lag,
            default_seg_size=SEG,
            kick_hold_ms=kick_hold_ms,
            **extra,
        )

    return make


def beat(
    state: RedisState,
    ttid: str,
    node_id: int,
    commit: Lsn,
    local_start: Lsn,
    backup: Lsn = ZERO,
    *,
    age_s: float = 0.0,
    timeline_start: Lsn | None = None,
) -> PeerInfo:
    """Publish one node's heartbeat for one timeline, as a node worker does."""
    now = time.time() - age_s
    peer = PeerInfo(node_id, commit, local_start, backup, now)
    state.publish_heartbeats(node_id, [(ttid, peer_to_json(peer, SEG, timeline_start))], now)
    return peer


def elect_one(elector: Elector, ttid: str, *, force_kick: bool = False) -> Outcome:
    (outcome,) = elector.elect([ttid], force_kick=force_kick)
    return outcome


def record(state: RedisState, ttid: str) -> TimelineRecord:
    return state.timeline(ttid)


# -- recording the result ---------------------------------------------------------


def test_offloader_and_reason_recorded(
    state: RedisState, make_elector: Callable[..., Elector], kicks: Kicks
) -> None:
    ttid = make_ttid(timeline_int=4)  # 4 % 3 == 1: the second of the sorted caught-up nodes
    state.register([ttid])
    peers = [beat(state, ttid, n, seg(9), seg(1)) for n in (30, 10, 20)]
    elector = make_elector()
    outcome = elect_one(elector, ttid)
    expected = determine_offloader(peers, seg(1), 4, LAG)
    assert expected.offloader == 20
    assert outcome.election == expected
    assert outcome.changed and outcome.kicked
    assert outcome.backup_lsn == seg(1)
    rec = record(state, ttid)
    assert rec.offloader == 20
    assert rec.reason == expected.reason
    assert rec.reason.startswith("elected 20 among [(10, 0/9000000), (20, 0/9000000)")
    assert rec.backup_lsn == seg(1)
    assert rec.timeline_start_lsn == seg(1)
    assert rec.wal_seg_size == SEG
    assert state.r.hget(tl_key(ttid), "elected_at") is not None
    assert kicks == [(ttid, 20)]
    # Same inputs again: no change.
    again = elect_one(elector, ttid)
    assert again.election == expected and not again.changed


def test_change_is_logged(
    state: RedisState, make_elector: Callable[..., Elector], caplog: pytest.LogCaptureFixture
) -> None:
    ttid = make_ttid(timeline_int=0)
    beat(state, ttid, 1, seg(5), seg(1))
    elector = make_elector()
    with caplog.at_level(logging.INFO, logger="walbackup.election"):
        elect_one(elector, ttid)
        beat(state, ttid, 1, seg(5), seg(1), age_s=2 * TIMEOUT_S)
        beat(state, ttid, 2, seg(5), seg(1))
        assert elect_one(elector, ttid).election.offloader == 2
    messages = [r.getMessage() for r in caplog.records]
    assert any("elected node 1" in m for m in messages)
    assert any("node 1 stepping down" in m for m in messages)
    assert any("elected node 2" in m for m in messages)


# -- kicks -------------------------------------------------------------------------


def test_kick_only_when_offloader_has_a_complete_segment_to_upload(
    state: RedisState, make_elector: Callable[..., Elector], kicks: Kicks
) -> None:
    ttid = make_ttid(timeline_int=0)
    elector = make_elector(kick_hold_ms=1)
    # commit_lsn == backup_lsn: nothing to upload.
    beat(state, ttid, 1, seg(1), seg(1))
    outcome = elect_one(elector, ttid)
    assert outcome.election.offloader == 1 and outcome.changed
    assert not outcome.kicked and kicks == []
    # commit_lsn inside the same segment: still nothing complete to upload.
    beat(state, ttid, 1, seg(1, 0x800000), seg(1))
    assert not elect_one(elector, ttid, force_kick=True).kicked
    assert kicks == []
    # One complete segment beyond backup_lsn: kick the offloader.
    beat(state, ttid, 1, seg(2), seg(1))
    assert elect_one(elector, ttid).kicked
    assert kicks == [(ttid, 1)]


def test_kick_goes_to_the_offloader_only(
    state: RedisState, make_elector: Callable[..., Elector], kicks: Kicks
) -> None:
    ttid = make_ttid(timeline_int=1)
    for n in (1, 2, 3):
        beat(state, ttid, n, seg(7), seg(1))
    outcome = elect_one(make_elector(), ttid)
    assert outcome.election.offloader == 2
    assert kicks == [(ttid, 2)]


def test_backup_disabled_never_kicks(state: RedisState, kicks: Kicks) -> None:
    ttid = make_ttid(timeline_int=0)
    beat(state, ttid, 1, seg(7), seg(1))
    elector = Elector(
        state,
        lambda t, n: kicks.append((t, n)),
        heartbeat_timeout_s=TIMEOUT_S,
        max_offloader_lag_bytes=LAG,
        default_seg_size=SEG,
        kick_hold_ms=1,
        backup_enabled=False,
    )
    outcome = elect_one(elector, ttid, force_kick=True)
    assert outcome.election.offloader == 1 and not outcome.kicked
    assert kicks == []


def test_kicks_are_rate_limited_but_a_new_offloader_kicks_at_once(
    state: RedisState, make_elector: Callable[..., Elector], kicks: Kicks
) -> None:
    ttid = make_ttid(timeline_int=0)
    elector = make_elector(kick_hold_ms=KICK_MS)
    beat(state, ttid, 1, seg(1), seg(1))
    beat(state, ttid, 2, seg(1), seg(1))
    assert not elect_one(elector, ttid).kicked  # node 1 elected, nothing to upload yet
    assert kicks == []
    beat(state, ttid, 1, seg(4), seg(1))
    beat(state, ttid, 2, seg(4), seg(1))
    # Unchanged offloader, not forced: the first kick in the interval goes out...
    assert elect_one(elector, ttid).kicked
    assert kicks == [(ttid, 1)]
    assert 0 < state.r.pttl(kick_key(ttid)) <= KICK_MS
    # ...the next ones within kick_hold_ms do not.
    for _ in range(3):
        outcome = elect_one(elector, ttid)
        assert not outcome.kicked and not outcome.changed
    assert kicks == [(ttid, 1)]
    # A trigger (force_kick) is not rate-limited.
    assert elect_one(elector, ttid, force_kick=True).kicked
    assert kicks == [(ttid, 1), (ttid, 1)]
    # Node 1 dies: node 2 is elected and kicked at once despite the rate limit.
    beat(state, ttid, 1, seg(4), seg(1), age_s=2 * TIMEOUT_S)
    outcome = elect_one(elector, ttid)
    assert outcome.changed and outcome.kicked
    assert outcome.election.offloader == 2
    assert kicks[-1] == (ttid, 2)
    assert len(kicks) == 3
    assert not elect_one(elector, ttid).kicked
    assert len(kicks) == 3


def test_rate_limit_expires(
    state: RedisState, make_elector: Callable[..., Elector], kicks: Kicks
) -> None:
    ttid = make_ttid(timeline_int=0)
    elector = make_elector(kick_hold_ms=300)
    beat(state, ttid, 1, seg(4), seg(1))
    state.r.hset(tl_key(ttid), "offloader", 1)  # already elected: not a change
    assert elect_one(elector, ttid).kicked
    assert not elect_one(elector, ttid).kicked
    time.sleep(0.4)
    assert elect_one(elector, ttid).kicked
    assert kicks == [(ttid, 1), (ttid, 1)]


def test_rate_limit_is_per_timeline(
    state: RedisState, make_elector: Callable[..., Elector], kicks: Kicks
) -> None:
    ttids = [make_ttid(timeline_int=0) for _ in range(3)]
    for ttid in ttids:
        beat(state, ttid, 1, seg(4), seg(1))
        state.r.hset(tl_key(ttid), "offloader", 1)
    elector = make_elector()
    assert elect_one(elector, ttids[0]).kicked
    outcomes = elector.elect(ttids)
    assert [o.kicked for o in outcomes] == [False, True, True]
    assert [o.kicked for o in elector.elect(ttids)] == [False, False, False]
    assert sorted(kicks) == sorted([(ttids[0], 1), (ttids[1], 1), (ttids[2], 1)])


# -- timeline start and backup_lsn -------------------------------------------------------


def test_backup_lsn_starts_at_lowest_alive_local_start(
    state: RedisState, make_elector: Callable[..., Elector], kicks: Kicks
) -> None:
    ttid = make_ttid(timeline_int=0)
    beat(state, ttid, 1, seg(9), seg(5))
    beat(state, ttid, 2, seg(9), seg(3))
    beat(state, ttid, 3, seg(9), seg(1), age_s=2 * TIMEOUT_S)  # dead: does not count
    elector = make_elector()
    outcome = elect_one(elector, ttid)
    rec = record(state, ttid)
    assert rec.timeline_start_lsn == seg(3)
    assert rec.backup_lsn == seg(3) == outcome.backup_lsn
    assert outcome.election.offloader == 2  # the only node holding segment 3
    assert kicks == [(ttid, 2)]
    # A node joining later with only newer segments moves neither value...
    beat(state, ttid, 4, seg(12), seg(10))
    elect_one(elector, ttid)
    rec = record(state, ttid)
    assert (rec.timeline_start_lsn, rec.backup_lsn) == (seg(3), seg(3))
    # ...not even when it is the only one left alive: nobody can fill the gap.
    beat(state, ttid, 1, seg(9), seg(5), age_s=2 * TIMEOUT_S)
    beat(state, ttid, 2, seg(9), seg(3), age_s=2 * TIMEOUT_S)
    outcome = elect_one(elector, ttid)
    assert outcome.election.offloader is None
    assert outcome.election.reason == "no connected peers to elect from"
    rec = record(state, ttid)
    assert (rec.timeline_start_lsn, rec.backup_lsn) == (seg(3), seg(3))
    assert rec.offloader is None


def test_backup_lsn_not_zero_when_segment_zero_missing(
    state: RedisState, make_elector: Callable[..., Elector]
) -> None:
    ttid = make_ttid(timeline_int=0)
    beat(state, ttid, 1, seg(4), seg(1), backup=Lsn(0))
    outcome = elect_one(make_elector(), ttid)
    assert outcome.backup_lsn == seg(1)
    assert record(state, ttid).backup_lsn == seg(1)
    assert outcome.election.offloader == 1


def test_explicit_timeline_start_wins(
    state: RedisState, make_elector: Callable[..., Elector]
) -> None:
    ttid = make_ttid(timeline_int=0)
    start = seg(1, 0x6A8)  # a writer recorded a mid-segment start
    beat(state, ttid, 1, seg(4), seg(1), timeline_start=start)
    beat(state, ttid, 2, seg(4), seg(1))
    outcome = elect_one(make_elector(), ttid)
    rec = record(state, ttid)
    assert rec.timeline_start_lsn == start
    assert rec.backup_lsn == start == outcome.backup_lsn
    assert outcome.election.offloader == 1


def test_stored_backup_lsn_wins_over_lower_reports(
    state: RedisState, make_elector: Callable[..., Elector]
) -> None:
    ttid = make_ttid(timeline_int=0)
    beat(state, ttid, 1, seg(9), seg(1), backup=seg(2))
    elector = make_elector()
    assert elect_one(elector, ttid).backup_lsn == seg(2)
    state.raise_backup_lsn(ttid, seg(6))  # commits moved it on
    assert elect_one(elector, ttid).backup_lsn == seg(6)
    assert record(state, ttid).backup_lsn == seg(6)


def test_backup_lsn_recovered_after_redis_data_loss(
    state: RedisState, make_elector: Callable[..., Elector], kicks: Kicks
) -> None:
    ttid = make_ttid(timeline_int=0)
    elector = make_elector()
    beat(state, ttid, 1, seg(9), seg(1))
    beat(state, ttid, 2, seg(9), seg(1))
    elect_one(elector, ttid)
    state.raise_backup_lsn(ttid, seg(7))
    # Nodes copied the cluster's backup_lsn into their state files.
    beat(state, ttid, 1, seg(9), seg(1), backup=seg(7))
    beat(state, ttid, 2, seg(9), seg(1), backup=seg(6))
    state.r.delete(tl_key(ttid))  # Redis lost the timeline's record
    outcome = elect_one(elector, ttid)
    rec = record(state, ttid)
    assert rec.backup_lsn == seg(7) == outcome.backup_lsn
    assert rec.timeline_start_lsn == seg(1)
    assert rec.offloader == outcome.election.offloader == 1
    # Whole database lost: nodes re-register and publish again.
    state.r.flushdb()
    beat(state, ttid, 1, seg(9), seg(2), backup=seg(7))
    beat(state, ttid, 2, seg(9), seg(3), backup=seg(5))
    state.register([ttid])
    kicks.clear()
    assert make_elector().run_round() == 1
    rec = record(state, ttid)
    assert rec.backup_lsn == seg(7)
    assert rec.offloader in (1, 2)
    assert kicks == [(ttid, rec.offloader)]


def test_a_failing_listing_is_the_last_error_of_every_timeline_it_holds_back(
    state: RedisState, make_elector: Callable[..., Elector], kicks: Kicks
) -> None:
    """No upload is tried before backup_lsn is recovered, so a missing bucket
    would show only in the log: it is ``last_error`` (``walbackup status``) of
    each timeline waiting for the listing, and goes once a listing succeeds."""
    failing = [True]

    def recover(ttid: str, start: Lsn, seg_size: int) -> Lsn:
        if failing[0]:
            raise BucketMissing("bucket 'nobucket' does not exist")
        return start

    elector = make_elector(recover=recover)
    ttids = [make_ttid(timeline_int=0) for _ in range(2)]
    for ttid in ttids:
        beat(state, ttid, 1, seg(3), seg(1))
    outcomes = elector.elect(ttids)
    assert [o.election.reason for o in outcomes] == [NOT_RECOVERED] * 2 and kicks == []
    for ttid in ttids:  # the second was not listed: the first listing failed
        assert record(state, ttid).last_error.endswith(
            " cannot list the archive to recover backup_lsn: bucket 'nobucket' does not exist"
        )
    failing[0] = False
    outcomes = elector.elect(ttids)
    assert [record(state, ttid).last_error for ttid in ttids] == ["", ""]
    assert [o.backup_lsn for o in outcomes] == [seg(1)] * 2 and len(kicks) == 2


def test_a_watcher_hands_timelines_it_may_not_recover_to_recover_later(
    state: RedisState,
    make_elector: Callable[..., Elector],
    kicks: Kicks,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A node's watcher may not list the archive (``recover=False``): a new
    timeline goes to ``recover_later`` at once, not to beat's next round, and
    not again within RECOVER_LATER_HOLD_S; a broker that cannot take it is
    logged and left to beat."""
    handed: list[list[str]] = []
    failing = [False]

    def recover_later(ttids: list[str]) -> None:
        if failing[0]:
            raise BrokerUnavailable("cannot send walbackup.trigger: broker down")
        handed.append(ttids)

    listed: list[str] = []
    elector = make_elector(
        recover=lambda ttid, start, size: listed.append(ttid) or start,
        recover_later=recover_later,
    )
    new, known = make_ttid(timeline_int=0), make_ttid(timeline_int=0)
    for ttid in (new, known):
        beat(state, ttid, 1, seg(3), seg(1))
    state.raise_backup_lsn(known, seg(1))
    outcomes = elector.elect([new, known], recover=False, local=1)
    assert [o.election.reason == NOT_RECOVERED for o in outcomes] == [True, False]
    assert handed == [[new]] and listed == []
    elector.elect([new], recover=False, local=1)
    assert handed == [[new]]  # held back
    # What recover_later's task does: an election that may list.
    [outcome] = elector.elect([new])
    assert listed == [new] and outcome.backup_lsn == seg(1)
    assert outcome.election.offloader == 1 and kicks == [(new, 1)]

    other = make_ttid(timeline_int=0)
    beat(state, other, 1, seg(3), seg(1))
    failing[0] = True
    with caplog.at_level(logging.WARNING, logger="walbackup.election"):
        elector.elect([other], recover=False, local=1)
    assert "1 timelines wait for beat to recover backup_lsn" in caplog.text


def test_a_settled_first_election_waits_for_every_live_node(
    state: RedisState, make_elector: Callable[..., Elector], kicks: Kicks
) -> None:
    """``settle``: a timeline with no offloader is elected only once every
    live node (heartbeating in the nodes hash) told of it; backup_lsn is
    raised meanwhile. A timeline that has an offloader already is not held
    back, nor (beat's rounds) one registered ``settle`` seconds ago."""
    ttid = make_ttid(timeline_int=0)
    state.publish_heartbeats(3, [], time.time())  # node 3 is live, has not told of it
    beat(state, ttid, 1, seg(3), seg(1))
    beat(state, ttid, 2, seg(3), seg(1))
    elector = make_elector()
    [waiting] = elector.elect([ttid], settle=math.inf, local=1)
    assert waiting.election == Election(None, NOT_REPORTED) and not waiting.changed
    assert record(state, ttid).offloader is None and record(state, ttid).backup_lsn == seg(1)
    assert kicks == []
    assert state.r.sismember(DIRTY_KEY, ttid)  # beat's next round elects it
    beat(state, ttid, 3, seg(3), seg(1))
    [elected] = elector.elect([ttid], settle=math.inf, local=1)
    assert elected.election.offloader == 1 and elected.changed
    # With an offloader of record, a node that stops telling of it changes nothing.
    state.drop_peer(ttid, 3)
    assert elector.elect([ttid], settle=math.inf, local=1)[0].election.offloader == 1
    # Beat's rounds wait FIRST_SETTLE_S after the registration, then elect.
    other = make_ttid(timeline_int=0)
    beat(state, other, 2, seg(3), seg(1))
    state.register([other], now=time.time() - FIRST_SETTLE_S + 1)
    [young] = elector.elect([other], settle=FIRST_SETTLE_S)
    assert young.election == Election(None, NOT_REPORTED) and young.pending is False
    state.r.zadd(TIMELINES_KEY, {other: time.time() - FIRST_SETTLE_S - 0.1})
    assert elector.elect([other], settle=FIRST_SETTLE_S)[0].election.offloader == 2


# -- dead peers ---------------------------------------------------------------------------


def test_dead_peers_excluded(
    state: RedisState, make_elector: Callable[..., Elector], kicks: Kicks
) -> None:
    ttid = make_ttid(timeline_int=0)
    elector = make_elector()
    # The most caught-up node is dead; so is one just at the timeout.
    beat(state, ttid, 1, seg(500), seg(1), age_s=60)
    beat(state, ttid, 2, seg(9), seg(1), age_s=TIMEOUT_S + 0.5)
    beat(state, ttid, 3, seg(9), seg(1))
    outcome = elect_one(elector, ttid)
    assert outcome.election.offloader == 3
    assert "(1," not in outcome.election.reason and "(2," not in outcome.election.reason
    assert "with 1 of them being caughtup" in outcome.election.reason
    # All dead: nobody is elected, and nobody is kicked.
    beat(state, ttid, 3, seg(9), seg(1), age_s=60)
    kicks.clear()
    outcome = elect_one(elector, ttid, force_kick=True)
    assert outcome.election.offloader is None and outcome.changed
    assert not outcome.kicked and kicks == []
    rec = record(state, ttid)
    assert rec.offloader is None
    assert rec.reason == "no connected peers to elect from"


def test_no_peers_at_all(state: RedisState, make_elector: Callable[..., Elector]) -> None:
    ttid = make_ttid()
    state.register([ttid])
    outcome = elect_one(make_elector(), ttid)
    assert outcome.election.offloader is None
    assert outcome.backup_lsn is None
    assert not outcome.changed and not outcome.kicked
    assert record(state, ttid).backup_lsn is None


# -- rounds ------------------------------------------------------------------------------


def test_run_round_elects_thousands_in_batches(
    state: RedisState,
    make_elector: Callable[..., Elector],
    kicks: Kicks,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    count = 2500
    ttids = [make_ttid() for _ in range(count)]
    assert state.register(ttids) == count
    assert state.register(ttids[:10]) == 0  # registering again adds nothing
    now = time.time()
    peers: dict[str, list[PeerInfo]] = {t: [] for t in ttids}
    for node_id, commit_segno in ((1, 20), (2, 20), (3, 19)):
        records = []
        for i, ttid in enumerate(ttids):
            commit = seg(commit_segno if i % 2 else 1)
            peer = PeerInfo(node_id, commit, seg(1), Lsn(0), now)
            peers[ttid].append(peer)
            records.append((ttid, peer_to_json(peer, SEG, None)))
        state.publish_heartbeats(node_id, records, now)

    elector = make_elector()
    batches: list[int] = []
    original = state.timelines_with_peers

    def counting(batch: Sequence[str]) -> list[tuple[TimelineRecord, list[PeerRecord]]]:
        batches.append(len(batch))
        return original(batch)

    monkeypatch.setattr(state, "timelines_with_peers", counting)
    started = time.monotonic()
    assert elector.run_round(batch_size=1000) == count
    elapsed = time.monotonic() - started
    assert batches == [1000, 1000, 500]
    assert elapsed < 15

    results = state.cluster_facts(ttids)
    for i, (ttid, (backup, offloader, *_)) in enumerate(zip(ttids, results, strict=True)):
        assert backup == seg(1)
        expected = determine_offloader(
            peers[ttid], seg(1), TenantTimelineId.parse(ttid).timeline_int, LAG
        )
        assert expected.offloader is not None
        assert offloader == expected.offloader, (i, ttid)
    # Kicked exactly the timelines with a complete segment to upload, each once.
    kicked = dict(kicks)
    assert len(kicks) == len(kicked) == count // 2
    assert set(kicked) == {t for i, t in enumerate(ttids) if i % 2}
    assert all(
        kicked[t] == offloader
        for t, (_, offloader, *_) in zip(ttids, results, strict=True)
        if t in kicked
    )
    assert set(kicked.values()) == {1, 2, 3}  # spread over the nodes

    # Later rounds change nothing; unforced kicks go out at most once per interval.
    first_round = set(kicks)
    kicks.clear()
    batches.clear()
    assert elector.run_round(batch_size=1000) == count
    assert batches == [1000, 1000, 500]
    assert set(kicks) <= first_round and len(kicks) == len(set(kicks))
    kicks.clear()
    batches.clear()
    assert elector.run_round(batch_size=700) == count
    assert batches == [700, 700, 700, 400]
    assert kicks == []


def test_no_rate_limited_kick_while_the_offloader_has_uploads_in_flight(
    state: RedisState, make_elector: Callable[..., Elector], kicks: Kicks
) -> None:
    ttid = make_ttid(timeline_int=0)
    elector = make_elector(kick_hold_ms=1)
    beat(state, ttid, 1, seg(4), seg(1))
    assert elect_one(elector, ttid).kicked  # node 1 elected, and kicked
    token = state.acquire_lease(ttid, "1.a", 1, 60_000)
    assert token is not None
    assert state.claim_segments(ttid, token, 2, 4, SEG, 60_000) == [1, 2]
    assert [u.holder for u in state.uploading([ttid, make_ttid()])] == [1, None]
    # Node 1 is uploading: beat's rounds do not kick it; a trigger still does.
    time.sleep(0.01)
    assert not elect_one(elector, ttid).kicked
    assert elect_one(elector, ttid, force_kick=True).kicked
    assert kicks == [(ttid, 1), (ttid, 1)]


def test_no_rate_limited_kick_when_the_offloader_committed_during_the_round(
    state: RedisState,
    make_elector: Callable[..., Elector],
    kicks: Kicks,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The round read backup_lsn, then the offloader committed (its last
    claim done, nothing in flight): a kick now would find nothing. It waits
    for the next round, which kicks if work is still left."""
    ttid = make_ttid(timeline_int=0)
    elector = make_elector(kick_hold_ms=1)
    beat(state, ttid, 1, seg(4), seg(1))
    assert elect_one(elector, ttid).kicked  # node 1 elected, and kicked
    original = state.uploading

    def committed_meanwhile(ttids: Sequence[str]) -> list[Uploading]:
        state.r.hset(tl_key(ttid), "backup_lsn", str(seg(2)))
        return original(ttids)

    monkeypatch.setattr(state, "uploading", committed_meanwhile)
    time.sleep(0.01)
    outcome = elect_one(elector, ttid)
    assert not outcome.kicked and outcome.pending
    monkeypatch.setattr(state, "uploading", original)
    time.sleep(0.01)
    assert elect_one(elector, ttid).kicked  # segments 2 and 3 are still to do
    assert kicks == [(ttid, 1), (ttid, 1)]


def test_claims_of_a_node_no_longer_elected_do_not_hold_back_the_kick(
    state: RedisState, make_elector: Callable[..., Elector], kicks: Kicks
) -> None:
    ttid = make_ttid(timeline_int=0)
    elector = make_elector(kick_hold_ms=1)
    beat(state, ttid, 1, seg(4), seg(1))
    assert elect_one(elector, ttid).election.offloader == 1
    token = state.acquire_lease(ttid, "1.a", 1, 60_000)
    assert token is not None
    assert state.claim_segments(ttid, token, 2, 4, SEG, 60_000) == [1, 2]
    # Node 1 still holds the lease and its claims, but died; node 2 was
    # elected (an earlier round) and its first kick found the lease held.
    beat(state, ttid, 1, seg(4), seg(1), age_s=2 * TIMEOUT_S)
    beat(state, ttid, 2, seg(4), seg(1))
    state.r.hset(tl_key(ttid), "offloader", 2)
    time.sleep(0.01)
    outcome = elect_one(elector, ttid)
    assert outcome.election.offloader == 2 and not outcome.changed
    assert outcome.kicked
    assert kicks == [(ttid, 1), (ttid, 2)]
    # Claims whose lease is gone are no upload in flight either.
    state.r.delete(lease_key(ttid))
    assert [u.holder for u in state.uploading([ttid])] == [None]


def test_a_kick_not_taken_yet_holds_back_the_next_until_taken(
    state: RedisState, make_elector: Callable[..., Elector], kicks: Kicks
) -> None:
    ttid = make_ttid(timeline_int=0)
    elector = make_elector(kick_hold_ms=60_000)
    beat(state, ttid, 1, seg(4), seg(1))
    assert elect_one(elector, ttid).kicked
    assert not elect_one(elector, ttid).kicked  # queued, not taken: held back
    state.take_kicks([ttid], 1)  # node 1 took it; the interval is 1 ms
    time.sleep(0.01)
    assert elect_one(elector, ttid).kicked
    assert kicks == [(ttid, 1), (ttid, 1)]


def test_the_local_node_is_told_its_work_not_kicked(
    state: RedisState, make_elector: Callable[..., Elector], kicks: Kicks
) -> None:
    ttid = make_ttid(timeline_int=0)
    elector = make_elector()
    beat(state, ttid, 1, seg(4), seg(1))
    (mine,) = elector.elect([ttid], local=1)
    assert mine.kicked and mine.election.offloader == 1
    assert kicks == []
    (other,) = elector.elect([ttid], local=2, force_kick=True)
    assert other.kicked and kicks == [(ttid, 1)]


def test_clearing_an_error_keeps_one_recorded_since_it_was_read(state: RedisState) -> None:
    ttid = make_ttid()
    state.record_error(ttid, "cannot list the archive to recover backup_lsn: no bucket")
    read = record(state, ttid).last_error
    state.r.hset(tl_key(ttid), "last_error", "2026-12-06T10:00:00Z node 2: damaged copy")
    state.clear_error(ttid, read)
    assert record(state, ttid).last_error.endswith("node 2: damaged copy")
    state.clear_error(ttid, record(state, ttid).last_error)
    assert record(state, ttid).last_error == ""
