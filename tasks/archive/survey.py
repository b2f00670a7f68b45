"""A timeline's archive as listed, and its ledger: what ``walbackup verify`` and the scrubber judge.

``list_timeline`` sorts a timeline's objects into complete segments and
everything else; ``ledger_for`` merges the bucket's pages with the entries
still only in Redis; ``deep_check`` hashes archived objects.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from tasks.archive.ledger_store import LedgerStore
from tasks.core.archive_check import Kind, Problem, Seen, check_bytes
from tasks.core.ids import TenantTimelineId
from tasks.core.ledger import LEDGER_DIR, LedgerEntry
from tasks.core.partials import PARTIAL_OBJECT_RE
from tasks.core.segments import PG_TLI, parse_xlog_file_name, xlog_file_name
from tasks.errors import ChecksumMismatch, InvalidInput, NotFound
from tasks.state.beats import chunks
from tasks.state.redis import RedisState
from tasks.storage.base import (
    ObjectInfo,
    RemoteStorage,
    digest_stream,
    segment_key,
    timeline_prefix,
)
from tasks.storage.ledger_pages import PageRef

OTHER_NAMES = re.compile(rf"[0-9A-F]{{8}}\.history|{LEDGER_DIR}/.+|_[a-z_]+(\.json)?")
"""Names below a timeline's prefix that walbackup writes besides segments and partials."""

REDIS_BATCH = 10_000


@dataclass
class Listing:
    segments: dict[int, Seen] = field(default_factory=dict)
    """Complete segments (timeline 1) by segno."""
    partials: list[str] = field(default_factory=list)
    """Partial uploads' names (relative to the timeline's prefix)."""
    unknown: list[str] = field(default_factory=list)
    """Names walbackup never writes (relative to the timeline's prefix)."""


def _objects(
    storage: RemoteStorage, ttid: TenantTimelineId, seg_size: int, from_segno: int
) -> Iterator[tuple[str, ObjectInfo]]:
    prefix = timeline_prefix(ttid)
    after = prefix + xlog_file_name(from_segno - 1, seg_size) if from_segno > 0 else ""
    for info in storage.list(prefix, start_after=after):
        yield info.key[len(prefix) :], info


def list_timeline(
    storage: RemoteStorage,
    ttid: TenantTimelineId,
    seg_size: int,
    from_segno: int = 0,
    to_segno: int | None = None,
) -> Listing:
    """The timeline's objects from ``from_segno`` on (up to ``to_segno``,
    exclusive, where the listing stops early: names sort by segno)."""
    out = Listing()
    stop = xlog_file_name(to_segno, seg_size) if to_segno is not None else None
    for name, info in _objects(storage, ttid, seg_size, from_segno):
        if stop is not None and name >= stop:
            break
        try:
            tli, segno = parse_xlog_file_name(name, seg_size)
        except InvalidInput:
            if PARTIAL_OBJECT_RE.fullmatch(name):
                out.partials.append(name)
            elif not OTHER_NAMES.fullmatch(name):
                out.unknown.append(name)
            continue
        if tli == PG_TLI:
            out.segments[segno] = Seen(info.size, info.etag)
        else:
            out.unknown.append(name)
    return out


def ledger_for(
    store: LedgerStore,
    state: RedisState | None,
    ttid: TenantTimelineId,
    seg_size: int,
    start: int,
    end: int,
    refs: list[PageRef] | None = None,
) -> tuple[dict[int, LedgerEntry], list[int]]:
    """The ledger of ``[start, end)``: the bucket's pages, then (``state``
    given) Redis for entries not yet in a page; and the segnos on which
    pages disagree."""
    entries, conflicts = store.entries(ttid, seg_size, start, end, refs)
    if state is not None:
        missing = [s for s in range(start, end) if s not in entries]
        for part in chunks(missing, REDIS_BATCH):
            entries.update(state.ledger_entries(str(ttid), part))
    return entries, conflicts


def confirm(
    storage: RemoteStorage, ttid: TenantTimelineId, segno: int, seg_size: int, entry: LedgerEntry
) -> Problem | None:
    """Segment ``segno`` judged by its bytes, read back and hashed, where
    the listing gave only evidence (an ETag that is not the ledger's MD5, a
    problem open since the last pass): ``CORRUPT``, ``MISSING``, or ``None``,
    the bytes the ledger recorded. Nothing may be deleted and uploaded again
    on an ETag alone: a storage whose ETags are no MD5s (SSE-KMS, some
    S3-compatible stores, multipart uploads) would have every segment replaced."""
    try:
        return deep_check(storage, ttid, segno, seg_size, entry, missing=True)
    except NotFound:
        return Problem(segno, xlog_file_name(segno, seg_size), Kind.MISSING, "gone when read back")


def deep_check(
    storage: RemoteStorage,
    ttid: TenantTimelineId,
    segno: int,
    seg_size: int,
    entry: LedgerEntry,
    missing: bool = False,
) -> Problem | None:
    """Read the archived segment whole and compare its SHA-256 with the ledger's.
    A missing object is left to the shallow check (``None``), or raises
    ``NotFound`` with ``missing``."""
    try:
        with storage.open_read(segment_key(ttid, xlog_file_name(segno, seg_size))) as stream:
            digest = digest_stream(stream, md5=False)
    except NotFound:
        if missing:
            raise
        return None
    except ChecksumMismatch as exc:  # S3 says the stored object fails its own checksum
        return Problem(segno, xlog_file_name(segno, seg_size), Kind.CORRUPT, str(exc))
    return check_bytes(segno, seg_size, digest.sha256_hex, entry)
