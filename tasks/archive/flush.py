"""Copy the ledger entries that commits put in Redis into pages in the bucket.

The offloader flushes a timeline's committed entries ``[ledger_end,
segno(backup_lsn))`` into one page before every scrub pass (every
``scrub_interval``), and in between once 64 have gathered (or, should beat
not ask for scrubs, once the oldest has waited a minute); then it moves
``ledger_end`` and deletes the flushed entries from Redis. So Redis holds at
most a scrub interval's entries, and a Redis that loses its data loses at
most those: they are rebuilt from the archived objects (``source:
recovered``), checked against this node's copy where it has one. One PUT per
timeline per scrub interval at most, plus one per 64 segments.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Container
from pathlib import Path

from tasks.archive.ledger_store import LedgerStore
from tasks.core.ids import TenantTimelineId
from tasks.core.ledger import PAGE_MAX_SEGMENTS, LedgerEntry, wal_facts
from tasks.core.lsn import Lsn
from tasks.core.segments import xlog_file_name
from tasks.core.walpage import LONG_HEADER_BYTES
from tasks.errors import NotFound, SegmentFileError
from tasks.state.redis import RedisState
from tasks.storage.base import Hasher, digest_segment_file, read_chunks, segment_key

log = logging.getLogger("walbackup.ledger")

FLUSH_MIN_SEGMENTS = 64
FLUSH_MAX_AGE_S = 60.0
RECOVER_PER_FLUSH = 64
"""Entries rebuilt from archived objects per flush, at most (each reads an
object back): after a rewind over a long run, the next flushes go on."""

LocalCopy = Callable[[TenantTimelineId, int], Path | None]
"""This node's copy of a segment, if it holds one."""


class LedgerFlusher:
    """Thread-safe; one flush of a timeline at a time per process."""

    def __init__(
        self, node_id: int, state: RedisState, store: LedgerStore, local_copy: LocalCopy
    ) -> None:
        self.node_id = node_id
        self.state = state
        self.store = store
        self.storage = store.storage
        self.local_copy = local_copy
        self._lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._ends: dict[str, int] = {}
        self._flushed_at: dict[str, float] = {}

    def due(self, ttid: str, backup_segno: int) -> bool:
        end = self._ends.get(ttid)
        if end is None:
            return True
        pending = backup_segno - end
        waited = time.monotonic() - self._flushed_at.get(ttid, 0.0)
        return pending >= FLUSH_MIN_SEGMENTS or (pending > 0 and waited >= FLUSH_MAX_AGE_S)

    def keep_only(self, ttids: Container[str]) -> None:
        """Forget the cached cursors of timelines not in ``ttids`` (which this
        node no longer offloads: the cursors may go stale)."""
        for ttid in [t for t in self._ends if t not in ttids]:
            self._ends.pop(ttid, None)
            self._flushed_at.pop(ttid, None)

    def flush(self, ttid: TenantTimelineId, seg_size: int, backup_lsn: Lsn, start: int) -> int:
        """Write pages for the entries below ``backup_lsn`` not yet in one
        (``start``: the archive's first segment); how many entries were written.
        Stops at a segment that has no entry and no intact archived object:
        the scrubber reports it, and the ledger goes on once it is healed."""
        key = str(ttid)
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            end = self._end(ttid, seg_size, start)
            backup = backup_lsn.segment_number(seg_size)
            written = recovered = 0
            while end < backup:
                stop = min(backup, end + PAGE_MAX_SEGMENTS)
                entries = self.state.ledger_entries(key, range(end, stop))
                run: dict[int, LedgerEntry] = {}
                for segno in range(end, stop):
                    entry = entries.get(segno)
                    if entry is None and recovered < RECOVER_PER_FLUSH:
                        recovered += 1  # one object read back: bounded, the archive thread waits
                        entry = self._recover(ttid, segno, seg_size)
                    if entry is None:
                        break
                    run[segno] = entry
                if not run:
                    break
                self.store.write(ttid, seg_size, run, self.node_id)
                new_end = end + len(run)
                self.state.raise_cursor(key, "ledger_end", new_end)
                self.state.drop_ledger_entries(key, range(end, new_end))
                written += len(run)
                complete = new_end == stop
                end = new_end
                if not complete:
                    break
            self._ends[key] = end
            self._flushed_at[key] = time.monotonic()
        if written:
            log.debug("Timeline %s: %d ledger entries written to the bucket", key, written)
        return written

    def rewind(self, ttid: TenantTimelineId, segno: int) -> None:
        """The ledger's pages lost what they held from ``segno`` on (a bucket
        emptied or recreated, a page deleted): the next flush records the
        segments from there again, from their archived objects (``_recover``,
        against this node's copy where it has one), instead of leaving them
        unrecorded for good."""
        key = str(ttid)
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            end = self.state.archive_cursors(key).get("ledger_end")
            if end is not None and segno < end:
                self.state.set_cursors(key, {"ledger_end": segno})
                log.warning(
                    "Timeline %s: the ledger's pages lack segments from %s on, below their "
                    "recorded end %s: recording them again from the archived objects",
                    key, segno, end,
                )  # fmt: skip
            self._ends.pop(key, None)

    def _end(self, ttid: TenantTimelineId, seg_size: int, start: int) -> int:
        """The first segment not yet in a page: Redis's cursor, or (Redis lost
        it) the end of the last page, or the archive's start."""
        stored = self.state.archive_cursors(str(ttid)).get("ledger_end")
        if stored is None:
            refs = self.store.pages(ttid, seg_size)
            stored = max((r.last + 1 for r in refs), default=start)
            stored = self.state.raise_cursor(str(ttid), "ledger_end", max(stored, start))
        return max(stored, start)

    def _recover(self, ttid: TenantTimelineId, segno: int, seg_size: int) -> LedgerEntry | None:
        """An entry Redis no longer has, from the archived object's bytes;
        ``None`` when the object is missing, short, or differs from this
        node's copy."""
        name = xlog_file_name(segno, seg_size)
        hasher = Hasher(md5=self.storage.lists_md5_etags)
        first = b""
        try:
            with self.storage.open_read(segment_key(ttid, name)) as stream:
                for chunk in read_chunks(stream):
                    if len(first) < LONG_HEADER_BYTES:
                        first += chunk[: LONG_HEADER_BYTES - len(first)]
                    hasher.update(chunk)
        except NotFound:
            return None
        archived = hasher.digest()
        if archived.size != seg_size:
            return None
        path = self.local_copy(ttid, segno)
        if path is not None:
            try:
                ours = digest_segment_file(path, seg_size, md5=False)
            except (SegmentFileError, OSError):
                ours = None
            if ours is not None and ours.sha256 != archived.sha256:
                log.error(
                    "Timeline %s: archived %s (sha256 %s) differs from node %s's copy "
                    "(sha256 %s); not recorded in the ledger",
                    ttid,
                    name,
                    archived.sha256_hex,
                    self.node_id,
                    ours.sha256_hex,
                )
                return None
        log.warning(
            "Timeline %s: ledger entry of %s rebuilt from the archived object "
            "(Redis lost it before it reached a ledger page)",
            ttid,
            name,
        )
        facts = wal_facts(first, segno * seg_size, seg_size)
        return LedgerEntry(
            archived.size, archived.sha256_hex, archived.md5_hex, facts, source="recovered"
        )
