"""The pipeline end to end: three node workers and beat as real processes,
a private Redis, and remote storage checked byte for byte."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path

import pytest

from tasks.core.election import determine_offloader
from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.core.segments import xlog_file_name
from tasks.simulate import simulate
from tests.cluster import SEG_SIZE, Cluster

pytestmark = pytest.mark.integration


def new_ttid() -> TenantTimelineId:
    return TenantTimelineId(secrets.token_hex(16), secrets.token_hex(16))


def remote_path(root: Path, ttid: TenantTimelineId, segno: int) -> Path:
    return root / ttid.tenant_id / ttid.timeline_id / xlog_file_name(segno, SEG_SIZE)


def test_two_timelines_land_byte_identical(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    cluster = make_cluster()
    nodes = [1, 2, 3]
    ttids = [new_ttid(), new_ttid()]
    for n in nodes:
        cluster.start_node(n)
    cluster.start_beat()
    cluster.wait_nodes(nodes)
    simulate([cluster.workdir(n) for n in nodes], ttids, segments=20, seg_size=SEG_SIZE)
    end = Lsn.from_segment(21, 0, SEG_SIZE)  # segments 1..20 complete
    for ttid in ttids:
        cluster.wait_backup(ttid, end, timeout=60)
        assert cluster.backup_lsn(ttid) == end
    remote = tmp_path / "remote"
    for ttid in ttids:
        for segno in range(1, 21):
            local = cluster.workdir(1) / ttid.tenant_id / ttid.timeline_id / xlog_file_name(segno, SEG_SIZE)
            assert remote_path(remote, ttid, segno).read_bytes() == local.read_bytes()
        record = cluster.state.timeline(str(ttid))
        peers = [p.peer for p in cluster.state.peers(str(ttid))]
        expected = determine_offloader(peers, end, ttid.timeline_int, 128 << 20)
        assert record.offloader == expected.offloader
