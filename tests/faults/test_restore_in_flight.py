"""``walbackup fetch`` whose GET answers are damaged in flight (the fault proxy,
a process, between it and a moto server): every byte it writes is the
archived segment's, and a failure stops the restore (exit above 125), never
ends it (1). A body broken off once (a connection reset or closed mid-body)
is read again: it stopped PostgreSQL's recovery, and shut a standby down."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

from tasks.core.ids import TenantTimelineId
from tasks.core.segments import xlog_file_name
from tasks.restore.stream import BODY_ATTEMPTS
from tasks.storage import open_storage
from tests.faults.s3proxy import S3FaultProxy
from tests.faults.test_rewritten_object import SEG, SEGMENTS, archive
from tests.fixtures_s3 import MotoServer
from tests.integration.test_fetch import fetch
from tests.servers import env_without_walbackup

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.fixture
def archived(
    moto_server: MotoServer, s3_bucket_url: str, tmp_path: Path
) -> tuple[TenantTimelineId, dict[int, bytes]]:
    """Segments 1..SEGMENTS, the first ones in a ledger page, the last not yet."""
    ttid = TenantTimelineId(secrets.token_hex(16), secrets.token_hex(16))
    storage = open_storage(s3_bucket_url, s3_endpoint_url=moto_server.endpoint_url)
    segments, _ = archive(storage, ttid, tmp_path)
    return ttid, segments


def env_through(proxy: S3FaultProxy, url: str, data_dir: Path) -> dict[str, str]:
    """Every fetch direct (no prefetcher), through the proxy."""
    return env_without_walbackup() | {
        "WALBACKUP_REMOTE_STORAGE": url,
        "WALBACKUP_S3_ENDPOINT_URL": proxy.endpoint_url,
        "WALBACKUP_WAL_SEG_SIZE": str(SEG),
        "WALBACKUP_DATA_DIR": str(data_dir),
        "WALBACKUP_RESTORE_PREFETCH": "0",
    }


@pytest.mark.parametrize("mode", ["reset_response", "truncate_response", "flip_response"])
def test_a_segment_damaged_once_in_flight_is_read_again(
    proxy: S3FaultProxy,
    s3_bucket_url: str,
    archived: tuple[TenantTimelineId, dict[int, bytes]],
    tmp_path: Path,
    mode: str,
) -> None:
    ttid, segments = archived
    env = env_through(proxy, s3_bucket_url, tmp_path / "data")
    dest = tmp_path / "RECOVERYXLOG"
    # In a ledger page (checked against it) and past the pages (the storage's checksum only).
    for segno in (2, SEGMENTS):
        name = xlog_file_name(segno, SEG)
        proxy.set(mode, methods=["GET"], count=1, match=name)
        run = fetch(env, str(ttid), name, str(dest))
        assert run.returncode == 0, run.stderr
        assert dest.read_bytes() == segments[segno]
        dest.unlink()
    assert proxy.stats().faulted == {"GET": 2}


@pytest.mark.parametrize("mode", ["reset_response", "truncate_response"])
def test_a_body_that_keeps_breaking_off_stops_the_restore(
    proxy: S3FaultProxy,
    s3_bucket_url: str,
    archived: tuple[TenantTimelineId, dict[int, bytes]],
    tmp_path: Path,
    mode: str,
) -> None:
    ttid, _ = archived
    env = env_through(proxy, s3_bucket_url, tmp_path / "data")
    pg_wal = tmp_path / "pg_wal"
    pg_wal.mkdir()
    name = xlog_file_name(3, SEG)
    proxy.set(mode, methods=["GET"], match=name)
    run = fetch(env, str(ttid), name, str(pg_wal / "RECOVERYXLOG"))
    assert run.returncode == 201, run.stderr
    assert run.stderr.startswith(b"walbackup: remote storage unavailable: ")
    assert run.stderr.count(b"\n") == 1
    assert os.listdir(pg_wal) == []  # nothing half-written left
    assert proxy.stats().faulted == {"GET": BODY_ATTEMPTS}


def test_a_body_broken_off_on_stdout_is_not_read_again(
    proxy: S3FaultProxy,
    s3_bucket_url: str,
    archived: tuple[TenantTimelineId, dict[int, bytes]],
    tmp_path: Path,
) -> None:
    """What went to stdout cannot be taken back: the exit status says."""
    ttid, _ = archived
    env = env_through(proxy, s3_bucket_url, tmp_path / "data")
    name = xlog_file_name(3, SEG)
    proxy.set("reset_response", methods=["GET"], count=1, match=name)
    run = fetch(env, str(ttid), name, "-")
    assert run.returncode == 201, run.stderr
    assert len(run.stdout) < SEG
    assert proxy.stats().faulted == {"GET": 1}


def test_the_proxy_damages_only_matching_answers(
    proxy: S3FaultProxy,
    s3_bucket_url: str,
    archived: tuple[TenantTimelineId, dict[int, bytes]],
    tmp_path: Path,
) -> None:
    """Listings and other objects pass while a fault waits for its object."""
    ttid, segments = archived
    env = env_through(proxy, s3_bucket_url, tmp_path / "data")
    proxy.set("reset_response", methods=["GET"], count=1, match=xlog_file_name(SEGMENTS, SEG))
    run = fetch(env, str(ttid), xlog_file_name(1, SEG), str(tmp_path / "out"))
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "out").read_bytes() == segments[1]
    assert proxy.stats().faulted == {}
