"""SPEC §4 lease, fencing, sliding-window claims and ordered commit, run as the
real Lua scripts on the private redis-server."""

from __future__ import annotations

import random
import secrets
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasks.core.commit import WindowSize, advance, claim
from tasks.core.lsn import Lsn
from tasks.state.keys import done_key, inflight_key, lease_key, tl_key
from tasks.state.redis import CommitRefused, RedisState

pytestmark = pytest.mark.integration

MiB = 1 << 20
GiB = 1 << 30
SEG = 16 * MiB
LONG_TTL = 60_000
LONG_CLAIM = 60_000
A = "1.aaaa"
B = "2.bbbb"


def new_ttid() -> str:
    return f"{secrets.token_hex(16)}/{secrets.token_hex(16)}"


def seg(segno: int, seg_size: int = SEG) -> Lsn:
    return Lsn.from_segment(segno, 0, seg_size)


@pytest.fixture
def ttid() -> str:
    return new_ttid()


def inflight(state: RedisState, ttid: str) -> set[int]:
    return {int(m) for m in state.r.zrange(inflight_key(ttid), 0, -1)}


def done(state: RedisState, ttid: str) -> set[int]:
    return {int(m) for m in state.r.zrange(done_key(ttid), 0, -1)}


def stored_backup(state: RedisState, ttid: str) -> str:
    value = state.r.hget(tl_key(ttid), "backup_lsn")
    assert isinstance(value, str)
    return value


def start_at(state: RedisState, ttid: str, lsn: Lsn | str) -> None:
    state.raise_backup_lsn(ttid, lsn if isinstance(lsn, Lsn) else Lsn.parse(lsn))


def expire_soon(state: RedisState, ttid: str, token: str) -> None:
    """Shorten the holder's lease to 50 ms (after the setup, so a slow machine
    cannot expire it early) and wait until it is gone."""
    assert state.renew_lease(ttid, token, 50)
    time.sleep(0.1)
    deadline = time.monotonic() + 2
    while state.lease_holder_token(ttid) is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert state.lease_holder_token(ttid) is None


# -- lease ----------------------------------------------------------------------


def test_acquire_renew_release(state: RedisState, ttid: str) -> None:
    before_us = int(time.time() * 1e6)
    token = state.acquire_lease(ttid, A, 1, LONG_TTL)
    assert token is not None and token.startswith(f"{A}:")
    epoch = int(token.rsplit(":", 1)[1])
    # The first epoch is taken from the clock, so epochs minted after Redis
    # lost its data never repeat a token a stale holder may still carry.
    assert before_us - 1e6 < epoch <= int(time.time() * 1e6) + 1e6
    assert state.lease_holder_token(ttid) == token
    assert state.timeline(ttid).holder == 1
    # The same owner re-acquiring keeps its token (and epoch).
    assert state.acquire_lease(ttid, A, 1, LONG_TTL) == token
    # Another owner, even with a prefix-sharing name, is refused.
    assert state.acquire_lease(ttid, B, 2, LONG_TTL) is None
    assert state.acquire_lease(ttid, "1.aa", 1, LONG_TTL) is None
    assert state.acquire_lease(ttid, "1.aaaaa", 1, LONG_TTL) is None
    assert state.renew_lease(ttid, token, LONG_TTL)
    assert not state.renew_lease(ttid, f"{B}:1", LONG_TTL)
    # The heartbeat's batch renewal: per timeline, fenced like one renewal.
    other = ttid[:-1] + ("0" if ttid[-1] != "0" else "1")  # a timeline nobody leased
    assert state.renew_leases({ttid: token, other: f"{A}:1"}, LONG_TTL) == {
        ttid: True,
        other: False,
    }
    assert state.renew_leases({}, LONG_TTL) == {}
    assert not state.release_lease(ttid, f"{B}:1")
    assert state.lease_holder_token(ttid) == token
    assert state.release_lease(ttid, token)
    assert state.lease_holder_token(ttid) is None
    assert state.timeline(ttid).holder is None
    assert not state.release_lease(ttid, token)
    assert not state.renew_lease(ttid, token, LONG_TTL)
    # A new acquisition mints a higher epoch, also for the old owner.
    token_b = state.acquire_lease(ttid, B, 2, LONG_TTL)
    assert token_b == f"{B}:{epoch + 1}"
    assert state.timeline(ttid).holder == 2
    assert state.release_lease(ttid, token_b)
    assert state.acquire_lease(ttid, A, 1, LONG_TTL) == f"{A}:{epoch + 2}"


def test_a_hand_over_releases_many_leases_fenced_each(state: RedisState) -> None:
    """``release_leases``: per timeline as ``release_lease``, a round trip per
    1,000 (a mass re-election released 3,000 leases one by one)."""
    ttids = [f"{secrets.token_hex(16)}/{secrets.token_hex(16)}" for _ in range(1003)]
    tokens = {t: state.acquire_lease(t, A, 1, LONG_TTL) for t in ttids}
    stale, *rest = ttids
    newer = tokens[stale]
    assert newer is not None and state.release_lease(stale, newer)
    assert state.acquire_lease(stale, B, 2, LONG_TTL) is not None  # another node's now
    released = state.release_leases({t: str(tokens[t]) for t in ttids})
    assert released == {stale: False, **dict.fromkeys(rest, True)}
    assert state.lease_holder_token(stale) is not None
    assert all(state.lease_holder_token(t) is None for t in rest[-3:])
    assert state.release_leases({}) == {}


def test_epochs_keep_rising_after_redis_lost_its_data(state: RedisState, ttid: str) -> None:
    token = state.acquire_lease(ttid, A, 1, LONG_TTL)
    assert token is not None
    for _ in range(3):
        assert state.release_lease(ttid, token)
        token = state.acquire_lease(ttid, A, 1, LONG_TTL)
        assert token is not None
    state.r.flushdb()  # our private server
    fresh = state.acquire_lease(ttid, A, 1, LONG_TTL)
    assert fresh is not None
    assert int(fresh.rsplit(":", 1)[1]) > int(token.rsplit(":", 1)[1])


def test_renew_extends_the_lease(state: RedisState, ttid: str) -> None:
    token = state.acquire_lease(ttid, A, 1, 5_000)
    assert token is not None
    assert 0 < state.r.pttl(lease_key(ttid)) <= 5_000
    assert state.renew_lease(ttid, token, LONG_TTL)
    assert state.r.pttl(lease_key(ttid)) > 5_000
    # Re-acquiring by the holder also extends it.
    assert state.acquire_lease(ttid, A, 1, 200_000) == token
    assert state.r.pttl(lease_key(ttid)) > LONG_TTL


def test_renewing_many_leases_extends_only_those_still_held(state: RedisState) -> None:
    """A heartbeat round renews every lease its node holds, a thousand per
    command: one that went stale (or expired) is reported, not renewed."""
    ttids = [new_ttid() for _ in range(1200)]
    tokens = dict(zip(ttids, state.acquire_leases(ttids, A, 1, 5_000), strict=True))
    assert None not in tokens.values()
    stale, gone = ttids[3], ttids[1100]
    state.r.set(lease_key(stale), "2.other:9", px=5_000)  # taken over meanwhile
    state.r.delete(lease_key(gone))  # expired
    renewed = state.renew_leases({t: str(token) for t, token in tokens.items()}, LONG_TTL)
    assert [t for t, ok in renewed.items() if not ok] == [stale, gone]
    assert state.r.pttl(lease_key(ttids[1199])) > 5_000
    assert 0 < state.r.pttl(lease_key(stale)) <= 5_000  # the other holder's, untouched
    assert state.r.get(lease_key(gone)) is None


def test_expired_lease_goes_to_another_owner_and_clears_inflight(
    state: RedisState, ttid: str
) -> None:
    start_at(state, ttid, seg(1))
    token_a = state.acquire_lease(ttid, A, 1, LONG_TTL)
    assert token_a is not None
    assert state.claim_segments(ttid, token_a, 3, 100, SEG, LONG_CLAIM) == [1, 2, 3]
    assert inflight(state, ttid) == {1, 2, 3}
    expire_soon(state, ttid, token_a)
    assert state.lease_holder_token(ttid) is None
    token_b = state.acquire_lease(ttid, B, 2, LONG_TTL)
    assert token_b is not None
    assert int(token_b.rsplit(":", 1)[1]) > int(token_a.rsplit(":", 1)[1])
    assert inflight(state, ttid) == set()
    assert state.timeline(ttid).holder == 2
    # B is not blocked by A's old claims.
    assert state.claim_segments(ttid, token_b, 3, 100, SEG, LONG_CLAIM) == [1, 2, 3]


# -- fencing ----------------------------------------------------------------------


def test_stale_holder_is_fenced(state: RedisState, ttid: str) -> None:
    start_at(state, ttid, seg(4))
    token_a = state.acquire_lease(ttid, A, 1, LONG_TTL)
    assert token_a is not None
    assert state.claim_segments(ttid, token_a, 2, 100, SEG, LONG_CLAIM) == [4, 5]
    assert state.start_upload(ttid, token_a, LONG_TTL, 4, int(time.time() * 1000) + LONG_CLAIM)
    expire_soon(state, ttid, token_a)
    token_b = state.acquire_lease(ttid, B, 2, LONG_TTL)
    assert token_b is not None and token_b != token_a

    with pytest.raises(CommitRefused):
        state.commit_segment(ttid, token_a, 4, SEG)
    assert stored_backup(state, ttid) == str(seg(4))
    assert done(state, ttid) == set()
    assert state.claim_segments(ttid, token_a, 2, 100, SEG, LONG_CLAIM) is None
    assert not state.start_upload(ttid, token_a, LONG_TTL, 4, int(time.time() * 1000))
    assert not state.renew_lease(ttid, token_a, LONG_TTL)
    assert not state.release_lease(ttid, token_a)
    assert state.acquire_lease(ttid, A, 1, LONG_TTL) is None
    assert state.lease_holder_token(ttid) == token_b
    # The fenced calls changed nothing that B relies on.
    assert inflight(state, ttid) == set()

    assert state.claim_segments(ttid, token_b, 2, 100, SEG, LONG_CLAIM) == [4, 5]
    assert state.start_upload(ttid, token_b, LONG_TTL, 4, int(time.time() * 1000) + LONG_CLAIM)
    assert state.commit_segment(ttid, token_b, 4, SEG) == seg(5)
    assert state.commit_segment(ttid, token_b, 5, SEG) == seg(6)
    assert stored_backup(state, ttid) == str(seg(6))
    # A is still refused after B's progress.
    with pytest.raises(CommitRefused):
        state.commit_segment(ttid, token_a, 6, SEG)
    assert stored_backup(state, ttid) == str(seg(6))


def test_expired_lease_without_successor_is_fenced(state: RedisState, ttid: str) -> None:
    start_at(state, ttid, seg(1))
    token = state.acquire_lease(ttid, A, 1, LONG_TTL)
    assert token is not None
    assert state.claim_segments(ttid, token, 1, 100, SEG, LONG_CLAIM) == [1]
    expire_soon(state, ttid, token)
    with pytest.raises(CommitRefused):
        state.commit_segment(ttid, token, 1, SEG)
    assert state.claim_segments(ttid, token, 1, 100, SEG, LONG_CLAIM) is None
    assert not state.start_upload(ttid, token, LONG_TTL, 1, 0)
    assert stored_backup(state, ttid) == str(seg(1))


def test_forged_token_is_fenced(state: RedisState, ttid: str) -> None:
    start_at(state, ttid, seg(1))
    token = state.acquire_lease(ttid, A, 1, LONG_TTL)
    assert token is not None
    epoch = int(token.rsplit(":", 1)[1])
    for forged in [f"{A}:0", f"{A}:{epoch + 1}", A, f"{B}:{epoch}", ""]:
        with pytest.raises(CommitRefused):
            state.commit_segment(ttid, forged, 1, SEG)
        assert state.claim_segments(ttid, forged, 1, 100, SEG, LONG_CLAIM) is None
    assert stored_backup(state, ttid) == str(seg(1))


# -- claim_segments ------------------------------------------------------------------


def test_claim_sliding_window(state: RedisState, ttid: str) -> None:
    start_at(state, ttid, seg(3))
    token = state.acquire_lease(ttid, A, 1, LONG_TTL)
    assert token is not None
    # Window [3, 3 + 5), all new.
    assert state.claim_segments(ttid, token, 5, 100, SEG, LONG_CLAIM) == [3, 4, 5, 6, 7]
    assert inflight(state, ttid) == {3, 4, 5, 6, 7}
    # In flight with deadlines in the future: nothing to hand out again.
    assert state.claim_segments(ttid, token, 5, 100, SEG, LONG_CLAIM) == []
    # A wider window adds only the new segments.
    assert state.claim_segments(ttid, token, 7, 100, SEG, LONG_CLAIM) == [8, 9]
    # Out-of-order finish: backup_lsn does not move, the window does not slide.
    assert state.commit_segment(ttid, token, 4, SEG) == seg(3)
    assert state.commit_segment(ttid, token, 6, SEG) == seg(3)
    assert done(state, ttid) == {4, 6}
    assert 4 not in inflight(state, ttid) and 6 not in inflight(state, ttid)
    assert state.claim_segments(ttid, token, 7, 100, SEG, LONG_CLAIM) == []
    # Segment 3 finishes: backup_lsn jumps over 4 to 5, the window is [5, 10).
    assert state.commit_segment(ttid, token, 3, SEG) == seg(5)
    assert done(state, ttid) == {6}
    assert state.claim_segments(ttid, token, 5, 100, SEG, LONG_CLAIM) == []
    assert state.claim_segments(ttid, token, 6, 100, SEG, LONG_CLAIM) == [10]
    assert inflight(state, ttid) == {5, 7, 8, 9, 10}


def test_claim_capped_by_end_segno(state: RedisState, ttid: str) -> None:
    start_at(state, ttid, seg(3))
    token = state.acquire_lease(ttid, A, 1, LONG_TTL)
    assert token is not None
    assert state.claim_segments(ttid, token, 5, 3, SEG, LONG_CLAIM) == []
    assert state.claim_segments(ttid, token, 5, 2, SEG, LONG_CLAIM) == []
    assert state.claim_segments(ttid, token, 5, 5, SEG, LONG_CLAIM) == [3, 4]
    assert state.claim_segments(ttid, token, 5, 6, SEG, LONG_CLAIM) == [5]
    assert state.claim_segments(ttid, token, 0, 100, SEG, LONG_CLAIM) == []
    assert inflight(state, ttid) == {3, 4, 5}


def test_claim_window_from_mid_segment_backup(state: RedisState, ttid: str) -> None:
    start_at(state, ttid, "0/20006A8")  # timeline starting inside segment 2
    token = state.acquire_lease(ttid, A, 1, LONG_TTL)
    assert token is not None
    assert state.claim_segments(ttid, token, 3, 100, SEG, LONG_CLAIM) == [2, 3, 4]
    assert state.commit_segment(ttid, token, 2, SEG) == seg(3)
    assert stored_backup(state, ttid) == "0/3000000"


def test_claim_reclaims_expired_and_skips_done(state: RedisState, ttid: str) -> None:
    start_at(state, ttid, seg(3))
    token = state.acquire_lease(ttid, A, 1, LONG_TTL)
    assert token is not None
    assert state.claim_segments(ttid, token, 5, 100, SEG, 30) == [3, 4, 5, 6, 7]
    # Segment 5's upload started: its deadline moves far ahead.
    far = int(time.time() * 1000) + LONG_CLAIM
    assert state.start_upload(ttid, token, LONG_TTL, 5, far)
    # Segments 4 and 6 finished (ahead of 3, so they wait in "done").
    state.commit_segment(ttid, token, 4, SEG)
    state.commit_segment(ttid, token, 6, SEG)
    time.sleep(0.08)
    # Deadlines of 3 and 7 passed (their messages were lost): handed out again.
    assert state.claim_segments(ttid, token, 5, 100, SEG, LONG_CLAIM) == [3, 7]
    assert state.claim_segments(ttid, token, 5, 100, SEG, LONG_CLAIM) == []
    assert inflight(state, ttid) == {3, 5, 7}


def test_start_upload_does_not_add_unclaimed_segments(state: RedisState, ttid: str) -> None:
    start_at(state, ttid, seg(1))
    token = state.acquire_lease(ttid, A, 1, LONG_TTL)
    assert token is not None
    assert state.start_upload(ttid, token, LONG_TTL, 9, int(time.time() * 1000) + LONG_CLAIM)
    assert inflight(state, ttid) == set()


def test_claim_without_backup_lsn_is_empty(state: RedisState, ttid: str) -> None:
    token = state.acquire_lease(ttid, A, 1, LONG_TTL)
    assert token is not None
    assert state.claim_segments(ttid, token, 5, 100, SEG, LONG_CLAIM) == []


def test_claim_drops_stale_entries_below_backup(state: RedisState, ttid: str) -> None:
    start_at(state, ttid, seg(10))
    token = state.acquire_lease(ttid, A, 1, LONG_TTL)
    assert token is not None
    state.r.zadd(inflight_key(ttid), {"8": 0, "9": 2**50, "12": 2**50})
    state.r.zadd(done_key(ttid), {"7": 7, "11": 11})
    assert state.claim_segments(ttid, token, 3, 100, SEG, LONG_CLAIM) == [10]
    assert inflight(state, ttid) == {10, 12}
    assert done(state, ttid) == {11}


# -- commit_segment ---------------------------------------------------------------------


def test_commit_out_of_order_and_never_backwards(state: RedisState, ttid: str) -> None:
    start_at(state, ttid, seg(1))
    token = state.acquire_lease(ttid, A, 1, LONG_TTL)
    assert token is not None
    assert state.commit_segment(ttid, token, 3, SEG) == seg(1)
    assert state.commit_segment(ttid, token, 5, SEG) == seg(1)
    assert state.commit_segment(ttid, token, 2, SEG) == seg(1)
    assert done(state, ttid) == {2, 3, 5}
    assert state.commit_segment(ttid, token, 1, SEG) == seg(4)  # hole at 4
    assert done(state, ttid) == {5}
    # Re-committing old segments never moves backwards and is not remembered.
    for old in (0, 1, 3):
        assert state.commit_segment(ttid, token, old, SEG) == seg(4)
    assert done(state, ttid) == {5}
    assert state.commit_segment(ttid, token, 4, SEG) == seg(6)
    assert done(state, ttid) == set()
    assert stored_backup(state, ttid) == str(seg(6))


def test_commit_without_backup_lsn_is_refused(state: RedisState, ttid: str) -> None:
    token = state.acquire_lease(ttid, A, 1, LONG_TTL)
    assert token is not None
    with pytest.raises(CommitRefused):
        state.commit_segment(ttid, token, 1, SEG)


_ORDER_CASE = 0


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    seg_size=st.sampled_from([MiB, SEG, GiB]),
    start_segno=st.one_of(st.integers(0, 1000), st.integers(2**33 - 100, 2**34 - 100)),
    offset_kind=st.sampled_from(["aligned", "one", "half"]),
    finished=st.lists(st.integers(-3, 40), unique=True, min_size=1, max_size=40),
    rnd=st.randoms(use_true_random=False),
)
def test_commit_matches_python_advance_in_any_order(
    state: RedisState,
    seg_size: int,
    start_segno: int,
    offset_kind: str,
    finished: list[int],
    rnd: random.Random,
) -> None:
    ttid = new_ttid()  # each example its own timeline: no flush needed
    offset = {"aligned": 0, "one": 1, "half": seg_size // 2}[offset_kind]
    backup = Lsn.from_segment(start_segno, offset, seg_size)
    start_at(state, ttid, backup)
    token = state.acquire_lease(ttid, A, 1, LONG_TTL)
    assert token is not None
    segnos = [start_segno + d for d in finished if start_segno + d >= 0]
    rnd.shuffle(segnos)
    lsn, pending = backup, set[int]()
    for segno in segnos:
        got = state.commit_segment(ttid, token, segno, seg_size)
        lsn, pending = advance(lsn, pending | {segno}, seg_size)
        assert got == lsn, (segno, segnos)
        assert stored_backup(state, ttid) == str(lsn)
        assert done(state, ttid) == pending
    expected, _ = advance(backup, set(segnos), seg_size)
    assert lsn == expected


def test_claim_does_not_pin_a_slot_behind_a_slow_segment(state: RedisState, ttid: str) -> None:
    start_at(state, ttid, seg(3))
    token = state.acquire_lease(ttid, A, 1, LONG_TTL)
    assert token is not None
    window = WindowSize(3, 6)
    assert state.claim_segments(ttid, token, 3, 100, SEG, LONG_CLAIM, horizon=6) == [3, 4, 5]

    def commit(segno: int) -> tuple[Lsn, list[int]]:
        return state.commit_and_claim(
            ttid,
            token,
            segno,
            SEG,
            window=window,
            end_segno=100,
            claim_timeout_ms=LONG_CLAIM,
            lease_ttl_ms=LONG_TTL,
        )

    # 3 is slow: each segment finished above it frees its slot for the next.
    assert commit(4) == (seg(3), [6])
    assert commit(5) == (seg(3), [7])
    assert commit(6) == (seg(3), [8])
    assert inflight(state, ttid) == {3, 7, 8}
    # ...up to the horizon [3, 9): 7 finishes, nothing new is claimed.
    assert commit(7) == (seg(3), [])
    assert done(state, ttid) == {4, 5, 6, 7}
    # 3 commits: backup_lsn jumps to 8, the horizon to [8, 14).
    assert commit(3) == (seg(8), [9, 10])
    assert inflight(state, ttid) == {8, 9, 10}
    assert done(state, ttid) == set()


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    jobs=st.integers(1, 5),
    multiple=st.integers(1, 4),
    end=st.integers(0, 30),
    steps=st.lists(
        st.tuples(st.sampled_from(["finish", "lose", "grow", "claim"]), st.integers(0, 2**16)),
        max_size=60,
    ),
)
def test_claim_matches_python_claim_in_any_finish_order(
    state: RedisState, jobs: int, multiple: int, end: int, steps: list[tuple[str, int]]
) -> None:
    """The Lua window (claim_segments and commit_and_claim) against its model
    (``claim`` and ``advance``), uploads finishing and claims getting lost in
    random order; and the model's bounds hold on what Redis stores."""
    ttid = new_ttid()
    window = WindowSize(jobs, jobs * multiple)
    first = seg(5)
    start_at(state, ttid, first)
    token = state.acquire_lease(ttid, A, 1, LONG_TTL)
    assert token is not None
    backup, model_inflight, model_done, committed = first, dict[int, int](), set[int](), set[int]()
    for op, pick in [("claim", 0), *steps]:
        now = int(time.time() * 1000)
        live = sorted(s for s, deadline in model_inflight.items() if deadline > now)
        if op == "finish" and live:
            segno = live[pick % len(live)]
            got_lsn, got = state.commit_and_claim(
                ttid,
                token,
                segno,
                SEG,
                window=window,
                end_segno=end,
                claim_timeout_ms=LONG_CLAIM,
                lease_ttl_ms=LONG_TTL,
            )
            del model_inflight[segno]
            committed.add(segno)
            backup, model_done = advance(backup, model_done | {segno}, SEG)
            assert got_lsn == backup
        elif op == "lose" and live:
            segno = live[pick % len(live)]
            state.r.zadd(inflight_key(ttid), {str(segno): 0})
            model_inflight[segno] = 0
            continue
        else:
            end += pick % 4 if op == "grow" else 0
            got = (
                state.claim_segments(
                    ttid, token, jobs, end, SEG, LONG_CLAIM, horizon=window.horizon
                )
                or []
            )
        start = backup.segment_number(SEG)
        model_inflight = {s: d for s, d in model_inflight.items() if s >= start}
        expected = claim(
            backup,
            model_inflight,
            model_done,
            window=window,
            end_segno=end,
            seg_size=SEG,
            now_ms=now,
        )
        assert got == expected, (op, backup, model_inflight, model_done)
        model_inflight.update(dict.fromkeys(got, now + LONG_CLAIM))
        stored = {
            int(m): int(d) for m, d in state.r.zrange(inflight_key(ttid), 0, -1, withscores=True)
        }
        assert stored.keys() == model_inflight.keys()
        assert sum(1 for d in stored.values() if d > now) <= jobs
        assert all(start <= s < start + window.horizon for s in stored)
        assert done(state, ttid) == model_done
        assert model_done <= set(range(start, start + window.horizon))
        assert backup == advance(first, committed, SEG)[0]


# -- raise_backup_lsn --------------------------------------------------------------------


def test_raise_backup_lsn_never_lowers(state: RedisState, ttid: str) -> None:
    assert state.raise_backup_lsn(ttid, Lsn.parse("0/FFFFFFFF")) == "0/FFFFFFFF"
    assert state.raise_backup_lsn(ttid, Lsn.parse("0/FFFFFFFE")) == "0/FFFFFFFF"
    assert state.raise_backup_lsn(ttid, Lsn.parse("1/0")) == "1/0"
    assert state.raise_backup_lsn(ttid, Lsn.parse("0/FFFFFFFF")) == "1/0"
    # Compared as numbers, not as text: "F/..." < "10/0".
    assert state.raise_backup_lsn(ttid, Lsn.parse("F/FFFFFFFF")) == "F/FFFFFFFF"
    assert state.raise_backup_lsn(ttid, Lsn.parse("10/0")) == "10/0"
    assert state.raise_backup_lsn(ttid, Lsn.parse("F/FFFFFFFF")) == "10/0"
    assert state.raise_backup_lsn(ttid, Lsn.parse("9/0")) == "10/0"
    assert state.raise_backup_lsn(ttid, Lsn.parse("10/0")) == "10/0"
    assert state.raise_backup_lsn(ttid, Lsn.parse("10/1")) == "10/1"
    assert state.raise_backup_lsn(ttid, Lsn.parse("10/A")) == "10/A"
    assert state.raise_backup_lsn(ttid, Lsn.parse("10/9")) == "10/A"
    assert state.timeline(ttid).backup_lsn == Lsn.parse("10/A")


def test_raise_backup_lsn_random(state: RedisState, ttid: str) -> None:
    rnd = random.Random(1234)
    best = -1
    for _ in range(200):
        value = rnd.choice(
            [rnd.getrandbits(64), rnd.getrandbits(33), rnd.getrandbits(32) << 32, best]
        )
        value = max(0, value)
        best = max(best, value)
        assert state.raise_backup_lsn(ttid, Lsn(value)) == str(Lsn(best))


def test_raise_backup_lsn_through_a_pipeline(state: RedisState, ttid: str) -> None:
    pipe = state.r.pipeline(transaction=False)
    state.raise_backup_lsn(ttid, Lsn.parse("0/3000000"), pipe=pipe)
    state.raise_backup_lsn(ttid, Lsn.parse("0/2000000"), pipe=pipe)
    assert pipe.execute() == ["0/3000000", "0/3000000"]


def test_archive_start_only_rises_and_is_part_of_the_record(state: RedisState, ttid: str) -> None:
    assert state.archive_start(ttid) is None
    assert state.raise_archive_start(ttid, Lsn.parse("0/9000000")) == Lsn.parse("0/9000000")
    assert state.raise_archive_start(ttid, Lsn.parse("0/5000000")) == Lsn.parse("0/9000000")
    assert state.raise_archive_start(ttid, Lsn.parse("1/0")) == Lsn.parse("1/0")
    assert state.archive_start(ttid) == Lsn.parse("1/0")
    assert state.timeline(ttid).archive_start_lsn == Lsn.parse("1/0")
    state.forget(ttid)
    assert state.archive_start(ttid) is None


# -- exact arithmetic above 2**53 --------------------------------------------------------


def test_top_of_lsn_space_16mib(state: RedisState, ttid: str) -> None:
    start_at(state, ttid, "FFFFFFFF/FE000000")
    token = state.acquire_lease(ttid, A, 1, LONG_TTL)
    assert token is not None
    segno = Lsn.parse("FFFFFFFF/FE000000").segment_number(SEG)
    assert segno == 2**40 - 2
    assert state.claim_segments(ttid, token, 5, 2**40, SEG, LONG_CLAIM) == [segno, segno + 1]
    assert inflight(state, ttid) == {segno, segno + 1}
    assert state.commit_segment(ttid, token, segno, SEG) == Lsn.parse("FFFFFFFF/FF000000")
    assert stored_backup(state, ttid) == "FFFFFFFF/FF000000"
    assert inflight(state, ttid) == {segno + 1}


def test_high_lsn_out_of_order_16mib(state: RedisState, ttid: str) -> None:
    start_at(state, ttid, "FFFFFFFF/F0000123")  # mid-segment, near the top
    token = state.acquire_lease(ttid, A, 1, LONG_TTL)
    assert token is not None
    first = 2**40 - 16
    assert state.claim_segments(ttid, token, 5, 2**40, SEG, LONG_CLAIM) == [
        first + i for i in range(5)
    ]
    assert state.commit_segment(ttid, token, first + 2, SEG) == Lsn.parse("FFFFFFFF/F0000123")
    assert state.commit_segment(ttid, token, first + 1, SEG) == Lsn.parse("FFFFFFFF/F0000123")
    assert done(state, ttid) == {first + 1, first + 2}
    assert state.commit_segment(ttid, token, first, SEG) == Lsn.parse("FFFFFFFF/F3000000")
    assert stored_backup(state, ttid) == "FFFFFFFF/F3000000"
    assert state.claim_segments(ttid, token, 5, 2**40, SEG, LONG_CLAIM) == [
        first + 5,
        first + 6,
        first + 7,
    ]


@pytest.mark.parametrize(
    ("backup", "seg_size", "after"),
    [
        ("ABCDEF01/23000000", SEG, "ABCDEF01/24000000"),
        ("ABCDEF01/23FFFFFF", SEG, "ABCDEF01/24000000"),
        ("7/FF000000", SEG, "8/0"),
        ("FFFFFFFE/FF000000", SEG, "FFFFFFFF/0"),
        ("FFFFFFFF/80000000", GiB, "FFFFFFFF/C0000000"),
        ("FFFFFFFF/BFFFFFFF", GiB, "FFFFFFFF/C0000000"),
        ("5/C0000000", GiB, "6/0"),
        ("FFFFFFFE/C0000001", GiB, "FFFFFFFF/0"),
        ("0/0", GiB, "0/40000000"),
        ("FFFFFFFF/FFE00000", MiB, "FFFFFFFF/FFF00000"),
        ("12345678/9AB00000", MiB, "12345678/9AC00000"),
    ],
)
def test_exact_segment_arithmetic(
    state: RedisState, ttid: str, backup: str, seg_size: int, after: str
) -> None:
    start_at(state, ttid, backup)
    token = state.acquire_lease(ttid, A, 1, LONG_TTL)
    assert token is not None
    segno = Lsn.parse(backup).segment_number(seg_size)
    assert state.claim_segments(ttid, token, 1, 2**60, seg_size, LONG_CLAIM) == [segno]
    result = state.commit_segment(ttid, token, segno, seg_size)
    assert result == Lsn.from_segment(segno + 1, 0, seg_size)
    assert str(result) == after
    assert stored_backup(state, ttid) == after


def test_batch_reads_keep_unset_fields_and_unknown_timelines_in_place(state: RedisState) -> None:
    """``cluster_facts`` and ``timelines_with_peers`` read through Lua
    (``cluster_facts.lua``, ``hgetall_many.lua``): an unset field in the
    middle, a timeline Redis does not know and more timelines than one
    command takes keep every answer with its own timeline."""
    full, no_offloader, unknown = new_ttid(), new_ttid(), new_ttid()
    state.r.hset(
        tl_key(full),
        mapping={
            "backup_lsn": "0/3000000",
            "offloader": "2",
            "system_id": "7",
            "verified_lsn": "0/2000000",
        },
    )
    state.r.hset(tl_key(no_offloader), mapping={"backup_lsn": "0/1000000", "system_id": "9"})
    facts = state.cluster_facts([full, no_offloader, unknown])
    assert facts == [
        (Lsn.parse("0/3000000"), 2, 7, Lsn.parse("0/2000000")),
        (Lsn.parse("0/1000000"), None, 9, None),
        (None, None, None, None),
    ]
    many = [new_ttid() for _ in range(1500)]  # two commands
    for i, t in enumerate(many[::100]):
        state.r.hset(tl_key(t), "offloader", str(i))
    read = state.timelines_with_peers([full, unknown, *many])
    assert [r.offloader for r, _ in read[:2]] == [2, None]
    assert [r.offloader for r, _ in read[2:]][::100] == list(range(15))
    assert sum(r.offloader is not None for r, _ in read[2:]) == 15
    assert all(peers == [] for _, peers in read)
