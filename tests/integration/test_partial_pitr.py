"""Point-in-time recovery of a real PostgreSQL from the archive alone, up to
a last transaction that no WAL switch followed: ``pg_receivewal`` feeds the
three node WORKDIRs, every complete segment passes the WAL header check, the
tail segment reaches the archive only as a partial upload
(``WALBACKUP_PARTIAL_UPLOAD_TIMEOUT=5``), and the restored server's
``restore_command`` is ``walbackup fetch``."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tests.cluster import SEG_SIZE, Cluster, wait_for
from tests.faults.harness import NODES, start_cluster
from tests.pg import PgHome, Postgres, as_postgres, pg_bin

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(pg_bin() is None, reason="PostgreSQL binaries (pg_receivewal) not found"),
]

ROOT = Path(__file__).resolve().parents[2]


def walbackup_command() -> str | None:
    """How the PostgreSQL user (through ``sh``, as PostgreSQL runs
    ``restore_command``) runs ``walbackup``: this interpreter, or, when it
    lives where that user cannot go (``/root/.pyenv``), the system's python3
    of the same version on our site-packages. ``None``: neither works."""
    site = next(p for p in sys.path if p.endswith("site-packages"))
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for cmd in (
        f"{sys.executable} -m tasks.cli",
        f"PYTHONPATH={site}:{ROOT} /usr/bin/{version} -m tasks.cli",
    ):
        probe = [*as_postgres(), "sh", "-c", f"{cmd} fetch --help"]
        if subprocess.run(probe, capture_output=True, cwd="/", check=False).returncode == 0:
            return cmd
    return None


@pytest.fixture
def home() -> Iterator[PgHome]:
    if os.geteuid() == 0 and subprocess.run(["id", "postgres"], capture_output=True).returncode:
        pytest.skip("running as root and there is no postgres user to run PostgreSQL as")
    if walbackup_command() is None:
        pytest.skip("the postgres user cannot run this Python interpreter for restore_command")
    h = PgHome()
    yield h
    h.close()


def test_pitr_reaches_the_last_commit_without_a_wal_switch(
    home: PgHome, make_cluster: Callable[..., Cluster]
) -> None:
    ttid = TenantTimelineId(secrets.token_hex(16), secrets.token_hex(16))
    workdirs = {n: home.mkdir(f"node{n}") for n in NODES}
    remote = home.mkdir("remote")
    primary = Postgres(home, "primary")
    primary.initdb()
    primary.start()
    receivers = [
        primary.receivewal(home.mkdir(f"node{n}/{ttid.tenant_id}/{ttid.timeline_id}"))
        for n in NODES
    ]
    cluster = start_cluster(
        lambda **kw: make_cluster(
            remote.as_uri(), settings={"WALBACKUP_PARTIAL_UPLOAD_TIMEOUT": "5"}, **kw
        ),
        workdirs=workdirs,
    )
    assert primary.wal_seg_mb << 20 == SEG_SIZE

    base = home.root / "restored"
    home.run(["pg_basebackup", "-h", str(primary.socket_dir), "-U", "postgres",
              "-D", str(base), "-X", "none", "-c", "fast"])  # fmt: skip
    primary.sql("CREATE TABLE t (id int, note text)")
    primary.sql("INSERT INTO t SELECT g, 'bulk' FROM generate_series(1, 20000) g")
    primary.sql("INSERT INTO t VALUES (-1, 'the last row')")  # no pg_switch_wal() after it
    end = Lsn.parse(primary.sql("SELECT pg_current_wal_flush_lsn()"))
    flushed = f"SELECT count(*) FROM pg_stat_replication WHERE flush_lsn >= '{end}'::pg_lsn"
    try:
        wait_for(lambda: primary.sql(flushed) == str(len(NODES)), 30, "pg_receivewal flushes")
    except AssertionError:
        logs = [p.read_text()[-800:] for p in home.root.glob("receivewal-*.log")]
        stat = primary.sql("SELECT pid, state, flush_lsn FROM pg_stat_replication")
        raise AssertionError(f"{end}: {stat}\n{logs}") from None
    assert end % SEG_SIZE, "the last commit ended exactly on a segment boundary"
    tail_start = Lsn(end - end % SEG_SIZE)
    cluster.wait_backup(ttid, tail_start, timeout=60)
    assert cluster.backup_lsn(ttid) == tail_start  # the tail segment is not complete
    # Every complete segment passed the WAL header check (on by default), which
    # recorded the server's system identifier as the timeline's.
    sysid = primary.sql("SELECT system_identifier FROM pg_control_system()")
    assert cluster.state.timeline(str(ttid)).system_id == int(sysid)
    archived = wait_for(
        lambda: (
            (a := cluster.state.timeline(str(ttid)).archived_lsn) is not None and a >= end and a
        ),
        5 + 15,
        f"archived_lsn to reach the last commit {end}",
    )
    assert archived < tail_start + SEG_SIZE

    # The primary and its WAL are gone; only the archive and the base backup remain.
    primary.stop("immediate")
    for proc in receivers:
        proc.terminate()
        proc.wait(timeout=30)
    cluster.stop()
    subprocess.run(["chmod", "-R", "a+rX", str(remote)], check=True)
    spool = home.mkdir("restore-data")
    restore = (
        f"WALBACKUP_REMOTE_STORAGE={remote.as_uri()} WALBACKUP_DATA_DIR={spool} "
        f"WALBACKUP_WAL_SEG_SIZE={SEG_SIZE} {walbackup_command()} fetch {ttid} %f %p"
    )
    restored = Postgres(home, "restored")
    restored.configure(
        f"restore_command = '{restore}'\nunix_socket_directories = '{restored.socket_dir}'\n"
    )
    home.run(["touch", str(base / "recovery.signal")], program=False)
    restored.start()
    wait_for(lambda: restored.sql("SELECT pg_is_in_recovery()") == "f", 60, "recovery to finish")

    assert restored.sql("SELECT note FROM t WHERE id = -1") == "the last row"
    assert restored.sql("SELECT count(*) FROM t") == "20001"
    log = (home.root / "restored.log").read_text(errors="replace")
    assert "served the partial upload" in log
