"""Local WAL removal across faults (SPEC §9, issue 10): Redis lost its data,
a node that died half way through a batch of deletions, and archived objects
lost or damaged before the scrubber's next pass.

- Redis SIGKILLed and restarted empty while the archive cannot be listed:
  the nodes' state files say backup_lsn is far ahead, but until the
  cluster's backup_lsn is recovered from the archive nothing is removed;
  then removal resumes and nothing is lost.
- A node died mid-batch (its state file records a horizon above its lowest
  segment): restarted, it finishes the batch, even with a larger keep-back,
  and keeps the keep-back for new WAL.
- Committed segments deleted and truncated in the archive before any scrub
  pass: the nodes still hold them (removal waits for the scrubber's
  verified_lsn), so the first pass heals the archive from them, and only then
  are they removed. Removal by backup_lsn alone had left them in no copy.
- A timeline's whole prefix deleted from the archive, ledger pages and all:
  healed from the nodes' copies and its ledger rewound and written again.
"""

from __future__ import annotations

import contextlib
import errno
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tasks.core.ids import TenantTimelineId
from tasks.dev.simulate import expected_segment_bytes, simulate
from tasks.state.reserve import RESERVE_NAME
from tasks.state.state_file import STATE_FILE_NAME
from tests.cluster import SEG_SIZE, BackupSampler, Cluster, wait_for
from tests.faults.harness import (
    NODES,
    Archive,
    WalWriter,
    assert_invariant,
    seg_lsn,
    start_cluster,
    write_segment,
)
from tests.fixtures_s3 import AWS_ENV
from tests.integration.test_cli_cluster import walbackup
from tests.removal_support import (
    REMOVAL_ON,
    held,
    recorded_backup,
    state_of,
    timeline_dir,
    wait_held,
)
from tests.servers import RedisServer, free_port
from tests.tmpfs import free_bytes, tiny_filesystem

pytestmark = pytest.mark.integration

QUIET_S = 7.0
"""Longer than one removal interval (5 s) plus a heartbeat round: a node that
would remove something has done so by then."""


def new_ttid() -> TenantTimelineId:
    return TenantTimelineId(secrets.token_hex(16), secrets.token_hex(16))


def test_no_removal_while_backup_lsn_is_unknown_after_redis_data_loss(tmp_path: Path) -> None:
    server = RedisServer()
    server.start()
    # The state files take backup_lsn within 1 s (30 s by default): the
    # premise below is that they say 1..12 are archived. Beat has the
    # scrubber pass every second, which removal waits for too.
    fast_state_files = {"WALBACKUP_STATE_FILE_INTERVAL": "1", "WALBACKUP_SCRUB_INTERVAL": "1"}
    cluster = Cluster(
        tmp_path, server.url, (tmp_path / "remote").as_uri(), settings=fast_state_files
    )
    workdirs = [cluster.workdir(n) for n in NODES]
    ttid = new_ttid()
    storage_down = AWS_ENV | {
        "WALBACKUP_REMOTE_STORAGE": "s3://walbackup-unreachable",
        "WALBACKUP_S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
    }
    try:
        # Removal off (the default): 12 segments archived, nothing removed.
        for n in NODES:
            cluster.start_node(n)
        cluster.start_beat()
        cluster.wait_nodes(list(NODES))
        writer = WalWriter(workdirs, ttid, next_segno=1)
        writer.write(12)
        cluster.wait_backup(ttid, seg_lsn(13), timeout=30)
        backed_up = time.monotonic()
        wait_for(
            lambda: all(recorded_backup(w, ttid) == seg_lsn(13) for w in workdirs),
            10,
            "the state files to record backup_lsn",
        )
        time.sleep(max(0.0, backed_up + QUIET_S - time.monotonic()))
        for w in workdirs:
            assert held(w, ttid) == list(range(1, 13)), "removal is off by default"
            assert state_of(w, ttid).removal_horizon_lsn is None

        # Redis dies and comes back empty, and the archive cannot be listed
        # (the nodes restart with an S3 endpoint where nothing answers), so
        # neither beat nor a node's new WAL can recover backup_lsn. The nodes
        # restart with removal on: their state files say 1..12 are archived,
        # the cluster does not.
        with BackupSampler(cluster, ttid) as sampler:
            cluster.kill("beat")
            server.kill()
            server.start()
            for n in NODES:
                cluster.kill(f"node{n}")
                cluster.start_node(n, REMOVAL_ON | storage_down)
            cluster.wait_nodes(list(NODES))
            writer.write(4)  # 13..16 while backup_lsn is unknown
            time.sleep(QUIET_S)
            assert cluster.backup_lsn(ttid) is None, "backup_lsn must still be unknown here"
            for n, w in zip(NODES, workdirs, strict=True):
                assert held(w, ttid) == list(range(1, 17)), f"node {n} removed WAL too early"
                assert state_of(w, ttid).removal_horizon_lsn is None
                log = cluster.log_path(f"node{n}").read_text(errors="replace")
                assert "WAL segment(s)" not in log

            # The archive can be listed again (the nodes restart with it), beat
            # returns: backup_lsn is recovered from the archive, removal resumes.
            for n in NODES:
                cluster.kill(f"node{n}")
                cluster.start_node(n, REMOVAL_ON)
            cluster.wait_nodes(list(NODES))
            cluster.start_beat()
            cluster.wait_backup(ttid, seg_lsn(17), timeout=30)
            for n in NODES:
                wait_held(cluster, n, ttid, [16])
        assert_invariant(
            cluster,
            Archive(ttid, root=tmp_path / "remote"),
            sampler,
            first_segno=1,
            written_end=17,
            expected_end=17,
        )
        for w in workdirs:
            recorded = state_of(w, ttid)
            assert recorded.removal_horizon_lsn == seg_lsn(16)
            assert recorded.timeline_start_lsn == seg_lsn(1)
    finally:
        cluster.stop()
        cluster.state.r.close()
        server.close()


def test_a_node_killed_mid_batch_finishes_it_after_restart(tmp_path: Path, redis_url: str) -> None:
    cluster = Cluster(tmp_path, redis_url, (tmp_path / "remote").as_uri(), settings=REMOVAL_ON)
    workdirs = [cluster.workdir(n) for n in NODES]
    ttid = new_ttid()
    try:
        for n in NODES:
            cluster.start_node(n)
        cluster.start_beat()
        cluster.wait_nodes(list(NODES))
        with BackupSampler(cluster, ttid) as sampler:
            writer = WalWriter(workdirs, ttid, next_segno=1)
            writer.write(20)
            cluster.wait_backup(ttid, seg_lsn(21), timeout=30)
            for n in NODES:
                wait_held(cluster, n, ttid, [20])
            # Node 2 dies as if half way through its batch: it had recorded
            # horizon 20 and deleted 1..4 when SIGKILLed, 5..19 still there.
            cluster.kill("node2", signal.SIGKILL)
            node2 = cluster.workdir(2)
            assert state_of(node2, ttid).removal_horizon_lsn == seg_lsn(20)
            state_bytes = (timeline_dir(node2, ttid) / STATE_FILE_NAME).read_bytes()
            simulate([node2], [ttid], segments=15, seg_size=SEG_SIZE, start_segno=5)
            assert held(node2, ttid) == list(range(5, 21))
            assert (timeline_dir(node2, ttid) / STATE_FILE_NAME).read_bytes() == state_bytes

            # Restarted with a keep-back of 100, which alone would keep all of them.
            cluster.start_node(2, {"WALBACKUP_WAL_KEEP_SEGMENTS": "100"})
            cluster.wait_nodes([2])
            wait_held(cluster, 2, ttid, [20])
            # New WAL: node 2 now keeps its keep-back, the others keep 1.
            writer.write(5)
            cluster.wait_backup(ttid, seg_lsn(26), timeout=30)
            for n in (1, 3):
                wait_held(cluster, n, ttid, [25])
            time.sleep(QUIET_S)
            assert held(node2, ttid) == list(range(20, 26))
        (peer2,) = [r.peer for r in cluster.state.peers(str(ttid)) if r.peer.node_id == 2]
        assert peer2.local_start_lsn == seg_lsn(20) <= seg_lsn(26)  # still capable
        assert_invariant(
            cluster,
            Archive(ttid, root=tmp_path / "remote"),
            sampler,
            first_segno=1,
            written_end=26,
            expected_end=26,
        )
    finally:
        cluster.stop()
        cluster.state.r.close()


def test_what_the_scrubber_has_not_verified_stays_on_the_nodes_and_heals_the_archive(
    tmp_path: Path, redis_url: str
) -> None:
    remote = tmp_path / "remote"
    # Beat's first scrub tick is an hour away: the window between a commit
    # and the scrub pass that checks it, held open.
    no_scrub = {**REMOVAL_ON, "WALBACKUP_SCRUB_INTERVAL": "3600"}
    cluster = Cluster(tmp_path, redis_url, remote.as_uri(), settings=no_scrub)
    workdirs = [cluster.workdir(n) for n in NODES]
    ttid = new_ttid()
    archive = Archive(ttid, root=remote)
    try:
        for n in NODES:
            cluster.start_node(n)
        cluster.start_beat()
        cluster.wait_nodes(list(NODES))
        with BackupSampler(cluster, ttid) as sampler:
            writer = WalWriter(workdirs, ttid, next_segno=1)
            writer.write(12)
            cluster.wait_backup(ttid, seg_lsn(13), timeout=30)
            wait_for(
                lambda: all(recorded_backup(w, ttid) == seg_lsn(13) for w in workdirs),
                10,
                "the state files to record backup_lsn",
            )
            time.sleep(QUIET_S)
            # Committed, in every state file, but never scrubbed: all kept.
            for w in workdirs:
                assert held(w, ttid) == list(range(1, 13)), cluster.tail_logs()
            assert cluster.state.timeline(str(ttid)).verified_lsn is None
            # The archive loses segment 3 and segment 5 is cut short (a bucket
            # lifecycle rule, a careless `aws s3 rm`, a storage fault).
            archive.delete(3)
            five = archive.read(5)
            assert five is not None
            (remote / archive.key(5)).write_bytes(five[: SEG_SIZE // 2])
            # Scrubbing every second from now on.
            cluster.kill("beat", signal.SIGTERM)
            cluster.env["WALBACKUP_SCRUB_INTERVAL"] = "1"
            cluster.start_beat()
            wait_for(
                lambda: cluster.state.timeline(str(ttid)).verified_lsn == seg_lsn(13),
                30,
                "the scrubber to heal the archive and verify it whole",
            )
            for n in NODES:
                wait_held(cluster, n, ttid, [12])
        assert_invariant(cluster, archive, sampler, first_segno=1, written_end=13, expected_end=13)
    finally:
        cluster.stop()
        cluster.state.r.close()


def test_workdirs_filled_by_wal_while_the_archive_was_read_only_are_freed(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    """The drill: every node's WORKDIR on an 8 MiB tmpfs, the file:// archive
    on a tmpfs of its own remounted read-only while WAL comes, until no node
    can write the next segment; then read-write again. Backup catches up, and
    each node deletes all but its keep-back: the state file writes removal
    needs went through in the space of the WORKDIR's reserve (before it,
    nothing was ever deleted and the disks stayed full)."""
    with contextlib.ExitStack() as mounts:
        roots = {n: mounts.enter_context(tiny_filesystem(tmp_path / f"wd{n}", 8)) for n in NODES}
        remote = mounts.enter_context(tiny_filesystem(tmp_path / "archive", 64))
        cluster = start_cluster(
            make_cluster, roots, settings=REMOVAL_ON, remote_storage=remote.as_uri()
        )
        ttid = new_ttid()
        try:
            with BackupSampler(cluster, ttid) as sampler:
                writer = WalWriter(list(roots.values()), ttid, next_segno=1)
                writer.write(2)
                cluster.wait_backup(ttid, seg_lsn(3), timeout=30)
                for n, root in roots.items():
                    wait_for(lambda r=root: (r / RESERVE_NAME).exists(), 10, f"node {n}'s reserve")

                remount(remote, "ro")
                segno, full = 3, set()
                while len(full) < len(NODES):  # pg_receivewal on each node, until it stops
                    for n, root in roots.items():
                        if n not in full:
                            body = expected_segment_bytes(ttid, segno, SEG_SIZE)
                            try:
                                write_segment(root, ttid, segno, body)
                            except OSError as exc:
                                assert exc.errno == errno.ENOSPC
                                full.add(n)
                    segno += 1
                newest = min(max(held(root, ttid)) for root in roots.values())
                assert all(free_bytes(root) < SEG_SIZE for root in roots.values())
                time.sleep(2)  # a few rounds on full disks, the archive still away
                remount(remote, "rw")

                cluster.wait_backup(ttid, seg_lsn(newest + 1), timeout=60)
                for n, root in roots.items():
                    keep = [max(held(root, ttid))]  # its newest complete segment, the keep-back
                    wait_for(lambda r=root, k=keep: held(r, ttid) == k, 30, f"node {n}'s removal")
                    assert free_bytes(root) > SEG_SIZE, f"node {n}: still full"
                    text = cluster.log_path(f"node{n}").read_text(errors="replace")
                    assert "is full" in text and "deleted the 1048576-byte reserve" in text
                    assert "WAL removal on this node is blocked" not in text
                    wait_for(lambda r=root: (r / RESERVE_NAME).exists(), 10, f"node {n}'s reserve")
                assert "blocked" not in cluster.state.timeline(str(ttid)).last_error
                archive = Archive(ttid, root=remote)
                assert archive.segnos() >= set(range(1, newest + 1))
            assert_invariant(cluster, archive, sampler, first_segno=1, written_end=segno)
        finally:
            cluster.stop()


def remount(path: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True)


def test_a_timeline_emptied_in_the_archive_gets_its_segments_and_ledger_back(
    make_cluster: Callable[..., Cluster], tmp_path: Path, redis_url: str
) -> None:
    """A timeline's whole prefix deleted from the archive (an `aws s3 rm
    --recursive` of the wrong path, a lifecycle rule) while the cluster runs
    with removal on: its segments and its ledger's pages are gone, and Redis's
    ledger cursor still says the pages were written. The scrubber uploads the
    nodes' copies again and rewinds the ledger, so the pages are written anew
    from the archived objects: verified_lsn comes back to backup_lsn, `verify`
    passes, and only then do the nodes remove the WAL they had kept."""
    remote = tmp_path / "remote"  # make_cluster's
    cluster = start_cluster(make_cluster, settings={**REMOVAL_ON, "WALBACKUP_SCRUB_INTERVAL": "1"})
    workdirs = [cluster.workdir(n) for n in NODES]
    ttid = new_ttid()
    archive = Archive(ttid, root=remote)
    timeline = remote / ttid.tenant_id / ttid.timeline_id
    with BackupSampler(cluster, ttid) as sampler:
        writer = WalWriter(workdirs, ttid, next_segno=1)
        writer.write(8)
        cluster.wait_backup(ttid, seg_lsn(9), timeout=30)
        wait_for(
            lambda: (
                cluster.state.timeline(str(ttid)).verified_lsn == seg_lsn(9)
                and any((timeline / "_ledger").glob("*"))
            ),
            30,
            "the archive to be verified and its ledger written",
        )
        shutil.rmtree(timeline)
        writer.write(4)  # WAL goes on meanwhile
        cluster.wait_backup(ttid, seg_lsn(13), timeout=30)
        wait_for(
            lambda: cluster.state.timeline(str(ttid)).verified_lsn == seg_lsn(13),
            60,
            "the scrubber to heal the archive and rebuild its ledger",
        )
        for n in NODES:
            wait_held(cluster, n, ttid, [12])
    assert_invariant(cluster, archive, sampler, first_segno=1, written_end=13, expected_end=13)
    run = walbackup(
        "verify", str(ttid), redis_url=redis_url, WALBACKUP_REMOTE_STORAGE=remote.as_uri()
    )
    assert run.returncode == 0, run.stdout + run.stderr
    log = "".join(cluster.log_path(f"node{n}").read_text() for n in NODES)
    assert "recording them again from the archived objects" in log
