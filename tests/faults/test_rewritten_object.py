"""An archived segment rewritten out of band, or lost, is never restored as if
it were the archive (SPEC §9: a corrupt archive object is found, not served).

S3 checks an object against the checksum stored with it; a flipped byte put
back with a plain PUT (no checksum), or with a new checksum of its own, passes
that check. ``walbackup fetch`` and its prefetcher check the bytes against the
archive ledger's SHA-256 instead, so PostgreSQL's recovery stops at such a
segment (exit 202) rather than ending early at its first bad record."""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from pathlib import Path

import pytest

from tasks.archive.ledger_store import LedgerStore
from tasks.core.ids import TenantTimelineId
from tasks.core.ledger import LedgerEntry, page_key
from tasks.core.lsn import Lsn
from tasks.core.retention import RETAINED_MARKER, marker_bytes
from tasks.core.segments import xlog_file_name
from tasks.restore.absence import LOST_RECHECK_S
from tasks.restore.hit import LOCK_NAME, prefetcher_running, remote_id
from tasks.storage import RemoteStorage, open_storage, segment_key, timeline_prefix
from tasks.storage.base import digest_segment_file
from tests.cluster import wait_for
from tests.fixtures_s3 import MotoServer, s3_client
from tests.integration.test_fetch import fetch as fetch_process
from tests.servers import env_without_walbackup

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

SEG = 1 << 20
SEGMENTS = 12
IN_PAGES = 10
"""Segments 1..10 reached a ledger page; 11 and 12 are committed, not flushed yet."""


def archive(
    storage: RemoteStorage, ttid: TenantTimelineId, tmp_path: Path
) -> tuple[dict[int, bytes], dict[int, LedgerEntry]]:
    """Segments 1..SEGMENTS archived, 1..IN_PAGES in a ledger page (as the
    offloader's flush writes it); their bytes and entries."""
    segments: dict[int, bytes] = {}
    entries: dict[int, LedgerEntry] = {}
    for segno in range(1, SEGMENTS + 1):
        src = tmp_path / xlog_file_name(segno, SEG)
        src.write_bytes(os.urandom(SEG))
        storage.upload_file(segment_key(ttid, src.name), src, SEG)
        digest = digest_segment_file(src, SEG)
        entries[segno] = LedgerEntry(SEG, digest.sha256_hex, digest.md5_hex)
        segments[segno] = src.read_bytes()
        src.unlink()
    LedgerStore(storage).write(ttid, SEG, {s: entries[s] for s in range(1, IN_PAGES + 1)}, 1)
    return segments, entries


def fetch_env(url: str, endpoint: str, data_dir: Path) -> dict[str, str]:
    return env_without_walbackup() | {
        "WALBACKUP_REMOTE_STORAGE": url,
        "WALBACKUP_S3_ENDPOINT_URL": endpoint,
        "WALBACKUP_WAL_SEG_SIZE": str(SEG),
        "WALBACKUP_DATA_DIR": str(data_dir),
        # One segment ahead: the prefetcher's next download after 5 is 6.
        "WALBACKUP_RESTORE_PREFETCH": "1",
    }


def run_fetch(
    env: dict[str, str], ttid: TenantTimelineId, segno: int, to: Path | str, cwd: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    return fetch_process(env, str(ttid), xlog_file_name(segno, SEG), str(to), cwd=cwd)


def test_a_segment_rewritten_out_of_band_stops_the_restore_and_is_never_spooled(
    moto_server: MotoServer, s3_bucket_url: str, tmp_path: Path
) -> None:
    ttid = TenantTimelineId(secrets.token_hex(16), secrets.token_hex(16))
    storage = open_storage(s3_bucket_url, s3_endpoint_url=moto_server.endpoint_url)
    segments, entries = archive(storage, ttid, tmp_path)

    # Out of band: 6 without a stored checksum, 8 and 11 with a new one of their own.
    bucket, _, root = s3_bucket_url.removeprefix("s3://").partition("/")
    client = s3_client(moto_server.endpoint_url)
    for segno, extra in ((6, {}), (8, {"ChecksumAlgorithm": "SHA256"}), (11, {})):
        flipped = bytearray(segments[segno])
        flipped[SEG // 2] ^= 0x10
        key = f"{root}/{segment_key(ttid, xlog_file_name(segno, SEG))}"
        client.put_object(Bucket=bucket, Key=key, Body=bytes(flipped), **extra)  # type: ignore[arg-type]

    data_dir = tmp_path / "data"
    env = fetch_env(s3_bucket_url, moto_server.endpoint_url, data_dir)
    spool = data_dir / "spool" / remote_id(s3_bucket_url, moto_server.endpoint_url) / str(ttid)
    dest = tmp_path / "RECOVERYXLOG"

    def fetch(segno: int, to: str = str(dest), **more: str) -> subprocess.CompletedProcess[bytes]:
        return run_fetch(env | more, ttid, segno, to)

    def spooled(segno: int) -> bool:
        prefix = xlog_file_name(segno, SEG) + "."
        return spool.is_dir() and any(n.startswith(prefix) for n in os.listdir(spool))

    # The first fetch is direct and starts the prefetcher, which spools 2..5
    # one ahead of the consumer, then refuses 6 and ends there: 6 never
    # appears in the spool (it would stay until the prefetcher's idle exit).
    for segno in range(1, 6):
        if segno > 1:
            wait_for(lambda s=segno: spooled(s), 30, f"the prefetcher to spool {segno}")  # type: ignore[misc]
        run = fetch(segno)
        assert run.returncode == 0, run.stderr
        assert dest.read_bytes() == segments[segno]
        dest.unlink()
    seen_6 = False
    deadline = time.monotonic() + 30
    while not seen_6 and time.monotonic() < deadline:
        seen_6 = spooled(6)
        gone = not (spool / LOCK_NAME).exists() or not prefetcher_running(spool)
        if gone:
            break
        time.sleep(0.01)
    assert gone and not seen_6

    run = fetch(6)
    assert run.returncode == 202, run.stderr
    stderr = run.stderr.decode()
    assert stderr.count("\n") == 1 and "is not the one archived" in stderr
    assert xlog_file_name(6, SEG) in stderr and entries[6].sha256 in stderr
    assert "WALBACKUP_RESTORE_LEDGER_CHECK=warn" in stderr  # the way past a wrong ledger
    assert not dest.exists() and not list(tmp_path.glob("RECOVERYXLOG*"))

    # A restore host that left WALBACKUP_WAL_SEG_SIZE at its default (16 MiB):
    # no check holds under the wrong size, so the first segment read stops.
    run = fetch(7, WALBACKUP_WAL_SEG_SIZE=str(16 << 20))
    assert run.returncode == 200, run.stderr
    assert b"WALBACKUP_WAL_SEG_SIZE is 16777216" in run.stderr and b"say 1048576" in run.stderr

    # With a stored checksum of its own (which S3 finds right), and to stdout.
    run = fetch(8, "-")
    assert run.returncode == 202 and entries[8].sha256 in run.stderr.decode(), run.stderr

    # Intact segments around them still come back; 11 is past the pages, where
    # the storage's checksum is the only check (the documented limit).
    for segno in (7, 9, 10, 12, 11):
        run = fetch(segno)
        assert run.returncode == 0, (segno, run.stderr)
        if segno != 11:
            assert dest.read_bytes() == segments[segno]
        dest.unlink()

    # An operator who knows the ledger is what is wrong restores anyway.
    run = fetch(6, WALBACKUP_RESTORE_LEDGER_CHECK="warn")
    assert run.returncode == 0 and b"warning" in run.stderr and b"=warn" in run.stderr
    dest.unlink()
    run = fetch(6, WALBACKUP_RESTORE_LEDGER_CHECK="off")
    assert run.returncode == 0 and run.stderr == b"", run.stderr
    dest.unlink()

    # A ledger page that cannot be read is the ledger's trouble: served, said.
    page = page_key(timeline_prefix(ttid), 1, IN_PAGES, SEG)
    client.put_object(Bucket=bucket, Key=f"{root}/{page}", Body=b"{torn")
    run = fetch(7, WALBACKUP_DATA_DIR=str(tmp_path / "no-spool-yet"))  # not a spool hit
    assert run.returncode == 0, run.stderr
    assert b"cannot be read" in run.stderr and run.stderr.count(b"\n") == 1
    assert dest.read_bytes() == segments[7]
    storage.close()


def test_an_absence_that_is_not_the_archives_end_stops_the_restore(
    moto_server: MotoServer, s3_bucket_url: str, tmp_path: Path
) -> None:
    """Exit 1 ends a point-in-time recovery where it is: only the archive's
    true end may say it. A segment the ledger records but the archive lost,
    or a timeline with nothing archived (a wrong prefix or id), stops it."""
    ttid = TenantTimelineId(secrets.token_hex(16), secrets.token_hex(16))
    storage = open_storage(s3_bucket_url, s3_endpoint_url=moto_server.endpoint_url)
    archive(storage, ttid, tmp_path)
    env = fetch_env(s3_bucket_url, moto_server.endpoint_url, tmp_path / "data")
    dest = tmp_path / "RECOVERYXLOG"

    storage.delete(segment_key(ttid, xlog_file_name(9, SEG)))  # a lifecycle rule, a hand
    started = time.monotonic()
    run = run_fetch(env, ttid, 9, dest)
    assert run.returncode == 202, run.stderr
    assert time.monotonic() - started >= LOST_RECHECK_S  # it looked once more first
    assert b"records it as archived: the archive lost it" in run.stderr
    assert run.stderr.count(b"\n") == 1 and not dest.exists()

    # Past the pages (committed or in flight, not flushed): still the end.
    storage.delete(segment_key(ttid, xlog_file_name(12, SEG)))
    assert run_fetch(env, ttid, 12, dest).returncode == 1
    assert run_fetch(env, ttid, SEGMENTS + 1, dest).returncode == 1

    # Below the start `walbackup retain` moved the archive to: deleted on purpose.
    storage.put_bytes(timeline_prefix(ttid) + RETAINED_MARKER, marker_bytes(Lsn(4 * SEG), SEG))
    storage.delete(segment_key(ttid, xlog_file_name(2, SEG)))
    assert run_fetch(env, ttid, 2, dest).returncode == 1

    # A storage prefix with nothing at all under it; a timeline with nothing
    # archived: a wrong id stops a recovery (run in a data directory with
    # recovery.signal, as PostgreSQL runs it), where a standby (standby.signal),
    # which never ends recovery at a missing file, reads it as not archived yet.
    run = run_fetch(env | {"WALBACKUP_REMOTE_STORAGE": s3_bucket_url + "x"}, ttid, 1, dest)
    assert run.returncode == 200 and b"prefix of WALBACKUP_REMOTE_STORAGE" in run.stderr
    other = TenantTimelineId(secrets.token_hex(16), ttid.timeline_id)
    pgdata = tmp_path / "pgdata"
    pgdata.mkdir()
    (pgdata / "recovery.signal").touch()
    run = run_fetch(env, other, 1, dest, cwd=pgdata)
    assert run.returncode == 200 and b"nothing is archived of timeline" in run.stderr, run.stderr
    assert not dest.exists()
    (pgdata / "standby.signal").touch()  # both: standby mode, as PostgreSQL reads them
    run = run_fetch(env, other, 1, dest, cwd=pgdata)
    assert run.returncode == 1 and b"nothing is archived of timeline" in run.stderr, run.stderr
    stop = env | {"WALBACKUP_RESTORE_EMPTY_TIMELINE": "stop"}
    assert run_fetch(stop, other, 1, dest, cwd=pgdata).returncode == 200
    end = env | {"WALBACKUP_RESTORE_EMPTY_TIMELINE": "end"}
    assert run_fetch(end, other, 1, dest).returncode == 1
    storage.close()
