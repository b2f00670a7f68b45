"""beat/scheduler.py's outage log: one line per kind of failure, rate-limited."""

from __future__ import annotations

import logging

import pytest
import redis

from beat import scheduler
from beat.scheduler import OutageLog
from tasks.config import Settings


def test_one_line_per_kind_then_one_per_interval(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [100.0]
    monkeypatch.setattr(scheduler.time, "monotonic", lambda: now[0])
    outages = OutageLog(every=30)
    with caplog.at_level(logging.INFO, logger="celery.beat"):
        for _ in range(20):  # a tick a second
            outages.failed(redis.ConnectionError("Error 111 connecting"))
            now[0] += 1
        outages.failed(redis.TimeoutError("Timeout reading from socket"))
        for _ in range(15):
            outages.failed(redis.ConnectionError("Error 111 connecting"))
            now[0] += 1
        outages.recovered()
        outages.recovered()  # nothing more to say
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4, lines
    assert lines[0].startswith("beat: tick failed: ConnectionError: Error 111 connecting")
    assert "first of its kind" in lines[0]
    assert lines[1].startswith("beat: tick failed: TimeoutError")
    assert "29 more since the last report" in lines[2]  # 30 s later
    assert lines[3] == "beat: ticking again after 36 failed tick(s) over 35.0s"


def test_redbeat_reaches_redis_through_the_sentinels() -> None:
    settings = Settings(
        redis_url="redis://:pw@ignored:6379/3",
        redis_sentinels="10.0.0.1:26379,10.0.0.2:26379",
        redis_master_name="wal",
        redis_sentinel_password="sp",
    )
    client = scheduler.sentinel_client(settings)  # connects on first use only
    pool = client.connection_pool
    assert pool.service_name == "wal"
    assert (pool.connection_kwargs["password"], pool.connection_kwargs["db"]) == ("pw", 3)
    sentinels = pool.sentinel_manager.sentinels
    assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [26379, 26379]
    assert sentinels[0].connection_pool.connection_kwargs["password"] == "sp"
