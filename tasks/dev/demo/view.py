"""The demo's live view: per timeline commit_lsn, backup_lsn, lag, offloader, segments backed up.

Progress is read from Redis as ``walbackup status`` reads it
(``tasks.backup.status``). On a terminal the table is redrawn in place;
without one (CI, a pipe) it is printed every ``PLAIN_PRINT_INTERVAL_S``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import redis
from rich.console import Console, Group
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from tasks.backup.status import TimelineStatus, timeline_status
from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.core.segments import SEGMENT_NAME_RE
from tasks.dev.demo.processes import NODE_IDS, Cluster
from tasks.dev.demo.writer import FIRST_SEGNO, Writer

PLAIN_PRINT_INTERVAL_S = 5.0
"""Without a terminal (CI, a pipe), progress is printed at this interval."""


@dataclass
class View:
    """What the view shows: the timelines' status, what the writer completed,
    the phase the demo is in (set by ``run``) and the time since the start."""

    ttids: list[TenantTimelineId]
    seg_size: int
    heartbeat_timeout: float
    console: Console
    cluster: Cluster
    writer: Writer
    phase: str = "starting"
    started: float = field(default_factory=time.monotonic)

    def rows(self) -> list[TimelineStatus]:
        """The timelines' status, in ``ttids`` order; none while Redis fails."""
        assert self.cluster.state is not None
        try:
            return timeline_status(
                self.cluster.state, [str(t) for t in self.ttids], self.heartbeat_timeout
            )
        except redis.RedisError:
            return []

    def drained(self, rows: list[TimelineStatus]) -> bool:
        """Whether ``backup_lsn`` covers every segment the writer completed."""
        return len(rows) == len(self.ttids) and all(
            self._segments_below(row.backup_lsn) >= self.writer.complete_segments(str(ttid))
            for ttid, row in zip(self.ttids, rows, strict=True)
        )

    def render(self, rows: list[TimelineStatus]) -> Group:
        elapsed = time.monotonic() - self.started
        head = Text.assemble(
            ("walbackup demo", "bold"),
            f"  {self.phase}  {elapsed:5.0f} s   ",
            ("Flower ", "dim"),
            self.cluster.flower_url or "-",
        )
        table = Table(
            "timeline",
            "commit_lsn",
            "backup_lsn",
            "archived",
            "lag",
            "offloader",
            "backed up",
            "on nodes",
            box=None,
        )
        total_done = total_written = 0
        for ttid, row in zip(self.ttids, rows, strict=False):
            written = self.writer.complete_segments(str(ttid))
            done = min(written, self._segments_below(row.backup_lsn))
            total_done += done
            total_written += written
            table.add_row(
                short(ttid),
                "-" if row.commit_lsn is None else str(row.commit_lsn),
                "-" if row.backup_lsn is None else str(row.backup_lsn),
                "-" if row.archived_lsn is None else str(row.archived_lsn),
                _human_bytes(row.lag_bytes),
                str(row.offloader or "-"),
                f"{done}/{written}",
                self._held(ttid),
            )
        bar = ProgressBar(total=max(total_written, 1), completed=total_done, width=40)
        summary = Table.grid(padding=(0, 1))
        summary.add_row(
            Text("progress"), bar, Text(f"{total_done}/{total_written} segments backed up")
        )
        parts: list[Any] = [head, table, summary]
        dead = self.cluster.children.exited()
        if dead:
            logs = self.cluster.root / "logs"
            parts.append(Text(f"exited: {', '.join(dead)} (see {logs})", style="red"))
        if self.writer.error is not None:
            parts.append(Text(f"WAL writer failed: {self.writer.error}", style="red"))
        return Group(*parts)

    def _held(self, ttid: TenantTimelineId) -> str:
        """Complete segment files each node still holds (WAL removal keeps
        only what is not archived yet, plus the keep-back)."""
        counts = []
        for n in NODE_IDS:
            path = self.cluster.workdir(n) / ttid.tenant_id / ttid.timeline_id
            try:
                counts.append(sum(1 for e in os.scandir(path) if SEGMENT_NAME_RE.fullmatch(e.name)))
            except OSError:
                counts.append(0)
        low, high = min(counts), max(counts)
        return f"{low} files" if low == high else f"{low}-{high} files"

    def _segments_below(self, backup_lsn: Lsn | None) -> int:
        if backup_lsn is None:
            return 0
        return max(0, backup_lsn.segment_number(self.seg_size) - FIRST_SEGNO)


class Refresh:
    """Redraws the view (``force``: print it even between plain intervals)."""

    def __init__(self, view: View, live: Any) -> None:
        self.view, self.live = view, live
        self.last_print = 0.0

    def __call__(self, force: bool = False) -> None:
        shown = self.view.render(self.view.rows())
        if self.live is not None:
            self.live.update(shown, refresh=True)
        elif force or time.monotonic() - self.last_print >= PLAIN_PRINT_INTERVAL_S:
            self.last_print = time.monotonic()
            self.view.console.print(shown)


@contextmanager
def display(view: View) -> Iterator[Refresh]:
    """A live view on a terminal; periodic prints otherwise (CI, pipes)."""
    if not view.console.is_terminal:
        yield Refresh(view, None)
        return
    from rich.live import Live

    with Live(console=view.console, refresh_per_second=4, transient=False) as live:
        refresh = Refresh(view, live)
        refresh()
        yield refresh


def short(ttid: TenantTimelineId) -> str:
    """``TENANT/TIMELINE`` cut to 8 characters each, for narrow columns."""
    return f"{ttid.tenant_id[:8]}…/{ttid.timeline_id[:8]}…"


def _human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    if n < 1 << 10:
        return f"{n} B"
    if n < 1 << 20:
        return f"{n / 1024:.0f} KiB"
    return f"{n / (1 << 20):.1f} MiB"
