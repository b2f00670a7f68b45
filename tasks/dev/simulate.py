"""A WAL writer for tests, the demo and benchmarks (``walbackup simulate``).

It writes segments into node workdirs the way PostgreSQL and ``pg_receivewal``
do: ``WORKDIR/TENANT/TIMELINE/NAME.partial`` grows in 1 MiB chunks and is
renamed to ``NAME`` once it holds ``seg_size`` bytes. Every node receives the
same bytes for a segment, derived deterministically from ``(ttid, segno)`` so
that any copy, local or remote, can be checked with ``segment_matches`` or
``expected_segment_bytes``. Each segment starts with the long page header a
PostgreSQL 15 server with ``simulated_system_id(ttid)`` would write for it
(``simulated_header``), so it passes the upload's WAL header check; the rest
is random.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple

from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.core.segments import PARTIAL_SUFFIX, validate_seg_size, xlog_file_name
from tasks.core.walpage import LongHeader, make_page_header
from tasks.errors import InvalidInput
from tasks.fsutil import fsync_dir

BLOCK_SIZE = 1 << 20
"""Unit of generation and of writing; divides every valid ``seg_size``."""

PG15_MAGIC = 0xD110
PG_BLOCK_SIZE = 8192

_STRIDE = 7919
"""Odd, so block ``i`` of a segment is the seed block rotated by a distinct
offset for every ``i < 2**20``: no two blocks of a segment are equal."""


class SegmentWritten(NamedTuple):
    workdir: Path
    ttid: TenantTimelineId
    segno: int
    path: Path


def simulated_system_id(ttid: TenantTimelineId) -> int:
    """The PostgreSQL system identifier of a simulated timeline's WAL."""
    digest = hashlib.sha256(f"walbackup-simulate/{ttid}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def simulated_header(ttid: TenantTimelineId, segno: int, seg_size: int) -> LongHeader:
    """The long page header a simulated segment starts with (PostgreSQL 15, 8 KiB pages)."""
    start = Lsn.from_segment(segno, 0, seg_size)
    return LongHeader(PG15_MAGIC, 1, start, simulated_system_id(ttid), seg_size, PG_BLOCK_SIZE)


def iter_segment_blocks(ttid: TenantTimelineId, segno: int, seg_size: int) -> Iterator[bytes]:
    """The simulated content of a segment, as ``seg_size // BLOCK_SIZE`` blocks."""
    seed = random.Random(f"walbackup-simulate/{ttid}/{segno}").randbytes(BLOCK_SIZE)
    first = simulated_header(ttid, segno, seg_size)
    header = make_page_header(first, first.pageaddr)
    for i in range(validate_seg_size(seg_size) // BLOCK_SIZE):
        offset = i * _STRIDE % BLOCK_SIZE
        block = seed[offset:] + seed[:offset]
        yield header + block[len(header) :] if i == 0 else block


def expected_segment_bytes(ttid: TenantTimelineId, segno: int, seg_size: int) -> bytes:
    """The whole simulated segment in memory (``seg_size`` bytes)."""
    return b"".join(iter_segment_blocks(ttid, segno, seg_size))


def segment_matches(path: Path, ttid: TenantTimelineId, segno: int, seg_size: int) -> bool:
    """Whether the file at ``path`` is exactly the simulated segment."""
    if path.stat().st_size != seg_size:
        return False
    with path.open("rb") as f:
        blocks = iter_segment_blocks(ttid, segno, seg_size)
        return all(f.read(len(block)) == block for block in blocks)


def simulate(
    workdirs: list[Path],
    ttids: list[TenantTimelineId],
    segments: int,
    seg_size: int,
    rate: float | None = None,
    start_segno: int = 1,
    lag: dict[int, int] | None = None,
    stop_event: threading.Event | None = None,
    on_segment: Callable[[SegmentWritten], None] | None = None,
    fsync: bool = False,
) -> int:
    """Write ``segments`` segments per timeline into every workdir.

    Segments ``start_segno .. start_segno + segments - 1`` are written for each
    timeline in ``ttids`` (PostgreSQL's first segment is segno 1), in steps:
    step ``k`` writes segment ``start_segno + k`` of each timeline in turn.

    - ``rate``: segments per second per timeline; the chunks are spread evenly
      over each step so ``.partial`` files grow over time. ``None``: as fast
      as possible (a writer that cannot keep up also just goes flat out).
    - ``lag``: ``{workdir index: n}`` makes that node write, in step ``k``,
      segment ``start_segno + k - n``: it stays ``n`` segments behind, and
      ends with ``n`` segments fewer.
    - ``stop_event``: checked before every chunk; once set, the function
      returns leaving the current ``.partial`` files as they are.
    - ``on_segment``: called after each rename of a ``.partial`` to its name.
    - ``fsync``: fsync each segment before its rename and the directory after.

    Returns the number of segment files completed, over all workdirs.
    """
    validate_seg_size(seg_size)
    lag = lag or {}
    if segments < 0 or start_segno < 0:
        raise InvalidInput(f"segments ({segments}) and start_segno ({start_segno}) must be >= 0")
    if rate is not None and not rate > 0:
        raise InvalidInput(f"rate must be a positive number of segments/s, got {rate!r}")
    if any(not 0 <= i < len(workdirs) or n < 0 for i, n in lag.items()):
        raise InvalidInput(f"lag {lag!r}: keys must be workdir indexes, values >= 0")

    dirs = [[Path(wd) / t.tenant_id / t.timeline_id for t in ttids] for wd in workdirs]
    for row in dirs:
        for d in row:
            d.mkdir(parents=True, exist_ok=True)

    blocks_per_segment = seg_size // BLOCK_SIZE
    units_per_step = len(ttids) * blocks_per_segment
    started = time.monotonic()
    completed = 0

    for step in range(segments):
        for ti, ttid in enumerate(ttids):
            nodes_by_segno: dict[int, list[int]] = {}
            for wi in range(len(workdirs)):
                if step >= lag.get(wi, 0):
                    nodes_by_segno.setdefault(start_segno + step - lag.get(wi, 0), []).append(wi)
            with contextlib.ExitStack() as stack:
                writes: list[tuple[Iterator[bytes], list[BinaryIO]]] = []
                for segno, wis in nodes_by_segno.items():
                    name = xlog_file_name(segno, seg_size) + PARTIAL_SUFFIX
                    files: list[BinaryIO] = [
                        stack.enter_context((dirs[wi][ti] / name).open("wb")) for wi in wis
                    ]
                    writes.append((iter_segment_blocks(ttid, segno, seg_size), files))
                for i in range(blocks_per_segment):
                    if rate is not None:
                        unit = ti * blocks_per_segment + i
                        deadline = started + (step + unit / units_per_step) / rate
                        if not _wait_until(deadline, stop_event):
                            return completed
                    elif stop_event is not None and stop_event.is_set():
                        return completed
                    for blocks, outs in writes:
                        block = next(blocks)
                        for f in outs:
                            f.write(block)
                if fsync:
                    for _, outs in writes:
                        for f in outs:
                            f.flush()
                            os.fsync(f.fileno())

            for segno, wis in nodes_by_segno.items():
                name = xlog_file_name(segno, seg_size)
                for wi in wis:
                    final = dirs[wi][ti] / name
                    os.replace(final.with_name(name + PARTIAL_SUFFIX), final)
                    if fsync:
                        fsync_dir(final.parent)
                    completed += 1
                    if on_segment is not None:
                        on_segment(SegmentWritten(Path(workdirs[wi]), ttid, segno, final))
    return completed


def _wait_until(deadline: float, stop_event: threading.Event | None) -> bool:
    """Sleep until ``deadline`` (monotonic); ``False`` if stopped meanwhile."""
    delay = deadline - time.monotonic()
    if stop_event is not None:
        return not stop_event.wait(delay) if delay > 0 else not stop_event.is_set()
    if delay > 0:
        time.sleep(delay)
    return True
