"""``walbackup verify``: a timeline's whole archive against its ledger, once.

From the archive's start (the timeline's start, or where retention moved it)
to ``backup_lsn``: every segment archived (contiguous), with the size the
ledger recorded, and its MD5 ETag or (``deep``) the SHA-256 of its bytes as
recorded; nothing below the start and no names walbackup does not write.
Without a Redis record (Redis lost, or down) the ledger's pages alone give
the range.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from tasks.archive.etag_evidence import EtagEvidence
from tasks.archive.ledger_store import LedgerStore
from tasks.archive.retained import read_archive_start
from tasks.archive.survey import deep_check, ledger_for, list_timeline
from tasks.core.archive_check import Kind, Problem, check_range
from tasks.core.ids import TenantTimelineId
from tasks.core.ledger import LedgerEntry
from tasks.core.lsn import Lsn
from tasks.core.segments import xlog_file_name
from tasks.state.records import TimelineRecord
from tasks.state.redis import RedisState
from tasks.storage.base import RemoteStorage, timeline_prefix
from tasks.storage.ledger_pages import PageRef

DEEP_THREADS = 8


@dataclass
class Verdict:
    ttid: str
    start_lsn: Lsn | None = None
    backup_lsn: Lsn | None = None
    segments: int = 0
    """Segments the range holds (each checked shallowly)."""
    deep_checked: int = 0
    ahead: int = 0
    """Archived segments at or above backup_lsn (uploads not yet committed)."""
    problems: list[Problem] = field(default_factory=list)
    note: str = ""
    error: str = ""
    """Why the timeline could not be verified at all."""

    @property
    def ok(self) -> bool:
        return not self.problems and not self.error

    def to_json(self) -> dict[str, object]:
        return {
            "timeline": self.ttid,
            "start_lsn": None if self.start_lsn is None else str(self.start_lsn),
            "backup_lsn": None if self.backup_lsn is None else str(self.backup_lsn),
            "segments": self.segments,
            "deep_checked": self.deep_checked,
            "ahead": self.ahead,
            "ok": self.ok,
            "problems": [
                {"segment": p.name, "kind": str(p.kind), "detail": p.detail} for p in self.problems
            ],
            "note": self.note,
            "error": self.error or None,
        }


def not_in_redis(
    state: RedisState | None, ttids: Sequence[TenantTimelineId]
) -> list[TenantTimelineId]:
    """The ``ttids`` Redis does not know: not registered, held by no node, no
    ``backup_lsn``. All of them when ``state`` is ``None`` (Redis down)."""
    if state is None:
        return list(ttids)
    known = state.known([str(t) for t in ttids])
    return [
        ttid
        for ttid, in_redis in zip(ttids, known, strict=True)
        if not in_redis and state.timeline(str(ttid)).backup_lsn is None
    ]


def nothing_archived(
    storage: RemoteStorage, ttids: Sequence[TenantTimelineId]
) -> list[TenantTimelineId]:
    """The ``ttids`` without a single object in the archive."""
    return [t for t in ttids if next(iter(storage.list(timeline_prefix(t))), None) is None]


def unknown_message(ttids: Sequence[TenantTimelineId]) -> str:
    """Why a named timeline that neither Redis nor the archive knows is refused."""
    names = ", ".join(map(str, ttids))
    return f"unknown timeline {names}: not registered and nothing in the archive; check the id"


def verify_timeline(
    store: LedgerStore,
    state: RedisState | None,
    ttid: TenantTimelineId,
    default_seg_size: int,
    *,
    deep: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Verdict:
    """Verify one timeline (``state`` ``None``: Redis is not available)."""
    key = str(ttid)
    record = state.timeline(key) if state is not None else None
    seg_size = (record.wal_seg_size if record else None) or default_seg_size
    refs = store.pages(ttid, seg_size)
    verdict = Verdict(key)
    redis_knows = record is not None and record.backup_lsn is not None
    retained = None if redis_knows else read_archive_start(store.storage, ttid)
    span = _span(record, seg_size, refs, retained, verdict)
    if span is None:
        return verdict
    start, end = span
    verdict.start_lsn = Lsn.from_segment(start, 0, seg_size)
    verdict.backup_lsn = Lsn.from_segment(end, 0, seg_size)
    verdict.segments = max(0, end - start)
    listing = list_timeline(store.storage, ttid, seg_size)
    entries, conflicts = ledger_for(store, state, ttid, seg_size, start, end, refs)
    shallow = check_range(start, end, seg_size, listing.segments, entries)
    problems = _judged(store.storage, ttid, seg_size, shallow, entries, verdict)
    problems += [
        Problem(s, xlog_file_name(s, seg_size), Kind.CONFLICT, "ledger pages disagree")
        for s in conflicts
    ]
    problems += [
        Problem(s, xlog_file_name(s, seg_size), Kind.EXTRA, "below the archive's start")
        for s in sorted(listing.segments)
        if s < start
    ]
    problems += [
        Problem(None, n, Kind.EXTRA, "not a name walbackup writes") for n in listing.unknown
    ]
    verdict.ahead = sum(1 for s in listing.segments if s >= end)
    if deep:
        bad = {p.segno for p in problems}
        todo = [s for s in range(start, end) if s not in bad and s in entries]
        with ThreadPoolExecutor(DEEP_THREADS) as pool:
            found = pool.map(
                lambda s: deep_check(store.storage, ttid, s, seg_size, entries[s]), todo
            )
            for problem in found:
                verdict.deep_checked += 1
                if progress is not None:
                    progress(verdict.deep_checked)
                if problem is not None:
                    problems.append(problem)
    verdict.problems = sorted(problems, key=lambda p: (p.segno is None, p.segno or 0, p.name))
    return verdict


def _judged(
    storage: RemoteStorage, ttid: TenantTimelineId, seg_size: int, problems: list[Problem],
    entries: Mapping[int, LedgerEntry], verdict: Verdict,
) -> list[Problem]:  # fmt: skip
    """The shallow problems, ``CHANGED`` ones (an ETag's evidence) judged by
    their bytes as the scrubber judges them (``EtagEvidence``): once
    ``OPAQUE_PROOF`` objects prove the storage's ETags no MD5s, the rest say
    nothing (the note tells; ``--deep`` reads every object)."""
    evidence = EtagEvidence(storage, announce=False)
    out: list[Problem] = []
    for problem in problems:
        if problem.kind is Kind.CHANGED and problem.segno is not None:
            found = evidence.judge(ttid, problem, seg_size, entries[problem.segno], None)
            if found is None:
                continue
            problem = found
        out.append(problem)
    if evidence.proved:
        verdict.note = "; ".join(filter(None, [verdict.note, (
            f"{evidence.proved} object(s) hold the archived bytes under an ETag that is no MD5 "
            "of them (SSE-KMS, some S3-compatible stores, multipart copies)"
            + (": ETags were not compared further (--deep reads every object)"
               if evidence.opaque else "")
        )]))  # fmt: skip
    return out


def _span(
    record: TimelineRecord | None,
    seg_size: int,
    refs: list[PageRef],
    retained: Lsn | None,
    verdict: Verdict,
) -> tuple[int, int] | None:
    """``[start, end)`` to verify: Redis's timeline start (or retention's) to
    backup_lsn; else the ledger's pages."""
    if record is not None and record.backup_lsn is not None:
        start_lsn = record.timeline_start_lsn or Lsn(0)
        start = start_lsn.segment_number(seg_size)
        if record.archive_start_lsn is not None:  # walbackup retain moved it
            start = max(start, record.archive_start_lsn.segment_number(seg_size))
        return start, record.backup_lsn.segment_number(seg_size)
    if refs:
        verdict.note = "no backup_lsn in Redis: checked the range the ledger's pages record"
        start = min(r.first for r in refs)
        if retained is not None:  # the bucket's marker: walbackup retain moved it
            start = max(start, retained.segment_number(seg_size))
        return start, max(r.last + 1 for r in refs)
    verdict.note = "nothing to verify: no backup_lsn in Redis and no ledger pages in the archive"
    return None
