"""Shared plumbing for the benchmarks: private servers, a cluster of real
worker processes, machine facts, and the output format (a human table plus one
JSON line per benchmark).

Everything here reuses the test harness (``tests.servers``, ``tests.fixtures_s3``,
``tests.cluster``): the benchmarks run the product the way the integration
tests do, with real processes on loopback ports.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import redis

from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.core.segments import xlog_file_name
from tasks.dev.simulate import iter_segment_blocks
from tests.cluster import Cluster
from tests.fixtures_s3 import AWS_ENV, AWS_ENV_CLEARED, MotoServer, make_bucket
from tests.servers import RedisServer, free_port

MIB = 1 << 20
REPO = Path(__file__).resolve().parent.parent

# Production defaults (SPEC §6), not the test cluster's faster ones.
PRODUCTION_TIMINGS = {
    "WALBACKUP_HEARTBEAT_TIMEOUT": "5",
    "WALBACKUP_ELECTION_INTERVAL": "1",
}


def ttid_for(index: int, salt: str = "bench") -> TenantTimelineId:
    """A deterministic timeline id per index (benchmarks are repeatable)."""
    import hashlib

    digest = hashlib.sha256(f"{salt}/{index}".encode()).hexdigest()
    return TenantTimelineId(digest[:32], digest[32:])


def machine() -> dict[str, str]:
    """The facts the README records next to each figure."""
    mem = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["free", "-h"], capture_output=True, text=True, check=True).stdout
        mem = next((line.split()[1] for line in out.splitlines() if line.startswith("Mem:")), "")
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "nproc": str(os.cpu_count()),
        "mem": mem,
        "python": platform.python_version(),
    }


def emit(
    bench: str,
    ours: float,
    baseline: float | None,
    *,
    unit: str,
    bar: str,
    met: bool,
    higher_is_better: bool = True,
    **extra: Any,
) -> dict[str, Any]:
    """Print the machine-readable line: exactly one per benchmark."""
    ratio: float | None = None
    if baseline:
        ratio = ours / baseline if higher_is_better else baseline / ours if ours else None
    record: dict[str, Any] = {
        "bench": bench,
        "ours": round(ours, 4),
        "baseline": round(baseline, 4) if baseline is not None else None,
        "ratio": round(ratio, 4) if ratio is not None else None,
        "unit": unit,
        "bar": bar,
        "met": met,
        **extra,
        "machine": machine(),
    }
    print(json.dumps(record), flush=True)
    return record


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain-text table for people."""
    cells = [[str(c) for c in header]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    for n, row in enumerate(cells):
        print("  " + "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))
    print(flush=True)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- servers -----------------------------------------------------------------


@contextlib.contextmanager
def private_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@contextlib.contextmanager
def aws_env() -> Iterator[None]:
    """Dummy credentials for moto, in this process and the ones it starts."""
    saved = {name: os.environ.get(name) for name in (*AWS_ENV, *AWS_ENV_CLEARED)}
    for name in AWS_ENV_CLEARED:
        os.environ.pop(name, None)
    os.environ.update(AWS_ENV)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class Moto:
    """A moto server process we can restart between heavy runs (it keeps
    every object in memory)."""

    def __init__(self, root: Path) -> None:
        self.server = MotoServer(free_port(), root / "moto.log")

    @property
    def endpoint_url(self) -> str:
        return self.server.endpoint_url

    def fresh(self, bucket: str) -> str:
        """Restart with empty state and make ``bucket``; returns its s3:// URL."""
        self.server.stop()
        self.server.start()
        make_bucket(self.endpoint_url, bucket)
        return f"s3://{bucket}"

    def stop(self) -> None:
        self.server.stop()


@contextlib.contextmanager
def workspace(name: str, where: str | None = None, keep: bool = False) -> Iterator[Path]:
    """A scratch directory: on the disk under the system temp dir (where a
    node's WORKDIR would be) unless ``where`` names another parent, e.g.
    ``/dev/shm`` to take the disk's cost out of a measurement."""
    root = Path(tempfile.mkdtemp(prefix=f"walbackup-bench-{name}-", dir=where))
    try:
        yield root
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def cluster(
    root: Path,
    redis_url: str,
    remote: str,
    *,
    seg_size: int,
    s3_endpoint_url: str | None = None,
    settings: dict[str, str] | None = None,
) -> Iterator[Cluster]:
    env = {**PRODUCTION_TIMINGS, "WALBACKUP_WAL_SEG_SIZE": str(seg_size), **(settings or {})}
    c = Cluster(root, redis_url, remote, s3_endpoint_url=s3_endpoint_url, settings=env)
    try:
        yield c
    finally:
        c.stop()
        c.state.r.close()


def flush(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    client.close()


# -- WAL -----------------------------------------------------------------------


def write_segment(path: Path, ttid: TenantTimelineId, segno: int, seg_size: int) -> None:
    """The simulator's bytes for (ttid, segno), written straight to ``path``."""
    with path.open("wb") as f:
        for block in iter_segment_blocks(ttid, segno, seg_size):
            f.write(block)


def stage_segments(
    staging: Path, ttids: Sequence[TenantTimelineId], per_timeline: int, seg_size: int
) -> list[tuple[TenantTimelineId, int, Path]]:
    """Write complete segments 1..per_timeline of each timeline under ``staging``
    (outside any WORKDIR), so they can be renamed in all at once."""
    out = []
    for ttid in ttids:
        d = staging / ttid.tenant_id / ttid.timeline_id
        d.mkdir(parents=True, exist_ok=True)
        for segno in range(1, per_timeline + 1):
            path = d / xlog_file_name(segno, seg_size)
            if not path.exists():
                write_segment(path, ttid, segno, seg_size)
            out.append((ttid, segno, path))
    return out


def end_lsn(last_segno: int, seg_size: int) -> Lsn:
    return Lsn.from_segment(last_segno + 1, 0, seg_size)


class BackupWatcher:
    """Polls ``backup_lsn`` of timelines every ``interval_s`` on its own Redis
    connection and records when each segment became covered."""

    def __init__(
        self, redis_url: str, ttids: Sequence[TenantTimelineId], seg_size: int, interval_s: float
    ) -> None:
        self.client: redis.Redis[str] = redis.Redis.from_url(redis_url, decode_responses=True)
        self.keys = [f"walbackup:tl:{t}" for t in ttids]
        self.ttids = [str(t) for t in ttids]
        self.seg_size = seg_size
        self.interval_s = interval_s
        self.covered: dict[tuple[str, int], float] = {}  # (ttid, segno) -> time.time()
        self.current: dict[str, int] = dict.fromkeys(self.ttids, 0)  # segno(backup_lsn)
        self.commands = 0  # issued by us, to subtract from Redis' counters
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.client.close()

    def poll(self) -> None:
        pipe = self.client.pipeline(transaction=False)
        for key in self.keys:
            pipe.hget(key, "backup_lsn")
        values = pipe.execute()
        self.commands += len(self.keys)
        now = time.time()
        for ttid, value in zip(self.ttids, values, strict=True):
            if not value:
                continue
            segno = Lsn.parse(value).segment_number(self.seg_size)
            for s in range(self.current[ttid], segno):
                self.covered.setdefault((ttid, s), now)
            self.current[ttid] = max(self.current[ttid], segno)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll()
            self._stop.wait(self.interval_s)

    def wait_all(self, last_segno: int, timeout_s: float) -> bool:
        """Until every timeline's backup_lsn covers ``last_segno``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(v > last_segno for v in self.current.values()):
                return True
            time.sleep(0.005)
        return False


def command_counts(client: redis.Redis[str]) -> dict[str, int]:
    """``INFO commandstats`` as ``{command: calls}`` (commands run inside Lua
    scripts are counted too)."""
    stats = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


def counts_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {
        k: after.get(k, 0) - before.get(k, 0)
        for k in sorted(after)
        if after.get(k, 0) - before.get(k, 0)
    }


class RedisTrace:
    """MONITOR the server for a while: counts commands sent by clients
    (each one a request on the wire) apart from commands run inside Lua."""

    def __init__(self, redis_url: str) -> None:
        self.client: redis.Redis[str] = redis.Redis.from_url(redis_url, decode_responses=True)
        self.by_client: dict[str, int] = {}
        self.in_lua: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._ready = threading.Event()

    def _run(self) -> None:
        with self.client.monitor() as m:
            self._ready.set()
            for cmd in m.listen():
                if self._stop.is_set():
                    return
                name = str(cmd.get("command", "")).split(" ", 1)[0].strip('"').upper()
                bucket = self.in_lua if cmd.get("client_type") == "lua" else self.by_client
                bucket[name] = bucket.get(name, 0) + 1

    def __enter__(self) -> RedisTrace:
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        # One more command wakes the listener up so it sees the stop flag.
        poke: redis.Redis[str] = redis.Redis(
            connection_pool=self.client.connection_pool, decode_responses=True
        )
        with contextlib.suppress(redis.RedisError):
            poke.ping()
        self._thread.join(5)


def rss_kib(pid: int) -> int:
    """VmRSS of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    return sum(cpu_split(pid))


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


def metrics_histogram(port: int, name: str) -> tuple[float, float]:
    """(sum, count) of a Prometheus histogram from a node's /metrics."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith(f"{name}_sum"):
            total = float(line.split()[-1])
        elif line.startswith(f"{name}_count"):
            count = float(line.split()[-1])
    return total, count


@contextlib.contextmanager
def py_spy(pid: int, out: Path | None, rate: int = 100, gil: bool = True) -> Iterator[None]:
    """``py-spy record --gil`` of ``pid`` for the block (nothing if ``out`` is
    None): ``.txt`` gives collapsed stacks, anything else a flame graph SVG.
    ``gil`` false: every thread on a CPU, such as hashing, which releases the
    GIL. py-spy is a profiling aid, not a dependency: ``pip install py-spy``."""
    if out is None:
        yield
        return
    exe = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
    fmt = "raw" if out.suffix == ".txt" else "flamegraph"
    spy = subprocess.Popen(
        [exe, "record", "--format", fmt, "-o", str(out), "-p", str(pid), "-r", str(rate)]
        + (["--gil"] if gil else []),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1)  # attached
    try:
        yield
    finally:
        spy.send_signal(2)
        spy.wait(60)


def time_call(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started
