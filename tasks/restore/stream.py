"""One remote object copied to ``walbackup fetch``'s DEST (a file, or stdout), checked.

A body that breaks off in flight (a connection reset or closed mid-body, a
read timeout) raises ``Retryable`` at any point of the copy, after botocore's
own attempts, which end once the headers arrive. Such a fetch exited 201,
which stops PostgreSQL's recovery, and a standby shuts down: for one
connection reset. So a file DEST reads the whole object again, as botocore
tries a request ``BODY_ATTEMPTS`` times; on stdout the bytes are out already.
"""

from __future__ import annotations

import sys
import time
from typing import BinaryIO

from tasks.errors import Retryable
from tasks.fsutil import atomic_write
from tasks.restore.ledger_check import LedgerCheck
from tasks.storage.base import CHUNK_BYTES, Hasher, RemoteStorage

BODY_ATTEMPTS = 3
"""Reads of one object whose body breaks off, in all (``DEFAULT_MAX_ATTEMPTS``'s count)."""
BODY_RETRY_S = 0.2
"""The pause before reading again, times the attempts so far."""


def fetch_key(
    storage: RemoteStorage,
    key: str,
    dest: str,
    offset: int,
    name: str,
    check: LedgerCheck | None,
) -> int:
    """Copy; ``check`` judges the bytes read before a file ``dest`` appears
    (on stdout they are out already: the exit status says). Its lookup
    starts once the object is found: a miss costs no LIST."""
    for attempt in range(1, BODY_ATTEMPTS + 1):
        with storage.open_read(key, offset) as stream:
            if check is not None and attempt == 1:
                check.look_up(name)  # its answer waits for the attempt that reads to the end
            if dest == "-":
                return copy(stream, sys.stdout.buffer, name, check)
            try:
                with atomic_write(dest) as out:
                    return copy(stream, out, name, check)  # raising leaves no DEST
            except Retryable:
                if attempt == BODY_ATTEMPTS:
                    raise
        time.sleep(BODY_RETRY_S * attempt)
    raise AssertionError("unreachable")


def copy(src: BinaryIO, dst: BinaryIO, name: str, check: LedgerCheck | None) -> int:
    hasher = Hasher(md5=False) if check is not None else None
    total = 0
    while chunk := src.read(CHUNK_BYTES):
        dst.write(chunk)
        if hasher is not None:
            hasher.update(chunk)
        total += len(chunk)
    dst.flush()
    if check is not None and hasher is not None:
        check.check(name, hasher.digest())
    return total
