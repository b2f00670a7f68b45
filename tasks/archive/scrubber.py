"""The continuous scrubber: each pass verifies what changed, a slice of the rest, and heals.

A pass over one timeline (on its offloader, ``tasks.backup.keeper``):

1. flushes the ledger (``flush``), so every segment below backup_lsn has
   an entry in a page, or is missing from the archive;
2. checks the new segments ``[verified, segno(backup_lsn))`` against the
   listing and the ledger (size, MD5 ETag), then a *sweep* of up to
   ``SWEEP_SEGMENTS`` older ones (one LIST request) from a rolling cursor,
   then every problem still open;
3. reads back and hashes whole objects from a rolling *deep* cursor, as the
   node's ``DeepBudget`` allows;
4. heals: a missing or damaged object is uploaded again from this node's
   copy when that copy is the one the ledger recorded, or else from another
   node's (``heal_elsewhere``: a task to a node that holds the segment).

The cursors and the open problems live in Redis (``tasks.state.archive``):
losing them costs one full re-check, nothing else.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tasks.archive.etag_evidence import EtagEvidence
from tasks.archive.flush import LedgerFlusher, LocalCopy
from tasks.archive.heal import Healed, heal_from_copy
from tasks.archive.survey import confirm, deep_check, ledger_for, list_timeline
from tasks.core.archive_check import Kind, Problem, check_range, verified_end
from tasks.core.ids import TenantTimelineId
from tasks.core.ledger import LedgerEntry
from tasks.core.lsn import Lsn
from tasks.core.segments import xlog_file_name
from tasks.metrics import (
    ARCHIVE_HEALED,
    ARCHIVE_OPEN_PROBLEMS,
    ARCHIVE_PROBLEMS,
    ARCHIVE_VERIFIED_BYTES,
    ARCHIVE_VERIFIED_LSN,
)
from tasks.state.redis import RedisState
from tasks.storage.ledger_pages import PageRef

log = logging.getLogger("walbackup.scrub")

SWEEP_SEGMENTS = 1000
"""Older segments re-checked per pass: one LIST request's worth."""
HEALABLE = frozenset({Kind.MISSING, Kind.SIZE, Kind.CHANGED, Kind.CORRUPT})

HealElsewhere = Callable[[TenantTimelineId, int, int], bool]
"""Ask another node that holds ``(ttid, segno, seg_size)`` to upload it
again; whether a node was asked."""


class DeepBudget:
    """Bytes per second the deep check may read, for the whole node (a token
    bucket holding at most a minute's worth, and always one segment)."""

    def __init__(self, bytes_per_s: int) -> None:
        self.rate = bytes_per_s
        self._tokens = 0.0
        self._at = time.monotonic()
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        if self.rate <= 0:
            return False
        with self._lock:
            now = time.monotonic()
            cap = max(self.rate * 60.0, float(n))
            self._tokens = min(cap, self._tokens + (now - self._at) * self.rate)
            self._at = now
            if self._tokens < n:
                return False
            self._tokens -= n
            return True


@dataclass
class ScrubResult:
    verified_lsn: Lsn
    open: list[Problem] = field(default_factory=list)
    """Problems still open after the pass."""
    found: list[Problem] = field(default_factory=list)
    """Problems this pass found that were not open before."""
    healed: list[Problem] = field(default_factory=list)


@dataclass
class _Pass:
    ttid: TenantTimelineId
    seg_size: int
    refs: list[PageRef]
    suspect: set[int]
    """Segments with a problem open from an earlier pass: their bytes are read
    again, whatever the listing says (a same-size rewrite the deep check found
    shows nothing in it)."""
    checked: dict[int, Problem | None] = field(default_factory=dict)
    entries: dict[int, LedgerEntry] = field(default_factory=dict)


class Scrubber:
    """Thread-safe (its state is in Redis and in the budget)."""

    def __init__(
        self,
        state: RedisState,
        flusher: LedgerFlusher,
        deep: DeepBudget,
        local_copy: LocalCopy,
        heal_elsewhere: HealElsewhere,
    ) -> None:
        self.state = state
        self.flusher = flusher
        self.store = flusher.store
        self.storage = flusher.storage
        self.deep = deep
        self.local_copy = local_copy
        self.heal_elsewhere = heal_elsewhere
        self.etags = EtagEvidence(self.storage)

    def run(
        self, ttid: TenantTimelineId, seg_size: int, backup_lsn: Lsn, start: int
    ) -> ScrubResult:
        """One pass over ``[start, segno(backup_lsn))`` (``start``: the
        timeline's first segment; a retained start above it wins)."""
        key = str(ttid)
        start = self._archive_start(key, seg_size, start)
        self.flusher.flush(ttid, seg_size, backup_lsn, start)
        end = backup_lsn.segment_number(seg_size)
        cursors = self.state.archive_cursors(key)
        verified = min(max(cursors.get("verified", start), start), end)
        open_before = self.state.problems(key)
        p = _Pass(ttid, seg_size, self.store.pages(ttid, seg_size), set(open_before))
        self._shallow(p, verified, end)
        sweep = cursors.get("sweep", start)
        if not start <= sweep < verified:
            sweep = start
        sweep_end = min(verified, sweep + SWEEP_SEGMENTS)
        self._shallow(p, sweep, sweep_end)
        for segno in sorted(open_before):
            if start <= segno < end and segno not in p.checked:
                self._shallow(p, segno, segno + 1)
        deep = self._deep(p, cursors.get("deep", start), start, end)
        # A retain records the archive's new start before deleting anything:
        # read again after listing, so nothing it deleted counts as missing.
        retained = self._archive_start(key, seg_size, start)
        p.checked = {s: q for s, q in p.checked.items() if s >= retained}

        found = [q for q in p.checked.values() if q is not None]
        if found:  # WAL removal stops short of them while they are healed from the nodes' copies
            held = Lsn.from_segment(verified_end(start, end, found), 0, seg_size)
            self.state.record_verified(key, held, len(found))
        result = ScrubResult(Lsn(0))
        for segno, problem in sorted(p.checked.items()):
            if problem is None:
                continue
            healed = self._heal(p, problem)
            if healed == "intact":  # healed meanwhile: nothing to report
                continue
            if healed == "uploaded":
                result.healed.append(problem)
                continue
            result.open.append(problem)
            if segno not in open_before:
                result.found.append(problem)
        unrecorded = [
            q.segno for q in result.open if q.kind is Kind.UNRECORDED and q.segno is not None
        ]
        if unrecorded:
            self.flusher.rewind(ttid, min(unrecorded))
        open_now = {q.segno: q.line() for q in result.open if q.segno is not None}
        cleared = [s for s in open_before if s not in open_now]
        self.state.record_problems(key, open_now, cleared)
        self.state.set_cursors(
            key,
            {"verified": end, "sweep": sweep_end if sweep_end < verified else start, "deep": deep},
        )
        result.verified_lsn = Lsn.from_segment(verified_end(start, end, result.open), 0, seg_size)
        self.state.record_verified(key, result.verified_lsn, len(result.open))
        self._report(key, seg_size, result)
        return result

    def _archive_start(self, ttid: str, seg_size: int, start: int) -> int:
        """``start``, or where ``walbackup retain`` moved the archive's start."""
        retained = self.state.archive_start(ttid)
        return start if retained is None else max(start, retained.segment_number(seg_size))

    def _shallow(self, p: _Pass, start: int, end: int) -> None:
        if start >= end:
            return
        listing = list_timeline(self.storage, p.ttid, p.seg_size, start, end)
        entries, conflicts = ledger_for(
            self.store, self.state, p.ttid, p.seg_size, start, end, p.refs
        )
        p.entries.update(entries)
        for segno in range(start, end):
            p.checked.setdefault(segno, None)
        for found in check_range(start, end, p.seg_size, listing.segments, entries):
            segno = found.segno or 0
            problem: Problem | None = found
            if found.kind is Kind.CHANGED:  # the bytes decide, never an ETag alone
                etag = listing.segments[segno].etag
                problem = self.etags.judge(p.ttid, found, p.seg_size, entries[segno], etag)
            if problem is not None:
                p.checked[segno] = problem
        for segno in sorted(s for s in p.suspect if start <= s < end):
            if p.checked[segno] is None and segno in entries:
                p.checked[segno] = confirm(self.storage, p.ttid, segno, p.seg_size, entries[segno])
        for segno in conflicts:
            name = xlog_file_name(segno, p.seg_size)
            p.checked[segno] = Problem(segno, name, Kind.CONFLICT, "ledger pages disagree")

    def _deep(self, p: _Pass, cursor: int, start: int, end: int) -> int:
        """Hash objects from ``cursor`` while the budget lasts; the next cursor."""
        if not start <= cursor < end:
            cursor = start
        while cursor < end and self.deep.take(p.seg_size):
            if p.checked.get(cursor) is None:
                entry = p.entries.get(cursor)
                if entry is None:
                    found, _ = ledger_for(
                        self.store, self.state, p.ttid, p.seg_size, cursor, cursor + 1, p.refs
                    )
                    entry = found.get(cursor)
                if entry is not None:
                    problem = deep_check(self.storage, p.ttid, cursor, p.seg_size, entry)
                    ARCHIVE_VERIFIED_BYTES.inc(p.seg_size)
                    if problem is not None:
                        p.checked[cursor] = problem
                        p.entries[cursor] = entry
            cursor += 1
        return cursor if cursor < end else start

    def _heal(self, p: _Pass, problem: Problem) -> Healed:
        """Upload the segment again from this node's copy if it has the bytes
        the ledger recorded (any copy when the ledger has no entry and the
        object is missing); else ask a node that holds it."""
        if problem.kind not in HEALABLE or problem.segno is None:
            return None
        healed = heal_from_copy(
            self.storage, self.local_copy, p.ttid, problem.segno, p.seg_size,
            p.entries.get(problem.segno),
        )  # fmt: skip
        if healed is not None:
            return healed
        if self.heal_elsewhere(p.ttid, problem.segno, p.seg_size):
            log.warning("Timeline %s: asked another node to upload %s again", p.ttid, problem.name)
        return None

    def _report(self, ttid: str, seg_size: int, result: ScrubResult) -> None:
        ARCHIVE_VERIFIED_LSN.labels(timeline=ttid).set(int(result.verified_lsn))
        ARCHIVE_OPEN_PROBLEMS.labels(timeline=ttid).set(len(result.open))
        for problem in result.found:
            ARCHIVE_PROBLEMS.inc()
            log.error("Timeline %s: archive problem below backup_lsn: %s", ttid, problem.line())
        for problem in result.healed:
            ARCHIVE_PROBLEMS.inc()
            ARCHIVE_HEALED.inc()
            log.error(
                "Timeline %s: archive problem below backup_lsn: %s; uploaded again from "
                "this node's copy",
                ttid,
                problem.line(),
            )
        if result.open:
            first = result.open[0]
            self.state.record_error(
                ttid,
                f"archive scrub: {len(result.open)} problem(s), first {first.line()}",
            )
