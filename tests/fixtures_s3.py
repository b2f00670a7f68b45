"""A real moto S3 server, as a process on a free loopback port, for integration tests.

Loaded as a pytest plugin (``-p tests.fixtures_s3`` in pyproject's addopts),
so every test can ask for ``moto_server`` and ``s3_bucket_url``. Nothing here
patches boto3: tests talk to the server over HTTP as to any S3 endpoint.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from tests.servers import free_port, terminate

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
# A developer's settings that would steer boto3 away from the dummy credentials.
AWS_ENV_CLEARED = (
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
)


class MotoServer:
    """``python -m moto.server`` on a fixed port; ``stop``/``start`` restart it
    on the same port (with empty state: moto keeps everything in memory)."""

    def __init__(self, port: int, log_path: Path) -> None:
        self.port = port
        self.endpoint_url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout_s: float = 30.0) -> None:
        """Start the server unless it runs, and wait until it answers HTTP."""
        if self.running:
            return
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._proc = proc
        deadline = time.monotonic() + timeout_s
        while proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=1):
                    return
            except urllib.error.HTTPError:
                return  # it answers
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"moto server did not answer on {self.endpoint_url} within "
                        f"{timeout_s} s; see {self.log_path}"
                    ) from None
                time.sleep(0.05)
        raise RuntimeError(f"moto server exited with status {proc.returncode}; see {self.log_path}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            terminate(proc)


def s3_client(endpoint_url: str) -> S3Client:
    """A plain boto3 client for test setup and inspection."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=AWS_ENV["AWS_DEFAULT_REGION"],
        config=Config(s3={"addressing_style": "path"}),
    )


def make_bucket(endpoint_url: str, name: str) -> None:
    client = s3_client(endpoint_url)
    try:
        client.create_bucket(Bucket=name)
    finally:
        client.close()


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """The session's moto server, with dummy AWS credentials in the environment
    (inherited by processes the tests start)."""
    saved = {name: os.environ.get(name) for name in (*AWS_ENV, *AWS_ENV_CLEARED)}
    for name in AWS_ENV_CLEARED:
        os.environ.pop(name, None)
    os.environ.update(AWS_ENV)
    server = MotoServer(free_port(), tmp_path_factory.mktemp("moto") / "moto.log")
    try:
        server.start()
        yield server
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture
def s3_bucket_url(moto_server: MotoServer) -> Iterator[str]:
    """``s3://BUCKET/some/prefix`` on a fresh bucket, emptied afterwards to keep
    moto's memory down."""
    moto_server.start()  # an earlier test may have stopped it
    bucket = f"walbackup-test-{uuid.uuid4().hex[:16]}"
    make_bucket(moto_server.endpoint_url, bucket)
    yield f"s3://{bucket}/some/prefix"
    if moto_server.running:
        client = s3_client(moto_server.endpoint_url)
        # Gone already if the test restarted the server.
        with contextlib.suppress(ClientError, BotoCoreError):
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                for obj in page.get("Contents", []):
                    client.delete_object(Bucket=bucket, Key=obj["Key"])
            client.delete_bucket(Bucket=bucket)
        client.close()
