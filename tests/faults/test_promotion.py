"""A PostgreSQL server promoted under the nodes: its WAL moves to PostgreSQL
timeline 2, which walbackup does not archive (timeline 1 only, SPEC §1).

A new user's trial found that silent: a node ignored the files with one
warning each, ``walbackup status`` and the metrics showed a healthy,
caught-up timeline, and a restore following the archived ``00000002.history``
got "not found" for timeline 2's first segment and ended recovery early. Now
every node says it (ERROR, ``last_error`` every 30 s), the unarchived-WAL
gauge counts from the promotion, and ``walbackup fetch`` stops a recovery
there (exit 200, naming ``recovery_target_timeline``)."""

from __future__ import annotations

import os
import time
import urllib.request
from pathlib import Path

import pytest

from tasks.core.segments import xlog_file_name
from tests.cluster import SEG_SIZE, BackupSampler, Cluster, wait_for
from tests.faults.harness import (
    NODES,
    Archive,
    WalWriter,
    assert_invariant,
    seg_lsn,
    ttid_offloaded_by,
)
from tests.integration.test_fetch import fetch
from tests.servers import RedisServer, env_without_walbackup, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

HISTORY = "00000002.history"


def test_a_promoted_server_is_said_everywhere_and_stops_a_restore_at_the_switch(
    tmp_path: Path,
) -> None:
    redis_server = RedisServer()
    redis_server.start()
    remote = tmp_path / "remote"
    cluster = Cluster(tmp_path, redis_server.url, remote.as_uri())
    port = free_port()
    try:
        for n in NODES:
            cluster.start_node(n, {"WALBACKUP_METRICS_PORT": str(port)} if n == 1 else None)
        cluster.start_beat()
        cluster.wait_nodes(list(NODES))
        ttid = ttid_offloaded_by(1)
        WalWriter([cluster.workdir(n) for n in NODES], ttid, next_segno=1).write(3)
        cluster.wait_backup(ttid, seg_lsn(4), timeout=30)

        with BackupSampler(cluster, ttid) as sampler:
            # Promoted at 0/400000 (the start of segment 4), 1000 s ago.
            promoted = time.time() - 1000
            for n in NODES:
                directory = cluster.workdir(n) / ttid.tenant_id / ttid.timeline_id
                (directory / HISTORY).write_text("1\t0/400000\tno recovery target specified\n")
                os.utime(directory / HISTORY, (promoted, promoted))
                (directory / f"00000002{xlog_file_name(4, SEG_SIZE)[8:]}").write_bytes(
                    b"\0" * SEG_SIZE
                )

            error = wait_for(
                lambda: cluster.state.timeline(str(ttid)).last_error, 20, "the timeline's error"
            )
            assert "PostgreSQL timeline 2" in error and "NOT backed up" in error, error
            logs = "".join(cluster.log_path(f"node{n}").read_text() for n in NODES)
            assert "ERROR" in logs and "its server was promoted" in logs
            assert "not backed up:" in logs and "damaged copy" not in logs  # valid WAL, not damage

            def age() -> float:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    text = r.read().decode()
                line = next(
                    (line for line in text.splitlines()
                     if line.startswith("oldest_unarchived_segment_age_seconds")
                     and str(ttid) in line),
                    None,
                )  # fmt: skip
                return float(line.rsplit(" ", 1)[1]) if line else 0.0

            wait_for(lambda: age() >= 999, 20, "the unarchived-WAL age to count from the promotion")
        # SPEC §9: timeline 1 stays archived whole, nothing of timeline 2 went up.
        archive = Archive(ttid, root=remote)
        assert_invariant(cluster, archive, sampler, first_segno=1, written_end=4, expected_end=4)

        # The offloader archives the history file; a recovery that follows it
        # stops at timeline 2's first segment, a standby streams on.
        archived = remote / ttid.tenant_id / ttid.timeline_id / HISTORY
        wait_for(archived.exists, 20, "the history file archived")
        pgdata = tmp_path / "pgdata"
        pgdata.mkdir()
        (pgdata / "recovery.signal").touch()
        env = env_without_walbackup() | {
            "WALBACKUP_REMOTE_STORAGE": remote.as_uri(),
            "WALBACKUP_WAL_SEG_SIZE": str(SEG_SIZE),
            "WALBACKUP_DATA_DIR": str(tmp_path / "restore-data"),
        }
        t2 = f"00000002{xlog_file_name(4, SEG_SIZE)[8:]}"
        run = fetch(env, str(ttid), t2, "pg_wal/RECOVERYXLOG", cwd=pgdata)
        assert run.returncode == 200, run.stderr
        assert b"recovery_target_timeline = '1'" in run.stderr
        (pgdata / "standby.signal").touch()
        run = fetch(env, str(ttid), t2, "pg_wal/RECOVERYXLOG", cwd=pgdata)
        assert run.returncode == 1 and b"PostgreSQL timeline 2" in run.stderr, run.stderr
        (pgdata / "pg_wal").mkdir()  # timeline 1 is all there
        name = xlog_file_name(3, SEG_SIZE)
        assert fetch(env, str(ttid), name, "pg_wal/RECOVERYXLOG", cwd=pgdata).returncode == 0
    finally:
        cluster.stop()
        redis_server.stop()
