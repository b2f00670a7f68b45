"""Election scale (SPEC §8): 10,000 registered timelines x 3 nodes' heartbeats
in a private Redis. Times one full ``Elector.run_round()`` (the first, which
records every result, and steady rounds, which find nothing changed), and one
node's heartbeat round: a real ``NodeService`` over a WORKDIR of 10,000
timeline directories publishing its PeerInfo (``publish_heartbeats``), reading
back ``cluster_facts`` and doing its per-timeline upkeep.

The elector here sweeps every timeline every round (``sweep_rounds`` = 1):
the full pass SPEC §8 bounds at 10,000 timelines. Production rounds elect
what changed plus 1/30 of the timelines (``bench.election_scale``).

One timeline in 100 has WAL to upload, so its offloader is kicked (a no-op
here, counted); the others are caught up.

Baseline: the Redis floor — the same pipelined reads (``HGETALL`` of every
timeline and peers hash) with no Python work on the replies.

    .venv/bin/python -m bench.election [--timelines 10000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

from bench.common import (
    MIB,
    emit,
    log,
    median,
    private_redis,
    table,
    ttid_for,
    workspace,
)
from tasks.backup.elector import Elector
from tasks.backup.node import NodeService
from tasks.config import load_settings
from tasks.core.election import PeerInfo
from tasks.core.lsn import Lsn
from tasks.core.segments import xlog_file_name
from tasks.state.records import peer_to_json
from tasks.state.redis import RedisState
from tasks.storage.local import LocalStorage

SEG_SIZE = 16 * MIB
BAR_S = 1.0
NODES = (1, 2, 3)


LAGGING_EVERY = 100
"""One timeline in this many has WAL to upload (its offloader gets kicked);
the others are backed up to their commit_lsn, as in a healthy cluster."""


def publish_all(state: RedisState, ttids: list[str], now: float, *, beats_only: bool) -> None:
    """Heartbeats of 3 nodes holding segments 1..9; on lagging timelines
    nothing is backed up yet and node 3 is one segment behind. ``beats_only``:
    the records are there already (a node writes a record when it changed)."""
    start, end = Lsn.from_segment(1, 0, SEG_SIZE), Lsn.from_segment(10, 0, SEG_SIZE)
    for node in NODES:
        payload_by_tl = []
        for i, t in enumerate(ttids):
            lagging = i % LAGGING_EVERY == 0
            commit = Lsn.from_segment(9, 0, SEG_SIZE) if lagging and node == 3 else end
            peer = PeerInfo(node, commit, start, start if lagging else end, now)
            payload_by_tl.append((t, peer_to_json(peer, SEG_SIZE, None)))
        state.publish_heartbeats(node, payload_by_tl, now, write=() if beats_only else None)


def redis_floor(state: RedisState, ttids: list[str], batch: int = 1000) -> float:
    started = time.perf_counter()
    for i in range(0, len(ttids), batch):
        pipe = state.r.pipeline(transaction=False)
        for t in ttids[i : i + batch]:
            pipe.hgetall(f"walbackup:tl:{t}")
            pipe.hgetall(f"walbackup:peers:{t}")
        pipe.execute()
    return time.perf_counter() - started


def make_workdir(workdir: Path, ttids: list[str]) -> None:
    """One sparse complete segment per timeline: the scan reads sizes only."""
    name = xlog_file_name(1, SEG_SIZE)
    for t in ttids:
        d = workdir / t
        d.mkdir(parents=True, exist_ok=True)
        with open(d / name, "wb") as f:
            f.truncate(SEG_SIZE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timelines", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3, help="steady rounds to time")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)  # "elected ..." once per timeline: not timed I/O
    logging.getLogger("walbackup").setLevel(logging.WARNING)

    ttids = [str(ttid_for(i, "election")) for i in range(args.timelines)]
    kicks: list[tuple[str, int]] = []
    with private_redis() as server, workspace("election") as root:
        state = RedisState.from_url(server.url)
        state.register(ttids)
        publish_all(state, ttids, time.time(), beats_only=False)
        elector = Elector(
            state,
            lambda t, n: kicks.append((t, n)),
            heartbeat_timeout_s=5.0,
            max_offloader_lag_bytes=128 * MIB,
            default_seg_size=SEG_SIZE,
            kick_hold_ms=2000,
        )
        started = time.perf_counter()
        n = elector.run_round()
        first_s = time.perf_counter() - started
        assert n == len(ttids)
        steady: list[float] = []
        for _ in range(args.rounds):
            publish_all(state, ttids, time.time(), beats_only=True)  # keep every peer alive
            started = time.perf_counter()
            elector.run_round()
            steady.append(time.perf_counter() - started)
        floor = min(redis_floor(state, ttids) for _ in range(3))

        log(f"making a WORKDIR of {len(ttids)} timeline dirs")
        workdir = root / "node1"
        make_workdir(workdir, ttids)
        settings = load_settings(
            node_id=1, workdir=workdir, wal_seg_size=SEG_SIZE, data_dir=root / "data"
        )
        node = NodeService(
            settings,
            state,
            LocalStorage(root / "remote"),
            elector,
            lambda *a: None,
            lambda jobs: None,
        )
        node.identity.check()  # as its thread does first
        # The node's loop: rescan WORKDIR, then publish and do the upkeep.
        scans: list[float] = []
        beats: list[float] = []
        for _ in range(args.rounds + 2):
            started = time.perf_counter()
            node._refresh(trigger=False)
            scans.append(time.perf_counter() - started)
            started = time.perf_counter()
            node.heartbeats.round(list(node._timelines.values()))
            beats.append(time.perf_counter() - started)
        state.r.close()

    ours = max(steady)
    rows = [
        ["election round, first (records 10k results)", first_s],
        *[[f"election round, steady #{i + 1}", s] for i, s in enumerate(steady)],
        ["Redis floor: pipelined HGETALL x2 per timeline", floor],
        ["node loop, first scan (lists every dir)", scans[0]],
        ["node loop, first heartbeat (state-file catch-up, capped)", beats[0]],
        ["node loop, second scan (reads the new state files)", scans[1]],
        *[[f"node loop #{i + 1}: scan (stat per dir)", s] for i, s in enumerate(scans[2:])],
        *[[f"node loop #{i + 1}: heartbeat round", s] for i, s in enumerate(beats[2:])],
    ]
    table(
        f"election: {len(ttids)} timelines x {len(NODES)} nodes (pid {os.getpid()})",
        ["what", "seconds"],
        rows,
    )
    heartbeat = max(beats[2:])
    emit(
        "election",
        ours,
        floor,
        unit="s per round (worst steady round)",
        bar=f"<= {BAR_S} s",
        met=ours <= BAR_S and heartbeat <= BAR_S,
        higher_is_better=False,
        timelines=len(ttids),
        first_round_s=round(first_s, 4),
        steady_round_median_s=round(median(steady), 4),
        heartbeat_round_s=round(heartbeat, 4),
        heartbeat_first_round_s=round(beats[0], 4),
        scan_steady_s=round(max(scans[2:]), 4),
        kicks=len(kicks),
    )


if __name__ == "__main__":
    main()
