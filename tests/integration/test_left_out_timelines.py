"""A timeline the node's WORKDIR scan leaves out (``WorkdirScanner.failures``:
a directory it cannot read, a corrupt state file) is one the node does not
hold: it stops being its peer at once (the election moves it to a node with
good copies), its ``last_error`` says why, the other timelines carry on,
and the node starts all the same (the drill: ``CRITICAL Unrecoverable error:
PermissionError``). The real ``chmod 000`` is tests/unit/test_scan_faults.py's."""

from __future__ import annotations

import errno
import secrets
import threading
import time
from pathlib import Path

import pytest

from tasks.backup.elector import Elector
from tasks.backup.node import NodeService
from tasks.config import load_settings
from tasks.core.ids import TenantTimelineId
from tasks.dev.simulate import simulate
from tasks.metrics import LEFT_OUT_TIMELINES
from tasks.state import timeline_dir
from tasks.state.listing import Listing
from tasks.state.redis import RedisState
from tasks.state.scanner import ScanChanges
from tasks.storage.local import LocalStorage

pytestmark = pytest.mark.integration

SEG = 1 << 20


def make_node(tmp_path: Path, state: RedisState, ttids: list[TenantTimelineId]) -> NodeService:
    workdir = tmp_path / "node1"
    simulate([workdir], ttids, segments=3, seg_size=SEG)
    settings = load_settings(
        node_id=1, workdir=workdir, wal_seg_size=SEG, data_dir=tmp_path / "data"
    )
    elector = Elector(
        state, lambda ttid, node: None, heartbeat_timeout_s=5.0,
        max_offloader_lag_bytes=128 * SEG, default_seg_size=SEG, kick_hold_ms=2000,
    )  # fmt: skip
    storage = LocalStorage(tmp_path / "remote")
    return NodeService(settings, state, storage, elector, lambda *a: None, lambda jobs: None)


def new_ttids(n: int) -> list[TenantTimelineId]:
    return [TenantTimelineId(secrets.token_hex(16), secrets.token_hex(16)) for _ in range(n)]


def test_a_timeline_left_out_is_not_this_nodes_and_its_last_error_says_why(
    tmp_path: Path, state: RedisState, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = new_ttids(2)
    node = make_node(tmp_path, state, [a, b])
    node._refresh(trigger=False)
    node.heartbeats.round(list(node._timelines.values()))
    assert [p.peer.node_id for p in state.peers(str(a))] == [1]
    assert LEFT_OUT_TIMELINES._value.get() == 0

    locked = node.disk.timeline_dir(a)
    real_list = timeline_dir.list_files

    def list_files(path: Path) -> Listing:
        if path == locked:  # as for a mode-000 directory without CAP_DAC_OVERRIDE
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_list(path)

    monkeypatch.setattr(timeline_dir, "list_files", list_files)
    simulate([node.disk.workdir], [a, b], segments=4, seg_size=SEG)  # segment 4: a new listing
    node._refresh(trigger=True)  # raised PermissionError: the whole scan failed
    assert set(node._timelines) == {str(b)}
    assert node._timelines[str(b)].commit_lsn == state.peers(str(b))[0].peer.commit_lsn
    assert state.peers(str(a)) == []  # at once, not after heartbeat_timeout
    node.heartbeats.round(list(node._timelines.values()))
    error = state.timeline(str(a)).last_error
    assert error is not None
    assert "node 1: left out of its WORKDIR scan" in error
    assert f"cannot read {locked}: Permission denied (EACCES)" in error
    assert not state.timeline(str(b)).last_error
    assert LEFT_OUT_TIMELINES._value.get() == 1  # what WalbackupTimelinesLeftOut watches


def test_a_node_starts_when_its_first_scan_fails(
    tmp_path: Path, state: RedisState, monkeypatch: pytest.MonkeyPatch
) -> None:
    (a,) = new_ttids(1)
    node = make_node(tmp_path, state, [a])
    real_scan = node.disk.scan_changes
    calls = []

    def scan_changes() -> ScanChanges:
        calls.append(threading.current_thread().name)
        if len(calls) == 1:
            raise OSError(errno.EIO, "Input/output error")
        return real_scan()

    monkeypatch.setattr(node.disk, "scan_changes", scan_changes)
    node.start()  # raised OSError: the worker died
    try:
        deadline = time.monotonic() + 10
        while str(a) not in node._timelines and time.monotonic() < deadline:
            time.sleep(0.05)
        assert str(a) in node._timelines  # the watcher's next pass
    finally:
        node.stop()
