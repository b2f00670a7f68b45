"""Throughput (SPEC §8): K segments of 16 MiB on one node with
``parallel_jobs = P`` through the real pipeline (one node worker process,
beat, private Redis, a moto S3 server process), against a plain boto3
``ThreadPoolExecutor`` of P threads uploading the same files to the same
endpoint in the same run. Runs alternate ours/baseline, and moto restarts
before each (it keeps every object in memory). Bars: ratio >= 1.0 at P = 8,
>= 0.95 at P = 4.

    .venv/bin/python -m bench.throughput [--segments 48] [--parallel 4 8]
        [--reorder-horizon N]   # N = 1: the reference's window, for comparison
        [--verifying-server]    # through tests/faults/s3proxy --verify-checksums

``--verifying-server`` puts our S3 proxy in front of moto, refusing bodies
that fail their checksums as AWS S3 does: the node's checksum probe then
trusts the server and its uploads compute no MD5. Every run goes through the
proxy (its CPU is a row of its own), so the ratios carry its cost too.
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import (
    MIB,
    BackupWatcher,
    Moto,
    aws_env,
    cluster,
    cpu_seconds,
    emit,
    log,
    metrics_histogram,
    private_redis,
    py_spy,
    stage_segments,
    table,
    ttid_for,
    workspace,
)
from bench.overhead import move_in
from tasks.core.ids import TenantTimelineId
from tests.faults.s3proxy import S3FaultProxy
from tests.fixtures_s3 import s3_client
from tests.servers import free_port

SEG_SIZE = 16 * MIB
BAR_RATIO = 1.0
BUCKET = "walbackup-bench-throughput"
IN_FLIGHT: dict[int, float] = {}
"""P -> mean uploads in flight in our run (sum of upload durations / wall)."""


def moto_pid(moto: Moto) -> int:
    proc = moto.server._proc
    assert proc is not None
    return proc.pid


def server_pids(moto: Moto, proxy: S3FaultProxy | None) -> dict[str, int]:
    """The processes serving S3: moto, and the proxy in front of it if any."""
    pids = {"moto": moto_pid(moto)}
    if proxy is not None and proxy._proc is not None:
        pids["verifying proxy"] = proxy._proc.pid
    return pids


def run_ours(
    root: Path,
    redis_url: str,
    moto: Moto,
    staged: list[tuple[TenantTimelineId, int, Path]],
    staging: Path,
    parallel: int,
    cpu: dict[str, float],
    spy_out: Path | None = None,
    reorder_horizon: int | None = None,
    spy_gil: bool = True,
    proxy: S3FaultProxy | None = None,
) -> float:
    url = moto.fresh(BUCKET)
    ttid = staged[0][0]
    root = root / f"ours-p{parallel}"  # a new node: no state file from an earlier run
    root.mkdir()
    with cluster(
        root,
        redis_url,
        url,
        seg_size=SEG_SIZE,
        s3_endpoint_url=proxy.endpoint_url if proxy else moto.endpoint_url,
        settings={
            "WALBACKUP_PARALLEL_JOBS": str(parallel),
            **(
                {}
                if reorder_horizon is None
                else {"WALBACKUP_REORDER_HORIZON": str(reorder_horizon)}
            ),
        },
    ) as c:
        c.state.r.flushall()
        port = free_port()
        c.start_node(1, {"WALBACKUP_METRICS_PORT": str(port)})
        c.start_beat()
        c.wait_nodes([1])
        # 20 ms (under 1% of a run): a 5 ms poll took CPU from the pipeline.
        watcher = BackupWatcher(redis_url, [ttid], SEG_SIZE, interval_s=0.02)
        watcher.start()
        workdir = c.workdir(1)
        pids = {"worker": c.procs["node1"].pid, **server_pids(moto, proxy)}
        before = {k: cpu_seconds(p) for k, p in pids.items()}
        with py_spy(pids["worker"], spy_out, gil=spy_gil):
            started = time.perf_counter()
            move_in(staged, staging, workdir)
            ok = watcher.wait_all(len(staged), timeout_s=300)
            elapsed = time.perf_counter() - started
        cpu.update({k: cpu_seconds(p) - before[k] for k, p in pids.items()})
        upload_s, _ = metrics_histogram(port, "upload_duration_seconds")
        IN_FLIGHT[parallel] = upload_s / elapsed  # mean uploads in flight
        watcher.stop()
        if not ok:
            print(c.tail_logs())
            raise SystemExit(f"upload did not finish: at {watcher.current}")
        # Give the files back to the staging area for the next run.
        for _, _, path in staged:
            (workdir / path.relative_to(staging)).rename(path)
    return elapsed


def run_baseline(
    moto: Moto,
    staged: list[tuple[TenantTimelineId, int, Path]],
    parallel: int,
    cpu: dict[str, float],
    *,
    sha256: bool = False,
    proxy: S3FaultProxy | None = None,
) -> float:
    """The plain boto3 pool; ``sha256`` makes it send SHA-256 checksums, as
    the pipeline must (SPEC §5), instead of botocore's default CRC32."""
    moto.fresh(BUCKET)
    client = s3_client(proxy.endpoint_url if proxy else moto.endpoint_url)

    def put(item: tuple[TenantTimelineId, int, Path]) -> None:
        ttid, _, path = item
        with path.open("rb") as body:
            key = f"{ttid.tenant_id}/{ttid.timeline_id}/{path.name}"
            if sha256:
                client.put_object(Bucket=BUCKET, Key=key, Body=body, ChecksumAlgorithm="SHA256")
            else:
                client.put_object(Bucket=BUCKET, Key=key, Body=body)

    pids = {"boto3 pool (bench)": os.getpid(), **server_pids(moto, proxy)}
    before = {k: cpu_seconds(p) for k, p in pids.items()}
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        list(pool.map(put, staged))
    elapsed = time.perf_counter() - started
    cpu.update({k: cpu_seconds(p) - before[k] for k, p in pids.items()})
    client.close()
    return elapsed


def run_storage_pool(
    moto: Moto,
    staged: list[tuple[TenantTimelineId, int, Path]],
    parallel: int,
    cpu: dict[str, float],
    proxy: S3FaultProxy | None = None,
) -> float:
    """walbackup's own S3Storage.upload_file (SHA-256, conditional put) from a
    plain pool of P threads: the storage layer without the pipeline."""
    from tasks.storage.s3 import S3Storage

    moto.fresh(BUCKET)
    endpoint = proxy.endpoint_url if proxy else moto.endpoint_url
    storage = S3Storage(BUCKET, endpoint_url=endpoint, parallel_jobs=parallel)

    def put(item: tuple[TenantTimelineId, int, Path]) -> None:
        ttid, _, path = item
        storage.upload_file(f"{ttid.tenant_id}/{ttid.timeline_id}/{path.name}", path, SEG_SIZE)

    pids = {"storage pool (bench)": os.getpid(), **server_pids(moto, proxy)}
    before = {k: cpu_seconds(p) for k, p in pids.items()}
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        list(pool.map(put, staged))
    elapsed = time.perf_counter() - started
    cpu.update({k: cpu_seconds(p) - before[k] for k, p in pids.items()})
    storage.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", type=int, default=48)
    parser.add_argument("--parallel", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--py-spy", type=Path, help="record the worker (.txt: collapsed stacks)")
    parser.add_argument(
        "--py-spy-cpu",
        action="store_true",
        help="with --py-spy: sample every thread on a CPU, not only the GIL holder",
    )
    parser.add_argument(
        "--reorder-horizon", type=int, help="WALBACKUP_REORDER_HORIZON (default: the setting's)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch dir and logs")
    parser.add_argument(
        "--verifying-server",
        action="store_true",
        help="every run through a proxy that verifies checksums as AWS S3 does",
    )
    args = parser.parse_args()

    ttid = ttid_for(0, "throughput")
    results: dict[int, tuple[float, float]] = {}
    cpu_rows: list[list[object]] = []
    same_work = storage_only = 0.0
    with workspace("throughput", keep=args.keep) as root, aws_env(), private_redis() as server:
        staging = root / "staging"
        log(f"staging {args.segments} segments of 16 MiB")
        staged = stage_segments(staging, [ttid], args.segments, SEG_SIZE)
        moto = Moto(root)
        moto.server.start()
        proxy = (
            S3FaultProxy(moto.endpoint_url, log_path=root / "proxy.log", verify_checksums=True)
            if args.verifying_server
            else None
        )
        if proxy is not None:
            proxy.start()
        try:
            for parallel in args.parallel:
                log(f"P={parallel}: ours")
                ours_cpu: dict[str, float] = {}
                spy_out = (
                    args.py_spy.with_name(f"{args.py_spy.stem}-p{parallel}{args.py_spy.suffix}")
                    if args.py_spy
                    else None
                )
                ours_s = run_ours(
                    root,
                    server.url,
                    moto,
                    staged,
                    staging,
                    parallel,
                    ours_cpu,
                    spy_out,
                    args.reorder_horizon,
                    not args.py_spy_cpu,
                    proxy,
                )
                log(f"P={parallel}: plain boto3 thread pool")
                base_cpu: dict[str, float] = {}
                base_s = run_baseline(moto, staged, parallel, base_cpu, proxy=proxy)
                n = args.segments
                for label, used in (("ours", ours_cpu), ("boto3", base_cpu)):
                    cpu_rows += [[parallel, label, k, v / n * 1000] for k, v in used.items()]
                results[parallel] = (args.segments / ours_s, args.segments / base_s)
                if parallel == max(args.parallel):
                    log(f"P={parallel}: boto3 thread pool sending SHA-256 checksums, like ours")
                    sha_cpu: dict[str, float] = {}
                    sha_s = run_baseline(moto, staged, parallel, sha_cpu, sha256=True, proxy=proxy)
                    same_work = args.segments / sha_s
                    log(f"P={parallel}: S3Storage.upload_file from a plain thread pool")
                    pool_cpu: dict[str, float] = {}
                    storage_only = args.segments / run_storage_pool(
                        moto, staged, parallel, pool_cpu, proxy
                    )
                    cpu_rows += [
                        [parallel, "boto3+sha256", k, v / n * 1000] for k, v in sha_cpu.items()
                    ]
                    cpu_rows += [
                        [parallel, "S3Storage pool", k, v / n * 1000] for k, v in pool_cpu.items()
                    ]
        finally:
            if proxy is not None:
                proxy.stop()
            moto.stop()

    table(
        f"throughput: {args.segments} segments of 16 MiB to moto S3, one node"
        + (" (through a proxy that verifies checksums)" if args.verifying_server else ""),
        ["P", "ours seg/s", "boto3 pool seg/s", "ratio", "ours MB/s", "ours: uploads in flight"],
        [[p, o, b, o / b, o * 16.777, IN_FLIGHT.get(p, 0.0)] for p, (o, b) in results.items()],
    )
    print(
        f"  boto3 pool sending SHA-256 checksums (the same work as ours), "
        f"P={max(results)}: {same_work:.3f} seg/s; ours/that = "
        f"{results[max(results)][0] / same_work:.3f}"
    )
    print(
        f"  S3Storage.upload_file from a plain pool of {max(results)} threads (the storage "
        f"layer without the pipeline): {storage_only:.3f} seg/s; ours/that = "
        f"{results[max(results)][0] / storage_only:.3f}"
    )
    table(
        "CPU per segment (ms): where the 2 cores go",
        ["P", "run", "process", "CPU ms/segment"],
        cpu_rows,
    )
    top = max(results)
    ours, base = results[top]
    emit(
        "throughput",
        ours,
        base,
        unit="segments/s",
        bar=f"ratio >= {BAR_RATIO} at P = 8 (>= 0.95 at P = 4)",
        met=ours / base >= BAR_RATIO,
        parallel_jobs=top,
        baseline_sha256=round(same_work, 3),
        ratio_vs_sha256=round(ours / same_work, 4),
        storage_pool=round(storage_only, 3),
        mean_in_flight=round(IN_FLIGHT.get(top, 0.0), 2),
        reorder_horizon=args.reorder_horizon,
        verifying_server=args.verifying_server,
        ratio_vs_storage_pool=round(ours / storage_only, 4),
        segments=args.segments,
        by_parallel={
            str(p): {
                "ours": round(o, 3),
                "baseline": round(b, 3),
                "in_flight": round(IN_FLIGHT.get(p, 0.0), 2),
            }
            for p, (o, b) in results.items()
        },
    )


if __name__ == "__main__":
    main()
