"""The demo's simulated WAL writer: a thread feeding the same segments to every node."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from tasks.core.ids import TenantTimelineId
from tasks.dev.simulate import SegmentWritten, simulate

FIRST_SEGNO = 1  # PostgreSQL's first segment is ...0001


@dataclass
class Writer:
    """The simulated WAL writer thread and what it completed on node 1."""

    workdirs: list[Path]
    ttids: list[TenantTimelineId]
    seg_size: int
    rate: float
    stop: threading.Event = field(default_factory=threading.Event)
    last_segno: dict[str, int] = field(default_factory=dict)
    error: BaseException | None = None
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="walbackup-demo-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            simulate(
                self.workdirs,
                self.ttids,
                segments=2**40,  # until stopped
                seg_size=self.seg_size,
                rate=self.rate,
                start_segno=FIRST_SEGNO,
                stop_event=self.stop,
                on_segment=self._written,
            )
        except Exception as exc:  # shown to the user, who sees the writer stall
            self.error = exc

    def _written(self, seg: SegmentWritten) -> None:
        if seg.workdir == self.workdirs[0]:
            self.last_segno[str(seg.ttid)] = seg.segno

    def finish(self) -> None:
        self.stop.set()
        if self._thread is not None:
            self._thread.join()

    def complete_segments(self, ttid: str) -> int:
        """How many segments of ``ttid`` node 1 holds complete."""
        return self.last_segno.get(ttid, FIRST_SEGNO - 1) - FIRST_SEGNO + 1
