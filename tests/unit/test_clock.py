"""The cluster clock: Redis's TIME, carried on by the local monotonic clock."""

from __future__ import annotations

import time
from typing import Any, cast

import pytest
import redis

from tasks.state import clock as clock_module
from tasks.state.clock import ClusterClock


class FakeRedis:
    """Answers ``TIME`` with a clock ``offset_s`` from this process's."""

    def __init__(self, offset_s: float) -> None:
        self.offset_s = offset_s
        self.calls = 0
        self.down = False

    def time(self) -> tuple[int, int]:
        self.calls += 1
        if self.down:
            raise redis.ConnectionError("down")
        now = time.time() + self.offset_s
        return int(now), int(now % 1 * 1_000_000)


def make(offset_s: float) -> tuple[ClusterClock, FakeRedis]:
    fake = FakeRedis(offset_s)
    return ClusterClock(cast(Any, fake)), fake


def test_now_is_the_servers_time_and_reads_it_once_per_sync() -> None:
    clock, fake = make(3600.0)
    assert clock.now() == pytest.approx(time.time() + 3600, abs=0.05)
    assert clock.now() == pytest.approx(time.time() + 3600, abs=0.05)
    assert fake.calls == 1


def test_a_local_time_is_converted() -> None:
    clock, _ = make(-300.0)
    local = time.time() - 10
    assert clock.from_local(local) == pytest.approx(local - 300, abs=0.05)


def test_redis_down_falls_back_to_the_last_sync_then_the_local_clock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(clock_module, "RETRY_S", 0.0)
    monkeypatch.setattr(clock_module, "SYNC_S", 0.0)
    clock, fake = make(60.0)
    fake.down = True
    assert clock.now() == pytest.approx(time.time(), abs=0.05)  # never synced
    fake.down = False
    assert clock.now() == pytest.approx(time.time() + 60, abs=0.05)
    fake.down = True
    assert clock.now() == pytest.approx(time.time() + 60, abs=0.05)
    assert fake.calls == 3


def test_a_slow_reply_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis read its clock somewhere in a 2 s round trip (a stall that
    healed): its midpoint put the node's clock up to half of that off."""
    monkeypatch.setattr(clock_module, "RETRY_S", 0.0)
    clock, fake = make(100.0)
    slow_time = fake.time

    def slow() -> tuple[int, int]:
        answer = slow_time()  # read at once, answered late
        time.sleep(0.4)
        return answer

    monkeypatch.setattr(fake, "time", slow)
    assert clock.now() == pytest.approx(time.time(), abs=0.05)  # still the local clock
    monkeypatch.setattr(fake, "time", slow_time)
    assert clock.now() == pytest.approx(time.time() + 100, abs=0.05)


def test_a_redis_refusing_time_is_said_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(clock_module, "RETRY_S", 0.0)
    clock, fake = make(100.0)

    def refused() -> tuple[int, int]:
        raise redis.ResponseError("NOPERM this user has no permissions to run the 'time' command")

    monkeypatch.setattr(fake, "time", refused)
    assert clock.now() == pytest.approx(time.time(), abs=0.05)
    clock.now()
    said = [r.getMessage() for r in caplog.records if "refuses TIME" in r.getMessage()]
    assert len(said) == 1 and "NOPERM" in said[0]
