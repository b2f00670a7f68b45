"""The archive ledger's records: what was verified of each committed segment. No I/O.

An entry says what the upload of one segment verified (its size, SHA-256, the
MD5 a single-part S3 ETag is, and the facts of its WAL long page header). The
commit stores it in Redis (``encode``: compact JSON, the value the commit's
Lua writes into ``walbackup:ledger:{ttid}``); the offloader then copies runs
of committed entries into immutable *pages* in the bucket, beside the WAL
(``TENANT/TIMELINE/_ledger/FIRST-LAST.json``), which outlive Redis.
``docs/ledger.md`` is the format's reference.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from tasks.core.segments import parse_xlog_file_name, xlog_file_name
from tasks.core.walpage import LongHeader, parse_long_header
from tasks.errors import InvalidInput

LEDGER_DIR = "_ledger"
"""Below a timeline's prefix; ``_`` sorts after every segment name."""
PAGE_MAX_SEGMENTS = 1024
"""A page records at most this many segments (about 250 KB of JSON): so a
reader looking for one segment lists only the pages that start this far back."""
PAGE_FORMAT = "walbackup-ledger"
PAGE_VERSION = 1
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_PAGE_NAME = re.compile(r"([0-9A-F]{24})-([0-9A-F]{24})\.json")


@dataclass(frozen=True, slots=True)
class WalFacts:
    """What the segment's first page (a long page header) says."""

    pg_version: int
    tli: int
    sysid: int
    block_size: int


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    size: int
    sha256: str
    md5: str
    """Hex; ``""`` where none is known (``file://``; SSE-KMS on a server
    trusted to verify checksums, whose ETag is what it records otherwise)."""
    wal: WalFacts | None = None
    """``None``: the header check was off and the first page was not WAL."""
    source: str = "upload"
    """``upload``: what the upload verified; ``recovered``: rebuilt from the
    archived object after Redis lost the entry before it reached a page."""

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"size": self.size, "sha256": self.sha256, "md5": self.md5}
        if self.wal is not None:
            facts = asdict(self.wal)
            facts["sysid"] = str(self.wal.sysid)  # u64: beyond JSON's exact integers
            body["wal"] = facts
        if self.source != "upload":
            body["source"] = self.source
        return body

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> LedgerEntry:
        try:
            raw = body.get("wal")
            wal = None
            if raw is not None:
                wal = WalFacts(
                    int(raw["pg_version"]),
                    int(raw["tli"]),
                    int(raw["sysid"]),
                    int(raw["block_size"]),
                )
            sha256 = str(body["sha256"])
            if _SHA256.fullmatch(sha256) is None:
                raise ValueError(f"sha256 {sha256!r} is not 64 hex digits")
            return cls(
                int(body["size"]),
                sha256.lower(),
                str(body.get("md5", "")),
                wal,
                str(body.get("source", "upload")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidInput(f"malformed ledger entry {body!r}: {exc}") from exc


def facts_of(header: LongHeader | None) -> WalFacts | None:
    """What the ledger records of a segment's long page header."""
    if header is None:
        return None
    return WalFacts(header.pg_version, header.tli, header.sysid, header.block_size)


def wal_facts(first_page: bytes, seg_start_lsn: int, seg_size: int) -> WalFacts | None:
    """The facts of a segment's long page header; ``None`` when it is not one."""
    return facts_of(parse_long_header(first_page, seg_start_lsn, seg_size))


def encode(entry: LedgerEntry) -> str:
    """The Redis form of an entry (what the commit's Lua stores)."""
    return json.dumps(entry.to_json(), separators=(",", ":"))


def decode(text: str) -> LedgerEntry | None:
    """An entry from its Redis form; ``None`` for an unreadable value."""
    try:
        return LedgerEntry.from_json(json.loads(text))
    except (ValueError, InvalidInput, AttributeError):
        return None


def page_key(prefix: str, first: int, last: int, seg_size: int) -> str:
    """``PREFIX_ledger/FIRST-LAST.json`` for entries ``first..last`` (inclusive)."""
    return (
        f"{prefix}{LEDGER_DIR}/{xlog_file_name(first, seg_size)}-"
        f"{xlog_file_name(last, seg_size)}.json"
    )


def parse_page_name(name: str, seg_size: int) -> tuple[int, int] | None:
    """``(first, last)`` of a page's file name; ``None`` for any other name."""
    match = _PAGE_NAME.fullmatch(name)
    if match is None:
        return None
    try:
        first = parse_xlog_file_name(match.group(1), seg_size)[1]
        last = parse_xlog_file_name(match.group(2), seg_size)[1]
    except InvalidInput:
        return None
    return (first, last) if first <= last else None


def build_page(
    ttid: str, seg_size: int, entries: Mapping[int, LedgerEntry], written_by: int, at: str
) -> bytes:
    """A page's bytes: entries keyed by segment name, in order."""
    body = {
        "format": PAGE_FORMAT,
        "version": PAGE_VERSION,
        "timeline": ttid,
        "wal_seg_size": seg_size,
        "written_by_node": written_by,
        "written_at": at,
        "segments": {
            xlog_file_name(segno, seg_size): entries[segno].to_json() for segno in sorted(entries)
        },
    }
    return json.dumps(body, indent=1).encode()


def parse_page(data: bytes, ttid: str, seg_size: int) -> dict[int, LedgerEntry]:
    """A page's entries by segno; raises ``InvalidInput`` naming what is wrong."""
    try:
        body = json.loads(data)
    except ValueError as exc:
        raise InvalidInput(f"ledger page of {ttid} is not JSON: {exc}") from exc
    if not isinstance(body, dict) or body.get("format") != PAGE_FORMAT:
        raise InvalidInput(f"ledger page of {ttid}: not a {PAGE_FORMAT} page")
    if body.get("version") != PAGE_VERSION:
        raise InvalidInput(f"ledger page of {ttid}: unknown version {body.get('version')!r}")
    if body.get("timeline") != ttid or body.get("wal_seg_size") != seg_size:
        raise InvalidInput(
            f"ledger page of {ttid}: written for timeline {body.get('timeline')!r} with "
            f"wal_seg_size {body.get('wal_seg_size')!r}"
        )
    segments = body.get("segments")
    if not isinstance(segments, dict):
        raise InvalidInput(f"ledger page of {ttid}: no segments")
    return {
        parse_xlog_file_name(name, seg_size)[1]: LedgerEntry.from_json(entry)
        for name, entry in segments.items()
    }


def same_bytes(a: LedgerEntry, b: LedgerEntry) -> bool:
    """Whether two entries describe the same bytes (where they got them aside)."""
    return a.size == b.size and a.sha256 == b.sha256


def merge(pages: Iterable[Mapping[int, LedgerEntry]]) -> tuple[dict[int, LedgerEntry], list[int]]:
    """Entries of overlapping pages, and the segnos on which pages disagree
    (two flushes of one range record the same bytes, or the ledger is wrong)."""
    merged: dict[int, LedgerEntry] = {}
    conflicts: list[int] = []
    for page in pages:
        for segno, entry in page.items():
            known = merged.setdefault(segno, entry)
            if not same_bytes(known, entry) and segno not in conflicts:
                conflicts.append(segno)
    return merged, sorted(conflicts)
