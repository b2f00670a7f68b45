"""Scanning a node's WORKDIR for its timelines (SPEC §3), the part of ``Workdir``
that reads directories.

Layout: ``WORKDIR/TENANT_ID/TIMELINE_ID/`` holds the segment files (see
``tasks.core.timeline_scan``) and, once walbackup has written one, the state
file (``tasks.state.state_file``); ``tasks.state.listing`` reads the
directories.

Rescanning is cheap twice over:

- with inotify (``tasks.state.dirwatch``), a pass rescans only the timeline
  directories an event named, and lists the WORKDIR's tenants again only when
  one of those directories changed; every ``FULL_SCAN_S`` (and when events
  were lost) a pass scans everything, as a safety net;
- a timeline directory is listed again only when its mtime (any create,
  rename or delete inside changes it) or its state file changed, or when the
  last listing could not be trusted (see ``_RACY_NS``).
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.core.segments import validate_seg_size, xlog_file_name
from tasks.core.timeline_scan import scan_entries
from tasks.errors import InvalidInput
from tasks.state.dirwatch import DirWatch, open_watch
from tasks.state.listing import list_files, timeline_names
from tasks.state.state_file import STATE_FILE_NAME, read_state_file
from tasks.state.timeline_state import TimelineState, timeline_state

log = logging.getLogger("tasks.state.workdir")

_RACY_NS = 2_000_000_000
"""A listing taken less than this after the directory's mtime is not trusted
for the next scan: mtime has clock-tick (or coarser) granularity, so a second
change within the same tick would leave it unchanged (git's "racy" problem).
Watched, such a directory is rescanned every pass until it is trusted: a file
still being written when it was listed may not be closed yet."""

FULL_SCAN_S = 30.0
"""With inotify, a full scan this often all the same."""


class ScanChanges(NamedTuple):
    states: dict[TenantTimelineId, TimelineState]
    """Every timeline; the same dict as the last scan's when nothing changed.
    Never changed after it is returned."""
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


class WorkdirScanner:
    """Thread-safe; ``scan_changes`` is the node's watcher's, ``scan_timeline``
    anyone's. ``watch``: use inotify where the system has it."""

    def __init__(self, workdir: Path, default_seg_size: int, *, watch: bool = True) -> None:
        self.workdir = Path(workdir)
        self.default_seg_size = validate_seg_size(default_seg_size)
        self._scan_lock = threading.Lock()
        self._cache: dict[TenantTimelineId, _CacheEntry] = {}
        self._untrusted: set[TenantTimelineId] = set()
        self._dirs: dict[tuple[str, str], _Dir] = {}
        """The last discovery's directories, by ``(TENANT, TIMELINE)`` name."""
        self._tenants: list[str] = []
        self._prev_commit: dict[TenantTimelineId, Lsn | None] = {}
        self._states: dict[TenantTimelineId, TimelineState] = {}
        self._watch: DirWatch | None = open_watch(self.workdir) if watch else None
        self._full_due = 0.0
        self._rediscover = False
        self.scans_began: tuple[float, float] = (0.0, 0.0)
        """When the last two ``scan_changes`` began (wall clock): each told
        the disk as it was then."""
        self.failures: dict[TenantTimelineId, str] = {}
        """Timelines left out of the last scan because their state is unreadable."""

    @property
    def watching(self) -> bool:
        """Scans read inotify's events rather than every directory."""
        return self._watch is not None

    def close(self) -> None:
        with self._scan_lock:
            if self._watch is not None:
                self._watch.close()
                self._watch = None

    def discover(self) -> dict[TenantTimelineId, Path]:
        """``WORKDIR/TENANT/TIMELINE`` directories with valid ids; symlinks
        and every other name are ignored."""
        with self._scan_lock:
            return {d.ttid: d.path for d in self._discover()}

    def _discover(self) -> list[_Dir]:
        known: dict[tuple[str, str], _Dir] = {}
        self._tenants, timelines = timeline_names(self.workdir)
        for names in timelines:
            d = self._dirs.get(names)
            known[names] = d if d is not None else self._dir(TenantTimelineId(*names))
        self._dirs = known  # replaced whole: readers see one discovery or the next
        return list(known.values())

    def _dir(self, ttid: TenantTimelineId) -> _Dir:
        path = self.workdir / ttid.tenant_id / ttid.timeline_id
        return _Dir(ttid, path, path / STATE_FILE_NAME)

    def scan(self) -> dict[TenantTimelineId, TimelineState]:
        return self.scan_changes().states

    def scan_changes(self) -> ScanChanges:
        """Scan what may have changed (everything, without inotify); a
        timeline whose state file is unreadable is left out, logged and
        listed in ``failures``."""
        with self._scan_lock:
            began = time.time()
            changed: set[TenantTimelineId] = set()
            states = self._states
            for d in self._todo():
                state = self._rescan(d)
                if state is states.get(d.ttid):
                    continue
                if states is self._states:
                    states = dict(self._states)  # the last scan's dict stays as it was
                if state is None:
                    del states[d.ttid]
                    self._forget(d.ttid)
                    continue
                states[d.ttid] = state
                if state.commit_lsn != self._prev_commit.get(d.ttid):
                    changed.add(d.ttid)
                    self._prev_commit[d.ttid] = state.commit_lsn
            self._states = states
            self.scans_began = (self.scans_began[1], began)
            return ScanChanges(states, changed)

    def _todo(self) -> list[_Dir]:
        """The directories this pass rescans: all of them, or, watched, those
        an event named, new ones, gone ones and those not trusted yet."""
        watch = self._watch
        events = watch.changes() if watch is not None else None
        if watch is None or events is None or events.lost or time.monotonic() >= self._full_due:
            self._full_due = time.monotonic() + FULL_SCAN_S
            dirs = self._discover()
            if watch is not None:
                self._watch_all(watch)
            return dirs + self._gone()
        keys = events.timelines
        if events.layout or self._rediscover:
            self._rediscover = False
            self._discover()
            added = self._watch_all(watch)
            if added is None:  # no inotify from now on
                return list(self._dirs.values()) + self._gone()
            keys |= added
            keys.update((d.ttid.tenant_id, d.ttid.timeline_id) for d in self._gone())
        keys.update((t.tenant_id, t.timeline_id) for t in self._untrusted)
        return [self._dirs.get(k) or self._dir(TenantTimelineId(*k)) for k in keys]

    def _gone(self) -> list[_Dir]:
        """Timelines of the last scan (or left out of it) that the last
        discovery did not find."""
        return [
            self._dir(t)
            for t in [*self._states, *self.failures]
            if (t.tenant_id, t.timeline_id) not in self._dirs
        ]

    def _watch_all(self, watch: DirWatch) -> set[tuple[str, str]] | None:
        """Watches on what the last discovery found, before it is listed (a
        change after its watch is an event); the timelines newly watched, or
        ``None`` when a watch could not be added: no inotify from now on."""
        try:
            synced = watch.sync(self._tenants, self._dirs.keys())
        except OSError as exc:
            log.warning(
                "WORKDIR %s: cannot add an inotify watch (%s; fs.inotify.max_user_watches?): "
                "scanning every timeline directory each pass from now on",
                self.workdir, os.strerror(exc.errno or 0),
            )  # fmt: skip
            watch.close()
            self._watch = None
            return None
        self._rediscover |= synced.rediscover
        return synced.added

    def _rescan(self, d: _Dir) -> TimelineState | None:
        ttid = d.ttid
        try:
            state = self._scan_timeline(d)
        except InvalidInput as exc:
            if self.failures.get(ttid) != str(exc):
                log.error("Timeline %s: left out of the scan: %s", ttid, exc)
            self.failures[ttid] = str(exc)
            return None
        self.failures.pop(ttid, None)
        return state

    def _forget(self, ttid: TenantTimelineId) -> None:
        self._prev_commit.pop(ttid, None)
        self._cache.pop(ttid, None)
        self._untrusted.discard(ttid)

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
            self._untrusted.discard(ttid)
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
            self._untrusted.discard(ttid)
            return None
        scanned = scan_entries(entries, seg_size)
        state = timeline_state(ttid, path, scanned, recorded)
        if cached is None or cached.state.problems != state.problems:
            damaged = {xlog_file_name(segno, seg_size) for segno in state.damaged}
            for problem in state.problems:
                # A segment-named file of the wrong size is a damaged copy of WAL.
                level = logging.ERROR if problem.split(":")[0] in damaged else logging.WARNING
                log.log(level, "Timeline %s: damaged copy %s", ttid, path / problem)
        newest_ns = max(dir_st.st_mtime_ns, state_key[0] if state_key else 0)
        trusted = now_ns - newest_ns >= _RACY_NS and not state.problems
        self._cache[ttid] = _CacheEntry(dir_st.st_mtime_ns, state_key, trusted, state)
        if trusted:
            self._untrusted.discard(ttid)
        else:
            self._untrusted.add(ttid)
        return state
