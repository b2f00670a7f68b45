"""The archive's records in Redis: the ledger's recent entries, the ledger's flushed end,
the scrubber's cursors and the problems it found open.

walbackup:ledger:{ttid}    HASH  segno -> ledger entry (``tasks.core.ledger.encode``),
                                 written by the commit scripts, kept for a
                                 window below backup_lsn (``_window.lua``)
walbackup:archive:{ttid}   HASH  ledger_end (first segno not yet in a bucket
                                 page), verified (first segno the scrubber has
                                 not verified), sweep, deep (its rolling
                                 cursors), sweep_pass, deep_pass (completed
                                 laps), checked_at
walbackup:problems:{ttid}  HASH  segno -> "KIND detail" of open problems
walbackup:archive_id       STRING, walbackup:archive_seen HASH: the archive's
                                 id, and each node's last check of it
                                 (``tasks.archive.identity``)
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import redis

from tasks.core.ledger import LedgerEntry, decode
from tasks.core.lsn import Lsn
from tasks.state.keys import (
    ARCHIVE_ID_KEY,
    ARCHIVE_SEEN_KEY,
    archive_key,
    ledger_key,
    problems_key,
    tl_key,
)
from tasks.state.lua import Scripts


class ArchiveRecords:
    """A part of ``RedisState`` (which provides ``r`` and ``_scripts``)."""

    r: redis.Redis[str]
    _scripts: Scripts

    def ledger_entries(self, ttid: str, segnos: Sequence[int]) -> dict[int, LedgerEntry]:
        """The entries of ``segnos`` still in Redis (unreadable values left out)."""
        if not segnos:
            return {}
        values = self.r.hmget(ledger_key(ttid), [str(s) for s in segnos])
        found = {s: decode(v) for s, v in zip(segnos, values, strict=True) if v}
        return {s: e for s, e in found.items() if e is not None}

    def drop_ledger_entries(self, ttid: str, segnos: range) -> None:
        """Forget entries that a bucket page now holds."""
        if segnos:
            self.r.hdel(ledger_key(ttid), *[str(s) for s in segnos])

    def archive_cursors(self, ttid: str) -> dict[str, int]:
        """The archive hash's integer fields (missing ones absent)."""
        raw = self.r.hgetall(archive_key(ttid))
        return {k: int(float(v)) for k, v in raw.items() if v}

    def raise_cursor(self, ttid: str, field: str, value: int) -> int:
        """Move a cursor of the archive hash up to ``value`` (never down); the stored value."""
        return int(self._scripts.run("raise_field", [archive_key(ttid)], [field, value]))

    def set_cursors(self, ttid: str, values: Mapping[str, int]) -> None:
        """Set rolling cursors (which wrap around, so may go down)."""
        if values:
            fields: dict[str | bytes, int] = {k: v for k, v in values.items()}
            fields["checked_at"] = int(time.time())
            self.r.hset(archive_key(ttid), mapping=fields)

    def record_verified(self, ttid: str, verified_lsn: Lsn, open_problems: int) -> None:
        """The scrubber's result, for ``status``: in the timeline's hash."""
        self.r.hset(
            tl_key(ttid),
            mapping={"verified_lsn": str(verified_lsn), "archive_problems": open_problems},
        )

    def problems(self, ttid: str) -> dict[int, str]:
        return {int(k): v for k, v in self.r.hgetall(problems_key(ttid)).items()}

    def record_problems(self, ttid: str, found: Mapping[int, str], cleared: Sequence[int]) -> None:
        pipe = self.r.pipeline(transaction=False)
        if found:
            pipe.hset(problems_key(ttid), mapping={str(k): v for k, v in found.items()})
        if cleared:
            pipe.hdel(problems_key(ttid), *[str(s) for s in cleared])
        pipe.execute()

    def archive_id(self) -> str | None:
        return self.r.get(ARCHIVE_ID_KEY)

    def claim_archive_id(self, archive_id: str) -> str:
        """Record ``archive_id`` unless Redis has one; the one Redis has now."""
        self.r.set(ARCHIVE_ID_KEY, archive_id, nx=True)
        return self.r.get(ARCHIVE_ID_KEY) or archive_id

    def report_archive(self, node_id: int, report: Mapping[str, object]) -> None:
        """A node's last identity check: when, its storage settings'
        fingerprint, whether it found the archive's id there."""
        self.r.hset(ARCHIVE_SEEN_KEY, str(node_id), json.dumps(dict(report)))

    def archive_reports(self) -> dict[int, dict[str, Any]]:
        """Node id -> its last ``report_archive`` (unreadable ones left out)."""
        reports = {}
        for k, v in self.r.hgetall(ARCHIVE_SEEN_KEY).items():
            with contextlib.suppress(ValueError):
                reports[int(k)] = dict(json.loads(v))
        return reports
