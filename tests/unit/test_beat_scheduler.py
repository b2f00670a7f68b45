"""beat/outages.py's outage log: one line per kind of failure, rate-limited; beat/scheduler.py."""

from __future__ import annotations

import logging
from collections import Counter
from types import SimpleNamespace

import pytest
import redis
from celery.schedules import schedule

from beat import scheduler
from beat.outages import OutageLog
from beat.scheduler import SUMMARY_EVERY_S, WalBackupScheduler
from tasks.config import Settings


def test_one_line_per_kind_then_one_per_interval(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [100.0]
    monkeypatch.setattr("beat.outages.time.monotonic", lambda: now[0])
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


def test_a_fast_entry_sends_at_debug_and_is_summed_up_at_info(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one-second election tick no longer writes 86,400 INFO lines a day;
    an entry due less often still logs each send at INFO."""
    now = [0.0]
    monkeypatch.setattr(scheduler.time, "monotonic", lambda: now[0])
    beat = object.__new__(WalBackupScheduler)  # no Redis, no app: its logging only
    beat._quiet_sends = Counter()
    beat._summary_due = SUMMARY_EVERY_S
    sent: list[str] = []
    beat.apply_async = lambda entry, **kw: sent.append(entry.name)

    def entry(name: str, every: float) -> SimpleNamespace:
        return SimpleNamespace(
            name=name, task=name, schedule=schedule(every), is_due=lambda: (True, every)
        )

    with caplog.at_level(logging.INFO, logger="celery.beat"):
        for _ in range(3):
            beat.maybe_due(entry("walbackup-elect-all", 1.0))
        beat.maybe_due(entry("walbackup-retain", 3600.0))
        beat._summarise()  # not due yet
        now[0] = SUMMARY_EVERY_S
        beat._summarise()
        beat._summarise()
    assert sent == ["walbackup-elect-all"] * 3 + ["walbackup-retain"]
    assert [r.getMessage() for r in caplog.records] == [
        "Scheduler: Sending due task walbackup-retain (walbackup-retain)",
        f"beat: sent 3 x walbackup-elect-all in the last {SUMMARY_EVERY_S:.0f} s",
    ]
