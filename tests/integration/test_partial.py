"""Partial segment upload through a cluster of real processes: three node
workers and beat, Redis, ``file://`` storage, ``walbackup fetch`` as a
subprocess. ``WALBACKUP_PARTIAL_UPLOAD_TIMEOUT`` is 2 s."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.core.partials import partial_object
from tasks.core.segments import xlog_file_name
from tasks.core.walpage import LongHeader, make_page_header
from tasks.dev.simulate import simulate, simulated_system_id
from tasks.errors import NotFound
from tasks.restore.fetch import fetch_or_partial
from tasks.state.workdir import Workdir
from tasks.storage.local import LocalStorage
from tests.cluster import SEG_SIZE, Cluster, wait_for
from tests.faults.harness import NODES, seg_lsn, start_cluster, ttid_offloaded_by

pytestmark = pytest.mark.integration

TIMEOUT_S = 2.0
PAGE = 8192


def fake_wal(ttid: TenantTimelineId, segno: int, end_offset: int) -> bytes:
    """A segment as PostgreSQL writes it up to ``end_offset``: valid page
    headers (with the simulator's system identifier, as the segments before),
    non-zero record bytes, then zeros (pg_receivewal's pre-allocation)."""
    start = segno * SEG_SIZE
    first = LongHeader(0xD110, 1, start, simulated_system_id(ttid), SEG_SIZE, PAGE)
    body = bytearray(os.urandom(SEG_SIZE).replace(b"\x00", b"\x01"))
    for page in range(0, SEG_SIZE, PAGE):
        header = make_page_header(first, start + page, rem_len=8 if page else 0)
        body[page : page + len(header)] = header
    body[end_offset:] = bytes(SEG_SIZE - end_offset)
    return bytes(body)


def tl_dir(cluster: Cluster, node: int, ttid: TenantTimelineId) -> Path:
    return cluster.workdir(node) / ttid.tenant_id / ttid.timeline_id


def write_partial(cluster: Cluster, ttid: TenantTimelineId, segno: int, data: bytes) -> None:
    """The same ``.partial`` bytes on every node, written in place as a WAL writer does."""
    for node in NODES:
        path = tl_dir(cluster, node, ttid) / (xlog_file_name(segno, SEG_SIZE) + ".partial")
        with path.open("r+b" if path.exists() else "wb") as f:
            f.write(data)
            f.truncate(len(data))


def remote_names(cluster: Cluster, ttid: TenantTimelineId, segno: int) -> list[str]:
    root = Path(cluster.remote_storage.removeprefix("file://"))
    directory = root / ttid.tenant_id / ttid.timeline_id
    name = xlog_file_name(segno, SEG_SIZE)
    if not directory.exists():
        return []
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(name))


def cli(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "tasks.cli", *args],
        env=cluster.env,
        capture_output=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def cluster(make_cluster: Callable[..., Cluster]) -> Cluster:
    def make(**kwargs: object) -> Cluster:
        settings = {"WALBACKUP_PARTIAL_UPLOAD_TIMEOUT": str(TIMEOUT_S)}
        return make_cluster(settings=settings, **kwargs)

    return start_cluster(make)


def backed_up(cluster: Cluster, offloader: int) -> TenantTimelineId:
    """A timeline with segments 1 and 2 written and archived; 3 is next."""
    ttid = ttid_offloaded_by(offloader)
    simulate([cluster.workdir(n) for n in NODES], [ttid], 2, SEG_SIZE)
    cluster.wait_backup(ttid, seg_lsn(3), timeout=30)
    return ttid


def test_a_quiet_timelines_tail_is_archived_within_the_timeout_and_fetched(
    cluster: Cluster, tmp_path: Path
) -> None:
    ttid = backed_up(cluster, offloader=1)
    end_offset = 5 * PAGE + 0x5A8  # pg_receivewal: pre-allocated, zeros after the WAL
    data = fake_wal(ttid, 3, end_offset)
    write_partial(cluster, ttid, 3, data)
    written = time.monotonic()
    expected = partial_object(3, seg_lsn(3) + end_offset, SEG_SIZE).name

    names = wait_for(
        lambda: [n for n in remote_names(cluster, ttid, 3) if n.endswith(".partial")],
        TIMEOUT_S + 10,
        "the partial upload",
        interval=0.05,
    )
    took = time.monotonic() - written
    assert names == [expected]
    assert TIMEOUT_S <= took <= TIMEOUT_S + 3, f"archived {took:.2f}s after the write"

    status = json.loads(cli(cluster, "status", "--json", str(ttid)).stdout)["timelines"][0]
    assert status["backup_lsn"] == str(seg_lsn(3))  # the segment is not complete
    assert status["archived_lsn"] == str(seg_lsn(3) + end_offset)

    dest = tmp_path / "RECOVERYXLOG"
    run = cli(cluster, "fetch", str(ttid), xlog_file_name(3, SEG_SIZE), str(dest))
    assert run.returncode == 0, run.stderr
    assert f"served the partial upload {expected}" in run.stderr.decode()
    restored = dest.read_bytes()
    assert len(restored) == SEG_SIZE
    assert restored[:end_offset] == data[:end_offset]
    assert restored[end_offset:] == bytes(SEG_SIZE - end_offset)
    # The next segment exists nowhere: not found, as PostgreSQL expects at the end.
    run = cli(cluster, "fetch", str(ttid), xlog_file_name(4, SEG_SIZE), str(tmp_path / "x"))
    assert run.returncode == 1 and not (tmp_path / "x").exists()


class Reader(threading.Thread):
    """Fetches segment 3 over and over, in process, recording what it got:
    the partial's name, ``"full"``, or ``None`` (nothing at all)."""

    def __init__(self, cluster: Cluster, ttid: TenantTimelineId, tmp_path: Path) -> None:
        super().__init__(daemon=True)
        self.storage = LocalStorage(Path(cluster.remote_storage.removeprefix("file://")))
        self.ttid = ttid
        self.dest = tmp_path / "reader"
        self.seen: list[tuple[str | None, bytes]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        name = xlog_file_name(3, SEG_SIZE)
        while not self.stop.is_set():
            try:
                _, partial = fetch_or_partial(self.storage, self.ttid, name, str(self.dest))
                self.seen.append((partial or "full", self.dest.read_bytes()))
            except NotFound:
                self.seen.append((None, b""))
            time.sleep(0.01)


def test_superseded_partials_are_collected_and_a_reader_always_finds_one(
    cluster: Cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ttid = backed_up(cluster, offloader=2)
    full = fake_wal(ttid, 3, SEG_SIZE)
    first, second = 3 * PAGE + 16, 9 * PAGE + 40
    names = [partial_object(3, seg_lsn(3) + o, SEG_SIZE).name for o in (first, second)]
    # A writer that appends: the file's length is the end of its WAL.
    write_partial(cluster, ttid, 3, full[:first])
    wait_for(lambda: names[0] in remote_names(cluster, ttid, 3), TIMEOUT_S + 10, "partial 1")

    reader = Reader(cluster, ttid, tmp_path)
    reader.start()
    try:
        write_partial(cluster, ttid, 3, full[:second])
        wait_for(
            lambda: remote_names(cluster, ttid, 3) == [names[1]],
            TIMEOUT_S + 10,
            "partial 2 in place of partial 1",
            interval=0.02,
        )
        # The segment completes (renamed, as pg_receivewal does): archived, then
        # its partials collected.
        for node in NODES:
            d = tl_dir(cluster, node, ttid)
            partial = d / (xlog_file_name(3, SEG_SIZE) + ".partial")
            partial.write_bytes(full)
            partial.rename(d / xlog_file_name(3, SEG_SIZE))
        cluster.wait_backup(ttid, seg_lsn(4), timeout=30)
        wait_for(
            lambda: remote_names(cluster, ttid, 3) == [xlog_file_name(3, SEG_SIZE)],
            10,
            "the partials collected after the segment was archived",
            interval=0.02,
        )
        time.sleep(0.2)
    finally:
        reader.stop.set()
        reader.join()
    capsys.readouterr()

    got = [name for name, _ in reader.seen]
    assert None not in got, "a reader found neither the partial nor the segment"
    assert set(got) <= {names[0], names[1], "full"}
    order = {names[0]: 0, names[1]: 1, "full": 2}
    assert [order[n] for n in got if n] == sorted(order[n] for n in got if n)
    assert {names[1], "full"} <= set(got), got[:3] + got[-3:]
    ends = {names[0]: first, names[1]: second, "full": SEG_SIZE}
    for name, body in reader.seen:
        assert name is not None
        assert body == full[: ends[name]] + bytes(SEG_SIZE - ends[name])
    assert cluster.state.partials(str(ttid)) == {}
    offloader_state = Workdir(cluster.workdir(2), SEG_SIZE).read_state(ttid)
    assert offloader_state is not None and offloader_state.partial_uploads == ()
    assert cluster.backup_lsn(ttid) == Lsn(seg_lsn(4))
