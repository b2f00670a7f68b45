"""This node's copies of the segments still to back up: their SHA-256, published
for the agreement check (SPEC §4), and the copies found damaged.

A copy is *damaged* when its file has a segment's name but the wrong size (the
directory scan says so), cannot be read, has no valid WAL page header for it
(checked here as it is hashed, and before upload: ``tasks.backup.walheader``),
or was outvoted by the other nodes' copies at upload time. A damage mark lasts
while the file is unchanged (same size, mtime and inode): a repaired or
replaced file is judged again. The lowest damaged segment at or above
backup_lsn goes out in the node's heartbeat (``PeerInfo.damaged_lsn``), which
keeps the node from being elected offloader while another node holds good
copies.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
from collections.abc import Container, Mapping
from pathlib import Path

import redis

from tasks.core.lsn import Lsn
from tasks.core.segments import xlog_file_name
from tasks.core.walpage import LONG_HEADER_BYTES, check_long_header
from tasks.errors import InvalidWalHeader
from tasks.metrics import DAMAGED_SEGMENTS, INVALID_WAL_HEADERS
from tasks.state.redis import RedisState
from tasks.state.timeline_state import TimelineState
from tasks.storage.base import CHUNK_BYTES

log = logging.getLogger("walbackup.copies")

DIGEST_AHEAD = 64
"""Segments above backup_lsn whose digest a node publishes: the upload window
and then some; a node far ahead of the backup does not flood Redis."""

DIGEST_BUDGET_BYTES = 256 << 20
"""Bytes hashed per ``refresh`` call, so one call never runs for long."""

PUBLISH_EVERY = 16
"""Digests published per round trip while hashing."""

StatKey = tuple[int, int, int]


def stat_key(path: Path) -> StatKey | None:
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino)


class Copies:
    """Thread-safe."""

    def __init__(self, node_id: int, state: RedisState, *, header_check: bool = True) -> None:
        self.node_id = node_id
        self.state = state
        self.header_check = header_check
        """``WALBACKUP_WAL_HEADER_CHECK``: check each copy's header as it is hashed."""
        self._checked_system_id: dict[str, int | None] = {}
        """Per timeline, the system id its hashed copies' headers were checked
        against (``refresh`` only, in one thread)."""
        self._lock = threading.Lock()
        self._digests: dict[str, dict[int, tuple[StatKey, str]]] = {}
        self._damaged: dict[str, dict[int, tuple[StatKey | None, str]]] = {}
        self._gauged: set[str] = set()
        self._reported: dict[str, set[int]] = {}
        self._republish = False

    def mark_damaged(self, ttid: str, segno: int, path: Path, reason: str) -> None:
        """Record ``reason`` against the copy at ``path``; logs an ERROR the first time."""
        key = stat_key(path)
        with self._lock:
            marks = self._damaged.setdefault(ttid, {})
            new = marks.get(segno) != (key, reason)
            marks[segno] = (key, reason)
        if new:
            log.error(
                "Timeline %s: node %s's copy %s is damaged: %s", ttid, self.node_id, path, reason
            )

    def damaged_lsn(self, st: TimelineState, backup_lsn: Lsn | None) -> Lsn | None:
        """Start of the lowest damaged copy at or above ``backup_lsn``; sets the
        timeline's ``local_damaged_segments`` gauge."""
        ttid = str(st.ttid)
        if not st.damaged and not (
            ttid in self._damaged or ttid in self._gauged or ttid in self._reported
        ):
            return None  # nearly every timeline, every heartbeat round
        floor = backup_lsn.segment_number(st.wal_seg_size) if backup_lsn is not None else 0
        damaged = {s for s in st.damaged if s >= floor}
        with self._lock:
            marks = self._damaged.get(ttid, {})
            for segno, (key, _) in list(marks.items()):
                path = st.path / xlog_file_name(segno, st.wal_seg_size)
                if segno < floor or stat_key(path) != key:
                    del marks[segno]  # backed up by another node, or the file changed
                else:
                    damaged.add(segno)
            if not marks:
                self._damaged.pop(ttid, None)
        self._report(ttid, damaged, st)
        if damaged or ttid in self._gauged:
            DAMAGED_SEGMENTS.labels(timeline=ttid).set(len(damaged))
            if damaged:
                self._gauged.add(ttid)
            else:
                self._gauged.discard(ttid)
        return Lsn.from_segment(min(damaged), 0, st.wal_seg_size) if damaged else None

    def _report(self, ttid: str, damaged: set[int], st: TimelineState) -> None:
        """Newly damaged copies become the timeline's ``last_error``."""
        new = damaged - self._reported.get(ttid, set())
        if damaged:
            self._reported[ttid] = damaged
        else:
            self._reported.pop(ttid, None)
        if new and st.foreign_seg_size is None:  # else: the setting's error (Heartbeats)
            segno = min(new)
            with self._lock:
                reason = self._damaged.get(ttid, {}).get(segno, (None, "wrong size"))[1]
            name = xlog_file_name(segno, st.wal_seg_size)
            with contextlib.suppress(redis.RedisError):
                self.state.record_error(
                    ttid, f"node {self.node_id}: damaged copy of {name}: {reason}"
                )

    def republish(self) -> None:
        """Redis may have lost the published digests: the next ``refresh``
        publishes every current one again."""
        self._republish = True

    def publish_own(self, ttid: str, segno: int, path: Path, hexdigest: str) -> None:
        """The offloader's digest, computed by its upload: published for the
        node that may take over the upload, without hashing the file again."""
        key = stat_key(path)
        if key is None:
            return
        with self._lock:
            self._digests.setdefault(ttid, {})[segno] = (key, hexdigest)
        self.state.publish_digests(self.node_id, [(ttid, segno, hexdigest)])

    def forget_below(self, ttid: str, end_segno: int) -> int:
        """Segments below ``end_segno`` were deleted from this node: withdraw
        the digests it still publishes for them. Returns how many."""
        with self._lock:
            known = self._digests.get(ttid, {})
            gone = [s for s in known if s < end_segno]
            for s in gone:
                del known[s]
        self.state.publish_digests(self.node_id, [], [(ttid, s) for s in gone])
        return len(gone)

    def refresh(
        self,
        timelines: Mapping[str, TimelineState],
        backup: Mapping[str, Lsn | None],
        uploading: Container[str] = frozenset(),
    ) -> int:
        """Hash the complete segments from backup_lsn (or the first held) up to
        ``DIGEST_AHEAD`` further that have no current digest, publish them,
        and withdraw digests of segments now backed up or gone. Timelines in
        ``uploading`` (this node holds their lease; asked before each
        segment, so a lease taken meanwhile stops the hashing) are hashed by
        their uploads (``publish_own``).
        Returns the number of segments hashed.

        Timelines go in id order, the order in which their offloaders take
        up new WAL (``NewWal``), and digests are published ``PUBLISH_EVERY``
        at a time: an offloader's upload waits for them (``Agreement``), and
        a burst of a thousand timelines' segments waited for the whole
        budget's hashing before."""
        budget = DIGEST_BUDGET_BYTES
        fresh: list[tuple[str, int, str]] = []
        stale: list[tuple[str, int]] = []
        hashed = 0
        republish, self._republish = self._republish, False
        if republish:
            with self._lock:
                fresh = [
                    (ttid, segno, hexdigest)
                    for ttid, known in self._digests.items()
                    for segno, (_, hexdigest) in known.items()
                ]
        for ttid in sorted(timelines):
            st = timelines[ttid]
            if st.commit_lsn is None or st.local_start_lsn is None:
                continue
            seg = st.wal_seg_size
            lsn = backup.get(ttid)
            lo = max(st.local_start_lsn.segment_number(seg), lsn.segment_number(seg) if lsn else 0)
            hi = min(st.commit_lsn.segment_number(seg), lo + DIGEST_AHEAD)
            with self._lock:
                known = self._digests.setdefault(ttid, {})
                stale += [(ttid, s) for s in known if s < lo or s >= hi]
                for s in [s for s in known if s < lo or s >= hi]:
                    del known[s]
            # The system id became known (or changed) since these were hashed.
            recheck = self.header_check and self._checked_system_id.get(ttid) != st.system_id
            for segno in range(lo, hi):
                if budget <= 0 or ttid in uploading:
                    break
                path = st.path / xlog_file_name(segno, seg)
                key = stat_key(path)
                with self._lock:
                    current = known.get(segno)
                if key is None:
                    continue
                if current is not None and current[0] == key:
                    if recheck and key[0] == seg and (first := _first_page(path)) is not None:
                        self._check_header(ttid, segno, path, first, st)
                    continue
                try:
                    hexdigest, first_page = _sha256_file(path)
                except OSError as exc:
                    self.mark_damaged(ttid, segno, path, f"unreadable: {exc.strerror or exc}")
                    continue
                if self.header_check and key[0] == seg:  # a wrong size is damage enough
                    self._check_header(ttid, segno, path, first_page, st)
                budget -= key[0]
                hashed += 1
                with self._lock:
                    known[segno] = (key, hexdigest)
                fresh.append((ttid, segno, hexdigest))
                if len(fresh) >= PUBLISH_EVERY:
                    self._publish(fresh, [])
                    fresh = []
            else:
                self._checked_system_id[ttid] = st.system_id  # every copy was looked at
        with self._lock:
            for gone in self._digests.keys() - timelines.keys():
                stale += [(gone, s) for s in self._digests.pop(gone)]
                self._checked_system_id.pop(gone, None)
        self._publish(fresh, stale)
        return hashed

    def _publish(self, fresh: list[tuple[str, int, str]], stale: list[tuple[str, int]]) -> None:
        try:
            self.state.publish_digests(self.node_id, fresh, stale)
        except redis.RedisError:
            # ``_digests`` has them already: the next ``refresh`` publishes
            # every digest again. A lost withdrawal leaves an entry of a
            # segment backed up or gone, which the agreement no longer asks for.
            self._republish = True
            raise

    def _check_header(
        self, ttid: str, segno: int, path: Path, first_page: bytes, st: TimelineState
    ) -> None:
        """Known damaged before this node is elected: ``check_long_header``
        against the system identifier the state file has from Redis. The
        digest is published all the same: it outvotes nobody."""
        start = Lsn.from_segment(segno, 0, st.wal_seg_size)
        try:
            check_long_header(first_page, start, st.wal_seg_size, st.system_id)
        except InvalidWalHeader as exc:
            INVALID_WAL_HEADERS.inc()
            self.mark_damaged(ttid, segno, path, f"invalid WAL page header: {exc}")


def _first_page(path: Path) -> bytes | None:
    """Its first ``LONG_HEADER_BYTES``; ``None`` if it cannot be read (then
    the upload's own read reports it)."""
    try:
        with open(path, "rb") as f:
            return f.read(LONG_HEADER_BYTES)
    except OSError:
        return None


def _sha256_file(path: Path) -> tuple[str, bytes]:
    """The SHA-256 hex of the file and its first ``LONG_HEADER_BYTES``."""
    digest = hashlib.sha256()
    first = b""
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            first = first or chunk[:LONG_HEADER_BYTES]
            digest.update(chunk)
    return digest.hexdigest(), first
