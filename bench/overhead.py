"""Per-segment overhead (SPEC §8): 1 MiB segments on ``file://`` through the
whole pipeline — the node notices the segments, triggers, elects itself, takes
the lease, uploads through Celery tasks and commits in order — in segments/s,
and the Redis commands each segment costs.

Baseline: a plain loop uploading the same files with the same ``LocalStorage``
backend (what the storage alone costs: copy, SHA-256, fsync, link).

    .venv/bin/python -m bench.overhead [--segments 1000] [--timelines 4]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from bench.common import (
    MIB,
    BackupWatcher,
    RedisTrace,
    cluster,
    command_counts,
    counts_delta,
    cpu_seconds,
    emit,
    log,
    private_redis,
    py_spy,
    stage_segments,
    table,
    ttid_for,
    workspace,
)
from tasks.core.ids import TenantTimelineId
from tasks.storage.base import segment_key
from tasks.storage.local import LocalStorage

SEG_SIZE = MIB
BAR_SEG_S = 300.0


def move_in(staged: list[tuple[TenantTimelineId, int, Path]], staging: Path, workdir: Path) -> None:
    for _, _, path in staged:
        dest = workdir / path.relative_to(staging)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.rename(path, dest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", type=int, default=1000, help="total segments")
    parser.add_argument("--timelines", type=int, default=4)
    parser.add_argument("--parallel-jobs", type=int, default=5)
    parser.add_argument("--trace-segments", type=int, default=200, help="MONITOR pass (0: off)")
    parser.add_argument(
        "--where", help="parent dir of WORKDIR and remote (default: temp dir on disk)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch dir and logs")
    parser.add_argument("--py-spy", type=Path, help="record the worker with py-spy to this SVG")
    args = parser.parse_args()

    per_tl = max(1, args.segments // args.timelines)
    total = per_tl * args.timelines
    ttids = [ttid_for(i, "overhead") for i in range(args.timelines)]
    trace_ttids = [ttid_for(i, "overhead-trace") for i in range(args.timelines)]
    with workspace("overhead", args.where, keep=args.keep) as root, private_redis() as redis_server:
        staging = root / "staging"
        log(f"staging {total} segments of 1 MiB in {args.timelines} timelines")
        staged = stage_segments(staging, ttids, per_tl, SEG_SIZE)

        # Baseline first (warms the page cache for both equally).
        base_store = LocalStorage(root / "baseline-remote")
        started = time.perf_counter()
        for ttid, _segno, path in staged:
            base_store.upload_file(segment_key(ttid, path.name), path, SEG_SIZE)
        baseline_s = time.perf_counter() - started

        remote = (root / "remote").as_uri()
        with cluster(
            root,
            redis_server.url,
            remote,
            seg_size=SEG_SIZE,
            settings={"WALBACKUP_PARALLEL_JOBS": str(args.parallel_jobs)},
        ) as c:
            c.start_node(1)
            c.start_beat()
            c.wait_nodes([1])
            worker = c.procs["node1"].pid
            # 20 ms: a 5 ms poll took a tenth of a core from the pipeline under test.
            watcher = BackupWatcher(redis_server.url, ttids, SEG_SIZE, interval_s=0.02)
            before = command_counts(c.state.r)
            others = {
                "redis-server": redis_server.proc.pid,  # type: ignore[union-attr]
                "beat": c.procs["beat"].pid,
                "bench (this)": os.getpid(),
            }
            cpu_before = cpu_seconds(worker)
            others_before = {k: cpu_seconds(p) for k, p in others.items()}
            with py_spy(worker, args.py_spy):
                watcher.start()
                started_wall = time.time()
                started = time.perf_counter()
                move_in(staged, staging, c.workdir(1))
                ok = watcher.wait_all(per_tl, timeout_s=max(60.0, total / 20))
                ours_s = time.perf_counter() - started
            watcher.stop()
            if not ok:
                print(c.tail_logs())
                raise SystemExit(f"pipeline did not finish: at {watcher.current}")
            cpu_used = cpu_seconds(worker) - cpu_before
            others_used = {k: cpu_seconds(p) - others_before[k] for k, p in others.items()}
            after = command_counts(c.state.r)
            delta = counts_delta(before, after)
            delta["hget"] = delta.get("hget", 0) - watcher.commands
            delta["info"] = delta.get("info", 0) - 1
            delta = {k: v for k, v in delta.items() if v > 0}
            per_seg_cmds = sum(delta.values()) / total

            trace: RedisTrace | None = None
            trace_n = 0
            if args.trace_segments:
                trace_per_tl = max(1, args.trace_segments // args.timelines)
                trace_n = trace_per_tl * args.timelines
                trace_staged = stage_segments(
                    root / "staging-trace", trace_ttids, trace_per_tl, SEG_SIZE
                )
                tw = BackupWatcher(redis_server.url, trace_ttids, SEG_SIZE, interval_s=0.05)
                with RedisTrace(redis_server.url) as trace:
                    tw.start()
                    move_in(trace_staged, root / "staging-trace", c.workdir(1))
                    tw.wait_all(trace_per_tl, timeout_s=120)
                    tw.stop()
                trace.by_client["HGET"] = trace.by_client.get("HGET", 0) - tw.commands

    ours = total / ours_s
    baseline = total / baseline_s
    # Start-up (discovery, registration, election, lease) apart from the flow.
    first_s = min(watcher.covered.values()) - started_wall
    first_n = sum(1 for t in watcher.covered.values() if t - started_wall <= first_s)
    steady = (total - first_n) / max(ours_s - first_s, 1e-9)
    rows = [
        ["pipeline (1 node, beat)", total, ours_s, ours, cpu_used / total * 1000],
        ["plain LocalStorage loop", total, baseline_s, baseline, ""],
    ]
    table(
        f"overhead: {total} x 1 MiB segments, {args.timelines} timelines, file://",
        ["what", "segments", "seconds", "segments/s", "worker CPU ms/seg"],
        rows,
    )
    table(
        "CPU per segment by process (ms)",
        ["process", "ms/segment", "share of one core"],
        [["node worker", cpu_used / total * 1000, cpu_used / ours_s]]
        + [[k, v / total * 1000, v / ours_s] for k, v in others_used.items()],
    )
    top = sorted(delta.items(), key=lambda kv: -kv[1])
    table(
        "Redis commands per segment (INFO commandstats delta; includes commands run inside Lua)",
        ["command", "per segment"],
        [[k, v / total] for k, v in top[:14]] + [["TOTAL", per_seg_cmds]],
    )
    client_cmds = lua_cmds = None
    if trace is not None and trace_n:
        client_cmds = sum(v for v in trace.by_client.values() if v > 0) / trace_n
        lua_cmds = sum(trace.in_lua.values()) / trace_n
        table(
            f"Requests per segment sent by clients (MONITOR over {trace_n} more segments)",
            ["command", "per segment"],
            [
                *[
                    [k, v / trace_n]
                    for k, v in sorted(trace.by_client.items(), key=lambda kv: -kv[1])
                    if v > 0
                ][:14],
                ["TOTAL (client)", client_cmds],
                ["inside Lua", lua_cmds],
            ],
        )
    emit(
        "overhead",
        ours,
        baseline,
        unit="segments/s",
        bar=f">= {BAR_SEG_S:.0f} segments/s",
        met=ours >= BAR_SEG_S,
        segments=total,
        timelines=args.timelines,
        parallel_jobs=args.parallel_jobs,
        first_commit_s=round(first_s, 3),
        after_first_commit_segments_per_s=round(steady, 1),
        worker_cpu_ms_per_segment=round(cpu_used / total * 1000, 3),
        redis_commands_per_segment=round(per_seg_cmds, 2),
        redis_client_requests_per_segment=round(client_cmds, 2) if client_cmds else None,
        redis_lua_commands_per_segment=round(lua_cmds, 2) if lua_cmds else None,
    )


if __name__ == "__main__":
    main()
