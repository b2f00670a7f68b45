"""Uploading a node's copy of a segment again, in place of what the archive lost or damaged.

S3 cannot replace an object conditionally everywhere, so a heal deletes the
archived object and uploads the copy (``upload_file`` never overwrites). Two
rules keep that from ever losing a good segment:

- the archived object is deleted only once its bytes, read back and hashed,
  are not the ones the ledger recorded: an ETag is no proof (endpoints whose
  ETags are no MD5s), and a problem seen earlier may be healed meanwhile
  (by another node, on another request);
- the copy is opened before anything is deleted and uploaded through that
  descriptor: WAL removal may unlink the file meanwhile (the segment is below
  backup_lsn), and the open descriptor keeps its bytes.

With no ledger entry (its page lost) only a missing object is healed, from a
copy whose first page header is the segment's.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

from tasks.archive.flush import LocalCopy
from tasks.archive.survey import confirm
from tasks.core.archive_check import Kind
from tasks.core.ids import TenantTimelineId
from tasks.core.ledger import LedgerEntry
from tasks.core.segments import xlog_file_name
from tasks.core.walpage import LONG_HEADER_BYTES, check_long_header
from tasks.errors import InvalidWalHeader, SegmentFileError
from tasks.storage.base import RemoteStorage, digest_segment_file, segment_key

log = logging.getLogger("walbackup.scrub")

Healed = Literal["uploaded", "intact"] | None
"""``uploaded``: the copy replaced the archived object; ``intact``: the
archived bytes are the ledger's after all, nothing done; ``None``: no copy
with the ledger's bytes here."""


def heal_from_copy(
    storage: RemoteStorage,
    local_copy: LocalCopy,
    ttid: TenantTimelineId,
    segno: int,
    seg_size: int,
    entry: LedgerEntry | None,
) -> Healed:
    """Upload this node's copy of ``segno`` again, replacing what is archived,
    if the copy holds the bytes the ledger recorded (with no entry: only
    where nothing is archived)."""
    path = local_copy(ttid, segno)
    if path is None:
        return None
    md5 = storage.needs_md5  # may ask the server (s3_probe): outside the copy's errors
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        pinned = _pinned(path, fd)
        try:
            digest = digest_segment_file(pinned, seg_size, md5)
        except (SegmentFileError, OSError):
            return None
        key = segment_key(ttid, xlog_file_name(segno, seg_size))
        if entry is None:
            if any(info.key == key for info in storage.list(key)):
                return None
            # Nothing says what the bytes should be (the ledger's pages went
            # with an emptied bucket): at least the first page must be this
            # segment's, as a normal upload's header check demands.
            try:
                check_long_header(os.pread(fd, LONG_HEADER_BYTES, 0), segno * seg_size,
                                  seg_size, None)  # fmt: skip
            except InvalidWalHeader as exc:
                log.error("Timeline %s: not uploading this node's copy of %s again: invalid "
                          "WAL header: %s", ttid, key, exc)  # fmt: skip
                return None
        elif digest.sha256_hex != entry.sha256:
            return None
        else:
            archived = confirm(storage, ttid, segno, seg_size, entry)
            if archived is None:
                return "intact"
            if archived.kind is not Kind.MISSING:
                storage.delete(key)
        storage.upload_file(key, pinned, seg_size, digest=digest)
    finally:
        os.close(fd)
    return "uploaded"


def _pinned(path: Path, fd: int) -> Path:
    """A name for the open file that survives its unlinking (Linux's
    ``/proc/self/fd``); elsewhere the path itself."""
    proc = Path(f"/proc/self/fd/{fd}")
    return proc if proc.exists() else path
