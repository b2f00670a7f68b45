"""`walbackup delete` cut short by S3 (our fault proxy in front of moto): what it
leaves is an archive missing its start, never one that looks whole, the Redis
state stays, and a rerun finishes the job in batches of at most 1,000 keys."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tasks.backup.recovery import remote_backup_end
from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.core.retention import marker_bytes
from tasks.state.redis import RedisState
from tasks.storage import RemoteStorage, open_storage, timeline_prefix
from tests.faults.s3proxy import S3FaultProxy
from tests.fixtures_s3 import MotoServer
from tests.integration.test_cli_cluster import walbackup
from tests.integration.test_retention import SEG, backed_up_to, name, names, partial

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

SEGMENTS = 1500  # two DeleteObjects requests: 1,000 keys, then the rest


@pytest.fixture
def proxy(moto_server: MotoServer, tmp_path: Path) -> Iterator[S3FaultProxy]:
    with S3FaultProxy(moto_server.endpoint_url, log_path=tmp_path / "proxy.log") as started:
        yield started


@pytest.fixture
def storage(moto_server: MotoServer, s3_bucket_url: str) -> Iterator[RemoteStorage]:
    """Straight at moto: to fill the archive and look at it."""
    backend = open_storage(s3_bucket_url, s3_endpoint_url=moto_server.endpoint_url)
    yield backend
    backend.close()


def test_an_interrupted_delete_leaves_no_whole_looking_archive_and_a_rerun_finishes(
    proxy: S3FaultProxy,
    storage: RemoteStorage,
    s3_bucket_url: str,
    redis_url: str,
    state: RedisState,
) -> None:
    ttid = TenantTimelineId(secrets.token_hex(16), secrets.token_hex(16))
    prefix = timeline_prefix(ttid)
    keys = [prefix + name(s) for s in range(1, SEGMENTS + 1)] + [prefix + partial(SEGMENTS)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: storage.put_bytes(key, b"w" * 100), keys))
    storage.put_bytes(prefix + "_retained", marker_bytes(Lsn(SEG), SEG))
    storage.put_bytes(prefix + "_ledger/000000010000000000000001", b"{}")
    backed_up_to(state, ttid, SEGMENTS + 1)
    everything = names(storage, ttid)
    env = {
        "WALBACKUP_REMOTE_STORAGE": s3_bucket_url,
        "WALBACKUP_S3_ENDPOINT_URL": proxy.endpoint_url,
        "WALBACKUP_WAL_SEG_SIZE": str(SEG),
    }

    # Every DeleteObjects is carried out, then answered 500: the first batch
    # is gone, the command stops there (botocore's 3 attempts all "fail").
    proxy.set("error500_after_forward", methods=["POST"])
    cut = walbackup("delete", str(ttid), "--yes", redis_url=redis_url, **env)
    assert cut.returncode == 3, cut.stderr
    assert "Traceback" not in cut.stderr
    assert cut.stderr.strip().splitlines()[-1].startswith("walbackup: ")
    assert f"Timeline {ttid}: delete: stopped after deleting objects=0" in cut.stderr
    # ... and says the batch it was deleting may be gone (it is, wholly).
    assert "of the batch then (objects=1000" in cut.stderr and "may be gone" in cut.stderr
    left = names(storage, ttid)
    assert left == everything[1000:]  # the newer end, the metadata with it
    assert proxy.stats().forwarded["POST"] == 3

    # What is left is no archive a restore or the recovery of backup_lsn
    # mistakes for a whole one: its start is missing.
    assert remote_backup_end(storage, str(ttid), Lsn(SEG), SEG) == Lsn(SEG)
    fetch = walbackup("fetch", str(ttid), name(1), "-", redis_url=redis_url, **env)
    assert fetch.returncode == 1, fetch.stderr
    assert state.registered() == [str(ttid)]  # walbackup status still shows it

    proxy.clear()
    proxy.reset_stats()
    rerun = walbackup("delete", str(ttid), "--yes", redis_url=redis_url, **env)
    assert rerun.returncode == 0, rerun.stderr
    assert f"deleted {len(left)} objects" in rerun.stdout
    assert names(storage, ttid) == [] and state.registered() == []
    assert proxy.stats().forwarded["POST"] == 1  # 503 keys: one request
