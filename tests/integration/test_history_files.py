"""Timeline history files that pg_receivewal writes beside the segments are archived
once and served by ``walbackup fetch``; never overwritten with other bytes."""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.dev.simulate import simulate
from tests.cluster import SEG_SIZE, Cluster, wait_for

pytestmark = pytest.mark.integration

# What PostgreSQL writes at a promotion: parent timeline, switch point, reason.
HISTORY = b"1\t0/3000098\tno recovery target specified\n"


def test_history_files_are_archived_once_and_fetched(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    cluster = make_cluster()
    nodes = [1, 2]
    for n in nodes:
        cluster.start_node(n)
    cluster.start_beat()
    cluster.wait_nodes(nodes)
    ttid = TenantTimelineId(secrets.token_hex(16), secrets.token_hex(16))
    simulate([cluster.workdir(n) for n in nodes], [ttid], segments=3, seg_size=SEG_SIZE)
    cluster.wait_backup(ttid, Lsn.from_segment(4, 0, SEG_SIZE), 30)
    remote = tmp_path / "remote" / ttid.tenant_id / ttid.timeline_id
    # 00000003.history is already archived with other bytes: never overwritten.
    (remote / "00000003.history").write_bytes(b"2\t0/5000000\tsomething else\n")
    for n in nodes:
        timeline_dir = cluster.workdir(n) / ttid.tenant_id / ttid.timeline_id
        (timeline_dir / "00000002.history").write_bytes(HISTORY)
        (timeline_dir / "00000003.history").write_bytes(HISTORY)

    wait_for(lambda: (remote / "00000002.history").exists(), 30, "the history file archived")
    dest = tmp_path / "RECOVERYHISTORY"
    run = subprocess.run(
        [sys.executable, "-m", "tasks.cli", "fetch", str(ttid), "00000002.history", str(dest)],
        env=dict(cluster.env, TMPDIR=str(tmp_path)),  # its own once-an-hour warning marker
        capture_output=True,
        text=True,
        timeout=60,
    )
    # No prefetcher follows a history file: no "no restore spool" warning
    # about its size, which is no segment size.
    assert (run.returncode, run.stderr) == (0, "")
    assert dest.read_bytes() == HISTORY
    wait_for(
        lambda: (
            "00000003.history is archived with other bytes"
            in cluster.state.timeline(str(ttid)).last_error
        ),
        30,
        "the conflict in last_error",
    )
    assert (remote / "00000003.history").read_bytes() == b"2\t0/5000000\tsomething else\n"
    # A history file nobody wrote is a quiet "not found" (recovery probes for them).
    run = subprocess.run(
        [sys.executable, "-m", "tasks.cli", "fetch", str(ttid), "00000009.history", str(dest)],
        env=dict(cluster.env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (run.returncode, run.stderr) == (1, "")
