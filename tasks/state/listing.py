"""What a WORKDIR holds on disk: its timeline directories, and a timeline directory's files.

Symlinks are never followed: a link named like a timeline or a segment is
not one (a timeline directory's other entries are listed for what they are:
one named like a segment is a damaged copy, not a hole).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import NamedTuple

from tasks.core.ids import is_hex_id
from tasks.errors import InvalidInput


class Discovery(NamedTuple):
    tenants: list[str]
    """The ``TENANT`` directories listed."""
    timelines: list[tuple[str, str]]
    """``(TENANT, TIMELINE)`` of the timeline directories in them."""
    unreadable: dict[str, str]
    """``TENANT`` directories that could not be listed, and why (``cannot_read``)."""


def cannot_read(path: Path | str, exc: OSError) -> str:
    """``exc``, met reading ``path``, in one line naming the path and the errno."""
    code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    where = "" if exc.filename in (None, str(path)) else f" on {exc.filename}"
    return f"cannot read {path}: {exc.strerror or exc} ({code}{where})"


def timeline_names(workdir: Path) -> Discovery:
    """The timeline directories of ``workdir``, ``WORKDIR/TENANT/TIMELINE``
    with valid ids; every other name is ignored. A tenant directory that
    cannot be listed is no error (``Discovery.unreadable``). Raises
    ``InvalidInput`` when ``workdir`` is no directory, or cannot be listed."""
    found = Discovery([], [], {})
    try:
        tenants = list(os.scandir(workdir))
    except (FileNotFoundError, NotADirectoryError):
        raise InvalidInput(f"workdir {workdir} is not a directory") from None
    except OSError as exc:
        raise InvalidInput(f"workdir: {cannot_read(workdir, exc)}") from None
    for tenant in tenants:
        if not (tenant.is_dir(follow_symlinks=False) and is_hex_id(tenant.name)):
            continue
        try:
            timelines = list(os.scandir(tenant.path))
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:  # its mode, its owner, a disk error: this tenant only
            found.unreadable[tenant.name] = cannot_read(tenant.path, exc)
            continue
        found.tenants.append(tenant.name)
        found.timelines.extend(
            (tenant.name, timeline.name)
            for timeline in timelines
            if timeline.is_dir(follow_symlinks=False) and is_hex_id(timeline.name)
        )
    return found


class Listing(NamedTuple):
    files: list[tuple[str, int]]
    """``(name, size)`` of the regular files."""
    others: list[tuple[str, str]]
    """``(name, what it is)`` of every other entry, symlinks included (a link
    named like a segment must never be uploaded as one): "a directory", "a
    dangling symlink", …"""


def list_files(path: Path) -> Listing:
    """What ``path`` holds. Raises ``FileNotFoundError`` when it is gone."""
    found = Listing([], [])
    with os.scandir(path) as it:
        for entry in it:
            try:
                if entry.is_file(follow_symlinks=False):
                    found.files.append((entry.name, entry.stat(follow_symlinks=False).st_size))
                else:
                    found.others.append((entry.name, _what(entry)))
            except FileNotFoundError:
                continue  # renamed or removed meanwhile; the next scan sees it
    return found


def _what(entry: os.DirEntry[str]) -> str:
    """What an entry that is no regular file is."""
    if entry.is_symlink():
        return "a symlink" if os.path.exists(entry.path) else "a dangling symlink"
    if entry.is_dir(follow_symlinks=False):
        return "a directory"
    mode = entry.stat(follow_symlinks=False).st_mode
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device" if stat.S_ISBLK(mode) or stat.S_ISCHR(mode) else "no regular file"
