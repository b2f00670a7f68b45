"""The demo's child processes: a private Redis, three node workers, beat and Flower.

Each child runs in its own session (so a terminal's Ctrl-C reaches only the
demo, which stops them in order), logs to ``ROOT/logs/NAME.log``, and gets
SIGTERM if the demo itself dies (on Linux). Remote storage is
``file://ROOT/remote``.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

import redis

from tasks.config import ENV_PREFIX
from tasks.dev.embedded import free_port, redis_server_command
from tasks.state.redis import RedisState

NODE_IDS = (1, 2, 3)
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0

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


class DemoError(Exception):
    """The demo could not start its cluster."""


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


class Cluster:
    """The demo's servers and their files under ``root`` (``node1-3/``,
    ``remote/``, ``redis/``, ``logs/``); ``stop`` set by a signal ends any wait."""

    def __init__(self, root: Path, stop: threading.Event) -> None:
        self.root = root
        self.stop = stop
        self.redis_url = ""
        self.flower_url = ""
        self.metrics_urls: dict[int, str] = {}
        self.state: RedisState | None = None
        for sub in ("logs", "remote"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self.children = Children(root / "logs")

    def workdir(self, node_id: int) -> Path:
        return self.root / f"node{node_id}"

    @property
    def remote_url(self) -> str:
        return (self.root / "remote").resolve().as_uri()

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

    def base_env(self, seg_size: int, private_redis: bool) -> dict[str, str]:
        """The environment of every Celery child (a node adds its own three)."""
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
                f"{ENV_PREFIX}WAL_SEG_SIZE": str(seg_size),
                "PYTHONUNBUFFERED": "1",
            }
        )
        if private_redis:
            env[f"{ENV_PREFIX}BROKER_URL"] = self.redis_url
        # The node's lifecycle on, unless the environment says otherwise:
        # archived WAL is removed from the nodes (their state files follow
        # backup_lsn and the scrubber checks the archive within 2 s, not 30),
        # and a quiet timeline's .partial tail reaches the archive within seconds.
        env.setdefault(f"{ENV_PREFIX}REMOVE_WAL", "true")
        env.setdefault(f"{ENV_PREFIX}STATE_FILE_INTERVAL", "2")
        env.setdefault(f"{ENV_PREFIX}SCRUB_INTERVAL", "2")
        env.setdefault(f"{ENV_PREFIX}PARTIAL_UPLOAD_TIMEOUT", "5")
        return env

    def start_celery(self, env: dict[str, str]) -> None:
        """Node workers 1-3 (each with a metrics port), beat and Flower."""
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
        """Until every node has sent a heartbeat after ``since`` (unix time)."""
        assert self.state is not None
        state = self.state

        def up() -> bool:
            nodes = state.nodes()
            return all(n in nodes and nodes[n]["ts"] >= since for n in NODE_IDS)

        self.wait(
            up, START_TIMEOUT_S, "the heartbeats of nodes 1-3", [f"node{n}" for n in NODE_IDS]
        )

    def wait_flower(self) -> None:
        self.wait(lambda: _flower_up(self.flower_url), START_TIMEOUT_S, "Flower", ["flower"])

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

    def shut_down(self) -> None:
        """Stop every child (Redis last) and close the Redis connection."""
        self.children.stop_all()
        if self.state is not None:
            self.state.close()


def _pings(client: redis.Redis[bytes]) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def _flower_up(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthcheck", timeout=1) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False
