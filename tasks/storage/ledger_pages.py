"""Reading the archive ledger's pages from the bucket (cached: pages never change).

Here in ``storage``, not ``archive``, because restores read it too: ``walbackup
fetch`` and its prefetcher check what they download against the SHA-256 the
upload verified (``tasks.restore.ledger_check``), and must not load Redis or
the archive's machinery to do it. ``tasks.archive.ledger_store`` adds writing.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass

from tasks.core.ids import TenantTimelineId
from tasks.core.ledger import (
    LEDGER_DIR,
    PAGE_MAX_SEGMENTS,
    LedgerEntry,
    merge,
    parse_page,
    parse_page_name,
)
from tasks.core.segments import xlog_file_name
from tasks.errors import InvalidInput, LedgerConflict
from tasks.storage.base import RemoteStorage, timeline_prefix

CACHED_PAGES = 256


@dataclass(frozen=True, slots=True)
class PageRef:
    first: int
    last: int
    key: str


class LedgerPages:
    """Thread-safe."""

    def __init__(self, storage: RemoteStorage) -> None:
        self.storage = storage
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, dict[int, LedgerEntry]] = OrderedDict()

    def pages(
        self,
        ttid: TenantTimelineId,
        seg_size: int,
        start: int | None = None,
        end: int | None = None,
    ) -> list[PageRef]:
        """The timeline's pages, by first segment; with ``start`` and ``end``,
        those that may record a segno in ``[start, end]`` and the first one
        after: a page spans at most ``PAGE_MAX_SEGMENTS``, so the listing
        starts that far before ``start`` and stops past ``end``."""
        prefix = f"{timeline_prefix(ttid)}{LEDGER_DIR}/"
        start_after = ""
        if start is not None and start >= PAGE_MAX_SEGMENTS:
            start_after = prefix + xlog_file_name(start - PAGE_MAX_SEGMENTS + 1, seg_size)
        refs = []
        for info in self.storage.list(prefix, start_after):
            span = parse_page_name(info.key[len(prefix) :], seg_size)
            if span is None:
                continue
            refs.append(PageRef(span[0], span[1], info.key))
            if end is not None and span[0] > end:
                break  # kept: the first page past ``end`` tells a gap from the end
        return sorted(refs, key=lambda r: (r.first, r.last))

    def read(self, ref: PageRef, ttid: TenantTimelineId, seg_size: int) -> dict[int, LedgerEntry]:
        with self._lock:
            cached = self._cache.get(ref.key)
            if cached is not None:
                self._cache.move_to_end(ref.key)
                return cached
        try:
            entries = parse_page(self.storage.read_bytes(ref.key), str(ttid), seg_size)
        except InvalidInput as exc:
            raise LedgerConflict(
                f"{self.storage.url}: ledger page {ref.key} is unreadable: {exc}"
            ) from exc

        with self._lock:
            self._cache[ref.key] = entries
            while len(self._cache) > CACHED_PAGES:
                self._cache.popitem(last=False)
        return entries

    def declared_seg_size(self, key: str) -> int | None:
        """The ``wal_seg_size`` the page ``key`` says it was written for (read
        afresh: for a page ``read`` refused); ``None`` when it says none."""
        try:
            declared = json.loads(self.storage.read_bytes(key)).get("wal_seg_size")
        except (ValueError, AttributeError):
            return None
        return declared if isinstance(declared, int) else None

    def entries(
        self,
        ttid: TenantTimelineId,
        seg_size: int,
        start: int,
        end: int,
        refs: list[PageRef] | None = None,
    ) -> tuple[dict[int, LedgerEntry], list[int]]:
        """Entries of ``[start, end)`` from the pages that cover them, and the
        segnos on which two pages disagree."""
        refs = self.pages(ttid, seg_size) if refs is None else refs
        pages = [self.read(r, ttid, seg_size) for r in refs if r.last >= start and r.first < end]
        merged, conflicts = merge(pages)
        inside = {s: e for s, e in merged.items() if start <= s < end}
        return inside, [s for s in conflicts if start <= s < end]

    def recorded(
        self, ttid: TenantTimelineId, seg_size: int, segno: int, refs: list[PageRef]
    ) -> list[LedgerEntry]:
        """Every entry the pages among ``refs`` record for ``segno``: none when no
        page covers it yet, more than one when pages disagree about it."""
        found: list[LedgerEntry] = []
        for ref in refs:
            if ref.first <= segno <= ref.last:
                entry = self.read(ref, ttid, seg_size).get(segno)
                if entry is not None and entry not in found:
                    found.append(entry)
        return found
