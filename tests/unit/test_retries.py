"""Parked retries (``tasks.backup.retries``) and the storage prober (``tasks.backup.health``)."""

from __future__ import annotations

import threading
import time

from tasks.backup.health import StorageHealth
from tasks.backup.retries import RetryPark, UploadRef

REF = UploadRef("t", 3, 1 << 20, "1.x:1")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_retry_waits_for_its_backoff() -> None:
    clock = Clock()
    park = RetryPark(clock)
    park.park(REF, attempt=3, delay_s=0.08, recoveries=0)
    assert park.take_due(0) == []
    clock.now += 0.08
    (item,) = park.take_due(0)
    assert (item.upload, item.attempt) == (REF, 3)
    assert len(park) == 0


def test_a_storage_recovery_releases_every_retry_at_once() -> None:
    park = RetryPark(Clock())
    park.park(REF, 5, 5.0, recoveries=2)
    park.park(UploadRef("t", 4, 1 << 20, "1.x:1"), 5, 5.0, recoveries=2)
    assert park.take_due(2) == []
    assert sorted(p.upload.segno for p in park.take_due(3)) == [3, 4]


def test_unsent_retries_go_back_and_are_due() -> None:
    clock = Clock()
    park = RetryPark(clock)
    park.park(REF, 1, 0.0, 0)
    items = park.take_due(0)
    park.put_back(items)
    assert park.take_due(0) == items


def wait(predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_prober_counts_a_recovery_only_after_a_failed_probe() -> None:
    healthy = threading.Event()
    probes: list[bool] = []

    def probe(write: bool) -> None:
        probes.append(healthy.is_set())
        if not healthy.is_set():
            raise OSError("down")

    health = StorageHealth(probe, interval_s=0.01)
    health.start()
    try:
        health.failed()
        wait(lambda: len(probes) >= 3)
        assert health.recoveries == 0 and health.degraded
        healthy.set()
        wait(lambda: health.recoveries == 1)
        assert not health.degraded
        # An upload-only fault: the first probe succeeds, no recovery counted.
        health.failed()
        wait(lambda: not health.degraded)
        assert health.recoveries == 1
    finally:
        health.stop()


def test_write_probes_that_never_pass_give_way_to_a_read_in_time() -> None:
    """A policy that refuses the probe's own key alone (uploads go through):
    write probes never passed, so every later outage counted no recovery and
    parked uploads waited out their backoff."""
    probes: list[bool] = []

    def probe(write: bool) -> None:
        probes.append(write)
        if write:
            raise OSError("403 AccessDenied on walbackup-write-probe")

    health = StorageHealth(probe, interval_s=0.01, write_probe_s=0.2)
    health.start()
    try:
        health.failed(refused_write=True)
        wait(lambda: health.recoveries == 1)
        assert probes[0] is True and probes[-1] is False and not health.degraded
    finally:
        health.stop()


def test_a_refused_write_is_probed_with_writes_until_one_passes() -> None:
    """A policy that denies PutObject may allow the read-only probe: after a
    refused write only a write probe tells when it is repaired."""
    writable = threading.Event()
    probes: list[bool] = []

    def probe(write: bool) -> None:
        probes.append(write)
        if write and not writable.is_set():
            raise OSError("403 AccessDenied")

    health = StorageHealth(probe, interval_s=0.01)
    health.start()
    try:
        health.failed(refused_write=True)
        wait(lambda: len(probes) >= 3)
        assert health.recoveries == 0 and health.degraded
        writable.set()
        wait(lambda: health.recoveries == 1)
        assert all(probes)
        # Probes are read-only again once one passed.
        health.failed()
        wait(lambda: not health.degraded)
        assert probes[-1] is False and health.recoveries == 1
    finally:
        health.stop()
