"""Downloaded WAL checked against the archive ledger: the SHA-256 its upload verified.

A read checks an object against the checksum stored *with* it. An object
rewritten out of band (a flipped byte put back with a plain PUT, a bucket
restored from elsewhere) carries a checksum of its own, which matches: only
the ledger (``docs/ledger.md``) still says which bytes were archived. A
restore that fed PostgreSQL such a segment would end recovery early at the
first bad record, in silence; so ``walbackup fetch`` and its prefetcher
refuse it (``ChecksumMismatch``, exit 202).

Only complete segments of ``PG_TLI`` have entries, and only once a flush put
them in a page (within a scrub interval of their commit, or 64 segments):
for the rest, and where the pages cannot be read (said on stderr), the
storage's own checksum is the check.
"""

from __future__ import annotations

import sys
import threading
import time
from concurrent.futures import Future

from tasks.core.ids import TenantTimelineId
from tasks.core.ledger import PAGE_MAX_SEGMENTS, LedgerEntry
from tasks.core.segments import PG_TLI, parse_xlog_file_name
from tasks.errors import AccessDenied, ChecksumMismatch, LedgerConflict
from tasks.storage.base import RemoteStorage, SegmentDigest
from tasks.storage.ledger_pages import LedgerPages, PageRef

Recorded = tuple[list[LedgerEntry], list[str]]
"""The entries pages record for a segment, and those pages' keys."""

RELIST_S = 30.0
"""A segment no cached page covers is looked for again after this long (the
newest segments reach a page only when the offloader flushes)."""
LOOKAHEAD = 16 * PAGE_MAX_SEGMENTS
"""How far past the segment asked for a listing keeps the pages it finds."""


class LedgerCheck:
    """Thread-safe: the prefetcher's downloads share one (and its page cache)."""

    def __init__(
        self,
        storage: RemoteStorage,
        ttid: TenantTimelineId,
        seg_size: int,
        *,
        lookahead: int = 0,
        relist_s: float = RELIST_S,
    ) -> None:
        self.pages = LedgerPages(storage)
        self.ttid = ttid
        self.seg_size = seg_size
        self.lookahead = lookahead
        self.relist_s = relist_s
        self._lock = threading.Lock()
        self._refs: dict[str, PageRef] = {}
        self._listed: tuple[int, int, float] | None = None  # (start, end, when)
        self._warned = False
        self._pending: dict[int, Future[Recorded]] = {}

    def look_up(self, name: str) -> None:
        """Start looking segment ``name`` up in a thread, so the LIST and the
        page's GET overlap the download that ``check`` then judges."""
        segno = self._segno(name)
        if segno is None:
            return
        pending: Future[Recorded] = Future()
        self._pending[segno] = pending

        def run() -> None:
            try:
                pending.set_result(self._recorded(segno))
            except BaseException as exc:  # handed to check(), which handles it
                pending.set_exception(exc)

        threading.Thread(target=run, name=f"ledger {name}", daemon=True).start()

    def check(self, name: str, digest: SegmentDigest) -> None:
        """Raise ``ChecksumMismatch`` unless the bytes of segment ``name``
        (their ``digest``) are what the ledger records, where it records them."""
        segno = self._segno(name)
        if segno is None:
            return
        pending = self._pending.pop(segno, None)
        try:
            recorded, refs = pending.result() if pending else self._recorded(segno)
        except (LedgerConflict, AccessDenied) as exc:
            # An unreadable page, or credentials that may read WAL but not
            # list: the restore goes on with the storage's check.
            self._warn(f"{exc}: segment {name} checked by the storage's checksum only")
            return
        if not recorded or any(_same(e, digest) for e in recorded):
            return
        expected = "; ".join(f"sha256 {e.sha256}, {e.size} bytes" for e in recorded)
        raise ChecksumMismatch(
            f"segment {name} of timeline {self.ttid} is not the one archived: it has sha256 "
            f"{digest.sha256_hex}, {digest.size} bytes, where the archive ledger "
            f"({', '.join(refs)}) records {expected}. The object changed after it was "
            "archived: not restored. `walbackup verify --deep` lists every such segment; a "
            "running offloader's scrubber puts back the copy a node holds"
        )

    def _segno(self, name: str) -> int | None:
        """The segno of a complete segment of ``PG_TLI``; else ``None``."""
        try:
            tli, segno = parse_xlog_file_name(name, self.seg_size)
        except ValueError:
            return None  # a history file, a partial upload: the ledger has no entry
        return segno if tli == PG_TLI else None

    def _recorded(self, segno: int) -> Recorded:
        refs = [r for r in self._covering(segno) if r.first <= segno <= r.last]
        return self.pages.recorded(self.ttid, self.seg_size, segno, refs), [r.key for r in refs]

    def _covering(self, segno: int) -> list[PageRef]:
        """The cached pages, listed (again) when none covers ``segno`` and the
        last listing did not look there a moment ago."""
        with self._lock:
            refs = list(self._refs.values())
            listed = self._listed
        if any(r.first <= segno <= r.last for r in refs):
            return refs
        now = time.monotonic()
        if (
            listed is not None
            and listed[0] <= segno <= listed[1]
            and now - listed[2] < self.relist_s
        ):
            return refs
        end = segno + self.lookahead
        found = self.pages.pages(self.ttid, self.seg_size, start=segno, end=end)
        with self._lock:
            self._refs.update((r.key, r) for r in found)
            self._listed = (segno, end, now)
            return list(self._refs.values())

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            print(f"walbackup: warning: {' '.join(message.splitlines())}", file=sys.stderr)


def _same(entry: LedgerEntry, digest: SegmentDigest) -> bool:
    return entry.size == digest.size and entry.sha256 == digest.sha256_hex
