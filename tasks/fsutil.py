"""Durable file writes: a file appears complete or not at all, and survives a crash.

Standard library only: ``walbackup fetch`` imports this before it loads its
settings (a spool hit does not, but for a spool on another file system).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def fsync_dir(directory: str | Path) -> None:
    """Make a rename or link inside ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path(dest: str | Path) -> Path:
    """A fresh hidden name beside ``dest`` (same file system, so the rename is
    atomic). Random, not a count: a process killed mid-write (``kill -9`` of a
    ``restore_command``) leaves its temp file, and a later process given the
    same PID would meet it, under a count's first name, and fail."""
    dest = Path(dest)
    return dest.with_name(f".{dest.name}.{os.getpid()}.{secrets.token_hex(8)}.tmp")


@contextlib.contextmanager
def atomic_write(
    dest: str | Path, *, tmp: str | Path | None = None, durable: bool = True
) -> Iterator[BinaryIO]:
    """Write ``dest`` through ``tmp`` (default: ``temp_path(dest)``), created
    exclusively: on a clean exit it is flushed, fsynced (``durable``), renamed
    over ``dest`` and the directory fsynced; on an error it is removed and
    ``dest`` is left as it was."""
    dest = Path(dest)
    tmp = Path(tmp) if tmp is not None else temp_path(dest)
    try:
        out = open(tmp, "xb")  # noqa: SIM115 - closed below; an existing tmp is not ours to remove
    except FileExistsError:
        raise
    except OSError as exc:  # DEST's directory is missing or unwritable: name DEST, not tmp
        raise type(exc)(exc.errno, exc.strerror, str(dest)) from None
    try:
        with out:
            yield out
            out.flush()
            if durable:
                os.fsync(out.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(dest.parent)


def write_atomically(dest: str | Path, data: bytes) -> None:
    """Replace ``dest`` with ``data``, atomically and durably."""
    with atomic_write(dest) as out:
        out.write(data)
