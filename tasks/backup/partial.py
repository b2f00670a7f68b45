"""Partial segment upload: the offloader archives a quiet timeline's ``.partial`` tail (SPEC §4).

Its own node thread, every ``interval_s``: for each timeline with a
``.partial`` segment (the one at ``commit_lsn``), a changed size or mtime
marks the file dirty; once it has been dirty for ``partial_upload_timeout``
seconds, the offloader (taking the lease if it has none yet) uploads it, so
the WAL it held then is archived at most that long after it was written.

One upload (``upload``), under the lease's fencing token throughout:

1. a snapshot of the file, cut at its end LSN and zero-padded
   (``tasks.backup.partial_file``); the name ``S_END.partial`` says what it
   covers (``tasks.core.partials``);
2. ``RedisState.start_partial`` (Lua: token check, then the name recorded as
   ``uploading``), then the name added to the node's state file — both
   before a byte is sent; a stale token records and uploads nothing;
3. the upload (never overwriting different bytes, SPEC §5);
4. ``RedisState.commit_partial`` (Lua: token check, ``uploaded``,
   ``archived_lsn`` raised);
5. garbage collection (``collect``): older partials of the segment are
   deleted, then their records. So is every partial of a segment once
   ``backup_lsn`` passes it (checked each time it advances). The object
   just uploaded is never deleted.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from tasks.backup.leases import Leases
from tasks.backup.partial_file import padded_snapshot
from tasks.config import Settings
from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.core.partials import PartialObject, parse_partials, partial_object, superseded
from tasks.core.segments import PARTIAL_SUFFIX, xlog_file_name
from tasks.metrics import ARCHIVED_LSN, PARTIAL_UPLOADS
from tasks.state.redis import RedisState
from tasks.state.timeline_state import TimelineState
from tasks.state.workdir import Workdir
from tasks.storage.base import RemoteStorage, segment_key

log = logging.getLogger("walbackup.node")


@dataclass(slots=True)
class _Seen:
    """A timeline's ``.partial`` as last seen: ``(segno, mtime_ns, size)``,
    and since when (monotonic) it holds bytes not yet uploaded."""

    signature: tuple[int, int, int]
    dirty_since: float | None


class PartialBackup:
    """Not thread-safe: the partial thread calls ``round``; tests may call
    ``upload`` and ``collect`` instead, never both at once."""

    def __init__(
        self,
        settings: Settings,
        state: RedisState,
        storage: RemoteStorage,
        disk: Workdir,
        leases: Leases,
        timelines: Callable[[], dict[str, TimelineState]],
        backup_known: Callable[[str], Lsn | None],
        complain: Callable[[str, BaseException, str], None],
    ) -> None:
        self.timeout_s = settings.partial_upload_timeout
        self.state = state
        self.storage = storage
        self.disk = disk
        self.leases = leases
        self.timelines = timelines
        self.backup_known = backup_known
        self.complain = complain
        self._seen: dict[str, _Seen] = {}
        self._collected_at: dict[str, int] = {}  # ttid -> backup segno of the last collection
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def interval_s(self) -> float:
        """Stat'ing every ``.partial`` is cheap, but not free at 10,000 timelines."""
        return max(0.25, min(5.0, self.timeout_s / 20))

    def start(self, name: str) -> None:
        if self.timeout_s <= 0 or self._thread is not None:
            return  # partial upload turned off
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.round()

    def round(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        timelines = self.timelines()
        for gone in self._seen.keys() - timelines.keys():
            del self._seen[gone]
        for ttid, st in timelines.items():
            try:
                if self._due(ttid, st, now):
                    self._upload_due(ttid, st, now)
                token = self.leases.token(ttid)
                if token is not None:
                    self._collect_if_advanced(ttid, token, st.wal_seg_size)
            except Exception as exc:  # storage or Redis trouble: tried again next round
                self.complain("partial segment upload failed", exc, ttid)

    def _due(self, ttid: str, st: TimelineState, now: float) -> bool:
        """Track the ``.partial``; whether it has been dirty for the timeout."""
        if st.commit_lsn is None:
            self._seen.pop(ttid, None)
            return False
        segno = st.commit_lsn.segment_number(st.wal_seg_size)
        name = xlog_file_name(segno, st.wal_seg_size) + PARTIAL_SUFFIX
        try:
            # A string path: three ``Path`` objects per timeline per round
            # were most of this thread's CPU at 10,000 timelines.
            fst = os.stat(os.path.join(st.path, name))
        except FileNotFoundError:
            self._seen.pop(ttid, None)
            return False
        signature = (segno, fst.st_mtime_ns, fst.st_size)
        seen = self._seen.get(ttid)
        if seen is None:
            # First sight (a start, a new segment): dirty, as far as we know.
            seen = self._seen[ttid] = _Seen(signature, now)
        elif seen.signature != signature:
            seen.signature = signature
            if seen.dirty_since is None:
                seen.dirty_since = now
        return seen.dirty_since is not None and now - seen.dirty_since >= self.timeout_s

    def _upload_due(self, ttid: str, st: TimelineState, now: float) -> None:
        seen = self._seen[ttid]
        signature = seen.signature
        token = self.leases.token(ttid)
        if token is None:
            self.leases.backup(ttid)  # takes the lease if this node is the offloader
            token = self.leases.token(ttid)
        if token is None:
            seen.dirty_since = now  # another node offloads: look again in a timeout
            return
        outcome = self.upload(ttid, st, token)
        if seen.signature == signature:
            seen.dirty_since = None if outcome != "fenced" else now

    # -- one upload --------------------------------------------------------------

    def upload(self, ttid: str, st: TimelineState, token: str) -> str:
        """Upload the timeline's ``.partial`` under ``token``: ``uploaded``,
        ``unchanged`` (that much is archived already), ``empty`` (no WAL in
        it) or ``fenced`` (the token is stale: nothing recorded or sent)."""
        assert st.commit_lsn is not None
        seg_size = st.wal_seg_size
        segno = st.commit_lsn.segment_number(seg_size)
        seg_start = Lsn.from_segment(segno, 0, seg_size)
        path = self.disk.segment_path(st.ttid, segno, seg_size)
        path = path.with_name(path.name + PARTIAL_SUFFIX)
        recorded = st.commit_lsn if st.commit_lsn > seg_start else None
        with padded_snapshot(path, seg_start, seg_size, recorded, self.disk.workdir) as snap:
            if snap is None:
                return "empty"
            tmp, end = snap
            obj = partial_object(segno, end, seg_size)
            before = self.state.start_partial(ttid, token, self.leases.ttl_ms, obj.name)
            if before is None:
                log.warning("Timeline %s: partial %s not uploaded: lease %s is stale",
                            ttid, obj.name, token)  # fmt: skip
                self.leases.forget(ttid, token)
                return "fenced"
            if before.get(obj.name) == "uploaded":
                return "unchanged"
            self._remember(st.ttid, add=[obj.name])
            self.storage.upload_file(segment_key(st.ttid, obj.name), tmp, seg_size)
        recorded_now = self.state.commit_partial(ttid, token, obj.name, end)
        if recorded_now is None:
            log.warning("Timeline %s: commit of partial %s refused: lease %s is stale",
                        ttid, obj.name, token)  # fmt: skip
            self.leases.forget(ttid, token)
            return "fenced"
        PARTIAL_UPLOADS.inc()
        archived = max(end, self.backup_known(ttid) or Lsn(0))
        ARCHIVED_LSN.labels(ttid).set(int(archived))
        log.info("Timeline %s: partial segment %s archived (WAL up to %s)", ttid, obj.name, end)
        self.collect(ttid, seg_size, recorded_now, obj)
        return "uploaded"

    # -- garbage collection ---------------------------------------------------------

    def _collect_if_advanced(self, ttid: str, token: str, seg_size: int) -> None:
        """After ``backup_lsn`` moved to a new segment: delete the partials it passed."""
        backup = self.backup_known(ttid)
        if backup is None:
            return
        segno = backup.segment_number(seg_size)
        if self._collected_at.get(ttid) == segno:
            return
        if self.state.renew_lease(ttid, token, self.leases.ttl_ms):
            self.collect(ttid, seg_size, self.state.partials(ttid), None)
        self._collected_at[ttid] = segno

    def collect(
        self,
        ttid: str,
        seg_size: int,
        recorded: dict[str, str],
        current: PartialObject | None,
    ) -> list[str]:
        """Delete the superseded partials among those recorded in Redis and
        in the state file (``tasks.core.partials.superseded``); their names."""
        parsed = TenantTimelineId.parse(ttid)
        mine = self.disk.read_state(parsed)
        names = set(recorded) | set(mine.partial_uploads if mine else ())
        backup = self.backup_known(ttid) or Lsn(0)
        doomed = [p.name for p in superseded(parse_partials(names, seg_size), current, backup)]
        for name in doomed:
            self.storage.delete(segment_key(parsed, name))
        if doomed:
            self.state.forget_partials(ttid, doomed)
            self._remember(parsed, drop=doomed)
            log.info("Timeline %s: deleted superseded partial(s) %s", ttid, ", ".join(doomed))
        return doomed

    def _remember(
        self, ttid: TenantTimelineId, add: Sequence[str] = (), drop: Sequence[str] = ()
    ) -> None:
        """The state file's ``partial_uploads``, with ``add`` and without ``drop``."""

        def change(names: tuple[str, ...]) -> tuple[str, ...]:
            kept = [n for n in names if n not in drop]
            return tuple(kept + [n for n in add if n not in kept])

        self.disk.update_state(
            ttid, lambda s: replace(s, partial_uploads=change(s.partial_uploads))
        )
