"""A node's WORKDIR: its timelines on local disk, discovered and scanned (SPEC §3).

Layout: ``WORKDIR/TENANT_ID/TIMELINE_ID/`` holds the segment files (see
``tasks.core.timeline_scan``) and, once walbackup has written one, the state
file (``tasks.state.state_file``); ``tasks.state.listing`` reads the
directories.

Rescanning is cheap: a timeline directory is listed again only when its mtime
(any create, rename or delete inside changes it) or its state file changed, or
when the last listing could not be trusted (see ``_RACY_NS``).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.core.segments import validate_seg_size, xlog_file_name
from tasks.core.timeline_scan import ScanResult, resolve_commit_lsn, scan_entries
from tasks.errors import InvalidInput, SegmentFileError
from tasks.state.listing import list_files, timeline_names
from tasks.state.state_file import (
    STATE_FILE_NAME,
    TimelineStateFile,
    read_state_file,
    write_state_file,
)
from tasks.state.timeline_state import TimelineState

log = logging.getLogger(__name__)

_RACY_NS = 2_000_000_000
"""A listing taken less than this after the directory's mtime is not trusted
for the next scan: mtime has clock-tick (or coarser) granularity, so a second
change within the same tick would leave it unchanged (git's "racy" problem)."""


class ScanChanges(NamedTuple):
    states: dict[TenantTimelineId, TimelineState]
    changed: set[TenantTimelineId]
    """Timelines whose ``commit_lsn`` differs from the previous scan's
    (including timelines seen for the first time with segments)."""


@dataclass(frozen=True, slots=True)
class _Dir:
    """A timeline directory's id and paths, built once while it exists: a
    scan of 10,000 timelines every second otherwise built 40,000 ``Path``
    objects, a tenth of the node's CPU (bench/README.md, fleet)."""

    ttid: TenantTimelineId
    path: Path
    state_file: Path


@dataclass(frozen=True, slots=True)
class _CacheEntry:
    dir_mtime_ns: int
    state_key: tuple[int, int, int] | None
    trusted: bool
    state: TimelineState


class Workdir:
    """The timelines under one node's WORKDIR.

    Thread-safe. Writes to a timeline's state file are serialised within the
    process by a lock per timeline and across processes by ``flock`` on the
    timeline directory.
    """

    def __init__(self, workdir: Path, default_seg_size: int) -> None:
        self.workdir = Path(workdir)
        self.default_seg_size = validate_seg_size(default_seg_size)
        self._scan_lock = threading.Lock()
        self._cache: dict[TenantTimelineId, _CacheEntry] = {}
        self._dirs: dict[tuple[str, str], _Dir] = {}
        """The last discovery's directories, by ``(TENANT, TIMELINE)`` name."""
        self._prev_commit: dict[TenantTimelineId, Lsn | None] = {}
        self.scans_began: tuple[float, float] = (0.0, 0.0)
        """When the last two whole ``scan_changes`` began (wall clock)."""
        self._locks_guard = threading.Lock()
        self._locks: dict[TenantTimelineId, threading.Lock] = {}
        self.failures: dict[TenantTimelineId, str] = {}
        """Timelines left out of the last scan because their state is unreadable."""

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
                write_state_file(self.state_file_path(ttid), new)
            return new

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

    # -- scanning -----------------------------------------------------------

    def discover(self) -> dict[TenantTimelineId, Path]:
        """``WORKDIR/TENANT/TIMELINE`` directories with valid ids; symlinks
        and every other name are ignored."""
        with self._scan_lock:
            return {d.ttid: d.path for d in self._discover()}

    def _discover(self) -> list[_Dir]:
        known: dict[tuple[str, str], _Dir] = {}
        for names in timeline_names(self.workdir):
            d = self._dirs.get(names)
            known[names] = d if d is not None else self._dir(TenantTimelineId(*names))
        self._dirs = known  # replaced whole: readers see one discovery or the next
        return list(known.values())

    def _dir(self, ttid: TenantTimelineId) -> _Dir:
        path = self.timeline_dir(ttid)
        return _Dir(ttid, path, path / STATE_FILE_NAME)

    def scan(self) -> dict[TenantTimelineId, TimelineState]:
        return self.scan_changes().states

    def scan_changes(self) -> ScanChanges:
        """Scan every timeline; a timeline whose state file is unreadable is
        left out, logged and listed in ``failures``."""
        with self._scan_lock:
            began = time.time()
            states: dict[TenantTimelineId, TimelineState] = {}
            failures: dict[TenantTimelineId, str] = {}
            for d in self._discover():
                ttid = d.ttid
                try:
                    state = self._scan_timeline(d)
                except InvalidInput as exc:
                    failures[ttid] = str(exc)
                    if self.failures.get(ttid) != failures[ttid]:
                        log.error("Timeline %s: left out of the scan: %s", ttid, exc)
                    continue
                if state is not None:
                    states[ttid] = state
            changed = {
                ttid
                for ttid, state in states.items()
                if state.commit_lsn != self._prev_commit.get(ttid)
            }
            self._prev_commit = {ttid: state.commit_lsn for ttid, state in states.items()}
            for gone in self._cache.keys() - states.keys():
                del self._cache[gone]
            self.failures = failures
            self.scans_began = (self.scans_began[1], began)
            return ScanChanges(states, changed)

    def scan_timeline(self, ttid: TenantTimelineId) -> TimelineState | None:
        """The timeline's current state, ``None`` if it has no directory;
        raises ``InvalidInput`` if its state file is corrupt."""
        d = self._dirs.get((ttid.tenant_id, ttid.timeline_id)) or self._dir(ttid)
        with self._scan_lock:
            return self._scan_timeline(d)

    def _scan_timeline(self, d: _Dir) -> TimelineState | None:
        ttid, path = d.ttid, d.path
        now_ns = time.time_ns()
        try:
            dir_st = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            dir_st = None
        if dir_st is None or not stat.S_ISDIR(dir_st.st_mode):
            self._cache.pop(ttid, None)
            return None
        try:
            file_st = os.stat(d.state_file, follow_symlinks=False)
            state_key: tuple[int, int, int] | None = (
                file_st.st_mtime_ns,
                file_st.st_size,
                file_st.st_ino,
            )
        except FileNotFoundError:
            state_key = None

        cached = self._cache.get(ttid)
        if (
            cached is not None
            and cached.trusted
            and cached.dir_mtime_ns == dir_st.st_mtime_ns
            and cached.state_key == state_key
        ):
            return cached.state

        recorded = read_state_file(d.state_file)
        seg_size = recorded.wal_seg_size if recorded else self.default_seg_size
        try:
            entries = list_files(path)
        except FileNotFoundError:
            self._cache.pop(ttid, None)
            return None
        scanned = scan_entries(entries, seg_size)
        state = _timeline_state(ttid, path, scanned, recorded)
        if cached is None or cached.state.problems != state.problems:
            damaged = {xlog_file_name(segno, seg_size) for segno in state.damaged}
            for problem in state.problems:
                # A segment-named file of the wrong size is a damaged copy of WAL.
                level = logging.ERROR if problem.split(":")[0] in damaged else logging.WARNING
                log.log(level, "Timeline %s: damaged copy %s", ttid, path / problem)
        newest_ns = max(dir_st.st_mtime_ns, state_key[0] if state_key else 0)
        trusted = now_ns - newest_ns >= _RACY_NS and not state.problems
        self._cache[ttid] = _CacheEntry(dir_st.st_mtime_ns, state_key, trusted, state)
        return state


def _timeline_state(
    ttid: TenantTimelineId,
    path: Path,
    scanned: ScanResult,
    recorded: TimelineStateFile | None,
) -> TimelineState:
    return TimelineState(
        ttid=ttid,
        path=path,
        wal_seg_size=scanned.seg_size,
        local_start_lsn=scanned.local_start_lsn,
        commit_lsn=resolve_commit_lsn(
            scanned.commit_lsn, recorded.commit_lsn if recorded else None, scanned.seg_size
        ),
        backup_lsn=recorded.backup_lsn if recorded else Lsn(0),
        timeline_start_lsn=recorded.timeline_start_lsn if recorded else None,
        problems=scanned.problems,
        notes=scanned.notes,
        damaged=scanned.damaged,
        removal_horizon_lsn=recorded.removal_horizon_lsn if recorded else None,
        system_id=recorded.system_id if recorded else None,
        foreign_seg_size=scanned.foreign_seg_size,
        history=scanned.history,
    )
