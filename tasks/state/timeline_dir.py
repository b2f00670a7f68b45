"""One timeline directory read: its state file and its listing, into a
``TimelineState``, listed again only when it may have changed.

A directory is listed again only when its mtime (any create, rename or
delete inside changes it) or its state file changed, or when the last
listing could not be trusted (see ``_RACY_NS``).
"""

from __future__ import annotations

import logging
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from tasks.core.ids import TenantTimelineId
from tasks.core.segments import xlog_file_name
from tasks.core.timeline_scan import scan_entries
from tasks.state.listing import list_files
from tasks.state.state_file import STATE_FILE_NAME, read_state_file
from tasks.state.timeline_state import TimelineState, timeline_state

log = logging.getLogger("tasks.state.workdir")

_RACY_NS = 2_000_000_000
"""A listing taken less than this after the directory's mtime is not trusted
for the next scan: mtime has clock-tick (or coarser) granularity, so a second
change within the same tick would leave it unchanged (git's "racy" problem).
Watched, such a directory is rescanned every pass until then: a file still
being written when it was listed may not be closed yet (one with problems is
listed again on its next event, or at the next full scan)."""


@dataclass(frozen=True, slots=True)
class TimelineDir:
    """A timeline directory's id and paths, built once while it exists: 40,000
    ``Path`` objects a second were a tenth of a node's CPU at 10,000 timelines."""

    ttid: TenantTimelineId
    path: Path
    state_file: Path

    @classmethod
    def under(cls, workdir: Path, ttid: TenantTimelineId) -> TimelineDir:
        path = workdir / ttid.tenant_id / ttid.timeline_id
        return cls(ttid, path, path / STATE_FILE_NAME)


@dataclass(frozen=True, slots=True)
class _CacheEntry:
    dir_key: tuple[int, int]  # mtime, inode: a directory replaced under its name differs
    state_key: tuple[int, int, int] | None
    trusted: bool
    state: TimelineState


class TimelineReader:
    """Reads timeline directories, each listing kept while it can be trusted.
    Not thread-safe: the scanner's lock serialises its calls."""

    def __init__(self, default_seg_size: int) -> None:
        self.default_seg_size = default_seg_size
        self._cache: dict[TenantTimelineId, _CacheEntry] = {}
        self.untrusted: set[TenantTimelineId] = set()
        """Timelines listed too recently to trust the listing (``_RACY_NS``)."""

    def forget(self, ttid: TenantTimelineId) -> None:
        self._cache.pop(ttid, None)
        self.untrusted.discard(ttid)

    def read(self, d: TimelineDir) -> TimelineState | None:
        """The timeline's state, ``None`` if it has no directory; raises
        ``InvalidInput`` (its state file) or ``OSError`` (unreadable)."""
        ttid, path = d.ttid, d.path
        now_ns = time.time_ns()
        try:
            dir_st = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            dir_st = None
        if dir_st is None or not stat.S_ISDIR(dir_st.st_mode):
            self.forget(ttid)
            return None
        try:
            file_st = os.stat(d.state_file, follow_symlinks=False)
            state_key: tuple[int, int, int] | None = (
                file_st.st_mtime_ns, file_st.st_size, file_st.st_ino,
            )  # fmt: skip
        except FileNotFoundError:
            state_key = None

        cached = self._cache.get(ttid)
        if (
            cached is not None
            and cached.trusted
            and cached.dir_key == (dir_st.st_mtime_ns, dir_st.st_ino)
            and cached.state_key == state_key
        ):
            return cached.state

        recorded = read_state_file(d.state_file)
        seg_size = recorded.wal_seg_size if recorded else self.default_seg_size
        try:
            listing = list_files(path)
        except FileNotFoundError:
            self.forget(ttid)
            return None
        scanned = scan_entries(listing.files, seg_size, listing.others)
        state = timeline_state(ttid, path, scanned, recorded)
        if cached is None or cached.state.problems != state.problems:
            damaged = {xlog_file_name(segno, seg_size) for segno in state.damaged}
            for problem in state.problems:
                # A wrong-size segment file is a damaged copy; the rest are not backed up.
                bad = problem.split(":")[0] in damaged
                what = "damaged copy" if bad else "not backed up:"
                log.log(logging.ERROR if bad else logging.WARNING, "Timeline %s: %s %s",
                        ttid, what, path / problem)  # fmt: skip
        newest_ns = max(dir_st.st_mtime_ns, state_key[0] if state_key else 0)
        racy = now_ns - newest_ns < _RACY_NS
        self._cache[ttid] = _CacheEntry(
            (dir_st.st_mtime_ns, dir_st.st_ino), state_key, not racy and not state.problems, state
        )
        if racy:
            self.untrusted.add(ttid)
        else:
            self.untrusted.discard(ttid)
        return state
