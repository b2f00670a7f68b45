"""``walbackup status`` shows a node's damaged copy, in the table and in JSON."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tasks.core.election import PeerInfo
from tasks.core.lsn import Lsn
from tasks.state.records import peer_to_json
from tasks.state.redis import RedisState
from tests.servers import env_without_walbackup

pytestmark = pytest.mark.integration

SEG = 1 << 20
TTID = "a" * 32 + "/" + "c" * 32


def test_status_shows_the_damaged_copy(state: RedisState, redis_url: str) -> None:
    now = time.time()
    state.register([TTID])
    for node, damaged in ((1, Lsn(5 * SEG)), (2, None)):
        peer = PeerInfo(node, Lsn(9 * SEG), Lsn(SEG), Lsn(4 * SEG), now, damaged)
        state.publish_heartbeats(node, [(TTID, peer_to_json(peer, SEG, Lsn(SEG)))], now)
    env = {**env_without_walbackup(), "WALBACKUP_REDIS_URL": redis_url, "COLUMNS": "200"}

    def status(*args: str) -> str:
        run = subprocess.run(
            [sys.executable, "-m", "tasks.cli", "status", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0, run.stderr
        return run.stdout

    (row,) = json.loads(status("--json"))["timelines"]
    assert {p["node_id"]: p["damaged_lsn"] for p in row["peers"]} == {1: "0/500000", 2: None}
    assert "1: 0/900000 (damaged at 0/500000)" in status()
