"""What one election call may spend listing archives to recover backup_lsn values.

A timeline with no backup_lsn in Redis (new, or Redis lost its data) is
elected only once the archive was listed (``tasks.backup.recovery``); one
``Elector.elect`` call lists for at most ``RECOVERY_BUDGET_S``, and after one
listing that fails, none more: the rest wait for the next round.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tasks.core.lsn import Lsn
from tasks.errors import WalBackupError
from tasks.logutil import Throttle

log = logging.getLogger("walbackup.elector")

RecoverFn = Callable[[str, Lsn, int], Lsn]  # (ttid, start, seg_size) -> archive's end
RECOVERY_ERROR = "cannot list the archive to recover backup_lsn"
RECOVERY_BUDGET_S = 0.5
"""Time one ``elect`` call may spend listing the archive; timelines left over
wait for the next round."""


@dataclass(slots=True)
class RecoveryBudget:
    recover: RecoverFn | None
    """``None``: this call may not list (the caller must not wait on S3)."""
    throttle: Throttle
    deadline: float = field(default_factory=lambda: time.monotonic() + RECOVERY_BUDGET_S)
    error: str | None = None
    """Why this call's listing failed: the ``last_error`` of every timeline
    left waiting for one (a missing bucket would otherwise show nowhere but
    the log: no upload is tried before backup_lsn is recovered)."""

    @property
    def allowed(self) -> bool:
        return self.recover is not None

    def archive_end(self, ttid: str, start: Lsn, seg_size: int) -> Lsn | None:
        """The end of the contiguous archive from ``start``, or ``None`` when it
        cannot be had in this call (not allowed, out of time, storage failing)."""
        if self.recover is None or self.error or time.monotonic() > self.deadline:
            return None
        try:
            archived = self.recover(ttid, start, seg_size)
        except WalBackupError as exc:
            # One slow or failing listing per call is enough.
            self.error = f"{RECOVERY_ERROR}: {exc}"
            if self.throttle.allow(("recover", type(exc))):
                log.warning("Timeline %s: %s", ttid, self.error)
            return None
        if archived > start:
            log.info("Timeline %s: the archive is contiguous up to %s", ttid, archived)
        return archived
