"""A node's WORKDIR: its timelines on local disk (SPEC §3), scanned
(``tasks.state.scanner``) and each with its state file, written under locks;
and, with WAL removal on, its space reserve (``tasks.state.reserve``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.core.segments import xlog_file_name
from tasks.errors import SegmentFileError
from tasks.state.reserve import NO_SPACE, DiskReserve
from tasks.state.scanner import WorkdirScanner
from tasks.state.state_file import (
    STATE_FILE_NAME,
    TimelineStateFile,
    read_state_file,
    write_state_file,
)


class Workdir(WorkdirScanner):
    """The timelines under one node's WORKDIR.

    Thread-safe. Writes to a timeline's state file are serialised within the
    process by a lock per timeline and across processes by ``flock`` on the
    timeline directory. A state file write that finds the disk full deletes
    ``reserve`` (if it is there) and is tried once more.
    """

    def __init__(self, workdir: Path, default_seg_size: int, *, watch: bool = True) -> None:
        super().__init__(workdir, default_seg_size, watch=watch)
        self._locks_guard = threading.Lock()
        self._locks: dict[TenantTimelineId, threading.Lock] = {}
        self.reserve = DiskReserve(self.workdir)
        """Made by ``reserve.keep()`` (WAL removal's rounds), never here."""

    def timeline_dir(self, ttid: TenantTimelineId) -> Path:
        return self.workdir / ttid.tenant_id / ttid.timeline_id

    def state_file_path(self, ttid: TenantTimelineId) -> Path:
        return self.timeline_dir(ttid) / STATE_FILE_NAME

    def segment_path(self, ttid: TenantTimelineId, segno: int, seg_size: int) -> Path:
        return self.timeline_dir(ttid) / xlog_file_name(segno, seg_size)

    # -- state file ---------------------------------------------------------

    def read_state(self, ttid: TenantTimelineId) -> TimelineStateFile | None:
        return read_state_file(self.state_file_path(ttid))

    def update_state(
        self,
        ttid: TenantTimelineId,
        change: Callable[[TimelineStateFile], TimelineStateFile],
    ) -> TimelineStateFile:
        """Read-modify-write the timeline's state file under its locks.

        ``change`` gets the current state (defaults if there is no file yet)
        and returns the new one; the file is written only if it differs.
        """
        with self._timeline_lock(ttid):
            current = self.read_state(ttid)
            base = current or TimelineStateFile(wal_seg_size=self.default_seg_size)
            new = change(base)
            if new != current:
                self._write_state(self.state_file_path(ttid), new)
            return new

    def _write_state(self, path: Path, new: TimelineStateFile) -> None:
        try:
            write_state_file(path, new)
        except OSError as exc:
            if exc.errno not in NO_SPACE or not self.reserve.release(exc):
                raise
            write_state_file(path, new)  # in the reserve's space

    def record_backup_lsn(self, ttid: TenantTimelineId, lsn: Lsn) -> Lsn:
        """Raise the recorded ``backup_lsn`` to ``lsn``; never lowers it.
        Returns the value now stored."""
        return self.record_cluster_state(ttid, lsn, None).backup_lsn

    def record_cluster_state(
        self, ttid: TenantTimelineId, backup_lsn: Lsn | None, system_id: int | None
    ) -> TimelineStateFile:
        """What Redis says of the timeline, kept for when Redis loses it: raise
        ``backup_lsn`` (never lowered), set ``system_id``; ``None``: unchanged."""

        def change(s: TimelineStateFile) -> TimelineStateFile:
            if backup_lsn is not None and backup_lsn > s.backup_lsn:
                s = replace(s, backup_lsn=Lsn(backup_lsn))
            return s if system_id is None else replace(s, system_id=system_id)

        return self.update_state(ttid, change)

    @contextlib.contextmanager
    def _timeline_lock(self, ttid: TenantTimelineId) -> Iterator[None]:
        with self._locks_guard:
            lock = self._locks.setdefault(ttid, threading.Lock())
        path = self.timeline_dir(ttid)
        with lock:
            try:
                dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            except FileNotFoundError:
                raise SegmentFileError(f"timeline directory {path} does not exist") from None
            try:
                fcntl.flock(dir_fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(dir_fd)
