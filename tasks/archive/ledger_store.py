"""The archive ledger's pages in the bucket: list, read (cached: pages never change), write.

A page is written once with a conditional write; a second writer of the same
range (two flushes racing, a retry whose first reply was lost) finds it there
and compares: the same bytes recorded for every segment is success, anything
else is a ``LedgerConflict``.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from tasks.core.ids import TenantTimelineId
from tasks.core.ledger import (
    LEDGER_DIR,
    LedgerEntry,
    build_page,
    merge,
    page_key,
    parse_page,
    parse_page_name,
    same_bytes,
)
from tasks.errors import InvalidInput, LedgerConflict
from tasks.storage.base import RemoteStorage, timeline_prefix

CACHED_PAGES = 256


@dataclass(frozen=True, slots=True)
class PageRef:
    first: int
    last: int
    key: str


class LedgerStore:
    """Thread-safe."""

    def __init__(self, storage: RemoteStorage) -> None:
        self.storage = storage
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, dict[int, LedgerEntry]] = OrderedDict()

    def pages(self, ttid: TenantTimelineId, seg_size: int) -> list[PageRef]:
        """The timeline's pages, by first segment."""
        prefix = f"{timeline_prefix(ttid)}{LEDGER_DIR}/"
        refs = []
        for info in self.storage.list(prefix):
            span = parse_page_name(info.key[len(prefix) :], seg_size)
            if span is not None:
                refs.append(PageRef(span[0], span[1], info.key))
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

    def write(
        self,
        ttid: TenantTimelineId,
        seg_size: int,
        entries: Mapping[int, LedgerEntry],
        node_id: int,
    ) -> str:
        """Write the page of ``entries`` (a contiguous run); its key."""
        first, last = min(entries), max(entries)
        key = page_key(timeline_prefix(ttid), first, last, seg_size)
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        data = build_page(str(ttid), seg_size, entries, node_id, at)
        if not self.storage.create_bytes(key, data):
            ref = PageRef(first, last, key)
            stored = self.read(ref, ttid, seg_size)
            differ = [
                s for s, e in entries.items() if s not in stored or not same_bytes(stored[s], e)
            ]
            if differ:
                raise LedgerConflict(
                    f"{self.storage.url}: ledger page {key} already records other bytes for "
                    f"{len(differ)} segment(s), first segno {differ[0]}: two writers disagree "
                    "about archived WAL"
                )
        return key

    def record_deletion(
        self, ttid: TenantTimelineId, seg_size: int, what: Mapping[str, object]
    ) -> str:
        """Record a deletion of archived WAL (``walbackup retain``) beside the
        pages: ``_ledger/deleted-TIME.json`` holding ``what`` (counts, range,
        the new archive start); its key."""
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        key = f"{timeline_prefix(ttid)}{LEDGER_DIR}/deleted-{at.replace(':', '')}.json"
        body = {"format": "walbackup-ledger-deletion", "version": 1, "timeline": str(ttid),
                "wal_seg_size": seg_size, "at": at, **what}  # fmt: skip
        self.storage.put_bytes(key, json.dumps(body, indent=1).encode())
        return key
