"""The offloader's archive upkeep, in a node thread of its own: ledger pages and scrub passes.

Every second, for each timeline this node offloads, the ledger entries that
commits left in Redis are written to a page in the bucket once enough have
gathered or the oldest has waited long enough (``tasks.archive.flush``), and
new timeline history files are archived (``tasks.backup.history``).
Beat's ``walbackup.scrub_all`` asks each offloader, every ``scrub_interval``,
to scrub its timelines (``request``): the passes run here, not in the upload
pool (``tasks.archive.scrubber``). ``heal`` serves another offloader's
request to upload a segment this node holds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from tasks.archive.flush import LedgerFlusher
from tasks.archive.heal import heal_from_copy
from tasks.archive.ledger_store import LedgerStore
from tasks.archive.scrubber import DeepBudget, HealElsewhere, Scrubber
from tasks.archive.survey import ledger_for
from tasks.backup.history import HistoryFiles
from tasks.config import Settings
from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.logutil import Complaints
from tasks.metrics import ARCHIVE_OPEN_PROBLEMS, ARCHIVE_UPKEEP_ERRORS, ARCHIVE_VERIFIED_LSN
from tasks.state.redis import RedisState
from tasks.state.timeline_state import TimelineState
from tasks.state.workdir import Workdir
from tasks.storage.base import RemoteStorage

log = logging.getLogger("walbackup.scrub")

TICK_S = 1.0
FINAL_FLUSH_S = 5.0


class ArchiveKeeper:
    def __init__(
        self,
        settings: Settings,
        state: RedisState,
        storage: RemoteStorage,
        disk: Workdir,
        timelines: Callable[[], dict[str, TimelineState]],
        offloaded: Callable[[], dict[str, Lsn]],
        heal_elsewhere: HealElsewhere,
        complain: Complaints,
    ) -> None:
        assert settings.node_id is not None
        self.node_id = settings.node_id
        self.state = state
        self.disk = disk
        self.timelines = timelines
        self.offloaded = offloaded
        """Timelines this node is the elected offloader of -> their backup_lsn."""
        self.complain = complain
        self.store = LedgerStore(storage)
        self.flusher = LedgerFlusher(self.node_id, state, self.store, self._local_copy)
        self.scrubber = Scrubber(
            state,
            self.flusher,
            DeepBudget(settings.scrub_deep_rate),
            self._local_copy,
            heal_elsewhere,
        )
        self.history = HistoryFiles(state, storage)
        self._requested: set[str] = set()
        self._gauged: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, name: str) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._final_flush()

    def _final_flush(self) -> None:
        """Pages for what was committed since the last flush, before the node
        lets its leases go, within ``FINAL_FLUSH_S``: an archive that
        outlives its cluster (the demo's, a decommissioned one) then has
        every committed segment in its ledger (``walbackup verify`` with
        Redis gone checks the range the pages record)."""
        deadline = time.monotonic() + FINAL_FLUSH_S
        for ttid, backup_lsn in list(self.offloaded().items()):  # heartbeats may change it
            if time.monotonic() > deadline:
                log.warning("ledger flush at shutdown: out of time; the next pass flushes the rest")
                return
            try:  # Redis or the storage gone: the next offloader's pass flushes it
                st = self.timelines().get(ttid)
                start = self._start(ttid, st) if st is not None else None
                if st is not None and start is not None:
                    self.flusher.flush(st.ttid, st.wal_seg_size, backup_lsn, start)
            except Exception as exc:
                self.complain("ledger flush at shutdown failed", exc, ttid)
                return  # one failure is enough: the node's shutdown must go on

    def request(self, ttids: Iterable[str]) -> int:
        """Scrub these timelines soon (those this node offloads); how many."""
        mine = self.offloaded()
        wanted = [t for t in ttids if t in mine]
        with self._lock:
            self._requested.update(wanted)
        self._wake.set()
        return len(wanted)

    def heal(self, ttid: str, segno: int, seg_size: int) -> bool:
        """Upload our copy of ``segno`` again if it is what the ledger recorded."""
        parsed = TenantTimelineId.parse(ttid)
        entries, _ = ledger_for(self.store, self.state, parsed, seg_size, segno, segno + 1)
        healed = heal_from_copy(
            self.scrubber.storage, self.scrubber.local_copy, parsed, segno, seg_size,
            entries.get(segno),
        )  # fmt: skip
        outcome = {
            "uploaded": "uploaded again from this node's copy",
            "intact": "archived intact after all (healed meanwhile?): nothing done",
            None: "NOT healed (no matching copy)",
        }
        log.warning(
            "Timeline %s: segno %d %s on another offloader's request", ttid, segno, outcome[healed]
        )
        return healed is not None

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(TICK_S)
            self._wake.clear()
            mine = self.offloaded()
            self._drop_gauges(mine)
            for ttid, backup_lsn in mine.items():
                if self._stop.is_set():
                    return
                with self._lock:
                    scrub = ttid in self._requested
                    self._requested.discard(ttid)
                try:
                    self._upkeep(ttid, backup_lsn, scrub=scrub)
                except Exception as exc:  # one timeline's storage trouble must not stop the rest
                    ARCHIVE_UPKEEP_ERRORS.inc()  # WalbackupArchiveUpkeepFailing: no silent scrub
                    self.complain("archive upkeep failed", exc, ttid)

    def _upkeep(self, ttid: str, backup_lsn: Lsn, *, scrub: bool) -> None:
        st = self.timelines().get(ttid)
        if st is None:
            return
        self.history.archive(st)
        seg_size = st.wal_seg_size
        if not scrub and not self.flusher.due(ttid, backup_lsn.segment_number(seg_size)):
            return
        start = self._start(ttid, st)
        if start is None:
            return
        if scrub:
            self.scrubber.run(st.ttid, seg_size, backup_lsn, start)
            self._gauged.add(ttid)
        else:
            self.flusher.flush(st.ttid, seg_size, backup_lsn, start)

    def _start(self, ttid: str, st: TimelineState) -> int | None:
        """The archive's first segment: the timeline's start (Redis, else the
        state file), or where retention moved it."""
        record = self.state.timeline(ttid)
        start_lsn = record.timeline_start_lsn or st.timeline_start_lsn or st.local_start_lsn
        if start_lsn is None:
            return None
        start = start_lsn.segment_number(st.wal_seg_size)
        retained = record.archive_start_lsn
        return start if retained is None else max(start, retained.segment_number(st.wal_seg_size))

    def _drop_gauges(self, mine: dict[str, Lsn]) -> None:
        """Only the offloader exports a timeline's verified LSN."""
        self.flusher.keep_only(mine)
        self.history.forget(set(mine))
        for ttid in self._gauged - mine.keys():
            self._gauged.discard(ttid)
            ARCHIVE_VERIFIED_LSN.remove(ttid)
            ARCHIVE_OPEN_PROBLEMS.remove(ttid)

    def _local_copy(self, ttid: TenantTimelineId, segno: int) -> Path | None:
        st = self.timelines().get(str(ttid))
        if st is None:
            return None
        path = self.disk.segment_path(ttid, segno, st.wal_seg_size)
        return path if path.is_file() else None
