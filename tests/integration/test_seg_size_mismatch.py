"""A WALBACKUP_WAL_SEG_SIZE that does not match the WAL on disk is an error, never a
healthy-looking idle timeline (issue "a newcomer's first hour")."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Callable

import pytest

from tasks.core.ids import TenantTimelineId
from tasks.dev.simulate import simulate
from tests.cluster import SEG_SIZE, Cluster, wait_for

pytestmark = pytest.mark.integration


def test_a_segment_size_mismatch_shows_as_an_error(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster()  # the nodes expect SEG_SIZE (1 MiB) segments
    cluster.start_node(1)
    cluster.start_beat()
    cluster.wait_nodes([1])
    ttid = TenantTimelineId(secrets.token_hex(16), secrets.token_hex(16))
    simulate([cluster.workdir(1)], [ttid], segments=3, seg_size=16 * SEG_SIZE)  # the server's
    cluster.state.register([str(ttid)])

    def last_error() -> str:
        return cluster.state.timeline(str(ttid)).last_error

    wait_for(lambda: "WALBACKUP_WAL_SEG_SIZE" in last_error(), 20, "the mismatch in last_error")
    assert "16777216 bytes" in last_error() and "1048576" in last_error()
    run = subprocess.run(
        [sys.executable, "-m", "tasks.cli", "status", "--json", str(ttid)],
        env=dict(cluster.env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    [row] = json.loads(run.stdout)["timelines"]
    # This node's message, or the damaged copies' (it is re-set every 30 s):
    # an error either way, naming the size the files have.
    assert "16777216" in row["last_error"]
    assert row["peers"][0]["damaged_lsn"] is not None  # and its copies count as damaged
    log = cluster.log_path("node1").read_text()
    assert "ERROR" in log and "wal_segment_size" in log
    assert not any((cluster.root / "remote").rglob("00000001*"))  # nothing was uploaded
