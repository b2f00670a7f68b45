"""Beat's scheduler: RedBeat, made to survive Redis restarts and data loss
(``beat_scheduler`` in ``tasks.app``).

RedBeat keeps the schedule and a lock in Redis; one beat holds the lock and
ticks, any other waits for it. Stock RedBeat (2.4) lets beat die on every
Redis disruption: ``RedBeatScheduler.tick`` extends the lock first, and a
``ConnectionError``/``TimeoutError`` (Redis down or frozen) or a
``LockNotOwnedError`` (the lock expired during a freeze, or went with a
FLUSHDB or an empty restart) ends the process; and once Redis lost its data,
the schedule entries are gone, so a surviving beat would send nothing.

This scheduler, per tick:

- takes the lock (without blocking) when it holds none, else stands by: a
  lock lost to a disruption is taken again, and a second beat still never
  ticks at the same time (RedBeat's own blocking ``beat_init`` handler is
  not used);
- re-creates the schedule entries when Redis lost them, and reschedules
  those due later than one run from now (written by a beat with another
  clock);
- on a Redis or broker outage logs one line per kind of failure (again every
  ``beat.outages.REPORT_EVERY_S`` while it lasts, with a count) instead of a
  traceback per tick, and tries again after ``RETRY_S``.

It also sets RedBeat's Redis URL itself, in the beat process only: in the app
configuration it would show the Redis password in every worker's
``inspect conf`` (Celery masks ``broker_url``, not ``redbeat_redis_url``).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import redis
from celery.beat import SchedulingError
from celery.signals import beat_init
from kombu.exceptions import OperationalError
from redbeat.decoder import to_timestamp
from redbeat.schedulers import (
    LUA_EXTEND_TO_SCRIPT,
    REDBEAT_REDIS_KEY,
    RedBeatScheduler,
    acquire_distributed_beat_lock,
    get_redis,
)
from redis.connection import parse_url
from redis.exceptions import LockError
from redis.sentinel import Sentinel

from beat.outages import OUTAGE_ERRORS, RETRY_S, OutageLog

if TYPE_CHECKING:
    from tasks.config import Settings

log = logging.getLogger("celery.beat")

QUIET_BELOW_S = 60.0
"""An entry due more often than this logs each send at DEBUG, and beat sums
the sends up at INFO every ``SUMMARY_EVERY_S``: the one-second election
tick alone was 86,400 INFO lines a day."""
SUMMARY_EVERY_S = 300.0

SKEW_MARGIN_S = 1.0
"""How much later than one run from now an entry may be due (beats' clocks
differ a little) before beat reschedules it."""

REDIS_OPTIONS: dict[str, Any] = {
    # A frozen or black-holed Redis fails a command within seconds instead of
    # blocking beat until TCP gives up.
    "socket_timeout": 5,
    "socket_connect_timeout": 5,
    "health_check_interval": 10,
}


def sentinel_client(settings: Settings) -> redis.Redis[str]:
    """RedBeat's client for the master that ``settings``' Sentinels name (its
    password and database from ``WALBACKUP_REDIS_URL``): one client, which
    asks the Sentinels again after a connection error. RedBeat's own Sentinel
    support builds a new client and pool on every ``get_redis()`` call
    (measured: 7.6 new connections a second from an idle beat)."""
    target = {
        k: v
        for k, v in parse_url(settings.redis_url).items()
        if k in ("username", "password", "db")
    }
    assert settings.redis_master_name, "validated with the Sentinels"
    timeouts = {k: REDIS_OPTIONS[k] for k in ("socket_timeout", "socket_connect_timeout")}
    manager = Sentinel(
        settings.sentinels,
        sentinel_kwargs={**timeouts, "password": settings.redis_sentinel_password},
    )
    client: redis.Redis[str] = manager.master_for(
        settings.redis_master_name,
        decode_responses=True,
        health_check_interval=REDIS_OPTIONS["health_check_interval"],
        **timeouts,
        **target,
    )
    return client


class WalBackupScheduler(RedBeatScheduler):  # type: ignore[misc]
    def __init__(self, app: Any, *args: Any, **kwargs: Any) -> None:
        from tasks.config import get_settings

        # Before RedBeat reads its configuration (ensure_conf in __init__).
        settings = get_settings()
        app.conf.redbeat_redis_url = settings.redis_url
        app.conf.redbeat_redis_options = dict(REDIS_OPTIONS)
        if settings.sentinels:
            # get_redis() builds no client when the app has one.
            setattr(app, REDBEAT_REDIS_KEY, sentinel_client(settings))
        # Beat only sends the election round, every second: no "task-sent"
        # events for it (Flower would list every round as a task).
        app.conf.task_send_sent_event = False
        # RedBeat takes its lock in a beat_init handler, blocking until it
        # is free; a Redis outage meanwhile leaves beat without a lock (the
        # error is logged and ignored). Here every tick takes it if free.
        beat_init.disconnect(acquire_distributed_beat_lock)
        self.outages = OutageLog()
        self.lock: Any = None
        self._standing_by = False
        self._quiet_sends: Counter[str] = Counter()
        self._summary_due = time.monotonic() + SUMMARY_EVERY_S
        super().__init__(app, *args, **kwargs)

    # -- schedule entries ------------------------------------------------------

    def setup_schedule(self) -> None:
        """Store the static entries; with Redis unreachable at start, the
        first tick that reaches it does."""
        try:
            super().setup_schedule()
        except OUTAGE_ERRORS as exc:
            self.outages.failed(exc)

    def _restore_entries(self) -> None:
        """Re-create the static entries if Redis lost them, and reschedule those
        due too late by this beat's clock (one round trip, unless one is)."""
        conf = self.app.redbeat_conf
        keys = [self.Entry.generate_key(self.app, name) for name in conf.schedule]
        if not keys:
            return
        with get_redis(self.app).pipeline() as pipe:
            for key in keys:
                pipe.zscore(conf.schedule_key, key)
            scores = pipe.execute()
        if any(score is None for score in scores):
            log.warning("beat: schedule entries missing in Redis (data lost?): re-creating them")
            super().setup_schedule()
            return
        now = self.app.now()
        for name, key, score in zip(conf.schedule, keys, scores, strict=True):
            # RedBeat stores an entry's next run, and its last, by the clock of
            # the beat that wrote it (it sent it, or started, even standing
            # by): taking the lock over from a beat an hour ahead, this one sent
            # nothing for an hour (no scrubs, so no WAL removal). Not later than
            # one run from now, then.
            run = self._maybe_entry(name, conf.schedule[name]).schedule
            late = score - to_timestamp(now) - run.remaining_estimate(now).total_seconds()
            if late > SKEW_MARGIN_S:
                log.warning(
                    "beat: %s was due %.0f s after its next run by this beat's clock "
                    "(written by a beat whose clock is off by about as much?): "
                    "rescheduled from now",
                    name,
                    late,
                )
                self.Entry.from_key(key, app=self.app).reschedule(now)

    # -- the lock --------------------------------------------------------------

    def _new_lock(self) -> Any:
        # As RedBeat's acquire_distributed_beat_lock makes it.
        client = get_redis(self.app)
        lock = client.lock(self.lock_key, timeout=self.lock_timeout, sleep=self.max_interval)
        lock.lua_extend = client.register_script(LUA_EXTEND_TO_SCRIPT)
        return lock

    def _hold_lock(self) -> bool:
        """Whether this beat holds the lock now, taking it if it is free."""
        if self.lock is not None:
            return True
        lock = self._new_lock()
        if not lock.acquire(blocking=False):
            if not self._standing_by:
                log.info("beat: another beat holds the lock; standing by")
                self._standing_by = True
            return False
        self.lock = lock
        self._standing_by = False
        log.info("beat: Acquired lock")
        return True

    # -- ticks -----------------------------------------------------------------

    def tick(self, *args: Any, **kwargs: Any) -> float:
        try:
            if self.lock_key and not self._hold_lock():
                self.outages.recovered()
                return float(self.max_interval)
            interval = float(super().tick(*args, **kwargs))  # extends the lock first
            self._restore_entries()  # sent from the next tick on: they are due
            self._summarise()
        except LockError as exc:
            # Expired during a freeze, or lost with Redis's data: nothing was
            # sent; take it again (or stand by) from the next tick on.
            log.warning("beat: lost the lock (%s); taking it again if free", exc)
            self.lock = None
            return RETRY_S
        except OUTAGE_ERRORS as exc:
            self.outages.failed(exc)
            return RETRY_S
        self.outages.recovered()
        return interval

    def maybe_due(self, entry: Any, **kwargs: Any) -> Any:
        """RedBeat's, except that an outage while sending goes to ``tick``
        (one line) instead of a traceback per entry and tick."""
        is_due, next_time_to_run = entry.is_due()
        if is_due:
            quiet = getattr(entry.schedule, "seconds", QUIET_BELOW_S) < QUIET_BELOW_S
            level = logging.DEBUG if quiet else logging.INFO
            log.log(level, "Scheduler: Sending due task %s (%s)", entry.name, entry.task)
            try:
                self.apply_async(entry, **kwargs)
                if quiet:
                    self._quiet_sends[entry.name] += 1
            except OUTAGE_ERRORS:
                raise  # from storing the entry's next run in Redis
            except SchedulingError as exc:
                if isinstance(exc.__context__, OUTAGE_ERRORS):
                    raise exc.__context__ from None  # from publishing
                log.exception("Scheduler: Message Error: %s", exc)
            except Exception as exc:
                log.exception("Scheduler: Message Error: %s", exc)
        return next_time_to_run

    def _summarise(self) -> None:
        """One INFO line of the quiet entries' sends, every ``SUMMARY_EVERY_S``."""
        now = time.monotonic()
        if now < self._summary_due:
            return
        since = now - self._summary_due + SUMMARY_EVERY_S  # the lock may have been away
        self._summary_due = now + SUMMARY_EVERY_S
        if sent := ", ".join(f"{n} x {name}" for name, n in sorted(self._quiet_sends.items())):
            log.info("beat: sent %s in the last %.0f s", sent, since)
        self._quiet_sends.clear()

    def close(self) -> None:
        try:
            super().close()
        except (LockError, redis.ConnectionError, redis.TimeoutError, OperationalError) as exc:
            log.warning("beat: could not release the lock at exit: %s", exc)
            self.lock = None
