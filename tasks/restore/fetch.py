"""``read_object`` front door: fetch a segment from remote storage to a file or stdout.

Written to be usable as PostgreSQL's ``restore_command``: the destination file
appears only complete (temp file, fsync, rename), never torn. PostgreSQL runs
it once per segment, so the common case — the segment is in the restore spool
(``tasks.restore.spool``) — imports nothing beyond the standard library; a miss fetches
directly and starts the prefetcher that fills the spool.
"""

from __future__ import annotations

# Only what loads fast at the top: a spool hit needs nothing else.
import os
import re
import sys
from pathlib import Path

TYPE_CHECKING = False  # not typing's: importing typing costs a spool hit 3 ms
if TYPE_CHECKING:
    from typing import BinaryIO

    from tasks.config import Settings
    from tasks.core.ids import TenantTimelineId
    from tasks.storage.base import RemoteStorage

_SEGMENT_RE = re.compile(r"[0-9A-F]{24}(\.partial)?")
CHUNK = 1 << 20


def validate_segment_name(name: str) -> str:
    from tasks.errors import InvalidInput

    if _SEGMENT_RE.fullmatch(name) is None:
        raise InvalidInput(
            f"invalid WAL segment name {name!r}: expected 24 upper-case hex characters"
        )
    return name


def fetch_segment(
    storage: RemoteStorage, ttid: TenantTimelineId, segment: str, dest: str, offset: int = 0
) -> int:
    """Copy the remote segment from ``offset`` on to ``dest`` (``-`` = stdout);
    returns the byte count. Raises ``NotFound`` when it does not exist."""
    from tasks.errors import InvalidInput
    from tasks.storage.base import segment_key

    if offset < 0:
        raise InvalidInput(f"offset must be >= 0, got {offset}")
    key = segment_key(ttid, validate_segment_name(segment))
    with storage.open_read(key, offset) as stream:
        if dest == "-":
            return _copy(stream, sys.stdout.buffer)
        return _write_atomically(stream, Path(dest))


def _copy(src: BinaryIO, dst: BinaryIO) -> int:
    total = 0
    while chunk := src.read(CHUNK):
        dst.write(chunk)
        total += len(chunk)
    dst.flush()
    return total


def _write_atomically(stream: BinaryIO, dest: Path) -> int:
    import tempfile

    directory = dest.parent if str(dest.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            total = _copy(stream, out)
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return total


# Exit codes of ``walbackup fetch``: 0-4 as barman-cloud assigns them.
EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_INPUT = 2
EXIT_STORAGE = 3
EXIT_OTHER = 4
EXIT_CHECKSUM = 5  # ours: the object read does not match its stored checksum


def run_fetch(ttid: str, segment: str, dest: str, offset: int = 0) -> int:
    """``walbackup fetch``: an exit code, and a one-line message on failure."""
    if offset == 0 and dest != "-":
        from tasks.restore.spool import try_serve

        if try_serve(ttid, segment, dest):
            return EXIT_OK
    from tasks.config import load_settings
    from tasks.core.ids import TenantTimelineId
    from tasks.errors import ChecksumMismatch, InvalidInput, NotFound, Retryable, WalBackupError
    from tasks.storage import open_storage

    try:
        settings = load_settings()
        parsed = TenantTimelineId.parse(ttid)
        storage = open_storage(
            settings.effective_remote_storage, s3_endpoint_url=settings.s3_endpoint_url
        )
        written = fetch_segment(storage, parsed, segment, dest, offset)
    except NotFound:
        return fail(
            EXIT_NOT_FOUND, f"segment {segment} of timeline {ttid} not found in remote storage"
        )
    except InvalidInput as exc:
        return fail(EXIT_INPUT, str(exc))
    except ChecksumMismatch as exc:
        return fail(EXIT_CHECKSUM, f"checksum mismatch: {exc}")
    except Retryable as exc:
        return fail(EXIT_STORAGE, f"remote storage unavailable: {exc}")
    except (WalBackupError, OSError) as exc:
        return fail(EXIT_OTHER, str(exc))
    if offset == 0 and dest != "-":
        _start_prefetch(settings, storage, str(parsed), segment, written)
    return EXIT_OK


def _start_prefetch(
    settings: Settings, storage: RemoteStorage, ttid: str, segment: str, seg_size: int
) -> None:
    """After a direct fetch of a complete segment: the prefetcher follows on
    from it. The spool only saves time, so its trouble never fails a fetch."""
    from tasks.core.segments import validate_seg_size
    from tasks.errors import WalBackupError
    from tasks.restore.spool import note_want, settings_spool_dir, start_prefetcher

    if settings.restore_prefetch <= 0 or segment.endswith(".partial"):
        return
    try:
        validate_seg_size(seg_size)
        spool = settings_spool_dir(settings, ttid)
        note_want(spool, segment, seg_size)
        start_prefetcher(spool.absolute(), ttid, settings.restore_prefetch, storage)
    except (WalBackupError, OSError):
        pass


def fail(code: int, message: str) -> int:
    print(f"walbackup: {message}", file=sys.stderr)
    return code
