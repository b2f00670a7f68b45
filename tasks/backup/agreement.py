"""Do the nodes' copies of a segment agree? Checked before uploading a segment others hold.

SPEC §4 "Agreement": a segment is archived only when enough live nodes'
copies have the offloader's bytes. Each node publishes the SHA-256 of its
copies (``tasks.backup.copies``); the offloader hashes its own in the read
pass the upload needs anyway, and judges (``tasks.core.agreement.judge``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tasks.backup.copies import Copies
from tasks.config import Settings
from tasks.core.agreement import Decision, judge
from tasks.core.election import heard_lately, is_alive
from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.errors import AgreementPending, DamagedCopy, NoAgreement, SegmentFileError
from tasks.state.records import PeerRecord
from tasks.state.redis import RedisState
from tasks.state.workdir import Workdir
from tasks.storage.base import SegmentDigest, digest_segment_file

log = logging.getLogger("walbackup.node")

HOLDER_GRACE_S = 3.0
"""How late a live node may tell of a segment that completed on our disk: its
watcher's pass (up to 1 s), its WORKDIR scan (~1 s at 10,000 timelines),
its heartbeat. A node whose heartbeats since our copy completed (plus this)
still do not show the segment does not hold it; until then its digest is
waited for, so that an offloader that saw its segment first does not archive
its bytes unchecked, as if it were alone."""
AGREEMENT_POLL_S = 0.5
"""How long an upload waits in its thread for the peers' digests before it
parks and tries again (``tasks.backup.retrying.AGREEMENT_RETRY_S`` later)."""
AGREEMENT_WAIT_S = 10.0
"""After this long, a live peer that still has not published its digest of a
segment is no longer waited for: the segment is judged on the others."""
PEERS_CACHE_S = 0.5
CopyKey = tuple[int, int, int, int]
"""A copy's size, mtime, inode and ctime (ns) when it was hashed."""


class Agreement:
    """Called from the upload threads. ``_peers``, ``_pending_since`` and
    ``_pending_digest`` are plain dicts shared by them without a lock: each
    entry is replaced whole, and a lost update only costs a Redis read,
    restarts a wait or hashes a copy again."""

    def __init__(
        self,
        settings: Settings,
        state: RedisState,
        disk: Workdir,
        copies: Copies,
        needs_md5: Callable[[], bool],
    ) -> None:
        assert settings.node_id is not None
        self.node_id = settings.node_id
        self.settings = settings
        self.state = state
        self.disk = disk
        self.copies = copies
        self.needs_md5 = needs_md5
        """Whether the storage wants the MD5 too (``RemoteStorage.needs_md5``;
        it can change: ``s3_probe``)."""
        self._peers: dict[str, tuple[float, dict[int, dict[str, Any]], list[PeerRecord]]] = {}
        self._pending_since: dict[tuple[str, int], float] = {}
        self._pending_digest: dict[tuple[str, int], tuple[CopyKey, SegmentDigest]] = {}
        """Our copy's digests of segments parked for their peers' digests, by
        the copy's size, mtime, inode and ctime: the next attempt does not read and
        hash it again (16 MiB: ~35 ms of SHA-256 and MD5; in the fleet's s3
        burst, about half the attempts parked). Whatever the file holds by
        then, the upload proves what the server stored against this digest."""

    def verify(
        self, ttid: str, segno: int, seg_size: int, path: Path, name: str
    ) -> SegmentDigest | None:
        """Our copy's digests once enough copies agree, for the upload to send;
        ``None`` when no other live node holds the segment (nothing to agree
        with: the backend hashes the bytes as it sends them). Raises as
        ``_check`` does, and ``DamagedCopy`` when our copy cannot be read."""
        key: CopyKey | None = None  # taken before the read: a change while hashing shows
        try:
            st = path.stat()
            # Its last write, or its rename; in cluster time, as the peers' heartbeats.
            completed = self.state.clock.from_local(max(st.st_mtime, st.st_ctime))
            # The ctime too: a write that puts the mtime back (utime) cannot forge it.
            key = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
        except OSError:
            completed = self.state.clock.now()  # _read_copy tells what is wrong with it
        if not self.holders(ttid, segno, seg_size, completed):
            return None
        digest = self._read_copy(ttid, segno, path, seg_size, key)
        try:
            self._check(ttid, segno, seg_size, digest, name, completed)
        except AgreementPending:
            if key is not None:
                if len(self._pending_digest) > 10_000:  # entries of uploads that were fenced
                    self._pending_digest.clear()
                self._pending_digest[(ttid, segno)] = (key, digest)
            raise
        return digest

    def _read_copy(
        self, ttid: str, segno: int, path: Path, seg_size: int, key: CopyKey | None
    ) -> SegmentDigest:
        """Our copy's digests (one read pass, unless an attempt parked for the
        peers' digests read the same file); a copy we cannot read is damaged."""
        md5 = self.needs_md5()  # may ask the server (s3_probe): not a damaged copy if it fails
        pending = self._pending_digest.pop((ttid, segno), None)
        if pending is not None and pending[0] == key and (pending[1].md5 or not md5):
            return pending[1]
        try:
            return digest_segment_file(path, seg_size, md5)
        except (SegmentFileError, OSError) as exc:
            self.copies.mark_damaged(ttid, segno, path, str(exc))
            raise DamagedCopy(f"node {self.node_id}'s copy {path}: {exc}") from exc

    def _check(
        self,
        ttid: str,
        segno: int,
        seg_size: int,
        digest: SegmentDigest,
        name: str,
        completed: float,
    ) -> None:
        """Return when enough nodes' copies equal ours (SPEC §4 "Agreement");
        raise ``DamagedCopy`` when the others outvote ours, ``NoAgreement`` when
        no bytes have a majority, ``AgreementPending`` while digests are missing."""
        own = digest.sha256.hex()
        deadline = time.monotonic() + AGREEMENT_POLL_S
        if len(self._pending_since) > 10_000:  # entries of uploads that were fenced
            self._pending_since.clear()
        first_pending = self._pending_since.setdefault((ttid, segno), time.monotonic())
        published_own = False
        warned = False
        while True:
            holders = self.holders(ttid, segno, seg_size, completed)
            if holders and not published_own:
                # For the node that may take over this upload (a lone node
                # skips the round trip: nobody would read it).
                path = self.disk.segment_path(TenantTimelineId.parse(ttid), segno, seg_size)
                self.copies.publish_own(ttid, segno, path, own)
                published_own = True
            published = self.state.digests(ttid, segno, holders)
            if time.monotonic() - first_pending > AGREEMENT_WAIT_S:
                silent = [n for n in holders if n not in published]
                if silent and not warned:
                    warned = True
                    log.warning(
                        "Timeline %s: %s: node(s) %s published no digest within %.0f s; "
                        "judging the copies without them",
                        ttid,
                        name,
                        silent,
                        AGREEMENT_WAIT_S,
                    )
                holders = [n for n in holders if n in published]
            verdict = judge(own, holders, published, self.settings.agreement_copies)
            if verdict.decision is Decision.UPLOAD:
                self._pending_since.pop((ttid, segno), None)
                if verdict.differing:
                    log.error(
                        "Timeline %s: %s of node(s) %s differs from the copy of node(s) %s; "
                        "archiving the majority's bytes (sha256 %s)",
                        ttid,
                        name,
                        list(verdict.differing),
                        [self.node_id, *verdict.agreeing],
                        own,
                    )
                return
            if verdict.decision is Decision.WAIT and time.monotonic() < deadline:
                time.sleep(0.02)
                continue
            break
        copies = ", ".join(f"node {n}: {published[n][:16]}" for n in sorted(published))
        if verdict.decision is Decision.OUTVOTED:
            self._pending_since.pop((ttid, segno), None)
            reason = (
                f"sha256 {own[:16]}… differs from the copies of nodes "
                f"{list(verdict.differing)} ({copies}), which agree"
            )
            path = self.disk.segment_path(TenantTimelineId.parse(ttid), segno, seg_size)
            self.copies.mark_damaged(ttid, segno, path, reason)
            raise DamagedCopy(f"{name} on node {self.node_id}: {reason}; not uploaded")
        if verdict.decision is Decision.SPLIT:
            raise NoAgreement(
                f"{name}: the nodes' copies differ (node {self.node_id}: {own[:16]}, {copies}) "
                f"and fewer than {verdict.needed} agree; not uploaded"
            )
        raise AgreementPending(f"{name}: waiting for the digests of nodes {list(verdict.pending)}")

    def holders(self, ttid: str, segno: int, seg_size: int, completed: float) -> list[int]:
        """Other live (or lately live) nodes that hold ``segno`` complete or are
        writing it now (their digest will come), and do not report it damaged;
        and, for ``HOLDER_GRACE_S`` after our copy ``completed`` (its mtime),
        live nodes that have not told since whether they hold it (their WAL
        or their watcher may be a moment behind ours). The peers are read
        and the nodes from Redis at most every ``PEERS_CACHE_S`` per timeline,
        together (``nodes_then_peers``). The clocks of the nodes are taken to
        agree to well within ``HOLDER_GRACE_S``."""
        now = self.state.clock.now()
        cached = self._peers.get(ttid)
        if cached is None or now - cached[0] > PEERS_CACHE_S:
            cached = (now, *self.state.nodes_then_peers(ttid))
            self._peers[ttid] = cached
        _, nodes, peers = cached
        start = Lsn.from_segment(segno, 0, seg_size)
        unsure_until = completed + HOLDER_GRACE_S
        timeout = self.settings.heartbeat_timeout
        # A peer that missed a few heartbeats (a pause, an overloaded host) is
        # still waited for: forgetting it at once would make this node a lone
        # node that archives its bytes unchecked. ``_check`` stops waiting for
        # an unpublished digest after AGREEMENT_WAIT_S, so a peer that really
        # died delays a segment by that much at most.
        recent = timeout + AGREEMENT_WAIT_S
        holders: set[int] = set()
        told = {self.node_id}
        for p in (r.peer for r in peers):
            told.add(p.node_id)
            if (
                p.node_id != self.node_id
                and is_alive(p, now, recent)
                and p.local_start_lsn <= start
                and p.damaged_lsn != start
                and (start <= p.commit_lsn or p.ts < unsure_until)
            ):
                holders.add(p.node_id)
        # Nodes with no heartbeat for the timeline yet (it is new to them, or
        # they do not hold it): waited for until a whole heartbeat round of
        # theirs (``round``: when the scan it published began) began after
        # ``unsure_until``; a node that has not finished one yet, too.
        holders.update(
            n
            for n, entry in nodes.items()
            if n not in told
            and heard_lately(float(entry["ts"]), now, recent)
            and float(entry.get("round", 0.0)) < unsure_until
        )
        return sorted(holders)
