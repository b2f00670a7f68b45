"""A node worker's memory under glibc: fewer malloc arenas, freed memory given back.

A node worker runs a dozen upload threads reading segments in 1 MiB
chunks. glibc gives each thread that allocates concurrently an arena of its
own (up to 8 per core) and keeps what is freed in it: a node with 10,000
timeline dirs held 174 MiB after a fleet run (bench/fleet.py, rss shape),
139 MiB idle. Two arenas (unless ``MALLOC_ARENA_MAX`` says otherwise) and a
``malloc_trim`` every few seconds lower both (bench/README.md has the
figures). Elsewhere (no glibc) both are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import time
from functools import lru_cache

M_ARENA_MAX = -8  # glibc's malloc.h
NODE_ARENAS = 2


@lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt, libc.malloc_trim  # noqa: B018 - glibc has both, musl not mallopt
    except (OSError, AttributeError):
        return None
    return libc


def limit_arenas() -> None:
    """Before the worker starts its threads: at most ``NODE_ARENAS`` arenas,
    unless ``MALLOC_ARENA_MAX`` (read by glibc itself) is set."""
    libc = _libc()
    if libc is not None and "MALLOC_ARENA_MAX" not in os.environ:
        libc.mallopt(M_ARENA_MAX, NODE_ARENAS)


_last_trim = 0.0


def trim(min_interval_s: float = 5.0) -> None:
    """Give freed memory back to the system (``malloc_trim``: ~1 ms for a
    fragmented 60 MB heap here), at most once per ``min_interval_s``; one
    caller thread."""
    global _last_trim
    libc = _libc()
    if libc is not None and time.monotonic() - _last_trim >= min_interval_s:
        _last_trim = time.monotonic()
        libc.malloc_trim(0)
