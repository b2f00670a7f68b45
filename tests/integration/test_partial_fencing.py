"""Partial uploads and the lease: a node whose fencing token is stale neither
uploads nor records a partial. The node service runs in this process as a
worker wires it (no threads started), on the private Redis and storage in a
tmp dir."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from tasks.backup.elector import Elector
from tasks.backup.node import NodeService
from tasks.config import load_settings
from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.core.partials import partial_object
from tasks.core.segments import xlog_file_name
from tasks.dev.simulate import expected_segment_bytes, simulate
from tasks.state.redis import RedisState
from tasks.storage.base import SegmentDigest, UploadResult
from tasks.storage.local import LocalStorage

pytestmark = pytest.mark.integration

SEG = 1 << 20


class Storage(LocalStorage):
    """Real local storage; ``during_upload`` runs inside an upload."""

    during_upload = staticmethod(lambda: None)

    def upload_file(
        self, key: str, path: Path, expected_size: int, digest: SegmentDigest | None = None
    ) -> UploadResult:
        self.during_upload()
        return super().upload_file(key, path, expected_size, digest)


class Node:
    def __init__(self, tmp_path: Path, state: RedisState) -> None:
        self.state = state
        self.ttid_id = TenantTimelineId(secrets.token_hex(16), secrets.token_hex(16))
        self.ttid = str(self.ttid_id)
        self.workdir = tmp_path / "node1"
        simulate([self.workdir], [self.ttid_id], segments=2, seg_size=SEG)  # segnos 1, 2
        self.tail = expected_segment_bytes(self.ttid_id, 3, SEG)[:300_000]
        tl = self.workdir / self.ttid_id.tenant_id / self.ttid_id.timeline_id
        (tl / (xlog_file_name(3, SEG) + ".partial")).write_bytes(self.tail)
        settings = load_settings(
            node_id=1, workdir=self.workdir, wal_seg_size=SEG, data_dir=tmp_path / "data",
            partial_upload_timeout=1,
        )  # fmt: skip
        self.remote = tmp_path / "remote"
        self.storage = Storage(self.remote)
        elector = Elector(
            state, lambda ttid, node: None, heartbeat_timeout_s=5.0,
            max_offloader_lag_bytes=128 * SEG, default_seg_size=SEG, kick_hold_ms=2000,
        )  # fmt: skip
        self.node = NodeService(
            settings, state, self.storage, elector, lambda *a: None, lambda jobs: None
        )
        self.node.identity.check()  # as its thread does first
        self.node._refresh(trigger=False)
        [outcome] = elector.elect([self.ttid])
        assert outcome.election.offloader == 1
        self.st = self.node._timelines[self.ttid]
        self.name = partial_object(3, Lsn(3 * SEG + len(self.tail)), SEG).name

    def remote_partials(self) -> list[str]:
        d = self.remote / self.ttid_id.tenant_id / self.ttid_id.timeline_id
        return sorted(p.name for p in d.glob("*_*.partial")) if d.exists() else []

    def state_file_partials(self) -> tuple[str, ...]:
        recorded = self.node.disk.read_state(self.ttid_id)
        return recorded.partial_uploads if recorded else ()


def test_a_stale_token_uploads_and_records_nothing(tmp_path: Path, state: RedisState) -> None:
    n = Node(tmp_path, state)
    token = state.acquire_lease(n.ttid, "1.0ld", 1, 60_000)
    assert token is not None
    assert state.release_lease(n.ttid, token)
    assert state.acquire_lease(n.ttid, "2.n3w", 2, 60_000) is not None  # another node's lease

    assert n.node.partials.upload(n.ttid, n.st, token) == "fenced"

    assert n.remote_partials() == []
    assert state.partials(n.ttid) == {}
    assert n.state_file_partials() == ()
    assert state.timeline(n.ttid).archived_lsn is None


def test_a_token_gone_stale_during_the_upload_is_not_committed(
    tmp_path: Path, state: RedisState
) -> None:
    n = Node(tmp_path, state)
    token = state.acquire_lease(n.ttid, "1.0ld", 1, 60_000)
    assert token is not None

    def steal() -> None:
        assert state.release_lease(n.ttid, token)
        assert state.acquire_lease(n.ttid, "2.n3w", 2, 60_000) is not None

    n.storage.during_upload = steal
    assert n.node.partials.upload(n.ttid, n.st, token) == "fenced"
    # Recorded as being uploaded before the upload (so the next holder can
    # collect it), never as uploaded; archived_lsn does not move.
    assert state.partials(n.ttid) == {n.name: "uploading"}
    assert n.state_file_partials() == (n.name,)
    assert state.timeline(n.ttid).archived_lsn is None


def test_the_lease_holder_uploads_records_and_then_skips_what_is_archived(
    tmp_path: Path, state: RedisState
) -> None:
    n = Node(tmp_path, state)
    token = state.acquire_lease(n.ttid, "1.0ld", 1, 60_000)
    assert token is not None
    assert n.node.partials.upload(n.ttid, n.st, token) == "uploaded"
    assert n.remote_partials() == [n.name]
    assert state.partials(n.ttid) == {n.name: "uploaded"}
    assert n.state_file_partials() == (n.name,)
    assert state.timeline(n.ttid).archived_lsn == Lsn(3 * SEG + len(n.tail))
    body = (n.remote / n.ttid_id.tenant_id / n.ttid_id.timeline_id / n.name).read_bytes()
    assert body == n.tail + bytes(SEG - len(n.tail))
    # Nothing new: no second upload, and the current object is never collected.
    n.storage.during_upload = lambda: pytest.fail("uploaded again")
    assert n.node.partials.upload(n.ttid, n.st, token) == "unchanged"
    assert n.remote_partials() == [n.name]
