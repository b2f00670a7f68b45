"""One segment downloaded into a restore spool, verified, and published by rename."""

from __future__ import annotations

import os
import uuid
import zlib
from pathlib import Path

from tasks.core.ids import TenantTimelineId
from tasks.errors import SegmentFileError
from tasks.restore.hit import DOWNLOAD_PREFIX, spooled_name
from tasks.restore.ledger_check import LedgerCheck
from tasks.storage.base import CHUNK_BYTES, Hasher, RemoteStorage, segment_key


def download_to_spool(
    storage: RemoteStorage,
    ttid: TenantTimelineId,
    spool: Path,
    name: str,
    seg_size: int,
    check: LedgerCheck | None,
) -> Path:
    """Download segment ``name`` into ``spool``; the published file's path.

    It appears only complete, ``seg_size`` bytes, and what the archive ledger
    records (``check``, if given: else ``ChecksumMismatch``). Its name carries the CRC-32
    a hit re-checks, known only at the end: hence a plain temp file and rename
    (``tasks.fsutil.atomic_write`` needs the name first). The spool is a
    cache: no directory fsync. The file is fsynced, though, here in the
    background: PostgreSQL fsyncs every segment it restores
    (``durable_rename``), on its recovery's critical path, where 16 MiB not
    yet written back cost 30 – 45 ms here against ~1.5 ms."""
    tmp = spool / f"{DOWNLOAD_PREFIX}{name}.{uuid.uuid4().hex}"
    try:
        crc = 0
        hasher = Hasher(md5=False)
        with storage.open_read(segment_key(ttid, name)) as src, open(tmp, "xb") as out:
            if check is not None:
                check.look_up(name)  # overlaps the download
            while chunk := src.read(CHUNK_BYTES):
                crc = zlib.crc32(chunk, crc)
                hasher.update(chunk)
                out.write(chunk)
            if hasher.size != seg_size:
                raise SegmentFileError(
                    f"remote segment {name} has {hasher.size} bytes, expected {seg_size}"
                )
            if check is not None:
                check.check(name, hasher.digest())
            out.flush()
            os.fsync(out.fileno())
        final = spool / spooled_name(name, seg_size, crc)
        os.rename(tmp, final)
        return final
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
