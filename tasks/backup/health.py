"""Is remote storage back? A prober that turns "it healed" into an event.

After an upload fails with ``StorageUnavailable`` or ``AccessDenied`` the node
calls ``failed()``; a daemon thread then probes the storage
(``RemoteStorage.probe``: one cheap request with short timeouts) every
``interval_s`` until a probe succeeds. A success that follows a failed probe
is a *recovery* and increments ``recoveries``, which releases parked retries
at once (``tasks.backup.retries``). A first probe that succeeds is no
recovery: a fault that only hits uploads keeps its backoff instead of being
retried at the probing rate.

A refused write (``failed(refused_write=True)``) is probed with a write until
a probe succeeds (``probe(write=True)``): a bucket or IAM policy that denies
PutObject often still allows the read-only probe, which would pass at once,
count no recovery, and leave the parked uploads waiting out their backoff
after the permission is restored.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("walbackup.health")

WRITE_PROBE_S = 120.0
"""How long a refused write is probed with writes; then with a read, whose
pass counts a recovery: the parked uploads try again (and, still refused,
start another such round)."""


class StorageHealth:
    """``probe(write)``: ``RemoteStorage.probe``."""

    def __init__(
        self,
        probe: Callable[[bool], None],
        interval_s: float = 0.25,
        write_probe_s: float = WRITE_PROBE_S,
    ) -> None:
        self._probe = probe
        self.interval_s = interval_s
        self.write_probe_s = write_probe_s
        self.recoveries = 0
        self.recovered_at = 0.0
        """``time.monotonic()`` of the last recovery."""
        self._degraded = threading.Event()
        self._refused_write = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def failed(self, *, refused_write: bool = False) -> None:
        if refused_write:
            self._refused_write = True
        self._degraded.set()

    @property
    def degraded(self) -> bool:
        return self._degraded.is_set()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="walbackup-storage-prober", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._degraded.set()  # wake the thread so it sees the stop

    def _run(self) -> None:
        while not self._stop.is_set():
            self._degraded.wait()
            probe_failed = False
            # Writes only so long: a policy refusing the probe's own key
            # alone would keep every later outage from counting a recovery.
            write_until = time.monotonic() + self.write_probe_s
            while self._degraded.is_set() and not self._stop.is_set():
                write = self._refused_write and time.monotonic() < write_until
                if self.probe_once(write=write):
                    if probe_failed:
                        self.recovered_at = time.monotonic()
                        self.recoveries += 1
                        log.info("remote storage answers again: retrying parked uploads now")
                    self._degraded.clear()
                    self._refused_write = False
                    break
                probe_failed = True
                self._stop.wait(self.interval_s)

    def probe_once(self, *, write: bool = False) -> bool:
        try:
            self._probe(write)
        except Exception as exc:  # any failure means "not yet"
            log.debug("storage probe failed: %s", exc)
            return False
        return True
