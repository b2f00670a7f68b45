"""tasks.backup.removal on real files, and the state file's removal horizon.

No servers: the cluster's backup_lsn and the scrubber's verified_lsn are
passed in as the heartbeat round would, the timeline start comes from a
function, digests go to a list.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Literal

import pytest
from prometheus_client import REGISTRY

from tasks.backup import removal as removal_module
from tasks.backup.removal import WalRemoval
from tasks.config import load_settings
from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.core.segments import xlog_file_name
from tasks.errors import InvalidInput
from tasks.logutil import Complaints
from tasks.state.records import ClusterFacts
from tasks.state.state_file import (
    STATE_FILE_NAME,
    STATE_MAGIC,
    TimelineStateFile,
    read_state_file,
    write_state_file,
)
from tasks.state.timeline_state import TimelineState
from tasks.state.workdir import Workdir

SEG = 1 << 20
TTID = TenantTimelineId("0123456789abcdef0123456789abcdef", "00000000000000000000000000000007")
START = Lsn.from_segment(1, 0, SEG)


def seg(segno: int) -> Lsn:
    return Lsn.from_segment(segno, 0, SEG)


class Node:
    """One node's WORKDIR holding TTID, and its ``WalRemoval``."""

    def __init__(self, root: Path, keep: int = 1, max_per_round: int = 128) -> None:
        self.disk = Workdir(root, SEG)
        self.path = root / TTID.tenant_id / TTID.timeline_id
        self.path.mkdir(parents=True, exist_ok=True)
        self.forgotten: list[tuple[str, int]] = []
        self.now = 1000.0
        self.cluster_start: Lsn | None = START
        self.removal = WalRemoval(
            7,
            self.disk,
            keep,
            timeline_start=lambda ttid: self.cluster_start,
            forget_digests=lambda ttid, end: self.forgotten.append((ttid, end)),
            complain=Complaints(logging.getLogger("test"), 7),
            max_per_round=max_per_round,
            clock=lambda: self.now,
        )

    def write(self, segnos: range, partial: int | None = None) -> None:
        for segno in segnos:
            (self.path / xlog_file_name(segno, SEG)).write_bytes(
                segno.to_bytes(4, "big") * (SEG // 4)
            )
        if partial is not None:
            (self.path / (xlog_file_name(partial, SEG) + ".partial")).write_bytes(b"x" * 4096)

    def held(self) -> list[int]:
        return sorted(int(p.name[16:], 16) for p in self.path.iterdir() if len(p.name) == 24)

    def scan(self) -> TimelineState:
        st = self.disk.scan_timeline(TTID)
        assert st is not None
        return st

    def round(self, backup: Lsn | None, verified: Lsn | Literal["all"] | None = "all") -> int:
        """One removal round; ``verified``: the scrubber's verified_lsn
        (``"all"``: the same as ``backup``)."""
        st = self.scan()
        known = ClusterFacts(backup, 1, None, backup if verified == "all" else verified)
        return self.removal.round({str(TTID): st}, {str(TTID): known})

    def state(self) -> TimelineStateFile:
        recorded = read_state_file(self.path / STATE_FILE_NAME)
        assert recorded is not None
        return recorded


def removed_total() -> float:
    return REGISTRY.get_sample_value("removed_wal_segments_total") or 0.0


def test_removes_below_the_horizon_records_it_first_and_counts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node = Node(tmp_path)
    node.write(range(1, 41), partial=41)
    node.disk.record_backup_lsn(TTID, seg(41))
    before = removed_total()
    with caplog.at_level(logging.INFO, logger="walbackup.removal"):
        assert node.round(seg(41)) == 39
    assert node.held() == [40]  # keep-back 1; the .partial stays too
    assert (node.path / (xlog_file_name(41, SEG) + ".partial")).exists()
    recorded = node.state()
    assert recorded.removal_horizon_lsn == seg(40)
    assert recorded.timeline_start_lsn == START  # the cluster's, kept for a Redis loss
    assert recorded.backup_lsn == seg(41)
    assert removed_total() - before == 39
    assert node.forgotten == [(str(TTID), 40)]
    (line,) = [r.getMessage() for r in caplog.records]
    assert str(TTID) in line and "39 WAL segment(s)" in line
    assert xlog_file_name(1, SEG) in line and xlog_file_name(39, SEG) in line
    # The rescan sees it: local_start_lsn rose to the one kept.
    assert node.scan().local_start_lsn == seg(40) <= seg(41)


def test_nothing_is_removed_while_the_cluster_backup_lsn_is_unknown(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.write(range(1, 21))
    node.disk.record_backup_lsn(TTID, seg(21))  # the state file alone is not enough
    assert node.round(None) == 0
    assert node.held() == list(range(1, 21))
    assert node.state().removal_horizon_lsn is None
    node.now += 10
    assert node.round(seg(21)) == 19  # recovered: removal resumes


def test_what_the_scrubber_has_not_found_intact_stays(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.write(range(1, 21))
    node.disk.record_backup_lsn(TTID, seg(21))
    assert node.round(seg(21), verified=None) == 0  # no scrub pass yet
    assert node.held() == list(range(1, 21))
    node.now += 10
    assert node.round(seg(21), verified=seg(8)) == 6  # 1..7 intact: 7 is the keep-back
    assert node.held() == list(range(7, 21))
    node.now += 10
    assert node.round(seg(21)) == 13
    assert node.held() == [20]


def test_the_state_file_backup_lsn_caps_what_the_cluster_says(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.write(range(1, 21))
    node.disk.record_backup_lsn(TTID, seg(10))
    assert node.round(seg(21)) == 8
    assert node.held() == list(range(9, 21))


def test_a_lagging_node_keeps_its_newest_complete_segment(tmp_path: Path) -> None:
    node = Node(tmp_path, keep=0)
    node.write(range(1, 11), partial=11)
    node.disk.record_backup_lsn(TTID, seg(31))  # the others archived up to 30
    node.round(seg(31))
    assert node.held() == [10]
    st = node.scan()
    assert st.local_start_lsn == seg(10) and st.commit_lsn == seg(11)


def test_without_a_known_timeline_start_nothing_is_removed(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.cluster_start = None
    node.write(range(1, 11))
    node.disk.record_backup_lsn(TTID, seg(11))
    assert node.round(seg(11)) == 0
    assert node.held() == list(range(1, 11))


def test_a_round_is_bounded_and_a_timeline_is_looked_at_every_interval(tmp_path: Path) -> None:
    node = Node(tmp_path, max_per_round=10)
    node.write(range(1, 41))
    node.disk.record_backup_lsn(TTID, seg(41))
    assert node.round(seg(41)) == 10
    assert node.held() == list(range(11, 41))  # lowest first: still contiguous
    assert node.round(seg(41)) == 10  # cut short: goes on at the next round
    assert node.round(seg(41)) == 10
    assert node.round(seg(41)) == 9
    assert node.held() == [40]
    node.write(range(41, 46))
    node.disk.record_backup_lsn(TTID, seg(46))
    assert node.round(seg(46)) == 0  # done with it less than interval_s ago
    node.now += removal_module.REMOVAL_INTERVAL_S
    assert node.round(seg(46)) == 5
    assert node.held() == [45]


def test_a_crash_mid_batch_is_finished_after_restart_over_a_raised_keep_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = Node(tmp_path)
    node.write(range(1, 31))
    node.disk.record_backup_lsn(TTID, seg(31))
    real_unlink = os.unlink
    calls = []

    def dies_on_the_fifth(path: str | os.PathLike[str]) -> None:
        calls.append(path)
        if len(calls) == 5:
            raise OSError("killed")
        real_unlink(path)

    monkeypatch.setattr(removal_module.os, "unlink", dies_on_the_fifth)
    before = removed_total()
    assert node.round(seg(31)) == 0  # the failure is complained about, not raised
    monkeypatch.undo()
    assert removed_total() - before == 4  # the four deleted before it still counted
    # The horizon was on disk before the first file went; what is left is contiguous.
    assert node.state().removal_horizon_lsn == seg(30)
    assert node.held() == list(range(5, 31))
    # "Restarted" with keep-back 100: the recorded batch is finished, no more.
    restarted = Node(tmp_path, keep=100)
    assert restarted.round(seg(31)) == 25
    assert restarted.held() == [30]
    restarted.write(range(31, 41))
    restarted.disk.record_backup_lsn(TTID, seg(41))
    restarted.now += 10
    assert restarted.round(seg(41)) == 0
    assert restarted.held() == list(range(30, 41))


def test_never_a_damaged_or_partial_file(tmp_path: Path) -> None:
    node = Node(tmp_path, keep=0)
    node.write(range(3, 11))
    (node.path / xlog_file_name(2, SEG)).write_bytes(b"short")  # wrong size, lowest held
    (node.path / (xlog_file_name(1, SEG) + ".partial")).write_bytes(b"old")
    node.disk.record_backup_lsn(TTID, seg(11))
    assert node.round(seg(11)) == 0
    assert sorted(p.name for p in node.path.iterdir() if p.name != STATE_FILE_NAME) == sorted(
        [xlog_file_name(1, SEG) + ".partial", xlog_file_name(2, SEG)]
        + [xlog_file_name(s, SEG) for s in range(3, 11)]
    )


# -- the state file's new optional field ------------------------------------------


def test_state_file_round_trips_the_horizon(tmp_path: Path) -> None:
    path = tmp_path / STATE_FILE_NAME
    written = TimelineStateFile(SEG, seg(9), START, removal_horizon_lsn=seg(7))
    write_state_file(path, written)
    assert read_state_file(path) == written
    assert json.loads(path.read_bytes())["removal_horizon_lsn"] == "0/700000"
    # Without a horizon the field is left out.
    write_state_file(path, TimelineStateFile(SEG, seg(9)))
    assert "removal_horizon_lsn" not in json.loads(path.read_bytes())


def _sealed(body: dict[str, object]) -> bytes:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return json.dumps({**body, "sha256": hashlib.sha256(canonical.encode()).hexdigest()}).encode()


def test_state_files_without_the_horizon_and_with_unknown_fields_are_read(tmp_path: Path) -> None:
    body: dict[str, object] = {
        "magic": STATE_MAGIC,
        "version": 1,
        "wal_seg_size": SEG,
        "backup_lsn": "0/900000",
    }
    old = TimelineStateFile.from_bytes(_sealed(body), tmp_path)
    assert old == TimelineStateFile(SEG, seg(9)) and old.removal_horizon_lsn is None
    # A newer writer's field this reader does not know is ignored, as ours is by older readers.
    newer = TimelineStateFile.from_bytes(_sealed({**body, "some_future_lsn": "0/1"}), tmp_path)
    assert newer == old


# -- the settings -------------------------------------------------------------------


def test_removal_is_off_by_default_and_keeps_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in list(os.environ):
        if name.startswith("WALBACKUP_"):
            monkeypatch.delenv(name)
    s = load_settings()
    assert s.remove_wal is False and s.wal_keep_segments == 1
    disk = Workdir(tmp_path, SEG, watch=False)
    assert disk.reserve.keep()  # left by a run with removal on
    assert WalRemoval.if_on(s, None, disk, None, None) is None  # type: ignore[arg-type]
    assert not disk.reserve.path.exists()
    monkeypatch.setenv("WALBACKUP_REMOVE_WAL", "true")
    monkeypatch.setenv("WALBACKUP_WAL_KEEP_SEGMENTS", "0")
    s = load_settings()
    assert s.remove_wal is True and s.wal_keep_segments == 0
    monkeypatch.setenv("WALBACKUP_WAL_KEEP_SEGMENTS", "-1")
    with pytest.raises(InvalidInput, match="WALBACKUP_WAL_KEEP_SEGMENTS"):
        load_settings()
