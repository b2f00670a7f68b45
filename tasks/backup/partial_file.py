"""A ``.partial`` file read once into what a partial upload sends: its WAL, then zeros.

The writer keeps appending while we read, so the end LSN is computed from the
very bytes copied (one sequential pass feeding ``tasks.core.walpage``'s
scanner), and the copy is cut there and zero-padded to ``wal_seg_size``, as
PostgreSQL and ``pg_receivewal`` expect a segment file to be. Which source of
the end wins is ``tasks.core.partials.partial_end``'s rule.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from tasks.core.lsn import Lsn
from tasks.core.partials import partial_end
from tasks.core.walpage import WalEndScanner
from tasks.storage.base import CHUNK_BYTES

TMP_PREFIX = ".walbackup-partial-"
"""Snapshots are written in WORKDIR (same file system as the WAL, never a
tmpfs in memory) under this prefix, which no timeline directory has."""


@contextlib.contextmanager
def padded_snapshot(
    path: Path, seg_start: Lsn, seg_size: int, recorded: Lsn | None, tmp_dir: Path
) -> Iterator[tuple[Path, Lsn] | None]:
    """``(snapshot file, end LSN)`` for the block, the file deleted after it;
    ``None`` when the ``.partial`` holds no WAL (or is gone)."""
    fd, name = tempfile.mkstemp(prefix=TMP_PREFIX, dir=tmp_dir)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                copied, scanned = _copy_scanning(path, out, seg_start, seg_size)
            except FileNotFoundError:
                yield None
                return
            end = partial_end(seg_start, seg_size, copied, recorded, scanned)
            if end <= seg_start:
                yield None
                return
            out.flush()
            # Cut at the end (what follows is not WAL we vouch for), then
            # extend with zeros to the full segment size.
            os.ftruncate(out.fileno(), end - seg_start)
            os.ftruncate(out.fileno(), seg_size)
        yield tmp, end
    finally:
        tmp.unlink(missing_ok=True)


def _copy_scanning(
    path: Path, out: BinaryIO, seg_start: Lsn, seg_size: int
) -> tuple[int, Lsn | None]:
    """Copy up to ``seg_size`` bytes of ``path`` to ``out``; the count, and
    the end of the valid WAL pages among them."""
    scanner = WalEndScanner(seg_start, seg_size)
    copied = 0
    with open(path, "rb") as src:
        while copied < seg_size and (chunk := src.read(min(CHUNK_BYTES, seg_size - copied))):
            out.write(chunk)
            scanner.feed(chunk)
            copied += len(chunk)
    end = scanner.finish()
    return copied, None if end is None else Lsn(end)
