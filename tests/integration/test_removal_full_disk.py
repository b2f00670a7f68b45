"""WAL removal on a WORKDIR that WAL filled to the last block: a real tmpfs.

The drill: the archive is away while WAL comes, until pg_receivewal can
write no more; then the archive is back and backup catches up. Removal needs
two state file writes before it deletes anything (the backup_lsn that caps
its horizon, then the horizon), and both need a free block: without the
WORKDIR's space reserve (``tasks.state.reserve``) nothing was ever deleted
and the disk stayed full. No servers: the node's real ``Workdir``,
``StateWrites`` and ``WalRemoval`` run the rounds its heartbeat thread would,
with the cluster's facts passed in.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import cast

import pytest

from tasks.backup.blocked import BlockedRemoval
from tasks.backup.removal import WalRemoval
from tasks.backup.state_writes import StateWrites
from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.core.segments import xlog_file_name
from tasks.logutil import Complaints
from tasks.state.records import ClusterFacts
from tasks.state.redis import RedisState
from tasks.state.reserve import RESERVE_BYTES, RESERVE_NAME
from tasks.state.state_file import STATE_FILE_NAME, read_state_file
from tasks.state.workdir import Workdir
from tests.tmpfs import fill, free_bytes, tiny_filesystem

pytestmark = pytest.mark.integration

SEG = 1 << 20
TTID = TenantTimelineId("0123456789abcdef0123456789abcdef", "00000000000000000000000000000007")
START = Lsn.from_segment(1, 0, SEG)


def seg(segno: int) -> Lsn:
    return Lsn.from_segment(segno, 0, SEG)


class Errors:
    """``RedisState``'s ``last_error``, for ``BlockedRemoval``."""

    def __init__(self) -> None:
        self.last_error: dict[str, str] = {}

    def record_error(self, ttid: str, message: str) -> str:
        self.last_error[ttid] = message
        return message

    def clear_error(self, ttid: str, read: str) -> None:
        if self.last_error.get(ttid) == read:
            del self.last_error[ttid]


class Node:
    """One node's WORKDIR on ``root`` and the parts of its heartbeat thread."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.disk = Workdir(root, SEG, watch=False)
        self.path = root / TTID.tenant_id / TTID.timeline_id
        self.path.mkdir(parents=True)
        self.now = 1000.0
        self.errors = Errors()
        complain = Complaints(logging.getLogger("test"), 7)
        blocked = BlockedRemoval(7, cast(RedisState, self.errors))
        self.state_writes = StateWrites(self.disk, complain, 0.0, blocked)
        self.removal = WalRemoval(
            7,
            self.disk,
            1,
            timeline_start=lambda ttid: START,
            forget_digests=lambda ttid, end: None,
            complain=complain,
            blocked=blocked,
            clock=lambda: self.now,
        )
        self.next_segno = 1

    def receive(self, count: int | None = None) -> bool:
        """pg_receivewal: ``count`` segments (``None``: until the disk is
        full), each written as ``NAME.partial`` and renamed when complete;
        ``False`` when the disk filled (the ``.partial`` stays, as far as
        it got)."""
        while count is None or count > 0:
            name = self.path / xlog_file_name(self.next_segno, SEG)
            partial = name.with_name(name.name + ".partial")
            try:
                with open(partial, "ab") as out:
                    out.truncate(0)
                    for _ in range(SEG // 65536):
                        out.write(self.next_segno.to_bytes(4, "big") * (65536 // 4))
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                return False
            partial.rename(name)
            self.next_segno += 1
            count = None if count is None else count - 1
        return True

    def round(self, backup: Lsn) -> int:
        """One heartbeat round's state file writes, then one removal round."""
        self.now += 10.0  # the timeline is due again
        st = self.disk.scan_timeline(TTID)
        assert st is not None
        self.state_writes.new_round()
        self.state_writes.record(st, backup, None)
        st = self.disk.scan_timeline(TTID)  # the watcher's rescan
        assert st is not None
        facts = ClusterFacts(backup, 1, None, backup)
        return self.removal.round({str(TTID): st}, {str(TTID): facts})

    def held(self) -> list[int]:
        return sorted(int(p.name[16:], 16) for p in self.path.iterdir() if len(p.name) == 24)

    def recorded_backup(self) -> Lsn:
        recorded = read_state_file(self.path / STATE_FILE_NAME)
        assert recorded is not None
        return recorded.backup_lsn


def test_a_workdir_filled_by_wal_is_freed_once_the_archive_is_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with tiny_filesystem(tmp_path / "workdir", 8) as root:
        node = Node(root)
        assert node.receive(2)
        assert node.round(seg(1)) == 0  # the node's first rounds: nothing archived yet
        reserve = root / RESERVE_NAME
        assert reserve.stat().st_blocks * 512 >= RESERVE_BYTES  # real blocks, no hole

        # The archive is away: WAL piles up until pg_receivewal stops.
        assert not node.receive()
        assert free_bytes(root) < 4096
        newest = node.next_segno - 1
        # Back: backup catches up with every complete segment.
        backup = seg(newest + 1)
        with caplog.at_level(logging.WARNING):
            removed = sum(node.round(backup) for _ in range(2))
        assert removed == newest - 1  # all but the keep-back
        assert node.held() == [newest]
        assert node.recorded_backup() == backup
        said = [r.getMessage() for r in caplog.records if r.name == "walbackup.reserve"]
        assert len(said) == 1 and "is full" in said[0], said
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert node.errors.last_error == {}
        assert reserve.exists()  # made again, there being room
        assert not [p for p in root.iterdir() if p.name.endswith(".tmp")]
        assert node.receive(2)  # pg_receivewal goes on


def test_a_workdir_full_without_its_reserve_says_removal_is_blocked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A node started on a disk already full has no reserve to give up: the
    blocked removal is an ERROR and the timeline's last_error, cleared once
    the state file can be written again."""
    with tiny_filesystem(tmp_path / "workdir", 8) as root:
        node = Node(root)
        assert node.receive(2)
        node.disk.record_backup_lsn(TTID, seg(1))
        filler = fill(root)
        backup = seg(3)
        with caplog.at_level(logging.WARNING):
            assert node.round(backup) == 0
        assert not (root / RESERVE_NAME).exists()
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "WAL removal on this node is blocked" in errors[0], errors
        assert "No space left on device" in errors[0]
        message = node.errors.last_error[str(TTID)]
        assert "cannot record backup_lsn in the state file" in message

        os.unlink(filler)
        assert node.round(backup) == 1
        assert node.errors.last_error == {}
        assert (root / RESERVE_NAME).exists()
        assert node.held() == [2]
