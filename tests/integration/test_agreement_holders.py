"""Whose digest the offloader waits for (``Agreement.holders``), against the
private redis-server: a node that has not yet told of a segment that just
completed on the offloader's disk is waited for, for ``HOLDER_GRACE_S``; a
node that told since and does not hold it, or that went silent, is not.

Under load, an offloader whose peers' heartbeats were a round behind judged
itself a lone node and archived its damaged copy unchecked
(tests/faults/test_local_damage.py, divergent, in a parallel test run)."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from tasks.backup import agreement as agreement_module
from tasks.backup.agreement import AGREEMENT_WAIT_S, HOLDER_GRACE_S, Agreement
from tasks.core.election import PeerInfo
from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.errors import AgreementPending
from tasks.state.beats import node_entry
from tasks.state.keys import NODES_KEY
from tasks.state.records import peer_to_json
from tasks.state.redis import RedisState
from tasks.storage.base import SegmentDigest, digest_segment_file
from tests.integration.test_uploader import SEG, Harness, seg

pytestmark = pytest.mark.integration

SEGNO = 9
"""The segment just completed on node 1 (segments 1..8 are on every disk)."""


@pytest.fixture
def h(tmp_path: Path, state: RedisState) -> Harness:
    return Harness(tmp_path, state, 3, 4)


def holders(h: Harness, completed: float) -> list[int]:
    """A fresh ``Agreement`` each time: no cached reads of Redis."""
    node = h.node
    agreement = Agreement(node.settings, h.state, node.disk, node.copies, needs_md5=lambda: False)
    return agreement.holders(h.ttid, SEGNO, SEG, completed)


def beat(h: Harness, node_id: int, commit: Lsn, at: float) -> None:
    """``node_id`` heartbeats the timeline at ``at``: WAL up to ``commit``."""
    peer = PeerInfo(node_id, commit, seg(1), seg(1), at)
    h.state.publish_heartbeats(node_id, [(h.ttid, peer_to_json(peer, SEG, None))], at)


def test_a_peer_that_reported_before_our_copy_completed_is_waited_for(h: Harness) -> None:
    now = time.time()
    beat(h, 2, seg(8), now - 0.5)  # before segment 8 completed there: not yet writing 9
    assert holders(h, completed=now - 0.2) == [2]


def test_a_peer_that_reported_since_without_the_segment_does_not_hold_it(h: Harness) -> None:
    now = time.time()
    completed = now - HOLDER_GRACE_S - 1.0
    beat(h, 2, seg(8), now - 0.5)  # after completed + grace: it lags
    beat(h, 3, seg(SEGNO), now - 0.5)  # writing segment 9 now: its digest will come
    assert holders(h, completed) == [3]


def test_a_peer_silent_for_a_while_is_waited_for_and_a_dead_one_is_not(h: Harness) -> None:
    """Frozen (SIGSTOP, an overloaded host) past the heartbeat timeout before
    the segment completed, it may still vote once it thaws (``_check`` stops
    waiting after AGREEMENT_WAIT_S); silent past that as well, it is dead."""
    now = time.time()
    timeout = h.node.settings.heartbeat_timeout
    beat(h, 2, seg(8), now - timeout - 0.5)
    beat(h, 3, seg(8), now - timeout - AGREEMENT_WAIT_S - 0.5)
    assert holders(h, completed=now - 0.2) == [2]


def test_a_node_with_no_heartbeat_of_the_timeline_is_waited_for_until_its_round(
    h: Harness,
) -> None:
    """A new timeline: node 2 heartbeats (the nodes hash) but not yet for it."""
    now = time.time()
    h.state.publish_round(2, now, round_started=now - 1.0)
    assert holders(h, completed=now - 0.2) == [2]
    # Its whole round that began after the grace did not list the timeline:
    # node 2 does not hold it.
    completed = now - HOLDER_GRACE_S - 1.0
    h.state.publish_round(2, now, round_started=now - 0.5)
    assert holders(h, completed) == []


def test_a_node_that_has_not_finished_a_round_is_waited_for(h: Harness) -> None:
    """Just started: its entry has no ``round`` yet (``node_entry``)."""
    now = time.time()
    h.state.r.hset(NODES_KEY, "2", node_entry(now, None))
    assert holders(h, completed=now - HOLDER_GRACE_S - 60) == [2]


def test_a_lone_node_waits_for_nobody(h: Harness) -> None:
    """Only node 1 (the harness's own) heartbeats: it archives unchecked."""
    assert set(h.state.nodes()) == {1}
    assert holders(h, completed=time.time()) == []


def test_a_parked_attempt_leaves_its_digest_to_the_next_while_the_file_is_unchanged(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An attempt that parks for a peer's digest (``AgreementPending``) keeps
    its own: the next one does not read and hash the copy again (16 MiB)
    while its size, mtime, inode and ctime are the same, and it has the MD5
    if the storage wants one. A copy written since is hashed again, even
    with its mtime put back."""
    reads: list[Path] = []

    def counted(path: Path, expected_size: int, md5: bool = True) -> SegmentDigest:
        reads.append(path)
        return digest_segment_file(path, expected_size, md5)

    monkeypatch.setattr(agreement_module, "digest_segment_file", counted)
    node = h.node
    wants_md5 = [False]
    agreement = Agreement(
        node.settings, h.state, node.disk, node.copies, needs_md5=lambda: wants_md5[0]
    )
    segno = 8
    path = node.disk.segment_path(TenantTimelineId.parse(h.ttid), segno, SEG)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    beat(h, 2, seg(segno + 1), time.time())  # node 2 holds segment 8: its digest is due

    def attempt() -> SegmentDigest | None:
        return agreement.verify(h.ttid, segno, SEG, path, "segment 8")

    with pytest.raises(AgreementPending):
        attempt()
    h.state.publish_digests(2, [(h.ttid, segno, sha)])
    digest = attempt()
    assert digest is not None and digest.sha256_hex == sha
    assert len(reads) == 1  # the parked attempt's digest

    # Parked again; now the storage wants the MD5, which that digest lacks.
    h.state.publish_digests(2, [], [(h.ttid, segno)])
    with pytest.raises(AgreementPending):
        attempt()
    wants_md5[0] = True
    h.state.publish_digests(2, [(h.ttid, segno, sha)])
    digest = attempt()
    assert digest is not None and digest.md5 and len(reads) == 3

    # Parked again; the copy is written in place and its mtime put back.
    h.state.publish_digests(2, [], [(h.ttid, segno)])
    with pytest.raises(AgreementPending):
        attempt()
    st = path.stat()
    with open(path, "r+b") as f:
        f.write(b"\xff" * 64)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    changed = hashlib.sha256(path.read_bytes()).hexdigest()
    h.state.publish_digests(2, [(h.ttid, segno, changed)])
    digest = attempt()
    assert digest is not None and digest.sha256_hex == changed and len(reads) == 5
