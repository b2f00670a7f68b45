"""The boto3 clients of one ``S3Storage``: made on first use, one per name
and process, and forgotten after a refusal so that credentials are read again.

boto3 resolves credentials when a client is made: static ones (a shared
credentials file, a profile's keys) are read once per session and never
again. A process that kept its first client forever would keep refused keys
forever after they were rotated. So ``forget`` (called when S3 refuses our
credentials) drops the clients, and the next ``get`` makes a new session,
which walks boto3's credential chain again. It does so at most once per
``RECHECK_CREDENTIALS_S``: a real permission problem does not rebuild clients
at every attempt. Environment variables are read again too, but those of a
running process cannot change.

Clients are thread-safe; sessions are not, and neither survives a fork, so a
client made in another process is never handed out. Forgotten clients are
not closed: another thread may be using one; its pool goes with the client.
"""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

DEFAULT_REGION = "us-east-1"

RECHECK_CREDENTIALS_S = 30.0
"""Seconds after dropping its clients for refused credentials before a storage
drops them again (the first refusal drops them at once)."""


class ClientCache:
    """S3 clients for ``endpoint_url`` (None: AWS), by name (each name has its
    own ``Config``)."""

    def __init__(self, endpoint_url: str | None) -> None:
        self._endpoint_url = endpoint_url
        self._lock = threading.Lock()
        self._clients: dict[str, tuple[S3Client, int]] = {}
        self._forgotten_at: float | None = None

    def get(self, name: str, config: Config) -> S3Client:
        """This process's client ``name``, made with ``config`` if there is none."""
        pid = os.getpid()
        with self._lock:
            cached = self._clients.get(name)
            if cached is None or cached[1] != pid:
                session = boto3.session.Session()
                client = session.client(
                    "s3",
                    region_name=session.region_name or DEFAULT_REGION,
                    endpoint_url=self._endpoint_url,
                    config=config,
                )
                cached = self._clients[name] = (client, pid)
            return cached[0]

    def forget(self) -> bool:
        """Drop every client, so the next ``get`` reads the credentials again,
        unless that was done less than ``RECHECK_CREDENTIALS_S`` ago; whether
        they were dropped."""
        now = time.monotonic()
        with self._lock:
            if self._forgotten_at is not None and now - self._forgotten_at < RECHECK_CREDENTIALS_S:
                return False
            self._forgotten_at = now
            self._clients = {}
        return True

    def close(self) -> None:
        """Close this process's clients and drop them all."""
        with self._lock:
            clients, self._clients = self._clients, {}
        for client, pid in clients.values():
            if pid == os.getpid():
                client.close()
