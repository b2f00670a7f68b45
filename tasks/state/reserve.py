"""A WORKDIR's space reserve: a file of real blocks, given up so that a full disk can be freed.

WAL removal (``tasks.backup.removal``) writes to a timeline's state file
before it deletes anything: the backup_lsn the horizon is capped by, then the
horizon itself (a crash mid-batch finishes it after a restart). On a WORKDIR
that WAL has filled to the last block (the archive was down for long), both
writes fail with ENOSPC, nothing is ever deleted, and the disk stays full.

So, with removal on, each WORKDIR keeps ``WORKDIR/.walbackup-reserve``
(``RESERVE_BYTES`` of incompressible data, fsynced: no hole, nothing a
compressing file system could fold away). When a state file cannot be
written for want of space, ``Workdir.update_state`` deletes the reserve (one
WARNING) and writes once more; removal then frees the disk, and the next
removal round makes the reserve again once there is room for it and as much
again. The scanner ignores it: a WORKDIR's tenants are directories with
32-hex names (``tasks.state.listing``), and it is a dotfile.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
from pathlib import Path

from tasks.fsutil import atomic_write

log = logging.getLogger("walbackup.reserve")

RESERVE_NAME = ".walbackup-reserve"
RESERVE_BYTES = 1 << 20
"""Bytes held back per WORKDIR: a state file takes one block (4 KiB) while it
is rewritten, so this is room for hundreds of writes at once."""

NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
"""The errnos that deleting the reserve can cure."""

_CHUNK = 1 << 16


class DiskReserve:
    """Thread-safe: state files are written from several threads."""

    def __init__(self, directory: Path, size_bytes: int = RESERVE_BYTES) -> None:
        self.path = Path(directory) / RESERVE_NAME
        self.size_bytes = size_bytes
        self._lock = threading.Lock()

    def keep(self) -> bool:
        """Make the reserve if it is missing and the file system has room for
        it and as much again (so that it never takes the last free blocks);
        ``True`` when it is there (one ``stat`` when it was already)."""
        with self._lock:
            if self.path.exists():
                return True
            if _free_bytes(self.path.parent) < 2 * self.size_bytes:
                return False
            try:
                self._write()
            except OSError as exc:
                if exc.errno in NO_SPACE:  # taken meanwhile: next round
                    return False
                raise
        log.info(
            "WORKDIR %s: %d-byte reserve %s made", self.path.parent, self.size_bytes, self.path
        )
        return True

    def _write(self) -> None:
        block = os.urandom(_CHUNK)  # not zeros: a compressing file system stores those as nothing
        with atomic_write(self.path) as out:  # a dotfile too: ".<name>.PID.RANDOM.tmp"
            for _ in range(0, self.size_bytes, _CHUNK):
                out.write(block)
            out.truncate(self.size_bytes)

    def release(self, exc: OSError) -> bool:
        """Delete the reserve because ``exc`` (ENOSPC) stopped a state file
        write; ``True`` if it was there (write again: there is room now)."""
        with self._lock:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                return False
        log.warning(
            "WORKDIR %s is full (%s): deleted the %d-byte reserve %s so that state files can "
            "be written and WAL removal can free space; it is made again once there is room",
            self.path.parent, os.strerror(exc.errno or errno.ENOSPC), self.size_bytes, self.path,
        )  # fmt: skip
        return True

    def drop(self) -> None:
        """Delete a reserve left by a run with WAL removal on (it is off now)."""
        with self._lock, contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
            log.info("WORKDIR %s: WAL removal is off: reserve %s deleted",
                     self.path.parent, self.path)  # fmt: skip


def _free_bytes(directory: Path) -> int:
    """What an unprivileged writer may still use (``f_bavail``)."""
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize
