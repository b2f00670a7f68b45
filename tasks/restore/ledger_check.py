"""Downloaded WAL checked against the archive ledger: the SHA-256 its upload verified.

A read checks an object against the checksum stored *with* it. An object
rewritten out of band (a flipped byte put back with a plain PUT, a bucket
restored from elsewhere) carries a checksum of its own, which matches: only
the ledger (``docs/ledger.md``) still says which bytes were archived. A
restore that fed PostgreSQL such a segment would end recovery early at the
first bad record, in silence; so ``walbackup fetch`` and its prefetcher
refuse it (``ChecksumMismatch``, exit 202).

The check never fails a good segment for the ledger's own trouble: a page
that cannot be listed or read, or a segment no page records while later ones
exist (a page removed), leaves the storage's checksum as the only check and
says so on stderr (``strict``, the prefetcher's mode: it raises instead, and
the segment is not spooled, so the consumer's own fetch says it). Only
complete segments of ``PG_TLI`` have entries, and only once a flush put them
in a page: for the newest, the storage's checksum is the check.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial

from tasks.core.ids import TenantTimelineId
from tasks.core.ledger import LEDGER_DIR, PAGE_MAX_SEGMENTS, LedgerEntry
from tasks.core.segments import PG_TLI, SEGMENT_NAME_RE, parse_xlog_file_name, validate_seg_size
from tasks.errors import (
    AccessDenied,
    ChecksumMismatch,
    InvalidInput,
    LedgerConflict,
    Retryable,
)
from tasks.storage.base import RemoteStorage, SegmentDigest, timeline_prefix
from tasks.storage.ledger_pages import LedgerPages, PageRef

RELIST_S = 30.0
"""A segment no cached page covers is looked for again after this long (the
newest segments reach a page only when the offloader flushes)."""
LOOKAHEAD = PAGE_MAX_SEGMENTS
"""How far past the segment asked for the prefetcher's listings keep pages."""


@dataclass(frozen=True, slots=True)
class Recorded:
    entries: list[LedgerEntry]
    """What the pages record for the segment: more than one when they disagree."""
    pages: list[str]
    """The keys of the pages that cover it."""
    gap: bool
    """No page covers it, though a later one exists: a page was removed."""
    segno: int
    seg_size: int
    """The segment size the lookup took the segment's number with."""
    paged: bool
    """Pages were listed near it: the timeline has archived something."""


class _OtherSegSize(LedgerConflict):
    """The pages were written for another segment size than the one looked up with."""

    def __init__(self, message: str, seg_size: int) -> None:
        super().__init__(message)
        self.seg_size = seg_size


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
        strict: bool = False,
        warn_only: bool = False,
    ) -> None:
        """``seg_size``: the setting (the prefetcher: the size the consumer's
        fetch read); a complete segment of another size stops the restore.
        ``warn_only`` (``restore_ledger_check=warn``): a mismatch, of bytes or
        size, is a warning, and the object's own size, then the one its pages
        declare, find its entries. ``strict``: see the module's doc."""
        self.pages = LedgerPages(storage)
        self.ttid = ttid
        self.seg_size = seg_size
        self.lookahead = lookahead
        self.relist_s = relist_s
        self.strict = strict
        self.warn_only = warn_only
        self._lock = threading.Lock()
        self._listing = threading.Lock()  # one listing at a time: the others wait for it
        self._refs: dict[int, dict[str, PageRef]] = {}  # seg size -> key -> page
        self._listed: dict[int, tuple[int, int, float]] = {}  # seg size -> (start, end, when)
        self._pending: dict[str, Future[Recorded]] = {}
        self._warned: set[str] = set()

    def look_up(self, name: str) -> None:
        """Start looking segment ``name`` up in a thread, so the LIST and the
        page's GET overlap the download that ``check`` then judges."""
        if _segno(name, self.seg_size) is None:
            return
        pending: Future[Recorded] = Future()
        with self._lock:
            self._pending[name] = pending

        def run() -> None:
            try:
                pending.set_result(self._recorded(name, self.seg_size))
            except BaseException as exc:  # handed to check(), which handles it
                pending.set_exception(exc)

        threading.Thread(target=run, name=f"ledger {name}", daemon=True).start()

    def check(self, name: str, digest: SegmentDigest) -> None:
        """Raise ``ChecksumMismatch`` unless the bytes of segment ``name``
        (their ``digest``) are what the ledger records, where it records them."""
        with self._lock:
            pending = self._pending.pop(name, None)
        if digest.size != self.seg_size and SEGMENT_NAME_RE.fullmatch(name):
            self._wrong_size(name, digest.size)
        # The setting, then (``warn_only``) the object's own size where it
        # differs: a name may even be no segment under the setting's size.
        found, error = self._lookup(name, (self.seg_size, digest.size), pending)
        if found is None:
            if error is not None:  # the ledger's trouble is never the segment's
                self._unchecked(name, f"the archive ledger cannot be read ({error})")
            return  # a history file, a partial upload: the ledger has no entry
        if found.gap:
            self._unchecked(name, "no ledger page records it, though later pages exist")
        if not found.entries or any(_same(e, digest) for e in found.entries):
            return
        expected = "; ".join(f"sha256 {e.sha256}, {e.size} bytes" for e in found.entries)
        message = (
            f"segment {name} of timeline {self.ttid} is not the one archived: it has sha256 "
            f"{digest.sha256_hex}, {digest.size} bytes, where the archive ledger "
            f"({', '.join(found.pages)}) records {expected}. The object changed after it was "
            "archived"
        )
        if self.warn_only:
            self.warn(f"{message}; served as WALBACKUP_RESTORE_LEDGER_CHECK=warn says")
            return
        raise ChecksumMismatch(
            f"{message}: not restored. `walbackup verify --deep` lists every such segment; "
            "a running offloader's scrubber puts back a node's copy; to restore it anyway "
            "(the ledger is what is wrong), set WALBACKUP_RESTORE_LEDGER_CHECK=warn"
        )

    def _wrong_size(self, name: str, size: int) -> None:
        """A complete segment of ``size`` bytes, not the setting's: the object
        is damaged (the archive's pages say the setting's size), or the
        setting is not the archive's, under which no check holds (names and
        pages map to other segments) and a lost segment would look like the
        archive's end. Either stops the restore: ``ChecksumMismatch`` (202)
        or ``InvalidInput`` (200), unless ``warn_only``."""
        declared = self._archive_seg_size()
        if declared == self.seg_size:
            error: Exception = ChecksumMismatch(
                f"segment {name} of timeline {self.ttid} has {size} bytes, where the archive's "
                f"segments have {self.seg_size}: the object is damaged. `walbackup verify` "
                "lists every such segment"
            )
        else:
            says = f" (its ledger pages say {declared})" if declared else ""
            error = InvalidInput(
                f"segment {name} of timeline {self.ttid} has {size} bytes, but "
                f"WALBACKUP_WAL_SEG_SIZE is {self.seg_size}: set it to the archive's segment "
                f"size{says} where PostgreSQL restores"
            )
        if not self.warn_only:
            raise error
        self.warn(f"{error}; WALBACKUP_RESTORE_LEDGER_CHECK=warn: served")

    def _archive_seg_size(self) -> int | None:
        """The segment size the timeline's first ledger page was written for;
        ``None`` when there is none, or it cannot be read."""
        try:
            prefix = f"{timeline_prefix(self.ttid)}{LEDGER_DIR}/"
            first = next(self.pages.storage.list(prefix, limit=1), None)
            return self.pages.declared_seg_size(first.key) if first is not None else None
        except Exception:  # only a better message is at stake
            return None

    def recorded(self, name: str) -> Recorded | None:
        """What the pages record for segment ``name``; ``None`` when it is no
        segment or the pages cannot be read. The storage's own errors (down,
        refusing us) are raised: the caller may not take them for "no entry"."""
        found, error = self._lookup(name, (self.seg_size,))
        if isinstance(error, (Retryable, AccessDenied)):
            raise error
        return found

    def _lookup(
        self, name: str, sizes: Iterable[int], pending: Future[Recorded] | None = None
    ) -> tuple[Recorded | None, Exception | None]:
        """What the pages record for ``name`` under the first of ``sizes`` (or
        of the size the pages declare, when that is another) where they record
        it; else the first answer (no entry); else the first error."""
        todo = [size for size in dict.fromkeys(sizes) if _segno(name, size) is not None]
        tried: set[int] = set()
        answers: list[Recorded] = []
        errors: list[Exception] = []
        while todo:
            size = todo.pop(0)
            tried.add(size)
            if pending is not None and size == self.seg_size:
                found, error = _attempt(pending.result)
            else:
                found, error = _attempt(partial(self._recorded, name, size))
            if found is not None and found.entries:
                return found, None
            answers += [found] if found is not None else []
            errors += [error] if error is not None else []
            declared = error.seg_size if isinstance(error, _OtherSegSize) else None
            if declared and declared not in tried and _segno(name, declared) is not None:
                todo.append(declared)  # the archive's own, from its pages
        return (answers[0] if answers else None), (errors[0] if errors else None)

    def _recorded(self, name: str, seg_size: int) -> Recorded:
        """What the pages record for ``name``, its segno taken with ``seg_size``."""
        segno = _segno(name, seg_size)
        if segno is None:
            return Recorded([], [], gap=False, segno=-1, seg_size=seg_size, paged=False)
        refs = self._covering(segno, seg_size)
        covering = [r for r in refs if r.first <= segno <= r.last]
        try:
            entries = self.pages.recorded(self.ttid, seg_size, segno, covering)
        except LedgerConflict as exc:
            declared = self.pages.declared_seg_size(covering[0].key) if covering else None
            if declared is not None and declared != seg_size:
                raise _OtherSegSize(str(exc), declared) from exc
            raise
        gap = not covering and any(r.first > segno for r in refs)
        keys = [r.key for r in covering]
        return Recorded(entries, keys, gap, segno=segno, seg_size=seg_size, paged=bool(refs))

    def _covering(self, segno: int, seg_size: int) -> list[PageRef]:
        """The cached pages, listed (again) when none covers ``segno`` and the
        last listing did not look there a moment ago."""
        with self._listing:
            with self._lock:
                refs = list(self._refs.get(seg_size, {}).values())
                start, stop, when = self._listed.get(seg_size, (0, -1, 0.0))
            if any(r.first <= segno <= r.last for r in refs):
                return refs
            now = time.monotonic()
            if start <= segno <= stop and now - when < self.relist_s:
                return refs  # not in a page yet: no LIST per download
            end = segno + self.lookahead
            found = self.pages.pages(self.ttid, seg_size, start=segno, end=end)
            with self._lock:
                self._refs.setdefault(seg_size, {}).update((r.key, r) for r in found)
                self._listed[seg_size] = (segno, end, now)
                return list(self._refs[seg_size].values())

    def _unchecked(self, name: str, why: str) -> None:
        message = f"segment {name}: {why}: checked by the storage's checksum only"
        if self.strict:
            raise LedgerConflict(message)
        self.warn(message)

    def warn(self, message: str) -> None:
        """``walbackup: warning: MESSAGE`` on stderr, once per kind of message."""
        key = message.split(":", 1)[1]  # once per kind, not per segment
        with self._lock:
            if key in self._warned:
                return
            self._warned.add(key)
        print(f"walbackup: warning: {' '.join(message.splitlines())}", file=sys.stderr)


def _attempt(lookup: Callable[[], Recorded]) -> tuple[Recorded | None, Exception | None]:
    try:
        return lookup(), None
    except Exception as exc:
        return None, exc


def _segno(name: str, seg_size: int) -> int | None:
    """The segno of a complete segment of ``PG_TLI`` under ``seg_size``; else
    ``None`` (a history file, a partial upload, not a valid segment size)."""
    try:
        tli, segno = parse_xlog_file_name(name, validate_seg_size(seg_size))
    except ValueError:
        return None
    return segno if tli == PG_TLI else None


def _same(entry: LedgerEntry, digest: SegmentDigest) -> bool:
    return entry.size == digest.size and entry.sha256.lower() == digest.sha256_hex
