"""Restore spool: what the consumer and the prefetcher share of it.

PostgreSQL runs ``restore_command`` once per segment, serially, so each call
pays for a Python start-up and, on a direct fetch, for importing boto3 and a
round trip to S3. As WAL-G and pgBackRest do, ``walbackup fetch`` therefore
keeps a spool per timeline:

- a *hit* (``tasks.restore.hit.try_serve``) verifies the spooled segment and
  moves it to DEST, importing six standard modules and nothing of the rest
  (``tests/unit/test_restore_fast_path.py`` checks);
- a *miss* fetches the segment directly (``tasks.restore.fetch``), records it as
  the consumer's position (``note_want``: the ``.want`` file) and starts,
  unless one runs, a detached prefetcher (``tasks.restore.prefetch``) that
  downloads the next ``restore_prefetch`` segments into the spool; a fetch
  whose segment the prefetcher is downloading waits for it.

Layout: ``DATA_DIR/spool/REMOTE_ID/TENANT/TIMELINE/`` where ``REMOTE_ID`` names
the remote storage URL and endpoint (``tasks.restore.hit.remote_id``), so a spool never serves
what another remote stored. A spooled segment is published by an atomic
rename as ``NAME.SIZE.CRC32`` only once complete, fsynced and exactly
``wal_seg_size`` bytes; a hit re-checks size and CRC-32 before serving it, so a
partial, truncated or corrupt file is deleted, never served. Served files
leave the spool (they are moved). A file older than ``hit.MAX_AGE_S`` is not
served. Files named ``TMP_PREFIX...`` are the prefetcher's, in progress.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from typing import TYPE_CHECKING

from tasks.fsutil import atomic_write
from tasks.restore.hit import LOCK_NAME, TMP_PREFIX, spool_path

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tasks.config import Settings

WANT_NAME = ".want"
"""``SEGMENT SEG_SIZE``: the segment the consumer last fetched directly."""


def settings_spool_dir(settings: Settings, ttid: str) -> Path:
    """The spool of ``ttid`` for these settings."""
    from pathlib import Path

    return Path(
        spool_path(
            str(settings.data_dir),
            settings.effective_remote_storage,
            settings.s3_endpoint_url,
            ttid,
        )
    )


# -- what the prefetcher and the consumer tell each other ------------------------


def note_want(spool: Path, segment: str, seg_size: int) -> None:
    """Record that the consumer fetched ``segment`` directly: the prefetcher
    (re)starts right after it."""
    spool.mkdir(parents=True, exist_ok=True)
    tmp = spool / f"{TMP_PREFIX}want.{os.getpid()}.{time.monotonic_ns()}"
    # Not durable: after a crash the next miss writes it again.
    with atomic_write(spool / WANT_NAME, tmp=tmp, durable=False) as out:
        out.write(f"{segment} {seg_size}\n".encode())


def read_want(spool: Path) -> tuple[str, int, float] | None:
    """``(segment, seg_size, mtime_ns)`` of the last ``note_want``, if any."""
    path = spool / WANT_NAME
    try:
        mtime = path.stat().st_mtime_ns
        name, size = path.read_text().split()
        return name, int(size), float(mtime)
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def prefetch_lock(spool: Path) -> Iterator[bool]:
    """The spool's prefetcher lock, held for the block; False if another
    prefetcher holds it. A few tries: ``prefetcher_running`` takes it for a
    moment to look."""
    spool.mkdir(parents=True, exist_ok=True)
    fd = os.open(spool / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        for attempt in range(10):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == 9:
                    yield False
                    return
                time.sleep(0.005)
        yield True
    finally:
        os.close(fd)
