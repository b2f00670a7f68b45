"""The offloader's last ledger flush at shutdown (``ArchiveKeeper._final_flush``)
with Redis gone: a review found its Redis read outside the ``try``, so the
error escaped ``NodeService.stop`` and the node never released its leases
nor closed its WORKDIR watch. A real refused port and a real silent one."""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.backup.keeper import ArchiveKeeper
from tasks.config import Settings
from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.dev.simulate import simulate
from tasks.state.redis import RedisState
from tasks.state.workdir import Workdir
from tasks.storage.local import LocalStorage

SEG = 1 << 20


@pytest.fixture(params=["refused", "silent"])
def dead_redis(request: pytest.FixtureRequest) -> Iterator[str]:
    """A Redis URL nobody answers: a closed port, or one that accepts and says nothing."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    if request.param == "silent":
        sock.listen(16)
    else:
        sock.close()
    yield f"redis://127.0.0.1:{port}/0"
    sock.close()


def test_a_final_flush_with_redis_gone_complains_and_returns(
    tmp_path: Path, dead_redis: str
) -> None:
    workdir = tmp_path / "wd"
    workdir.mkdir()
    ttids = [TenantTimelineId(secrets.token_hex(16), secrets.token_hex(16)) for _ in range(3)]
    simulate([workdir], ttids, segments=3, seg_size=SEG)
    disk = Workdir(workdir, SEG, watch=False)
    states = {}
    for ttid in ttids:
        st = disk.scan_timeline(ttid)
        assert st is not None
        states[str(ttid)] = st
    complaints: list[tuple[object, ...]] = []
    keeper = ArchiveKeeper(
        Settings(node_id=1, workdir=workdir, wal_seg_size=SEG),
        RedisState.from_url(dead_redis),
        LocalStorage(tmp_path / "remote"),
        disk,
        lambda: states,
        lambda: {t: Lsn.from_segment(4, 0, SEG) for t in states},
        lambda *a: False,
        lambda *a: complaints.append(a),
    )
    started = time.monotonic()
    keeper._final_flush()  # raises nothing
    assert len(complaints) == 1  # the first failure ends it: the shutdown goes on
    assert time.monotonic() - started < 30
