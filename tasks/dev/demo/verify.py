"""The demo's final check: every complete segment written is in remote storage, byte-identical.

The reference is the simulator's deterministic bytes, not a node's copy: with
WAL removal on (as the demo runs), the nodes no longer hold what they archived.
The check starts where the archive starts: ``walbackup retain`` during the demo
deletes segments below that on purpose.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from rich.console import Console

from tasks.archive.retained import read_archive_start
from tasks.core.ids import TenantTimelineId
from tasks.core.segments import xlog_file_name
from tasks.dev.demo.writer import FIRST_SEGNO, Writer
from tasks.dev.simulate import iter_segment_blocks
from tasks.errors import NotFound
from tasks.storage import open_storage, segment_key

SHOWN = 10
"""Failed segments listed by name; the rest are counted."""


@dataclass(frozen=True)
class Verdict:
    """Segments compared, and those missing remotely or different from what was written
    (``TENANT/TIMELINE SEGMENT``); ``retained``: those below the archive's start, not checked."""

    checked: int
    missing: list[str]
    different: list[str]
    retained: int = 0

    @property
    def ok(self) -> bool:
        return self.checked > 0 and not self.missing and not self.different


def verify(
    remote_url: str, ttids: list[TenantTimelineId], seg_size: int, writer: Writer
) -> Verdict:
    """Every complete segment the writer wrote, compared with the remote copy."""
    storage = open_storage(remote_url)
    checked = retained = 0
    missing: list[str] = []
    different: list[str] = []
    for ttid in ttids:
        last = FIRST_SEGNO + writer.complete_segments(str(ttid))
        start = read_archive_start(storage, ttid)
        first = FIRST_SEGNO if start is None else max(FIRST_SEGNO, start.segment_number(seg_size))
        retained += max(0, min(first, last) - FIRST_SEGNO)
        for segno in range(first, last):
            name = xlog_file_name(segno, seg_size)
            checked += 1
            try:
                with storage.open_read(segment_key(ttid, name)) as remote:
                    same = _same_bytes(iter_segment_blocks(ttid, segno, seg_size), remote)
            except NotFound:
                missing.append(f"{ttid} {name}")
                continue
            if not same:
                different.append(f"{ttid} {name}")
    return Verdict(checked, missing, different, retained)


def report(console: Console, verdict: Verdict, timelines: int, logs: Path) -> int:
    """Print the verdict; the demo's exit code (0 only if the copy is verified)."""
    if verdict.retained:
        console.print(
            f"{verdict.retained} segments below the archive's start "
            "(deleted by walbackup retain) not checked"
        )
    if verdict.ok:
        console.print(
            f"[green]verdict: OK[/] - all {verdict.checked} complete segments of "
            f"{_plural(timelines, 'timeline')} are in remote storage, "
            "byte-identical to what was written"
        )
        return 0
    if verdict.checked == 0:
        console.print("[red]verdict: FAILED[/] - no complete segment was written")
    else:
        console.print(
            f"[red]verdict: FAILED[/] - of {verdict.checked} segments, "
            f"{len(verdict.missing)} missing remotely, {len(verdict.different)} different"
        )
        failed = verdict.missing + verdict.different
        for name in failed[:SHOWN]:
            console.print(f"  {name}", highlight=False)
        if len(failed) > SHOWN:
            console.print(f"  ... and {len(failed) - SHOWN} more")
    console.print(f"logs: {logs}")
    return 1


def _same_bytes(blocks: Iterator[bytes], stream: IO[bytes]) -> bool:
    for block in blocks:
        if stream.read(len(block)) != block:
            return False
    return stream.read(1) == b""


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
