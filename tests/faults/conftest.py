"""The S3 fault proxy (``tests/faults/s3proxy.py``) in front of moto, for the
fault tests that share one per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults.s3proxy import S3FaultProxy
from tests.fixtures_s3 import MotoServer


@pytest.fixture(scope="module")
def proxy_process(
    moto_server: MotoServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[S3FaultProxy]:
    log_path = tmp_path_factory.mktemp("s3proxy") / "s3proxy.log"
    with S3FaultProxy(moto_server.endpoint_url, log_path=log_path) as proxy:
        yield proxy


@pytest.fixture
def proxy(proxy_process: S3FaultProxy) -> Iterator[S3FaultProxy]:
    """The module's proxy, passing everything, counters at zero."""
    proxy_process.clear()
    proxy_process.reset_stats()
    yield proxy_process
    proxy_process.clear()
