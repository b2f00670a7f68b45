"""Beat's ticks while Redis cannot be reached: one WARNING line each, no
traceback per tick (a scrub tick raised through Celery every 30 s)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

import tasks.jobs as jobs
from tasks.state.redis import RedisState
from tests.servers import free_port


@pytest.mark.parametrize("tick", [jobs.elect_all, jobs.scrub_all], ids=["elect", "scrub"])
def test_a_tick_with_redis_away_is_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tick: Any
) -> None:
    away = RedisState.from_url(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    monkeypatch.setattr(jobs, "get_state", lambda: away)
    with caplog.at_level(logging.WARNING, logger="walbackup.jobs"):
        assert tick() == 0
    said = [r.getMessage() for r in caplog.records if "the next tick retries" in r.getMessage()]
    assert len(said) == 1 and "ConnectionError" in said[0]
