"""Election scale at 100,000 timelines (SPEC §8): 100,000 registered
timelines x 3 nodes' heartbeats in a private Redis, 1% of them active: their
commit_lsn moves every second, so their heartbeats mark them for election,
and their offloader has WAL to upload (kicked, rate-limited; a no-op here).

Times ``Elector.run_round()`` as beat runs it every second:

- the first rounds, when every timeline is new (marked, as after a Redis
  that lost its data): each takes at most ``MAX_MARKED_PER_ROUND``, so they
  work the marks off in ~20 rounds; their worst and their sum (what a full
  pass over every timeline costs);
- steady rounds with the production sweep (every timeline once per
  ``election_sweep_interval`` = 30 s): the marked timelines plus the sweep's
  slice; and the same without the sweep, to separate the two.

Between rounds (untimed) every node publishes the active timelines'
heartbeats, with commit_lsn a segment further (their records written, as a
node writes a record that changed). The other 297,000 heartbeats (unchanged
but for their time) are published once and ``heartbeat_timeout`` is 600 s here:
they stay alive, and what a round costs does not depend on it (expiries are
found by ``ZRANGEBYSCORE`` on heartbeat times, which only ever returns the
expired).

Baseline: the Redis floor — the same pipelined ``HGETALL``s of the timelines
a round elects, with no Python work on the replies (a round also reads their
peers' heartbeat times, one ``ZMSCORE`` per 1,000 timelines, not in the floor).

    .venv/bin/python -m bench.election_scale [--timelines 100000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import logging
import os
import time

from bench.common import MIB, emit, log, median, private_redis, table, ttid_for
from tasks.backup.elector import Elector
from tasks.core.election import PeerInfo
from tasks.core.lsn import Lsn
from tasks.state.keys import DIRTY_KEY, peers_key, tl_key
from tasks.state.records import peer_to_json
from tasks.state.redis import RedisState

SEG_SIZE = 16 * MIB
BAR_S = 1.0
NODES = (1, 2, 3)
ACTIVE_EVERY = 100
SWEEP_ROUNDS = 30  # election_sweep_interval 30 s / election_interval 1 s


def publish(state: RedisState, ttids: list[str], active: set[str], tick: int) -> None:
    """Every node's heartbeat of ``ttids``; active ones ``tick`` segments on."""
    now = time.time()
    start, end = Lsn.from_segment(1, 0, SEG_SIZE), Lsn.from_segment(10, 0, SEG_SIZE)
    moved = Lsn.from_segment(10 + tick, 0, SEG_SIZE)
    for node in NODES:
        records = [
            (
                t,
                peer_to_json(
                    PeerInfo(node, moved if t in active else end, start, end, now), SEG_SIZE, None
                ),
            )
            for t in ttids
        ]
        state.publish_heartbeats(
            node, records, now, changed=active if tick else None, write=active if tick else None
        )


def redis_floor(state: RedisState, ttids: list[str], batch: int = 1000) -> float:
    started = time.perf_counter()
    for i in range(0, len(ttids), batch):
        pipe = state.pipeline()
        for t in ttids[i : i + batch]:
            pipe.hgetall(tl_key(t))
            pipe.hgetall(peers_key(t))
        pipe.execute()
    return time.perf_counter() - started


def timed_round(elector: Elector) -> tuple[float, int]:
    started = time.perf_counter()
    n = elector.run_round()
    return time.perf_counter() - started, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timelines", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3, help="steady rounds of each kind")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("walbackup").setLevel(logging.WARNING)

    ttids = [str(ttid_for(i, "election-scale")) for i in range(args.timelines)]
    active = {t for i, t in enumerate(ttids) if i % ACTIVE_EVERY == 0}
    kicks: list[tuple[str, int]] = []
    with private_redis() as server:
        state = RedisState.from_url(server.url)
        state.register(ttids)
        log(f"publishing {len(ttids)} x {len(NODES)} heartbeats")
        publish(state, ttids, active, 0)
        elector = Elector(
            state,
            lambda t, n: kicks.append((t, n)),
            heartbeat_timeout_s=600.0,
            max_offloader_lag_bytes=128 * MIB,
            default_seg_size=SEG_SIZE,
            kick_hold_ms=2000,
            sweep_rounds=SWEEP_ROUNDS,
        )
        catch_up: list[tuple[float, int]] = []
        while state.r.scard(DIRTY_KEY) or not catch_up:
            catch_up.append(timed_round(elector))
        full_s = sum(s for s, _ in catch_up)
        full_floor = redis_floor(state, ttids)
        steady: dict[str, list[tuple[float, int]]] = {"sweep": [], "marks": []}
        refresh: list[float] = []
        tick = 0
        for kind, sweep_rounds in (("sweep", SWEEP_ROUNDS), ("marks", 1 << 30)):
            elector.sweep_rounds = sweep_rounds
            for _ in range(args.rounds):
                tick += 1
                started = time.perf_counter()
                publish(state, sorted(active), active, tick)
                refresh.append(time.perf_counter() - started)
                steady[kind].append(timed_round(elector))
        # Floor of a steady round: the marked (active) timelines plus a slice.
        slice_n = -(-len(ttids) // SWEEP_ROUNDS)
        floor = min(redis_floor(state, [*active, *ttids[:slice_n]]) for _ in range(3))
        marks_floor = min(redis_floor(state, list(active)) for _ in range(3))
        state.r.close()

    ours = max(s for s, _ in steady["sweep"])
    rows = [
        [f"catching up every timeline marked: {len(catch_up)} rounds, in all", full_s],
        ["catching up: the worst of those rounds", max(s for s, _ in catch_up)],
        [f"Redis floor: pipelined HGETALL x2 of all {len(ttids)}", full_floor],
        *[
            [f"steady round #{i + 1}: marks + sweep slice ({n} elected)", s]
            for i, (s, n) in enumerate(steady["sweep"])
        ],
        [f"Redis floor of a steady round ({len(active) + slice_n} timelines)", floor],
        *[
            [f"steady round #{i + 1}: marks only, no sweep ({n} elected)", s]
            for i, (s, n) in enumerate(steady["marks"])
        ],
        [f"Redis floor of the marks ({len(active)} timelines)", marks_floor],
        ["untimed: the active heartbeats between rounds (median)", median(refresh)],
    ]
    table(
        f"election scale: {len(ttids)} timelines x {len(NODES)} nodes, "
        f"{len(active)} active, sweep every {SWEEP_ROUNDS} rounds (pid {os.getpid()})",
        ["what", "seconds"],
        rows,
    )
    emit(
        "election_scale",
        ours,
        floor,
        unit="s per round (worst steady round, marks + sweep slice)",
        bar=f"<= {BAR_S} s",
        met=ours <= BAR_S,
        higher_is_better=False,
        timelines=len(ttids),
        active=len(active),
        sweep_rounds=SWEEP_ROUNDS,
        steady_round_median_s=round(median([s for s, _ in steady["sweep"]]), 4),
        marks_only_round_s=round(max(s for s, _ in steady["marks"]), 4),
        marks_floor_s=round(marks_floor, 4),
        full_pass_s=round(full_s, 4),
        catch_up_rounds=len(catch_up),
        catch_up_worst_round_s=round(max(s for s, _ in catch_up), 4),
        full_pass_floor_s=round(full_floor, 4),
        elected_per_round=steady["sweep"][-1][1],
        kicks=len(kicks),
    )


if __name__ == "__main__":
    main()
