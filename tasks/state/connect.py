"""The Redis client of coordination state: direct, or through Redis Sentinel.

Through Sentinel the client is ``Sentinel.master_for``'s: on a connection
error it asks the Sentinels for the master again, so after a failover the
next command (a heartbeat, a commit, a Lua script, which redis-py loads again
on the new master's ``NOSCRIPT``) goes to the promoted replica.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
from redis.connection import parse_url
from redis.sentinel import Sentinel

TIMEOUTS: dict[str, Any] = {"socket_timeout": 10, "socket_connect_timeout": 5}
"""A partitioned Redis must not hang a node's heartbeat thread forever; every
call is a few milliseconds when healthy."""


def connect(
    url: str,
    sentinels: Sequence[tuple[str, int]] = (),
    master_name: str | None = None,
    sentinel_password: str | None = None,
) -> redis.Redis[str]:
    """Redis at ``url``; with ``sentinels``, the master they know as
    ``master_name``, with ``url``'s credentials and database (its host and
    port are not used)."""
    if not sentinels:
        return redis.Redis.from_url(
            url, decode_responses=True, health_check_interval=30, **TIMEOUTS
        )
    assert master_name, "Sentinels need the master's name"
    target = {k: v for k, v in parse_url(url).items() if k in ("username", "password", "db")}
    manager = Sentinel(list(sentinels), sentinel_kwargs={**TIMEOUTS, "password": sentinel_password})
    client: redis.Redis[str] = manager.master_for(
        master_name, decode_responses=True, health_check_interval=30, **TIMEOUTS, **target
    )
    return client
