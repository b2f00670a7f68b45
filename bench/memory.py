"""Memory (SPEC §8): a node worker's RSS while 1,000 segments of 1 MiB pass
through it on ``file://`` (4 timelines, fed in steady batches). ``VmRSS`` from
``/proc/PID/status`` is sampled every 50 ms; the bar compares the median over
the first 10% of the segments with the median over the last 10%: flat means
last/first <= 1.1.

    .venv/bin/python -m bench.memory [--segments 1000]
"""

from __future__ import annotations

import argparse
import os
import threading
import time

from bench.common import (
    MIB,
    BackupWatcher,
    cluster,
    emit,
    log,
    median,
    private_redis,
    rss_kib,
    stage_segments,
    table,
    ttid_for,
    workspace,
)

SEG_SIZE = MIB
BAR_RATIO = 1.1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", type=int, default=1000)
    parser.add_argument("--timelines", type=int, default=4)
    parser.add_argument("--batch", type=int, default=20, help="segments moved in per step")
    args = parser.parse_args()

    per_tl = max(1, args.segments // args.timelines)
    total = per_tl * args.timelines
    ttids = [ttid_for(i, "memory") for i in range(args.timelines)]
    samples: list[tuple[int, int]] = []  # (segments backed up, RSS KiB)
    with workspace("memory") as root, private_redis() as server:
        staging = root / "staging"
        log(f"staging {total} segments of 1 MiB")
        staged = stage_segments(staging, ttids, per_tl, SEG_SIZE)
        # Segment k of every timeline first: WAL arrives on all timelines at once.
        staged.sort(key=lambda item: (item[1], str(item[0])))
        with cluster(root, server.url, (root / "remote").as_uri(), seg_size=SEG_SIZE) as c:
            c.start_node(1)
            c.start_beat()
            c.wait_nodes([1])
            pid = c.procs["node1"].pid
            idle_rss = rss_kib(pid)
            watcher = BackupWatcher(server.url, ttids, SEG_SIZE, interval_s=0.02)
            watcher.start()
            stop = threading.Event()

            def sample() -> None:
                while not stop.is_set():
                    done = sum(max(0, v - 1) for v in watcher.current.values())
                    samples.append((done, rss_kib(pid)))
                    stop.wait(0.05)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            started = time.perf_counter()
            workdir = c.workdir(1)
            for i in range(0, len(staged), args.batch):
                for _, _, path in staged[i : i + args.batch]:
                    dest = workdir / path.relative_to(staging)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    os.rename(path, dest)
                time.sleep(0.05)
            ok = watcher.wait_all(per_tl, timeout_s=300)
            elapsed = time.perf_counter() - started
            time.sleep(1)  # a settled sample after the last commit
            stop.set()
            sampler.join()
            watcher.stop()
            if not ok:
                print(c.tail_logs())
                raise SystemExit(f"backup did not finish: at {watcher.current}")
            end_rss = rss_kib(pid)

    first = [rss for done, rss in samples if done <= total * 0.1]
    last = [rss for done, rss in samples if done >= total * 0.9]
    first_kib, last_kib = median(first), median(last)
    ratio = last_kib / first_kib
    peak = max(rss for _, rss in samples)
    table(
        f"memory: node worker RSS over {total} segments of 1 MiB ({elapsed:.1f} s, "
        f"{len(samples)} samples)",
        ["when", "RSS MiB"],
        [
            ["idle, before any WAL", idle_rss / 1024],
            ["median over the first 10% of segments", first_kib / 1024],
            ["median over the last 10% of segments", last_kib / 1024],
            ["peak", peak / 1024],
            ["after the last commit", end_rss / 1024],
        ],
    )
    emit(
        "memory",
        last_kib / 1024,
        first_kib / 1024,
        unit="MiB RSS (median, last 10% of segments)",
        bar=f"last/first <= {BAR_RATIO}",
        met=ratio <= BAR_RATIO,
        higher_is_better=False,
        last_over_first=round(ratio, 4),
        idle_mib=round(idle_rss / 1024, 1),
        peak_mib=round(peak / 1024, 1),
        segments=total,
    )


if __name__ == "__main__":
    main()
