"""The boto3 clients of one ``S3Storage``: made on first use, one per name
and process.

Clients are thread-safe; sessions are not, and neither survives a fork, so a
client made in another process is never handed out.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

DEFAULT_REGION = "us-east-1"


class ClientCache:
    """S3 clients for ``endpoint_url`` (None: AWS), by name (each name has its
    own ``Config``)."""

    def __init__(self, endpoint_url: str | None) -> None:
        self._endpoint_url = endpoint_url
        self._lock = threading.Lock()
        self._clients: dict[str, tuple[S3Client, int]] = {}

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

    def close(self) -> None:
        """Close this process's clients and drop them all."""
        with self._lock:
            clients, self._clients = self._clients, {}
        for client, pid in clients.values():
            if pid == os.getpid():
                client.close()
