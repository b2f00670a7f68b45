"""The archive ledger's pages in the bucket: reading (``LedgerPages``), and writing.

A page is written once with a conditional write; a second writer of the same
range (two flushes racing, a retry whose first reply was lost) finds it there
and compares: the same bytes recorded for every segment is success, anything
else is a ``LedgerConflict``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping

from tasks.core.ids import TenantTimelineId
from tasks.core.ledger import (
    LEDGER_DIR,
    PAGE_MAX_SEGMENTS,
    LedgerEntry,
    build_page,
    page_key,
    same_bytes,
)
from tasks.errors import InvalidInput, LedgerConflict
from tasks.storage.base import timeline_prefix
from tasks.storage.ledger_pages import LedgerPages, PageRef


class LedgerStore(LedgerPages):
    """Thread-safe."""

    def write(
        self,
        ttid: TenantTimelineId,
        seg_size: int,
        entries: Mapping[int, LedgerEntry],
        node_id: int,
    ) -> str:
        """Write the page of ``entries`` (a contiguous run); its key."""
        first, last = min(entries), max(entries)
        if last - first >= PAGE_MAX_SEGMENTS:  # readers look that far back, no further
            raise InvalidInput(
                f"a ledger page spans at most {PAGE_MAX_SEGMENTS} segments, not {last - first + 1}"
            )
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
