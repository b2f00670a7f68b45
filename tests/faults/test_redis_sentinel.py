"""Redis behind Sentinel (issue 13): the master is SIGKILLed mid-backup.

A master, a replica and three Sentinels run on private ports; three node
workers and beat reach Redis (state, RedBeat, broker) only through the
Sentinels. While WAL keeps coming, the master is SIGKILLed: the Sentinels
promote the replica within ``down-after-milliseconds`` plus an election,
every process finds the new master by itself, backup resumes, nothing is
lost, and backup_lsn, sampled every 20 ms through the Sentinels, never moves
backwards (every commit waits for the replica before it returns).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.state.redis import RedisState
from tests.cluster import BackupSampler, Cluster, wait_for
from tests.faults.harness import (
    NODES,
    Archive,
    assert_invariant,
    backed_up_timeline,
    seg_lsn,
)
from tests.servers import SentinelGroup

pytestmark = pytest.mark.integration

FAILOVER_BAR_S = 1.0 + 5.0
"""down-after-milliseconds plus failover-timeout."""
RESUME_BAR_S = 10.0
"""SPEC §9: progress within 10 s of Redis returning (the new master here)."""
ELECT = "Sending due task walbackup-elect-all"


def test_master_killed_mid_backup_fails_over(tmp_path: Path) -> None:
    group = SentinelGroup()
    group.start()
    url = group.master.url  # with Sentinels, only its password and db count
    state = RedisState.from_url(url, sentinels=group.sentinel_list, master_name=group.name)
    cluster = Cluster(
        tmp_path,
        url,
        (tmp_path / "remote").as_uri(),
        settings={
            "WALBACKUP_REDIS_SENTINELS": group.addresses,
            "WALBACKUP_REDIS_MASTER_NAME": group.name,
        },
        state=state,
    )
    try:
        for n in NODES:
            cluster.start_node(n)
        cluster.start_beat()
        cluster.wait_nodes(list(NODES))
        ttid, writer = backed_up_timeline(cluster, [cluster.workdir(n) for n in NODES], offloader=1)
        writer.rate = 8
        with BackupSampler(cluster, ttid) as sampler:
            writer.start()
            time.sleep(1.5)  # uploads and commits in flight
            group.master.kill()
            killed = time.monotonic()
            wait_for(
                lambda: group.current_master_port() == group.replica.port,
                FAILOVER_BAR_S + 2,
                "the Sentinels to promote the replica",
                interval=0.05,
            )
            failover_s = time.monotonic() - killed
            elections = (tmp_path / "beat.log").read_text().count(ELECT)
            time.sleep(1.5)  # WAL written after the failover
            end = writer.stop()
            cluster.wait_backup(ttid, seg_lsn(end), timeout=RESUME_BAR_S)
            resumed_s = time.monotonic() - killed
        print(
            f"\nmaster SIGKILLed: replica promoted after {failover_s:.1f}s, backup caught "
            f"up to segno {end} {resumed_s:.1f}s after the kill; "
            f"{len(sampler.samples)} backup_lsn samples"
        )
        assert failover_s < FAILOVER_BAR_S
        assert_invariant(
            cluster,
            Archive(ttid, root=tmp_path / "remote"),
            sampler,
            first_segno=1,
            written_end=end,
            expected_end=end,
        )
        # Beat found the new master too: it sends elections again.
        wait_for(
            lambda: (tmp_path / "beat.log").read_text().count(ELECT) > elections + 2,
            10,
            "beat to send elections after the failover",
        )
        # The CLI reaches the new master through the Sentinels too.
        status = subprocess.run(
            [sys.executable, "-m", "tasks.cli", "status", "--json"],
            env=cluster.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert status.returncode == 0 and str(ttid) in status.stdout, status.stderr
        for name in [f"node{n}" for n in NODES] + ["beat"]:
            text = cluster.log_path(name).read_text(errors="replace")
            assert "Unrecoverable error" not in text, text[-3000:]
    finally:
        cluster.stop()
        state.close()
        group.close()
