"""Coordination state through Redis Sentinel: a commit returns once a replica
has it (``WAIT``), one returns anyway when no replica answers, and after a
failover the same client commits on the promoted replica, loading the Lua
scripts again if it lacks them."""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tasks.backup.retention import plan_retain, retain
from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.errors import NotReplicated
from tasks.state.keys import tl_key
from tasks.state.lua import SCRIPT_SOURCES
from tasks.state.redis import RedisState
from tasks.state.window import REPLICA_WAIT_MS
from tasks.storage.local import LocalStorage
from tests.cluster import wait_for
from tests.integration.test_retention import SEG as RSEG
from tests.integration.test_retention import backed_up_to, fill, name, names
from tests.servers import SentinelGroup

pytestmark = pytest.mark.integration

SEG = 1 << 24


def seg(segno: int) -> Lsn:
    return Lsn.from_segment(segno, 0, SEG)


@pytest.fixture
def group() -> Iterator[SentinelGroup]:
    group = SentinelGroup()
    group.start()
    yield group
    group.close()


def test_commits_wait_for_the_replica_and_survive_a_failover(group: SentinelGroup) -> None:
    state = RedisState.from_url(
        group.master.url, sentinels=group.sentinel_list, master_name=group.name
    )
    replica = group.replica.client()
    ttid = f"{secrets.token_hex(16)}/{secrets.token_hex(16)}"
    try:
        assert state.replicas == 1
        state.raise_backup_lsn(ttid, seg(1))
        token = state.acquire_lease(ttid, "1.aaaa", 1, 60_000)
        assert token is not None
        for segno in range(1, 30):
            committed = state.commit_segment(ttid, token, segno, SEG)
            # Returned only once the replica has it.
            assert replica.hget(tl_key(ttid), "backup_lsn") == str(committed).encode()

        # A replica that does not answer delays a commit by REPLICA_WAIT_MS, no more.
        group.replica.pause()
        started = time.monotonic()
        assert state.commit_segment(ttid, token, 30, SEG) == seg(31)
        assert REPLICA_WAIT_MS / 1000 <= time.monotonic() - started < 2
        group.replica.resume()
        wait_for(
            lambda: replica.hget(tl_key(ttid), "backup_lsn") == str(seg(31)).encode(),
            5,
            "the replica to catch up",
        )

        group.master.kill()
        wait_for(lambda: group.current_master_port() == group.replica.port, 10, "the failover")

        # The same client, the same lease: the scripts run on the new master.
        def holder() -> str | None:
            try:
                return state.lease_holder_token(ttid)
            except redis.ConnectionError:  # MasterNotFoundError until every Sentinel knows
                return None

        wait_for(lambda: holder() == token, 10, "the new master")
        # A new master may lack the scripts (Redis 7.0 replicates SCRIPT LOAD,
        # but not to a replica that restarted since): NOSCRIPT loads them.
        sha = hashlib.sha1(SCRIPT_SOURCES["commit_segment"].encode()).hexdigest()
        replica.script_flush()
        assert state.commit_segment(ttid, token, 31, SEG) == seg(32)
        assert replica.script_exists(sha) == [True]
        assert state.timeline(ttid).backup_lsn == seg(32)
    finally:
        replica.close()
        state.close()


def test_retain_deletes_nothing_until_a_replica_has_the_new_start(
    group: SentinelGroup, tmp_path: Path
) -> None:
    """A review's find: a retain whose new start a failover lost made the
    scrubber upload the deleted segments again (the promoted replica knew
    no start). Now the start must be on a replica before anything goes."""
    state = RedisState.from_url(
        group.master.url, sentinels=group.sentinel_list, master_name=group.name
    )
    storage = LocalStorage(tmp_path / "remote")
    ttid = TenantTimelineId(secrets.token_hex(16), secrets.token_hex(16))
    fill(storage, ttid, range(1, 13))
    backed_up_to(state, ttid, 12)
    plan = plan_retain(storage, state, ttid, name(8), keep_segments=1, default_seg_size=RSEG)
    group.replica.pause()
    try:
        with pytest.raises(NotReplicated, match="no replica confirmed"):
            retain(storage, state, plan)
    finally:
        group.replica.resume()
    assert [n for n in names(storage, ttid) if n.startswith("0000")] == [
        name(s) for s in range(1, 13)
    ]
    assert "_retained" not in names(storage, ttid)  # no marker claims them retained
    done = retain(storage, state, plan)  # the rerun, the replica back
    assert done.segments == 7
    replica = group.replica.client()
    try:
        assert (
            replica.hget(tl_key(str(ttid)), "archive_start_lsn") == str(plan.archive_start).encode()
        )
    finally:
        replica.close()
