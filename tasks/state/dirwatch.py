"""inotify on a WORKDIR: which timeline directories changed since the last look.

A node that rescans 1,000 timeline directories ten times a second spent a
quarter of a core doing nothing (two ``stat`` and a ``scandir`` per directory
a pass: bench/README.md, fleet). With a watch on the WORKDIR, on each tenant
directory and on each timeline directory, a pass reads the kernel's event
queue instead and rescans only what it names.

What the watches see: a file or directory created, removed, renamed in or
out, closed after writing, or its attributes changed (``chmod``, ``touch``);
the watched directory itself removed or moved away (its watch is dropped:
one under the same name again is watched anew). Not seen: writes into a file
that stays open (a ``.partial`` being filled), which no scan needs. An event
queue that overflowed, or a watch that could not be added for want of watches
(the ``fs.inotify.max_user_watches`` limit), is reported: the caller falls
back to full scans. A directory that refuses its own watch (``EACCES``: its
mode) is reported as such: the caller rescans that one each pass.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from inotify_simple import INotify, flags

log = logging.getLogger(__name__)

Key = tuple[str, ...]
"""``()`` the WORKDIR, ``(TENANT,)`` a tenant, ``(TENANT, TIMELINE)`` a timeline."""

_SELF = flags.DELETE_SELF | flags.MOVE_SELF
_LAYOUT = flags.CREATE | flags.DELETE | flags.MOVED_FROM | flags.MOVED_TO | _SELF
_TIMELINE = _LAYOUT | flags.CLOSE_WRITE | flags.ATTRIB

OUT_OF_WATCHES = frozenset({errno.ENOSPC, errno.EMFILE, errno.ENOMEM})
"""What ``inotify_add_watch`` says when the node is out of watches (or of the
kernel memory for them), whatever the directory: inotify is of no use then."""


@dataclass
class Changes:
    timelines: set[tuple[str, str]] = field(default_factory=set)
    """Timeline directories with an event."""
    layout: bool = False
    """The WORKDIR or a tenant directory changed: timelines may have come or gone."""
    lost: bool = False
    """Events were lost (the queue overflowed): only a full scan can tell."""


@dataclass
class Synced:
    added: set[tuple[str, str]] = field(default_factory=set)
    """Timeline directories watched from now on: list them after this."""
    rediscover: bool = False
    """Directories may have come meanwhile: discover again soon."""
    unwatched: dict[Key, str] = field(default_factory=dict)
    """Directories that refused a watch for a reason of their own (its
    mode), and that reason: without a watch from now on (each ``sync``
    tries again)."""


class DirWatch:
    """The watches of one WORKDIR. Not thread-safe: one scanner uses it."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()  # a WORKDIR that is a symlink: its target
        self._inotify = INotify(nonblocking=True)
        self._keys: dict[int, Key] = {}
        self._wds: dict[Key, int] = {}
        try:
            self.watch(())
        except OSError:
            self.close()
            raise

    def watch(self, key: Key) -> None:
        """Watch the directory ``key`` names (again: a directory made anew
        under the same name gets a new watch). Raises ``OSError``: gone, or
        the watch limit reached."""
        # The WORKDIR's own ATTRIB: a chmod of it (or of a tenant) is seen at once.
        mask = _TIMELINE if len(key) == 2 else _LAYOUT | flags.ONLYDIR
        mask |= flags.ATTRIB if not key else 0
        wd = self._inotify.add_watch(self.root.joinpath(*key), mask | flags.DONT_FOLLOW)
        old = self._wds.get(key)
        if old is not None and old != wd:
            self._drop(old)  # it follows the directory that was moved away
        self._wds[key] = wd
        self._keys[wd] = key

    def _drop(self, wd: int) -> None:
        self._keys.pop(wd, None)
        with contextlib.suppress(OSError):  # the kernel dropped it with the directory
            self._inotify.rm_watch(wd)

    def forget(self, key: Key) -> None:
        """Stop watching ``key``; a directory already gone lost its watch."""
        wd = self._wds.pop(key, None)
        if wd is not None:
            self._drop(wd)

    def sync(
        self, tenants: Iterable[str], timelines: Iterable[tuple[str, str]], *, refresh: bool
    ) -> Synced:
        """Watch the WORKDIR, ``tenants`` and ``timelines`` (a discovery's),
        and nothing else; ``refresh``: add every watch again, not only the
        missing ones (a directory replaced under the same name while its
        event was lost). Raises ``OSError`` when the node is out of watches
        (``OUT_OF_WATCHES``)."""
        wanted: set[Key] = {(), *((tenant,) for tenant in tenants), *timelines}
        for key in self._wds.keys() - wanted:
            self.forget(key)
        synced = Synced()
        for key in sorted(wanted if refresh else wanted - self._wds.keys(), key=len):
            known = self._wds.get(key)
            try:
                self.watch(key)
            except (FileNotFoundError, NotADirectoryError):
                synced.rediscover = True  # gone meanwhile: the next discovery tells
                continue
            except OSError as exc:
                if exc.errno in OUT_OF_WATCHES:
                    raise
                self.forget(key)  # none rather than one that may follow an older directory
                synced.unwatched[key] = os.strerror(exc.errno) if exc.errno else str(exc)
                continue
            if self._wds[key] == known:
                continue
            if len(key) == 1:
                # A timeline made in this tenant after its listing and before
                # its watch was added has no event: list the tenants again.
                synced.rediscover = True
            elif len(key) == 2:
                synced.added.add((key[0], key[1]))
        return synced

    def changes(self) -> Changes:
        """What the events queued since the last call name; never blocks."""
        found = Changes()
        for event in self._inotify.read(timeout=0):
            if event.mask & flags.Q_OVERFLOW:
                found.lost = True
                continue
            key = self._keys.get(event.wd)
            if key is None:
                continue  # a watch already forgotten
            if event.mask & (flags.IGNORED | flags.MOVE_SELF):
                # The directory is gone (or unmounted, or moved away: its
                # watch would follow it): so is its watch.
                self._drop(event.wd)
                if self._wds.get(key) == event.wd:
                    del self._wds[key]
            if len(key) == 2:
                found.timelines.add((key[0], key[1]))
                if event.mask & (_SELF | flags.IGNORED):
                    found.layout = True
            else:
                found.layout = True
        return found

    def close(self) -> None:
        self._inotify.close()


def open_watch(root: Path) -> DirWatch | None:
    """A watch on ``root``, or ``None`` (logged) where inotify is not to be
    had; ``None`` unlogged when ``root`` is no directory (the first scan says so)."""
    if not root.is_dir():
        return None
    try:
        return DirWatch(root)
    except (OSError, AttributeError) as exc:  # AttributeError: a libc without inotify
        reason = os.strerror(exc.errno) if isinstance(exc, OSError) and exc.errno else exc
        log.warning(
            "WORKDIR %s: no inotify watch (%s); scanning every timeline directory each pass",
            root, reason,
        )  # fmt: skip
        return None
