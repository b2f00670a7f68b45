"""Fleet (SPEC §8): many timelines on 3 nodes completing segments at the
same moment, through the whole pipeline (3 node workers, beat, Redis).

Every node's WORKDIR holds each timeline's first segment as ``.partial`` (the
timelines are known, nothing to upload); at T0 the bench renames, in every
WORKDIR, ``.partial`` -> complete and moves the following segments in. Wall
time from T0 until every timeline's ``backup_lsn`` covers them (polled every
0.25 s), against a plain pool with the same total concurrency (3 nodes x
``parallel_jobs`` threads) uploading the same files with the same storage
(``LocalStorage`` for ``file://``, boto3 ``put_object`` for moto).

Shapes: ``file``: 1,000 timelines x 2 segments of 1 MiB; ``s3``: 100
timelines x 4 segments of 16 MiB on moto; ``rss``: the ``file`` shape on one
node whose WORKDIR also holds idle timeline dirs (a sparse ``.partial``
each) up to ``--rss-timelines`` = 10,000, for its RSS idle and after the run
(3 nodes of 10,000 dirs each overload the 2-core machine: heartbeats expire).
Also: per-timeline fairness (the slowest timeline's completion vs the
median), the CPU time of the nodes (all three, moto's excluded) and of the
pool per segment, each node's CPU while it holds its timelines idle (before
T0, a share of one core), Redis commands (``INFO commandstats`` delta, the bench's own
polling taken out) and Celery messages (``LPUSH`` on the broker: kombu's
publish) per segment.

    .venv/bin/python -m bench.fleet [--shapes file s3] [--timelines 1000] ...
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.common import (
    MIB,
    BackupWatcher,
    Moto,
    aws_env,
    cluster,
    command_counts,
    counts_delta,
    cpu_seconds,
    cpu_split,
    emit,
    log,
    private_redis,
    py_spy,
    rss_kib,
    stage_segments,
    table,
    ttid_for,
    workspace,
)
from tasks.core.ids import TenantTimelineId
from tasks.core.segments import PARTIAL_SUFFIX, xlog_file_name
from tasks.storage.base import segment_key
from tasks.storage.local import LocalStorage
from tests.fixtures_s3 import s3_client

NODES = (1, 2, 3)
BAR_RATIO = 0.9
BAR_FAIRNESS = 2.0
BAR_RSS_MIB = 150.0
IDLE_S = 10.0
"""How long the nodes' CPU is measured while they hold their timelines idle."""
BUCKET = "walbackup-bench-fleet"
Staged = list[tuple[TenantTimelineId, int, Path]]


def place(staged: Staged, staging: Path, workdir: Path) -> list[tuple[Path, Path]]:
    """Hard-link the staged files into ``workdir``: segment 1 as ``.partial``
    now; returns the (source, destination) renames that complete them at T0."""
    renames = []
    for _, segno, path in staged:
        dest = workdir / path.relative_to(staging)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if segno == 1:
            partial = dest.with_name(dest.name + PARTIAL_SUFFIX)
            os.link(path, partial)
            renames.append((partial, dest))
        else:
            tmp = workdir.parent / f"{workdir.name}-in" / path.relative_to(staging)
            tmp.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, tmp)
            renames.append((tmp, dest))
    return renames


def idle_dirs(workdir: Path, count: int, seg_size: int) -> None:
    """``count`` idle timelines: a sparse ``.partial`` of segment 1 each."""
    name = xlog_file_name(1, seg_size) + PARTIAL_SUFFIX
    for i in range(count):
        ttid = ttid_for(i, "fleet-idle")
        d = workdir / ttid.tenant_id / ttid.timeline_id
        d.mkdir(parents=True, exist_ok=True)
        with open(d / name, "wb") as f:
            f.truncate(seg_size)


def idle_cpu_share(pids: list[int], seconds: float) -> float:
    """The mean share of a core each of ``pids`` used over ``seconds``."""
    before = [cpu_seconds(pid) for pid in pids]
    started = time.monotonic()
    time.sleep(seconds)
    took = time.monotonic() - started
    return sum(cpu_seconds(p) - b for p, b in zip(pids, before, strict=True)) / took / len(pids)


def baseline(
    staged: Staged, threads: int, seg_size: int, root: Path, moto: Moto | None
) -> tuple[float, float]:
    """The plain pool: each file uploaded once, ``threads`` at a time; its
    wall time and CPU time (this process's)."""
    if moto is None:
        store = LocalStorage(root / "baseline-remote")

        def put(item: tuple[TenantTimelineId, int, Path]) -> None:
            store.upload_file(segment_key(item[0], item[2].name), item[2], seg_size)

    else:
        moto.fresh(BUCKET)
        client = s3_client(moto.endpoint_url)

        def put(item: tuple[TenantTimelineId, int, Path]) -> None:
            with item[2].open("rb") as body:
                client.put_object(Bucket=BUCKET, Key=segment_key(item[0], item[2].name), Body=body)

    started, cpu = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(put, staged))
    return time.perf_counter() - started, time.process_time() - cpu


def run_ours(
    root: Path,
    redis_url: str,
    staged: Staged,
    staging: Path,
    seg_size: int,
    per_tl: int,
    parallel: int,
    moto: Moto | None,
    idle: int,
    nodes: tuple[int, ...],
    spy: argparse.Namespace,
    redis_pid: int,
) -> dict[str, Any]:
    remote = moto.fresh(BUCKET) if moto else (root / "remote").as_uri()
    ttids = sorted({t for t, _, _ in staged}, key=str)
    with cluster(
        root / "ours",
        redis_url,
        remote,
        seg_size=seg_size,
        s3_endpoint_url=moto.endpoint_url if moto else None,
        settings={"WALBACKUP_PARALLEL_JOBS": str(parallel)},
    ) as c:
        c.state.r.flushall()
        renames = []
        for node in nodes:
            renames += place(staged, staging, c.workdir(node))
            idle_dirs(c.workdir(node), idle, seg_size)
        for node in nodes:
            c.start_node(node)
        c.start_beat()
        c.wait_nodes(list(nodes), timeout=120)
        time.sleep(5)  # first scans and heartbeats of every timeline settle
        rss_idle = rss_kib(c.procs["node1"].pid) / 1024
        node_pids = [c.procs[f"node{n}"].pid for n in nodes]
        idle_cpu = idle_cpu_share(node_pids, IDLE_S)
        watcher = BackupWatcher(redis_url, ttids, seg_size, interval_s=0.25)
        pids = {name: p.pid for name, p in c.procs.items()} | {"redis": redis_pid}
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        sys_before = sum(cpu_split(pid)[1] for pid in node_pids)
        before = command_counts(c.state.r)
        watcher.start()
        with py_spy(c.procs[spy.py_spy_proc].pid, spy.py_spy, gil=not spy.py_spy_cpu):
            started = time.time()
            for src, dest in renames:
                os.rename(src, dest)
            ok = watcher.wait_all(per_tl, timeout_s=600)
            wall = time.time() - started
        watcher.stop()
        after = command_counts(c.state.r)
        cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
        sys_cpu = sum(cpu_split(pid)[1] for pid in node_pids) - sys_before
        if not ok:
            print(c.tail_logs())
            raise SystemExit(
                f"fleet did not finish: {sum(v > per_tl for v in watcher.current.values())} done"
            )
        time.sleep(2)
        rss_after = rss_kib(c.procs["node1"].pid) / 1024
    delta = counts_delta(before, after)
    delta["hget"] = delta.get("hget", 0) - watcher.commands
    delta["info"] = delta.get("info", 0) - 1
    done = [watcher.covered[(str(t), per_tl)] - started for t in ttids]
    segments = len(staged)
    covered = sorted(watcher.covered[(str(t), s)] - started for t, s, _ in staged)
    return {
        "wall_s": wall,
        "slowest_s": max(done),
        "median_s": statistics.median(done),
        "redis_per_seg": sum(v for v in delta.values() if v > 0) / segments,
        "messages_per_seg": delta.get("lpush", 0) / segments,
        "node_cpu_ms_per_seg": 1000 * sum(cpu[n] for n in cpu if n.startswith("node")) / segments,
        "node_sys_cpu_ms_per_seg": 1000 * sys_cpu / segments,
        "cpu_ms_per_seg_by_process": {n: round(1000 * v / segments, 2) for n, v in cpu.items()},
        "rss_idle_mib": rss_idle,
        "idle_cpu_pct": 100 * idle_cpu,
        "rss_after_mib": rss_after,
        # when 10 %, 20 %, ... 100 % of the segments were covered: where the time went
        "deciles_s": [round(covered[max(0, len(covered) * k // 10 - 1)], 2) for k in range(1, 11)],
    }


def shape(
    name: str,
    args: argparse.Namespace,
    timelines: int,
    per_tl: int,
    seg_size: int,
    moto: Moto | None,
    idle: int = 0,
    nodes: tuple[int, ...] = NODES,
) -> dict[str, Any]:
    threads = len(nodes) * args.parallel_jobs
    ttids = [ttid_for(i, f"fleet-{name}") for i in range(timelines)]
    with workspace(f"fleet-{name}", keep=args.keep) as root, private_redis() as server:
        log(f"{name}: staging {timelines} x {per_tl} segments of {seg_size // MIB} MiB")
        staging = root / "staging"
        staged = stage_segments(staging, ttids, per_tl, seg_size)
        base_s, base_cpu = baseline(staged, threads, seg_size, root, moto)
        log(f"{name}: pool of {threads} threads took {base_s:.2f} s; now the fleet")
        ours = run_ours(
            root,
            server.url,
            staged,
            staging,
            seg_size,
            per_tl,
            args.parallel_jobs,
            moto,
            idle,
            nodes,
            args,
            server.proc.pid if server.proc else 0,
        )
    segments = len(staged)
    ours["rate"] = segments / ours["wall_s"]
    ours["baseline_rate"] = segments / base_s
    ours["pool_cpu_ms_per_seg"] = 1000 * base_cpu / segments
    ours["segments"] = segments
    ours["threads"] = threads
    ours["nodes"] = len(nodes)
    return ours


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shapes", nargs="+", choices=["file", "s3", "rss"], default=["file", "s3", "rss"]
    )
    parser.add_argument("--timelines", type=int, default=1000, help="file shape")
    parser.add_argument("--segments", type=int, default=2, help="file shape, per timeline")
    parser.add_argument("--s3-timelines", type=int, default=100)
    parser.add_argument("--s3-segments", type=int, default=4, help="16 MiB, per timeline")
    parser.add_argument("--rss-timelines", type=int, default=10_000, help="dirs per node")
    parser.add_argument("--parallel-jobs", type=int, default=5)
    parser.add_argument("--py-spy", type=Path, help="record a process (.txt: collapsed stacks)")
    parser.add_argument("--keep", action="store_true", help="keep the workspace (worker logs)")
    parser.add_argument("--py-spy-proc", default="node1", help="node1, node2, node3 or beat")
    parser.add_argument(
        "--py-spy-cpu", action="store_true", help="every thread on a CPU, not the GIL holder"
    )
    args = parser.parse_args()

    results: dict[str, dict[str, Any]] = {}
    if "file" in args.shapes:
        results["file"] = shape("file", args, args.timelines, args.segments, MIB, None)
    if "s3" in args.shapes:
        with aws_env(), workspace("fleet-moto") as moto_root:
            moto = Moto(moto_root)
            try:
                results["s3"] = shape(
                    "s3", args, args.s3_timelines, args.s3_segments, 16 * MIB, moto
                )
            finally:
                moto.stop()
    if "rss" in args.shapes:
        idle = max(0, args.rss_timelines - args.timelines)
        results["rss"] = shape(
            "rss", args, args.timelines, args.segments, MIB, None, idle, nodes=(1,)
        )

    rows = [
        [
            name,
            r["segments"],
            r["rate"],
            r["baseline_rate"],
            r["rate"] / r["baseline_rate"],
            r["median_s"],
            r["slowest_s"],
            r["slowest_s"] / r["median_s"],
            r["redis_per_seg"],
            r["messages_per_seg"],
            r["node_cpu_ms_per_seg"],
            r["pool_cpu_ms_per_seg"],
            r["nodes"],
            r["idle_cpu_pct"],
            r["rss_idle_mib"],
            r["rss_after_mib"],
        ]
        for name, r in results.items()
    ]
    table(
        f"fleet: parallel_jobs {args.parallel_jobs}, pool = nodes x that (pid {os.getpid()})",
        [
            "shape",
            "segments",
            "seg/s",
            "pool seg/s",
            "ratio",
            "median tl s",
            "slowest tl s",
            "slow/median",
            "redis cmds/seg",
            "celery msgs/seg",
            "nodes' CPU ms/seg",
            "pool CPU ms/seg",
            "nodes",
            "idle CPU %/node",
            "node1 RSS idle MiB",
            "after MiB",
        ],
        rows,
    )
    fleet = {n: r for n, r in results.items() if n != "rss"} or results  # rss alone
    ratios = {n: r["rate"] / r["baseline_rate"] for n, r in fleet.items()}
    fairness = {n: r["slowest_s"] / r["median_s"] for n, r in fleet.items()}
    rss = (
        max(results["rss"]["rss_idle_mib"], results["rss"]["rss_after_mib"])
        if "rss" in results
        else 0.0
    )
    worst = min(ratios, key=lambda n: ratios[n])
    emit(
        "fleet",
        results[worst]["rate"],
        results[worst]["baseline_rate"],
        unit=f"segments/s (the shape furthest from its pool: {worst})",
        bar=f"ratio >= {BAR_RATIO}, slowest <= {BAR_FAIRNESS} x median, RSS <= {BAR_RSS_MIB} MiB",
        met=ratios[worst] >= BAR_RATIO
        and max(fairness.values()) <= BAR_FAIRNESS
        and rss <= BAR_RSS_MIB,
        shapes={
            n: {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}
            for n, r in results.items()
        },
        rss_mib_at_10k=round(rss, 1),
    )


if __name__ == "__main__":
    main()
