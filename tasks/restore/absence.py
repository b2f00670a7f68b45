"""What a segment missing from the archive means: its end (exit 1), or not.

PostgreSQL reads "not found" (``restore_command`` exit 1) as the end of the
archive: a point-in-time recovery ends there and the server promotes. Some
absences are no such end, and would cut a restore short in silence:

- the archive ledger records the segment as archived (a page whose name
  covers it does, even one that cannot be read) and no ``walbackup
  retain`` deleted it: the archive lost it (``SegmentLost``, exit 202; a
  running offloader's scrubber uploads a node's copy again). The caller
  looks once more a moment later first: a segment uploaded and flushed since
  its GET, or one a scrubber is putting back, is no loss. Checked before a
  leftover partial upload of it is served as the segment.
- nothing at all is stored under the storage URL: a wrong prefix in
  ``WALBACKUP_REMOTE_STORAGE`` (``InvalidInput``, exit 200).
- nothing is stored under the timeline: most likely a wrong timeline id,
  which would otherwise end a point-in-time recovery at the base backup's
  end (its WAL in ``pg_wal``) and promote, in silence (``InvalidInput``,
  exit 200). A standby started before its timeline's first segment is
  archived looks the same, and a standby never ends recovery at a missing
  file: for one, exit 1, saying so on stderr
  (``WALBACKUP_RESTORE_EMPTY_TIMELINE``, ``fetch.empty_timeline_ends``).
- a segment of a later PostgreSQL timeline whose history file is archived:
  the server was promoted, and walbackup archives timeline 1 only
  (``InvalidInput``, exit 200, naming ``recovery_target_timeline``; for a
  standby, exit 1 with a warning).

``in_standby``: PostgreSQL runs ``restore_command`` in its data directory,
where ``standby.signal`` says standby mode (PostgreSQL 12 and later; before,
``standby_mode = on`` in ``recovery.conf``). A
standby that gets 1 streams from its primary or asks again later, never
promotes; a recovery that gets 1 ends there and promotes.

Segments in flight (uploaded out of order, committed in order) are not in
the ledger yet, so a standby polling for the next segment still gets 1.
"""

from __future__ import annotations

import os
import re
import sys

from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.core.retention import RETAINED_MARKER, parse_marker
from tasks.core.segments import PG_TLI, parse_xlog_file_name
from tasks.errors import InvalidInput, NotFound, SegmentLost, WalBackupError
from tasks.restore.ledger_check import LedgerCheck, Recorded
from tasks.storage.base import RemoteStorage, timeline_prefix

LOST_RECHECK_S = 2.0
"""How long the caller waits before looking for a segment the ledger
records once more (``lost``): an upload and flush, or a heal, in between."""


def lost(
    storage: RemoteStorage, ttid: TenantTimelineId, segment: str, check: LedgerCheck | None
) -> tuple[SegmentLost | None, bool]:
    """Whether the missing ``segment`` is lost (the error to raise), and
    whether the timeline has ledger pages near it. With ``warn_only``, a
    loss is a warning and the restore goes on as at the archive's end.
    Raises storage errors."""
    if check is None:
        return None, False
    recorded = check.recorded(segment)
    unreadable = recorded is None
    if recorded is None:
        recorded = _named(check, segment)
        if recorded is None:
            return None, False
    # Pages are written in order over committed segments only: a later page
    # where none covers the segment (a page removed with it) records it too,
    # and so does a page whose name covers it, though its bytes are unreadable.
    archived = unreadable or bool(recorded.entries) or recorded.gap
    if not archived or _retained(storage, ttid, recorded.segno, recorded.seg_size):
        return None, recorded.paged
    where = ", ".join(recorded.pages) or "a later page; the page of its own is gone too"
    if unreadable:
        where += ", which cannot be read"
    message = (
        f"segment {segment} of timeline {ttid} is not in the archive, though the archive "
        f"ledger ({where}) records it as archived: the archive lost it"
    )
    if check.warn_only:
        check.warn(f"{message}; WALBACKUP_RESTORE_LEDGER_CHECK=warn: taken as the end")
        return None, True
    return SegmentLost(
        f"{message}, and a restore cannot go on past it. `walbackup verify` lists every such "
        "segment; a running offloader's scrubber uploads a node's copy again; to end the "
        "recovery here anyway, set WALBACKUP_RESTORE_LEDGER_CHECK=warn"
    ), True


def _named(check: LedgerCheck, segment: str) -> Recorded | None:
    """The pages whose names cover ``segment``, for pages that cannot be read
    (``LedgerCheck.recorded`` is ``None``); ``None`` when none does, or it is
    no segment of ``PG_TLI``. Raises the storage's errors."""
    try:
        tli, segno = parse_xlog_file_name(segment, check.seg_size)
    except ValueError:
        return None
    if tli != PG_TLI:
        return None
    refs = check.pages.pages(check.ttid, check.seg_size, start=segno, end=segno)
    keys = [r.key for r in refs if r.first <= segno <= r.last]
    if not keys:
        return None
    return Recorded([], keys, gap=False, segno=segno, seg_size=check.seg_size, paged=True)


def not_found(
    storage: RemoteStorage,
    ttid: TenantTimelineId,
    segment: str,
    paged: bool,
    empty_timeline_ends: bool = False,
) -> WalBackupError:
    """The error for ``segment`` missing, neither lost nor with a partial
    upload: ``NotFound``, unless nothing is stored under the storage URL or
    the timeline (``InvalidInput``; the timeline's case ``NotFound`` with a
    warning when ``empty_timeline_ends``)."""
    missing = NotFound(f"segment {segment} of timeline {ttid} is not archived")
    if (promoted := _later_timeline(storage, ttid, segment)) is not None:
        return promoted
    if paged or next(storage.list(timeline_prefix(ttid), limit=1), None) is not None:
        return missing
    if next(storage.list("", limit=1), None) is None:
        return InvalidInput(
            f"nothing at all is stored at {storage.url}: is the prefix of "
            "WALBACKUP_REMOTE_STORAGE wrong?"
        )
    empty = (
        f"nothing is archived of timeline {ttid} at {storage.url}: is the timeline id, "
        "or the prefix of WALBACKUP_REMOTE_STORAGE, wrong?"
    )
    if not empty_timeline_ends:
        return InvalidInput(
            f"{empty} Recovery stops here rather than end before the WAL it needs. A "
            "standby (standby.signal in its data directory) is answered 'not archived yet' "
            "instead, unless WALBACKUP_RESTORE_EMPTY_TIMELINE=stop; =end answers so to "
            "every caller, and would let a point-in-time recovery with a wrong id end early"
        )
    print(
        f"walbackup: {empty} (taken as not archived yet)",
        file=sys.stderr,
    )
    return missing


def _later_timeline(
    storage: RemoteStorage, ttid: TenantTimelineId, segment: str
) -> InvalidInput | None:
    """A segment of a later PostgreSQL timeline whose history file the archive
    holds: the server was promoted, and walbackup archives timeline ``PG_TLI``
    only (``tasks.backup.misconfig``). Its absence is no end of the WAL:
    PostgreSQL asks for it first, following ``recovery_target_timeline =
    'latest'``, and would end recovery at the switch without it."""
    tli = int(segment[:8], 16)
    history = f"{tli:08X}.history"
    if tli == PG_TLI or next(storage.list(timeline_prefix(ttid) + history, limit=1), None) is None:
        return None
    problem = (
        f"segment {segment} is on PostgreSQL timeline {tli}, which the archive's {history} "
        f"records (the server was promoted), but walbackup archives timeline {PG_TLI} only: "
        f"timeline {tli}'s WAL is not in this archive"
    )
    if in_standby():
        print(f"walbackup: {problem} (a standby: taken as not archived)", file=sys.stderr)
        return None
    return InvalidInput(
        f"{problem}; recovery stops here rather than end early. To restore timeline "
        f"{PG_TLI} to its end, set recovery_target_timeline = '{PG_TLI}'"
    )


def in_standby() -> bool:
    """Whether PostgreSQL runs this ``restore_command`` in standby mode (module docstring)."""
    if os.path.exists("standby.signal"):
        return True
    try:  # PostgreSQL 11 and older: the last standby_mode line of recovery.conf
        with open("recovery.conf", encoding="utf-8", errors="replace") as conf:
            found = _STANDBY_MODE.findall(conf.read())
    except OSError:
        return False
    return bool(found) and _pg_bool(found[-1])


_STANDBY_MODE = re.compile(r"""^\s*standby_mode\s*=?\s*'?([A-Za-z0-9]*)'?""", re.MULTILINE)


def _pg_bool(value: str) -> bool:
    """PostgreSQL's reading of a boolean setting (on, true, yes, 1, and
    unique prefixes of true and yes) that is true."""
    value = value.lower()
    return value in ("on", "1") or (
        value != "" and ("true".startswith(value) or "yes".startswith(value))
    )


def _retained(storage: RemoteStorage, ttid: TenantTimelineId, segno: int, seg_size: int) -> bool:
    """Whether ``walbackup retain`` deleted segment ``segno`` (below the
    archive's start, as the ``_retained`` marker says). A marker that cannot
    be read says nothing: the segment counts as lost (the restore stops)."""
    try:
        with storage.open_read(timeline_prefix(ttid) + RETAINED_MARKER) as stream:
            start = parse_marker(stream.read())
    except (NotFound, InvalidInput):
        return False
    return Lsn.from_segment(segno, 0, seg_size) < start
