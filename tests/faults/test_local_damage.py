"""Damage on one node's disk (SPEC §9): a truncated, oversized or divergent
copy on the offloader, a timeline directory removed mid-backup, and a full
disk under the state file. Backup goes on from the good copies within
seconds, and the invariant holds."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tasks.core.ids import TenantTimelineId
from tasks.core.segments import xlog_file_name
from tasks.dev.simulate import expected_segment_bytes, simulate
from tasks.state.state_file import read_state_file
from tests.cluster import SEG_SIZE, BackupSampler, Cluster, wait_for
from tests.faults.harness import (
    NODES,
    Archive,
    WalWriter,
    assert_invariant,
    backed_up_timeline,
    seg_lsn,
    start_cluster,
    timeline_dir,
    ttid_offloaded_by,
    write_segment,
)
from tests.tmpfs import fill, tiny_filesystem

pytestmark = pytest.mark.integration


STATE_FILE_FAST = {"WALBACKUP_STATE_FILE_INTERVAL": "1"}
# Runs a node as root without the capabilities that let root read any file,
# so that a file with mode 000 is unreadable to it, as to any other user.
WITHOUT_DAC_BYPASS = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]


def damaged_bytes(good: bytes, damage: str) -> bytes:
    if damage == "unreadable":
        return good  # the right bytes, mode 000 (see write_segment)
    if damage == "truncated":
        return good[: len(good) // 2]
    if damage == "oversized":
        return good + b"\0" * 100
    assert damage == "divergent"  # same size, 100 bytes rewritten
    return good[:1000] + bytes(b ^ 0xFF for b in good[1000:1100]) + good[1100:]


@pytest.mark.parametrize(
    "damage",
    ["truncated", "oversized", "divergent", "unreadable", "directory", "dangling symlink"],
)
def test_damaged_copy_on_the_offloader_never_stalls_backup(
    make_cluster: Callable[..., Cluster], tmp_path: Path, damage: str
) -> None:
    if damage == "unreadable" and shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux) to run a node that cannot bypass file modes")
    workdirs = {n: tmp_path / f"node{n}" for n in NODES}
    prefix = {1: WITHOUT_DAC_BYPASS} if damage == "unreadable" else {}
    cluster = start_cluster(make_cluster, workdirs, prefix)
    nodes = [workdirs[n] for n in NODES]
    ttid, writer = backed_up_timeline(cluster, nodes, offloader=1)
    archive = Archive(ttid, root=tmp_path / "remote")
    assert cluster.state.timeline(str(ttid)).offloader == 1

    with BackupSampler(cluster, ttid) as sampler:
        # Segment 5: good on nodes 2 and 3, damaged on the offloader, node 1.
        simulate(nodes[1:], [ttid], 1, SEG_SIZE, start_segno=5)
        if damage in ("directory", "dangling symlink"):  # in its place: no hole (the drill)
            bad = timeline_dir(nodes[0], ttid) / xlog_file_name(5, SEG_SIZE)
            if damage == "directory":
                bad.mkdir()
            else:
                bad.symlink_to(bad.with_name("nowhere"))
        else:
            bad = write_segment(
                nodes[0],
                ttid,
                5,
                damaged_bytes(expected_segment_bytes(ttid, 5, SEG_SIZE), damage),
                0o000 if damage == "unreadable" else 0o644,
            )
        started = time.monotonic()
        writer.next_segno = 6
        writer.write(4)
        cluster.wait_backup(ttid, seg_lsn(10), timeout=30)
        took = time.monotonic() - started
    print(f"\n{damage} copy on the offloader: backup_lsn past it after {took:.2f} s")
    assert_invariant(cluster, archive, sampler, first_segno=1, written_end=10, expected_end=10)
    assert took < 10
    # Reported: one ERROR line on node 1 naming the file.
    log = cluster.log_path("node1").read_text()
    lines = [line for line in log.splitlines() if "ERROR" in line and bad.name in line]
    assert lines, cluster.tail_logs()


def test_a_damaged_copy_that_arrives_before_the_peers_copies_is_not_archived(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    """A new timeline's first segment reaches node 1 with bytes rewritten,
    and the good copies reach nodes 2 and 3 1.5 s later: for that moment
    node 1 is the only node that has told of the timeline. It must not
    archive its copy as a lone node would: it waits for the nodes that have
    not told yet, and their copies outvote its own. (Seen under load: the
    peers' heartbeats a round behind, the offloader archived a divergent
    copy unchecked.)"""
    workdirs = {n: tmp_path / f"node{n}" for n in NODES}
    cluster = start_cluster(make_cluster, workdirs)
    nodes = [workdirs[n] for n in NODES]
    ttid = ttid_offloaded_by(1)
    archive = Archive(ttid, root=tmp_path / "remote")

    with BackupSampler(cluster, ttid) as sampler:
        simulate(nodes[:1], [ttid], 0, SEG_SIZE)  # the timeline's directory, on node 1 only
        good = expected_segment_bytes(ttid, 1, SEG_SIZE)
        bad = write_segment(nodes[0], ttid, 1, damaged_bytes(good, "divergent"))
        time.sleep(1.5)
        simulate(nodes[1:], [ttid], 1, SEG_SIZE)
        WalWriter(nodes, ttid, next_segno=2).write(3)
        cluster.wait_backup(ttid, seg_lsn(5), timeout=30)
    assert archive.read(1) == good, "node 1's divergent copy of segment 1 was archived"
    assert_invariant(cluster, archive, sampler, first_segno=1, written_end=5, expected_end=5)
    log = cluster.log_path("node1").read_text()
    assert any("ERROR" in line and bad.name in line for line in log.splitlines()), (
        cluster.tail_logs()
    )


def offloaded_by_node1(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> tuple[Cluster, list[Path], TenantTimelineId, WalWriter, Archive]:
    """Three nodes, and a timeline node 1 offloads, backed up to segment 5."""
    workdirs = {n: tmp_path / f"node{n}" for n in NODES}
    cluster = start_cluster(make_cluster, workdirs)
    nodes = [workdirs[n] for n in NODES]
    ttid, writer = backed_up_timeline(cluster, nodes, offloader=1)
    return cluster, nodes, ttid, writer, Archive(ttid, root=tmp_path / "remote")


def test_a_timeline_directory_replaced_under_the_offloader(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    """Node 1's timeline directory is swapped for a copy made beside it
    (``mv L old; mv incoming L``, as a restore script might). The node's
    inotify watch on L followed the old directory away: the new one must be
    watched at once, so its next segments are backed up within seconds, not
    at the next full scan (30 s)."""
    cluster, nodes, ttid, writer, archive = offloaded_by_node1(make_cluster, tmp_path)
    with BackupSampler(cluster, ttid) as sampler:
        path = timeline_dir(nodes[0], ttid)
        shutil.copytree(path, path.parent / "incoming")
        path.rename(path.parent / "old")
        (path.parent / "incoming").rename(path)
        time.sleep(3.0)  # past the 2 s in which a fresh listing is redone every pass
        started = time.monotonic()
        writer.write(2)  # segments 5 and 6, on every node
        cluster.wait_backup(ttid, seg_lsn(7), timeout=40)

        def node1_sees_them() -> bool:
            mine = [p.peer for p in cluster.state.peers(str(ttid)) if p.peer.node_id == 1]
            return bool(mine) and mine[0].commit_lsn >= seg_lsn(7)

        wait_for(node1_sees_them, 40, "node 1 to report the segments after the swap")
        took = time.monotonic() - started
    print(f"\nafter the swap: node 1 saw the next segments in {took:.2f} s")
    assert cluster.state.timeline(str(ttid)).offloader == 1
    assert_invariant(cluster, archive, sampler, first_segno=1, written_end=7, expected_end=7)
    assert took < 5


@contextlib.contextmanager
def peers_frozen_at_segment_5(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> Iterator[tuple[Cluster, list[Path], TenantTimelineId]]:
    """A timeline node 1 offloads, backed up to segment 5; nodes 2 and 3 are
    frozen (SIGSTOP) while the body runs (it writes segment 5). Then they
    thaw, segments 6 and 7 follow, and the SPEC §9 invariant is checked up
    to segment 8."""
    cluster, nodes, ttid, writer, archive = offloaded_by_node1(make_cluster, tmp_path)
    with BackupSampler(cluster, ttid) as sampler:
        frozen = [cluster.procs[f"node{n}"].pid for n in (2, 3)]
        for pid in frozen:
            os.killpg(pid, signal.SIGSTOP)
        try:
            yield cluster, nodes, ttid
        finally:
            for pid in frozen:
                os.killpg(pid, signal.SIGCONT)
        writer.next_segno = 6
        writer.write(2)
        cluster.wait_backup(ttid, seg_lsn(8), timeout=30)
    assert_invariant(cluster, archive, sampler, first_segno=1, written_end=8, expected_end=8)


def test_divergent_copy_while_its_peers_stall(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    """The offloader's copy of segment 5 is divergent while nodes 2 and 3 are
    frozen (SIGSTOP) for longer than the heartbeat timeout: a GC pause or an
    overloaded host. Their missed heartbeats must not make the offloader a
    lone node that archives its own bytes unchecked: it waits for them, and
    once they thaw, their copies outvote its own."""
    with peers_frozen_at_segment_5(make_cluster, tmp_path) as (_, nodes, ttid):
        simulate(nodes[1:], [ttid], 1, SEG_SIZE, start_segno=5)
        good = expected_segment_bytes(ttid, 5, SEG_SIZE)
        write_segment(nodes[0], ttid, 5, damaged_bytes(good, "divergent"))
        time.sleep(3.0)  # past the 2 s heartbeat timeout


def test_copy_damaged_in_place_while_its_upload_waits_for_the_peers(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    """Nodes 2 and 3 are frozen (SIGSTOP), so node 1's upload of segment 5,
    good when it was hashed, parks for their digests. Meanwhile its copy is
    rewritten in place with the mtime put back (a bad disk, or a careless
    tool). The next attempt hashes it again (``Agreement``: its ctime
    changed; were the old digest reused, the upload's own hash of what it
    sends would refuse it), the thawed peers' good copies outvote it, and
    the archive gets theirs."""
    with peers_frozen_at_segment_5(make_cluster, tmp_path) as (cluster, nodes, ttid):
        simulate(nodes, [ttid], 1, SEG_SIZE, start_segno=5)
        time.sleep(1.5)  # node 1 hashed its copy and parked, waiting
        path = timeline_dir(nodes[0], ttid) / xlog_file_name(5, SEG_SIZE)
        st = path.stat()
        with open(path, "r+b") as f:
            f.seek(1000)
            f.write(b"\xa5" * 100)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        time.sleep(1.5)
    log = cluster.log_path("node1").read_text(errors="replace")
    assert "is damaged" in log, "node 1 never judged its rewritten copy"


def test_timeline_dir_removed_mid_backup(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    cluster, nodes, ttid, writer, archive = offloaded_by_node1(make_cluster, tmp_path)

    with BackupSampler(cluster, ttid) as sampler:
        writer.rate = 8
        writer.start()
        time.sleep(0.5)
        writer.workdirs = nodes[1:]  # node 1 receives no more WAL for it...
        time.sleep(0.2)
        shutil.rmtree(timeline_dir(nodes[0], ttid))  # ...and loses what it had
        removed = time.monotonic()
        time.sleep(2)
        end = writer.stop()
        cluster.wait_backup(ttid, seg_lsn(end), timeout=30)
        took = time.monotonic() - removed
    print(f"\ntimeline dir removed on the offloader: caught up {took:.2f} s later")
    assert_invariant(cluster, archive, sampler, first_segno=1, written_end=end, expected_end=end)
    assert cluster.state.timeline(str(ttid)).offloader in (2, 3)
    assert "1" not in {str(p.peer.node_id) for p in cluster.state.peers(str(ttid))}


def test_full_disk_under_the_state_file(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    with tiny_filesystem(tmp_path / "tiny", 16) as tiny:
        workdirs = {1: tiny, 2: tmp_path / "node2", 3: tmp_path / "node3"}
        # The state file takes backup_lsn within 1 s (30 s by default).
        cluster = start_cluster(make_cluster, workdirs, settings=STATE_FILE_FAST)
        nodes = [workdirs[n] for n in NODES]
        ttid, writer = backed_up_timeline(cluster, nodes, offloader=2)
        archive = Archive(ttid, root=tmp_path / "remote")
        state_path = timeline_dir(tiny, ttid) / "walbackup.state"
        wait_for(lambda: state_path.exists(), 10, "node 1's state file")
        filler = fill(tiny)

        with BackupSampler(cluster, ttid) as sampler:
            writer.workdirs = nodes[1:]  # node 1's disk is full
            writer.write(4)
            cluster.wait_backup(ttid, seg_lsn(9), timeout=30)
            log = cluster.log_path("node1")
            wait_for(
                lambda: "cannot record backup_lsn in the state file" in log.read_text(),
                10,
                "node 1 to report its full disk",
            )
            # Node 1 keeps heartbeating: it is still a live peer.
            beats = {p.peer.node_id: p.peer.ts for p in cluster.state.peers(str(ttid))}
            assert time.time() - beats[1] < 2.0
        assert_invariant(cluster, archive, sampler, first_segno=1, written_end=9, expected_end=9)
        filler.unlink()
        # With room again, node 1's state file catches up with the cluster.
        wait_for(
            lambda: (
                (state := read_state_file(state_path)) is not None
                and state.backup_lsn == seg_lsn(9)
            ),
            10,
            "node 1's state file to record backup_lsn again",
        )
        cluster.stop()


@pytest.mark.parametrize("locked", ["timeline", "tenant", "workdir"])
def test_an_unreadable_directory_on_the_offloader_moves_its_timeline_only(
    make_cluster: Callable[..., Cluster], tmp_path: Path, locked: str
) -> None:
    """The drill: node 1, without the capabilities that bypass file modes,
    offloads timelines A and B, and A's directory (or its tenant's) goes mode
    000 there. Node 1's whole scan failed each pass: its view of every
    timeline froze (B's backup_lsn too), it stayed A's offloader with no
    last_error, and restarted it died ("Unrecoverable error: PermissionError").
    Now A alone is left out of node 1's view and moves to a node with good
    copies, B goes on, A's last_error says why, and node 1 starts again. A
    whole WORKDIR gone unreadable froze node 1's view the same way: now
    both move, and come back once it can be read."""
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux) to run a node that cannot bypass file modes")
    workdirs = {n: tmp_path / f"node{n}" for n in NODES}
    cluster = start_cluster(make_cluster, workdirs, {1: WITHOUT_DAC_BYPASS})
    nodes = [workdirs[n] for n in NODES]
    a, writer_a = backed_up_timeline(cluster, nodes, offloader=1)
    b, writer_b = backed_up_timeline(cluster, nodes, offloader=1)
    archive = Archive(a, root=tmp_path / "remote")
    path = timeline_dir(nodes[0], a)
    path = {"timeline": path, "tenant": path.parent, "workdir": workdirs[1]}[locked]
    # Quiet for longer than a listing is distrusted for (2 s after a write):
    # node 1 no longer rescans A and B each pass, only on an event.
    time.sleep(2.5)
    try:
        with BackupSampler(cluster, a) as sampler:
            path.chmod(0o000)
            started = time.monotonic()

            def said_why() -> bool:  # until a commit of A's next segment clears it
                error = cluster.state.timeline(str(a)).last_error or ""
                return "node 1: left out of its WORKDIR scan" in error and "(EACCES" in error

            wait_for(said_why, 10, "A's last_error to say why node 1 left it out")
            writer_a.write(4)
            writer_b.write(4)
            cluster.wait_backup(a, seg_lsn(9), timeout=30)
            cluster.wait_backup(b, seg_lsn(9), timeout=30)
            took = time.monotonic() - started
        print(f"\n{locked} directory unreadable on the offloader: both past it after {took:.2f} s")
        assert_invariant(cluster, archive, sampler, first_segno=1, written_end=9, expected_end=9)
        assert cluster.state.timeline(str(a)).offloader in (2, 3)
        assert cluster.state.timeline(str(b)).offloader == 1 or locked == "workdir"
        log = cluster.log_path("node1").read_text()
        said = [line for line in log.splitlines() if "ERROR" in line and str(path) in line]
        assert said and "Permission denied (EACCES" in said[0], cluster.tail_logs()
        assert "watch round failed" not in log
        if locked == "workdir":  # readable again: node 1 holds both again, as a peer
            path.chmod(0o755)
            wait_for(
                lambda: all(
                    any(p.peer.node_id == 1 for p in cluster.state.peers(str(t))) for t in (a, b)
                ),
                10,
                "node 1 to be a peer of A and B again",
            )
            return

        cluster.kill("node1", signal.SIGTERM)  # and it starts with the directory still locked
        cluster.start_node(1, {"WALBACKUP_WORKDIR": str(workdirs[1])}, WITHOUT_DAC_BYPASS)
        cluster.wait_nodes([1])
        writer_b.write(2)
        cluster.wait_backup(b, seg_lsn(11), timeout=30)
        assert cluster.procs["node1"].poll() is None, cluster.tail_logs()
        assert "Unrecoverable" not in cluster.log_path("node1").read_text()
    finally:
        path.chmod(0o755)
