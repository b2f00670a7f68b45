"""Scanning a node's WORKDIR for its timelines (SPEC §3): ``WORKDIR/TENANT_ID/TIMELINE_ID/``
holds segment files (``tasks.core.timeline_scan``) and a state file
(``tasks.state.state_file``). Rescanning is cheap twice over:

- with inotify (``tasks.state.dirwatch``), a pass rescans only the timeline
  directories an event named, and lists the WORKDIR's tenants again only when
  one of those directories changed; every ``FULL_SCAN_S`` (and when events
  were lost) a pass scans everything, as a safety net;
- a timeline directory is listed again only when it may have changed
  (``tasks.state.timeline_dir``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import NamedTuple

from tasks.core.ids import TenantTimelineId
from tasks.core.segments import validate_seg_size
from tasks.errors import InvalidInput
from tasks.state.dirwatch import DirWatch, open_watch
from tasks.state.listing import cannot_read, timeline_names
from tasks.state.timeline_dir import TimelineDir, TimelineReader
from tasks.state.timeline_state import TimelineState

log = logging.getLogger("tasks.state.workdir")

FULL_SCAN_S = 30.0
"""With inotify, a full scan this often all the same."""


class ScanChanges(NamedTuple):
    states: dict[TenantTimelineId, TimelineState]
    """Every timeline; the same dict as the last scan's when nothing changed.
    Never changed after it is returned."""
    changed: set[TenantTimelineId]
    """Timelines whose ``commit_lsn`` differs from the previous scan's
    (including timelines seen for the first time with segments)."""


class WorkdirScanner:
    """Thread-safe; ``scan_changes`` is the node's watcher's, ``scan_timeline``
    anyone's. ``watch``: use inotify where the system has it."""

    def __init__(self, workdir: Path, default_seg_size: int, *, watch: bool = True) -> None:
        self.workdir = Path(workdir)
        self.default_seg_size = validate_seg_size(default_seg_size)
        self._scan_lock = threading.Lock()
        self._reader = TimelineReader(self.default_seg_size)
        self._dirs: dict[tuple[str, str], TimelineDir] = {}
        """The last discovery's directories, by ``(TENANT, TIMELINE)`` name."""
        self._tenants: list[str] = []
        self._states: dict[TenantTimelineId, TimelineState] = {}
        self._watch: DirWatch | None = open_watch(self.workdir) if watch else None
        self._full_due = 0.0
        self._rediscover = False
        self._unwatched: dict[tuple[str, ...], str] = {}
        """Directories that refused their inotify watch, and why: the
        timelines among them are rescanned each pass."""
        self.scans_began: tuple[float, float] = (0.0, 0.0)
        """When the last two ``scan_changes`` began (wall clock): each told
        the disk as it was then."""
        self.failures: dict[TenantTimelineId, str] = {}
        """Timelines left out of the last scan because they cannot be read
        (their state file, their directory's mode, a disk error), and why."""
        self.tenant_failures: dict[str, str] = {}
        """Tenant directories the last discovery could not list, and why."""
        self.workdir_failure: str | None = None
        """Why the last discovery could not list the WORKDIR itself."""
        self._listed = False

    @property
    def watching(self) -> bool:  # scans read inotify's events, not every directory
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

    def _discover(self) -> list[TimelineDir]:
        known: dict[tuple[str, str], TimelineDir] = {}
        try:
            found = timeline_names(self.workdir)
        except InvalidInput as exc:
            if not self._listed:  # at start: a bad setting, which the node reports
                raise
            return self._unlisted(str(exc))
        self._listed = True
        if self.workdir_failure is not None:
            log.warning("WORKDIR %s: can be listed again", self.workdir)
            self.workdir_failure = None
        self._tenants = found.tenants
        # A tenant that cannot be listed keeps the timelines it had: each of
        # their rescans fails, and says why (``failures``).
        kept = [names for names in self._dirs if names[0] in found.unreadable]
        for tenant, problem in found.unreadable.items():
            if self.tenant_failures.get(tenant) != problem:
                log.error("WORKDIR %s: tenant %s left out of the scan: %s",
                          self.workdir, tenant, problem)  # fmt: skip
        self.tenant_failures = found.unreadable
        for names in [*found.timelines, *kept]:
            d = self._dirs.get(names)
            known[names] = d if d is not None else self._dir(TenantTimelineId(*names))
        self._dirs = known  # replaced whole: readers see one discovery or the next
        return list(known.values())

    def _unlisted(self, problem: str) -> list[TimelineDir]:
        """The WORKDIR itself cannot be listed (its mode, a disk error, gone):
        every timeline is kept to be rescanned, and each rescan that fails
        leaves it out and says why (a scan kept frozen at its last view kept
        the node offloader of timelines it could not read). A full scan each
        pass until the WORKDIR can be listed."""
        if self.workdir_failure != problem:
            log.error("WORKDIR %s: cannot be listed, every timeline rescanned: %s",
                      self.workdir, problem)  # fmt: skip
        self.workdir_failure = problem
        self._full_due = 0.0  # no event may tell when it can (its watch is gone with it)
        return list(self._dirs.values())

    def _dir(self, ttid: TenantTimelineId) -> TimelineDir:
        return TimelineDir.under(self.workdir, ttid)

    def scan(self) -> dict[TenantTimelineId, TimelineState]:
        return self.scan_changes().states

    def scan_changes(self) -> ScanChanges:
        """Scan what may have changed (everything, without inotify); a
        timeline that cannot be read is left out, logged and listed in
        ``failures`` (and rescanned each pass until it can be)."""
        with self._scan_lock:
            began = time.time()
            try:
                states, changed = self._scan_pass()
            except BaseException:
                # The events are taken and the pass half done: scan everything next.
                self._full_due = 0.0
                raise
            self._states = states
            self.scans_began = (self.scans_began[1], began)
            return ScanChanges(states, changed)

    def _scan_pass(self) -> ScanChanges:
        before = states = self._states
        changed: set[TenantTimelineId] = set()
        todo, gone = self._todo()
        for d in todo:
            state = self._rescan(d)
            old = before.get(d.ttid)
            if state is old:
                continue
            if states is before:
                states = dict(before)  # the last scan's dict stays as it was
            if state is None:
                del states[d.ttid]
                self._reader.forget(d.ttid)
                continue
            states[d.ttid] = state
            if state.commit_lsn != (old.commit_lsn if old is not None else None):
                changed.add(d.ttid)
        for ttid in gone:
            # Not rescanned by path: a tenant replaced by a symlink resolves.
            if ttid in states:
                states = dict(states) if states is before else states
                del states[ttid]
            self._reader.forget(ttid)
            self.failures.pop(ttid, None)
        return ScanChanges(states, changed)

    def _todo(self) -> tuple[list[TimelineDir], list[TenantTimelineId]]:
        """The directories this pass rescans: all of them, or, watched, those
        an event named, new ones and those listed too recently to be trusted;
        and the timelines the discovery of this pass no longer finds."""
        watch = self._watch
        events = watch.changes() if watch is not None else None
        if watch is None or events is None or events.lost or time.monotonic() >= self._full_due:
            self._full_due = time.monotonic() + FULL_SCAN_S
            dirs = self._discover()
            if watch is not None and self.workdir_failure is None:
                self._watch_all(watch, refresh=True)
            return dirs, self._gone()
        keys, gone = events.timelines, []
        if events.layout or self._rediscover or self._tenants_back():
            self._rediscover = False
            self._discover()
            if self.workdir_failure is not None:
                return list(self._dirs.values()), []
            added = self._watch_all(watch, refresh=False)
            if added is None:  # no inotify from now on
                return list(self._dirs.values()), self._gone()
            keys |= added
            # An unreadable tenant's timelines: each rescan fails and says why.
            keys.update(k for k in self._dirs if k[0] in self.tenant_failures)
            gone = self._gone()
        keys.update((t.tenant_id, t.timeline_id) for t in (*self._reader.untrusted, *self.failures))
        keys.update((k[0], k[1]) for k in self._unwatched if len(k) == 2)
        return [self._dirs[k] for k in keys if k in self._dirs], gone

    def _tenants_back(self) -> bool:
        """Whether a tenant the last discovery could not list can be now (no
        event tells: it had no watch)."""
        for tenant in self.tenant_failures:
            with contextlib.suppress(OSError), os.scandir(self.workdir / tenant):
                return True
        return False

    def _gone(self) -> list[TenantTimelineId]:
        """Timelines of the last scan (or left out of it) the last discovery did not find."""
        ids = [*self._states, *self.failures]
        return [t for t in ids if (t.tenant_id, t.timeline_id) not in self._dirs]

    def _watch_all(self, watch: DirWatch, *, refresh: bool) -> set[tuple[str, str]] | None:
        """Watches on what the last discovery found, before it is listed (a
        change after its watch is an event); ``refresh``: every one added
        again (a directory replaced under its name gets a new watch). The
        timelines newly watched, or ``None`` when the node is out of watches:
        no inotify from now on. A directory that refuses its watch alone
        (its mode) goes without: the timelines are rescanned each pass, a
        tenant's new timelines found by the next full scan."""
        try:
            synced = watch.sync(self._tenants, self._dirs.keys(), refresh=refresh)
        except OSError as exc:
            log.warning(
                "WORKDIR %s: cannot add an inotify watch (%s; fs.inotify.max_user_watches?): "
                "scanning every timeline directory each pass until the node restarts",
                self.workdir, os.strerror(exc.errno or 0),
            )  # fmt: skip
            watch.close()
            self._watch = None
            return None
        self._rediscover |= synced.rediscover
        for key, why in synced.unwatched.items():
            if self._unwatched.get(key) != why:
                log.warning("WORKDIR %s: no inotify watch on %s (%s): scanning it without one",
                            self.workdir, self.workdir.joinpath(*key), why)  # fmt: skip
        self._unwatched = synced.unwatched  # each sync tries every directory without one
        return synced.added

    def _rescan(self, d: TimelineDir) -> TimelineState | None:
        ttid = d.ttid
        try:
            state = self._scan_timeline(d)
        except (InvalidInput, OSError) as exc:
            # This timeline only: the others carry on.
            problem = cannot_read(d.path, exc) if isinstance(exc, OSError) else str(exc)
            if self.failures.get(ttid) != problem:
                log.error("Timeline %s: left out of the scan: %s", ttid, problem)
            self.failures[ttid] = problem
            return None
        self.failures.pop(ttid, None)
        return state

    def scan_timeline(self, ttid: TenantTimelineId) -> TimelineState | None:
        """The timeline's current state, ``None`` if it has no directory or
        one that cannot be read (the next pass says why); raises
        ``InvalidInput`` if its state file is corrupt."""
        d = self._dirs.get((ttid.tenant_id, ttid.timeline_id)) or self._dir(ttid)
        with self._scan_lock:
            try:
                return self._scan_timeline(d)
            except OSError:
                return None

    def _scan_timeline(self, d: TimelineDir) -> TimelineState | None:
        # A method of its own: tests/unit/test_dirwatch.py counts the rescans through it.
        return self._reader.read(d)
