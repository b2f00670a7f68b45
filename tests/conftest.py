"""Fixtures shared by the suite: real servers on free loopback ports."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tasks.state.redis import RedisState
from tests.cluster import Cluster
from tests.servers import RabbitVhost, RedisServer, require_rabbitmq


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """A clean database on our private server (which we may flush: we made it)."""
    if redis_server.proc is None:
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    client.close()
    yield redis_server.url


@pytest.fixture
def state(redis_url: str) -> Iterator[RedisState]:
    """walbackup's Redis state on the clean database."""
    st = RedisState.from_url(redis_url)
    yield st
    st.r.close()


@pytest.fixture
def broker(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """The broker URL of ``make_cluster``'s clusters: None (Redis, unless the
    test is parametrized with ``@pytest.mark.parametrize("broker", ["redis",
    "rabbitmq"], indirect=True)``), or for ``rabbitmq`` a vhost of the test's own on the
    shared RabbitMQ; coordination stays on Redis either way."""
    if getattr(request, "param", "redis") == "redis":
        yield None
        return
    require_rabbitmq()
    vhost = RabbitVhost()
    yield vhost.url
    vhost.close()


@pytest.fixture
def make_cluster(
    tmp_path: Path, redis_url: str, broker: str | None
) -> Iterator[Callable[..., Cluster]]:
    """Build clusters of real worker processes; all are stopped at teardown."""
    started: list[Cluster] = []

    def make(remote_storage: str | None = None, **kwargs: Any) -> Cluster:
        remote = remote_storage or (tmp_path / "remote").as_uri()
        kwargs.setdefault("broker_url", broker)
        cluster = Cluster(tmp_path, redis_url, remote, **kwargs)
        started.append(cluster)
        return cluster

    yield make
    for cluster in started:
        cluster.stop()
