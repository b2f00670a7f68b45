"""A walbackup cluster of real processes for integration tests: node workers
(``celery -A tasks worker``, one per node, each with its own WORKDIR) and beat,
started the way a user starts them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.state.redis import RedisState
from tests.servers import env_without_walbackup

SEG_SIZE = 1 << 20


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Cluster:
    def __init__(
        self,
        root: Path,
        redis_url: str,
        remote_storage: str,
        *,
        s3_endpoint_url: str | None = None,
        settings: dict[str, str] | None = None,
        broker_url: str | None = None,
        state: RedisState | None = None,
    ) -> None:
        """``broker_url``: a broker other than Redis (RabbitMQ); ``state``: how
        the test reads Redis (default: ``redis_url``)."""
        self.root = root
        self.redis_url = redis_url
        self.broker_url = broker_url or redis_url
        self.remote_storage = remote_storage
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.env = env_without_walbackup()
        self.env.update(
            {
                "WALBACKUP_REDIS_URL": redis_url,
                "WALBACKUP_REMOTE_STORAGE": remote_storage,
                "WALBACKUP_DATA_DIR": str(root / "data"),
                "WALBACKUP_WAL_SEG_SIZE": str(SEG_SIZE),
                "WALBACKUP_HEARTBEAT_TIMEOUT": "2",
                "WALBACKUP_ELECTION_INTERVAL": "0.5",
                "PYTHONUNBUFFERED": "1",
            }
        )
        if s3_endpoint_url:
            self.env["WALBACKUP_S3_ENDPOINT_URL"] = s3_endpoint_url
        if broker_url:
            self.env["WALBACKUP_BROKER_URL"] = broker_url
        self.env.update(settings or {})
        self.state = state or RedisState.from_url(redis_url)

    def workdir(self, node_id: int) -> Path:
        path = self.root / f"node{node_id}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def log_path(self, name: str) -> Path:
        return self.root / f"{name}.log"

    def spawn(
        self, name: str, args: list[str], env: dict[str, str], prefix: list[str] | None = None
    ) -> None:
        """``prefix``: a command that runs the worker, e.g. ``setpriv ...``."""
        log = self.log_path(name).open("ab")
        self.procs[name] = subprocess.Popen(
            [*(prefix or []), sys.executable, "-m", "celery", "-A", "tasks", *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start_node(
        self,
        node_id: int,
        extra_env: dict[str, str] | None = None,
        prefix: list[str] | None = None,
    ) -> None:
        env = dict(self.env)
        env.update(
            {"WALBACKUP_NODE_ID": str(node_id), "WALBACKUP_WORKDIR": str(self.workdir(node_id))}
        )
        env.update(extra_env or {})
        self.spawn(
            f"node{node_id}",
            [
                "worker",
                "-n",
                f"node{node_id}@%h",
                "--loglevel=INFO",
                "--without-mingle",
                "--without-gossip",
            ],
            env,
            prefix,
        )

    def wait_nodes(self, node_ids: list[int], timeout: float = 30) -> None:
        def up() -> bool:
            nodes = self.state.nodes()
            return all(n in nodes and time.time() - nodes[n]["ts"] < 2 for n in node_ids)

        try:
            wait_for(up, timeout, f"heartbeats of nodes {node_ids}")
        except AssertionError:
            raise AssertionError(self.tail_logs()) from None

    def start_beat(self) -> None:
        # DEBUG: tests count the election tick's sends, which beat logs at DEBUG.
        self.spawn("beat", ["beat", "--loglevel=DEBUG"], dict(self.env))

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        proc.wait(timeout=30)

    def stop(self) -> None:
        for name in list(self.procs):
            proc = self.procs[name]
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for name, proc in list(self.procs.items()):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            del self.procs[name]

    def tail_logs(self, lines: int = 40) -> str:
        out = []
        for path in sorted(self.root.glob("*.log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"==== {path.name}\n" + "\n".join(text))
        return "\n".join(out)

    def backup_lsn(self, ttid: TenantTimelineId) -> Lsn | None:
        return self.state.timeline(str(ttid)).backup_lsn

    def wait_backup(self, ttid: TenantTimelineId, lsn: Lsn, timeout: float) -> None:
        def reached() -> bool:
            current = self.backup_lsn(ttid)
            return current is not None and current >= lsn

        try:
            wait_for(reached, timeout, f"backup_lsn of {ttid} to reach {lsn}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: at {self.backup_lsn(ttid)}\n{self.tail_logs()}") from None


class BackupSampler:
    """Samples a timeline's backup_lsn every 20 ms in a thread, to check it
    never moves backwards: ``with BackupSampler(cluster, ttid) as s: ...``."""

    def __init__(self, cluster: Cluster, ttid: TenantTimelineId) -> None:
        self.cluster = cluster
        self.ttid = ttid
        self.samples: list[Lsn] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                lsn = self.cluster.backup_lsn(self.ttid)
            except redis.RedisError:  # Redis down or frozen by the test: no sample
                lsn = None
            if lsn is not None:
                self.samples.append(lsn)
            time.sleep(0.02)

    def __enter__(self) -> BackupSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
