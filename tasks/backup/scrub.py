"""The offloader checks that the recent archive below backup_lsn is still whole.

Every ``scrub_interval`` the offloader of a timeline lists its archive and
compares the last ``SCRUB_WINDOW`` segments below backup_lsn, from the
archive's start on (``walbackup retain`` moves it), with what it verified at
upload (the ledger: MD5 per segment, kept in Redis for that window). A
segment whose object is missing, has the wrong size, or whose ETag is not
the ledger's MD5 is a problem: logged at ERROR, counted in
``archive_problems_total``, shown as the timeline's ``last_error``, and healed
by uploading this node's copy again, but only when that copy's MD5 is the
ledger's (the bytes that were verified when first archived).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from tasks.backup.recovery import remote_objects
from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.core.segments import xlog_file_name
from tasks.errors import SegmentFileError
from tasks.metrics import ARCHIVE_PROBLEMS
from tasks.state.redis import RedisState
from tasks.state.workdir import TimelineState
from tasks.storage.base import RemoteStorage, digest_segment_file, segment_key

log = logging.getLogger("walbackup.scrub")

SCRUB_WINDOW = 1024
"""Segments below backup_lsn checked on every pass (the ledger keeps more)."""


@dataclass(frozen=True, slots=True)
class Problem:
    segno: int
    what: str
    healed: bool


def scrub_timeline(
    storage: RemoteStorage, state: RedisState, st: TimelineState, backup_lsn: Lsn
) -> list[Problem]:
    """Check (and heal) the archive of ``st`` below ``backup_lsn``."""
    seg_size = st.wal_seg_size
    end = backup_lsn.segment_number(seg_size)
    if st.local_start_lsn is None:
        return []
    start = max(st.local_start_lsn.segment_number(seg_size), end - SCRUB_WINDOW)
    if start >= end:
        return []
    ttid = str(st.ttid)
    objects = remote_objects(storage, st.ttid, seg_size, start)
    # Below a retained start the archive was emptied on purpose. Read after
    # listing: a retain records its start before deleting anything.
    retained = state.archive_start(ttid)
    if retained is not None:
        start = max(start, retained.segment_number(seg_size))
    ledger = state.ledger(ttid, range(start, end))
    problems = []
    for segno in range(start, end):
        info = objects.get(segno)
        expected = ledger.get(segno)
        if info is None:
            what = "missing from the archive"
        elif info.size != seg_size:
            what = f"archived with {info.size} bytes, expected {seg_size}"
        elif expected and info.etag and info.etag != expected:
            what = f"archived bytes changed (ETag {info.etag}, verified MD5 {expected})"
        else:
            continue
        healed = _heal(storage, st.ttid, segno, st, expected, replace=info is not None)
        problems.append(Problem(segno, what, healed))
    for p in problems:
        ARCHIVE_PROBLEMS.inc()
        name = xlog_file_name(p.segno, seg_size)
        log.error(
            "Timeline %s: %s below backup_lsn %s is %s; %s",
            ttid,
            name,
            backup_lsn,
            p.what,
            "uploaded again from this node's copy" if p.healed else "NOT healed",
        )
    if problems:
        state.record_error(
            ttid,
            f"archive scrub: {len(problems)} damaged segment(s), first segno {problems[0].segno}",
        )
    return problems


def _heal(
    storage: RemoteStorage,
    ttid: TenantTimelineId,
    segno: int,
    st: TimelineState,
    expected_md5: str | None,
    *,
    replace: bool,
) -> bool:
    """Upload our copy again if it is the one verified at first archiving."""
    path = st.path / xlog_file_name(segno, st.wal_seg_size)
    try:
        digest = digest_segment_file(path, st.wal_seg_size, storage.needs_md5)
    except (SegmentFileError, OSError):
        return False
    if expected_md5 is None or digest.md5.hex() != expected_md5:
        return False
    key = segment_key(ttid, xlog_file_name(segno, st.wal_seg_size))
    if replace:
        storage.delete(key)
    storage.upload_file(key, path, st.wal_seg_size, digest=digest)
    return True
