"""``walbackup fetch``: a segment from remote storage to a file or stdout (``read_object``).

Written to be usable as PostgreSQL's ``restore_command``: the destination
file appears only complete, never torn (``tasks.fsutil.atomic_write``: temp
file, fsync, rename, directory fsync). PostgreSQL runs it once per segment, so
the common case, a segment the restore spool holds, is served before this
module is even imported (``tasks.restore.hit``, from ``tasks.cli.main``); a
miss loads the settings and the storage client, fetches directly, and starts
the prefetcher that fills the spool (``tasks.restore.prefetch``).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from tasks.config import Settings, load_settings
from tasks.core.ids import TenantTimelineId
from tasks.core.partials import newest_name, partial_prefix
from tasks.core.segments import (
    HISTORY_NAME_RE,
    PARTIAL_SUFFIX,
    SEGMENT_NAME_RE,
    validate_seg_size,
)
from tasks.errors import (
    AccessDenied,
    BucketMissing,
    ChecksumMismatch,
    InvalidInput,
    NotFound,
    Retryable,
    SegmentLost,
    WalBackupError,
)
from tasks.restore.absence import LOST_RECHECK_S, in_standby, lost, not_found
from tasks.restore.exits import (
    EXIT_CHECKSUM,
    EXIT_INPUT,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_OTHER,
    EXIT_STORAGE,
    fail,
)
from tasks.restore.ledger_check import LedgerCheck
from tasks.restore.prefetch import start_prefetcher
from tasks.restore.spool import note_want, settings_spool_dir
from tasks.restore.stream import fetch_key
from tasks.storage import open_storage
from tasks.storage.base import RemoteStorage, segment_key, timeline_prefix

FETCHABLE_RE = re.compile(
    rf"{SEGMENT_NAME_RE.pattern}(?:{re.escape(PARTIAL_SUFFIX)})?|{HISTORY_NAME_RE.pattern}"
)
"""What ``walbackup fetch`` accepts: a segment name, one with ``.partial``, a history file."""


def validate_segment_name(name: str) -> str:
    """``name`` if it is a segment name, with or without ``.partial``; else ``InvalidInput``."""
    if FETCHABLE_RE.fullmatch(name) is None:
        raise InvalidInput(
            f"invalid WAL file name {name!r}: expected 24 upper-case hex characters "
            "(a segment) or TLI.history"
        )
    return name


def fetch_or_partial(
    storage: RemoteStorage,
    ttid: TenantTimelineId,
    segment: str,
    dest: str,
    offset: int = 0,
    check: LedgerCheck | None = None,
    empty_timeline_ends: bool = False,
) -> tuple[int, str | None]:
    """Copy the remote segment from ``offset`` on to ``dest`` (``-`` = stdout):
    the byte count, and the name of the partial upload served, if one was.
    Raises ``NotFound`` at the archive's end; a segment missing otherwise is
    ``SegmentLost`` or ``InvalidInput`` (``tasks.restore.absence``).
    With ``check``, a complete segment read from offset 0 whose bytes are not
    what the archive ledger records raises ``ChecksumMismatch``, and ``dest``
    (a file) is not written.

    When the complete segment is not archived, its newest partial upload is
    served instead (saying so on stderr).

    A partial upload (``tasks.core.partials``) holds the segment's WAL up to
    its end LSN and zeros after, ``wal_seg_size`` bytes: what PostgreSQL
    reads as a segment whose WAL ends there. Garbage collection deletes an
    older partial only once a newer one, or the segment, is stored: so a
    partial gone between listing and reading means a newer object exists,
    and the lookup starts again.

    A timeline nothing is archived of is ``InvalidInput`` (a wrong id), or
    ``NotFound`` with ``empty_timeline_ends`` (not archived yet)."""
    if offset < 0:
        raise InvalidInput(f"offset must be >= 0, got {offset}")
    key = segment_key(ttid, validate_segment_name(segment))
    check = check if offset == 0 else None
    reread = dest != "-"  # what went to stdout cannot be taken back
    recheck = True
    for _ in range(5):
        try:
            return fetch_key(storage, key, dest, offset, segment, check), None
        except ChecksumMismatch:
            if not reread:
                raise
            reread = False  # once more: a scrubber may be putting the archived bytes back
            continue
        except NotFound:
            if SEGMENT_NAME_RE.fullmatch(segment) is None:
                raise
        gone, paged = lost(storage, ttid, segment, check)
        if gone is not None:
            if not recheck:
                raise gone
            recheck = False  # uploaded since its GET, or being healed: look again
            time.sleep(LOST_RECHECK_S)
            continue
        prefix = timeline_prefix(ttid)
        names = [o.key[len(prefix) :] for o in storage.list(prefix + partial_prefix(segment))]
        partial = newest_name(names, segment)
        if partial is None:
            raise not_found(storage, ttid, segment, paged, empty_timeline_ends)
        try:
            written = fetch_key(storage, segment_key(ttid, partial), dest, offset, partial, None)
        except NotFound:
            continue  # superseded meanwhile: look again
        print(
            f"walbackup: segment {segment} is not archived complete: served the partial "
            f"upload {partial} (its WAL, then zeros)",
            file=sys.stderr,
        )
        return written, partial
    raise NotFound(f"segment {segment} of timeline {ttid}: archive kept changing while read")


def run_fetch(ttid: str, segment: str, dest: str, offset: int = 0) -> int:
    """``walbackup fetch`` from remote storage, the spool not holding the
    segment (``tasks.restore.command.fetch`` tries that first): an exit code, and
    a one-line message on failure.

    Whatever goes wrong, never 1 (and never a traceback, whose exit status
    is 1): an error nobody foresaw, ours or a library's, is 203."""
    try:
        return _run_fetch(ttid, segment, dest, offset)
    except Exception as exc:
        return fail(EXIT_OTHER, f"unexpected error: {type(exc).__name__}: {exc}")


def _run_fetch(ttid: str, segment: str, dest: str, offset: int) -> int:
    try:
        settings = load_settings()
        parsed = TenantTimelineId.parse(ttid)
        validate_segment_name(segment)  # a bad argument is reported as such, storage or not
        storage = open_storage(
            settings.effective_remote_storage,
            s3_endpoint_url=settings.s3_endpoint_url,
            create=False,
        )
        check = None
        if settings.restore_ledger_check != "off":
            warn_only = settings.restore_ledger_check == "warn"
            check = LedgerCheck(storage, parsed, settings.wal_seg_size, warn_only=warn_only)
        ends = empty_timeline_ends(settings.restore_empty_timeline)
        written, partial = fetch_or_partial(storage, parsed, segment, dest, offset, check, ends)
    except NotFound:
        if HISTORY_NAME_RE.fullmatch(segment):
            return EXIT_NOT_FOUND  # recovery probes for newer timelines: quiet
        return fail(
            EXIT_NOT_FOUND, f"segment {segment} of timeline {ttid} not found in remote storage"
        )
    except InvalidInput as exc:
        return fail(EXIT_INPUT, str(exc))
    except ChecksumMismatch as exc:
        return fail(EXIT_CHECKSUM, f"checksum mismatch: {exc}")
    except SegmentLost as exc:
        return fail(EXIT_CHECKSUM, str(exc))
    except Retryable as exc:
        return fail(EXIT_STORAGE, f"remote storage unavailable: {exc}")
    except (BucketMissing, AccessDenied) as exc:
        return fail(EXIT_STORAGE, f"remote storage unusable: {exc}")
    except (WalBackupError, OSError) as exc:
        return fail(EXIT_OTHER, str(exc))
    # Segments only: nothing follows a partial, and a history file's size is no seg size.
    if offset == 0 and dest != "-" and partial is None and not HISTORY_NAME_RE.fullmatch(segment):
        _start_prefetch(settings, storage, str(parsed), segment, written)
    return EXIT_OK


def empty_timeline_ends(policy: str) -> bool:
    """Whether a timeline nothing is archived of reads as not archived yet
    (exit 1) under ``WALBACKUP_RESTORE_EMPTY_TIMELINE`` ``policy``. ``auto``:
    only for a standby (``absence.in_standby``)."""
    if policy == "auto":
        return in_standby()
    return policy == "end"


def _start_prefetch(
    settings: Settings, storage: RemoteStorage, ttid: str, segment: str, seg_size: int
) -> None:
    """After a direct fetch of a complete segment: the prefetcher follows on
    from it. The spool only saves time, so its trouble never fails a fetch."""
    if settings.restore_prefetch <= 0 or segment.endswith(PARTIAL_SUFFIX):
        return
    try:
        validate_seg_size(seg_size)
    except ValueError:
        return  # no segment's size (a damaged object, served as warn says): nothing follows
    try:
        spool = settings_spool_dir(settings, ttid)
        note_want(spool, segment, seg_size)
        checked = settings.restore_ledger_check != "off"
        start_prefetcher(spool.absolute(), ttid, settings.restore_prefetch, storage, checked)
    except Exception as exc:  # DEST is restored: a failure here must not undo that
        _warn_no_spool(settings, exc)


def _warn_no_spool(settings: Settings, exc: Exception) -> None:
    """Say, once an hour (a marker file in the temp dir: every fetch is a
    process of its own), that restores run without their spool."""
    marker = Path(tempfile.gettempdir()) / f"walbackup-no-spool.{os.getuid()}"
    try:
        if time.time() - marker.stat().st_mtime < 3600:
            return
    except OSError:
        pass
    with contextlib.suppress(OSError):
        marker.touch()
    print(
        f"walbackup: warning: no restore spool under {settings.data_dir} ({exc}): segments "
        "are fetched one by one without prefetching (about 3x slower); set "
        "WALBACKUP_DATA_DIR to a directory this user can write",
        file=sys.stderr,
    )
