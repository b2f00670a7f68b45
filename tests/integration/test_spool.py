"""The restore spool behind `walbackup fetch` (tasks/restore/spool.py, prefetch.py): serial fetches
as PostgreSQL makes them come back byte-identical, the prefetcher goes away by
itself, a missing segment is still "not found", and a bad spool file is never
served."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.core.ids import TenantTimelineId
from tasks.core.segments import xlog_file_name
from tasks.restore.hit import LOCK_NAME, TMP_PREFIX, prefetcher_running, remote_id
from tasks.storage import open_storage, segment_key
from tests.cluster import wait_for
from tests.fixtures_s3 import MotoServer
from tests.servers import env_without_walbackup

pytestmark = pytest.mark.integration

SEG = 1 << 20
COUNT = 20


@pytest.fixture(params=["file", "s3"])
def remote(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str | None]]:
    """(WALBACKUP_REMOTE_STORAGE, WALBACKUP_S3_ENDPOINT_URL) for each backend."""
    if request.param == "file":
        yield (tmp_path / "remote").as_uri(), None
    else:
        moto: MotoServer = request.getfixturevalue("moto_server")
        yield request.getfixturevalue("s3_bucket_url"), moto.endpoint_url


def upload(url: str, endpoint: str | None, ttid: TenantTimelineId, tmp: Path) -> dict[str, bytes]:
    storage = open_storage(url, s3_endpoint_url=endpoint)
    segments = {}
    for segno in range(1, COUNT + 1):
        name = xlog_file_name(segno, SEG)
        data = os.urandom(SEG)
        src = tmp / name
        src.write_bytes(data)
        storage.upload_file(segment_key(ttid, name), src, SEG)
        src.unlink()
        segments[name] = data
    storage.close()
    return segments


class Restore:
    """`walbackup fetch` the way PostgreSQL runs it, with its spool under tmp."""

    def __init__(self, tmp: Path, url: str, endpoint: str | None, ttid: TenantTimelineId):
        self.ttid = ttid
        self.data_dir = tmp / "data"
        self.env = env_without_walbackup() | {
            "WALBACKUP_REMOTE_STORAGE": url,
            "WALBACKUP_DATA_DIR": str(self.data_dir),
            "WALBACKUP_RESTORE_PREFETCH": "4",
            "WALBACKUP_WAL_SEG_SIZE": str(SEG),
        }
        if endpoint:
            self.env["WALBACKUP_S3_ENDPOINT_URL"] = endpoint
        self.spool = self.data_dir / "spool" / remote_id(url, endpoint) / str(ttid)
        self.pg_wal = tmp / "pg_wal"
        self.pg_wal.mkdir()

    def fetch(self, name: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "tasks.cli", "fetch", str(self.ttid), name, self.dest],
            env=self.env,
            capture_output=True,
            timeout=60,
        )

    @property
    def dest(self) -> str:
        return str(self.pg_wal / "RECOVERYXLOG")

    def spooled(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.spool) if not n.startswith("."))
        except FileNotFoundError:
            return []

    def prefetcher_gone(self) -> bool:
        return not (self.spool / LOCK_NAME).exists() or not prefetcher_running(self.spool)


def new_ttid() -> TenantTimelineId:
    return TenantTimelineId(secrets.token_hex(16), secrets.token_hex(16))


def test_serial_fetches_are_byte_identical_and_the_prefetcher_ends(
    remote: tuple[str, str | None], tmp_path: Path
) -> None:
    url, endpoint = remote
    ttid = new_ttid()
    segments = upload(url, endpoint, ttid, tmp_path)
    restore = Restore(tmp_path, url, endpoint, ttid)
    names = sorted(segments)
    served_from_spool = 0
    for i, name in enumerate(names):
        if i == 1:  # the first fetch started a prefetcher: let it spool the next one
            wait_for(lambda: any(s.startswith(names[1]) for s in restore.spooled()), 30, "spool")
        was_spooled = any(s.startswith(name + ".") for s in restore.spooled())
        run = restore.fetch(name)
        assert run.returncode == 0, run.stderr
        assert Path(restore.dest).read_bytes() == segments[name]
        assert not any(s.startswith(name + ".") for s in restore.spooled())  # moved, not copied
        served_from_spool += was_spooled
        os.unlink(restore.dest)  # PostgreSQL renames or removes it
    assert served_from_spool >= 1
    assert sorted(os.listdir(restore.pg_wal)) == []  # no temp files left in pg_wal

    # The archive ends: "not found" as before, and the prefetcher exits by itself.
    missing = xlog_file_name(COUNT + 1, SEG)
    run = restore.fetch(missing)
    assert run.returncode == 1
    assert "not found" in run.stderr.decode()
    assert not Path(restore.dest).exists()
    wait_for(restore.prefetcher_gone, 30, "the prefetcher to exit")
    assert restore.spooled() == []


def test_idle_prefetcher_exits_and_cleans_up(tmp_path: Path) -> None:
    url = (tmp_path / "remote").as_uri()
    ttid = new_ttid()
    segments = upload(url, None, ttid, tmp_path)
    restore = Restore(tmp_path, url, None, ttid)
    first = sorted(segments)[0]
    run = restore.fetch(first)
    assert run.returncode == 0, run.stderr
    wait_for(lambda: len(restore.spooled()) == 4, 30, "4 segments spooled")
    # Nobody asks for more: the prefetcher gives up and deletes what it spooled.
    wait_for(restore.prefetcher_gone, 60, "the idle prefetcher to exit")
    wait_for(lambda: restore.spooled() == [], 10, "the spool to be emptied")
    assert not [n for n in os.listdir(restore.spool) if n.startswith(TMP_PREFIX)]


def test_missing_segment_exits_1_with_a_prefetcher_running(tmp_path: Path) -> None:
    url = (tmp_path / "remote").as_uri()
    ttid = new_ttid()
    segments = upload(url, None, ttid, tmp_path)
    restore = Restore(tmp_path, url, None, ttid)
    assert restore.fetch(sorted(segments)[0]).returncode == 0
    other = xlog_file_name(COUNT + 50, SEG)
    run = restore.fetch(other)
    assert run.returncode == 1
    assert run.stderr.decode().count("\n") == 1 and "not found" in run.stderr.decode()
    wait_for(restore.prefetcher_gone, 60, "the prefetcher to exit")


def test_corrupt_or_partial_spool_files_are_never_served(tmp_path: Path) -> None:
    url = (tmp_path / "remote").as_uri()
    ttid = new_ttid()
    segments = upload(url, None, ttid, tmp_path)
    restore = Restore(tmp_path, url, None, ttid)
    restore.spool.mkdir(parents=True)
    names = sorted(segments)
    garbage = os.urandom(SEG)
    # Same size, a checksum that does not match the bytes: corrupt at rest.
    (restore.spool / f"{names[0]}.{SEG}.{zlib.crc32(segments[names[0]]):08x}").write_bytes(garbage)
    # Truncated: fewer bytes than the name promises.
    short = segments[names[1]][: SEG // 2]
    (restore.spool / f"{names[1]}.{SEG}.{zlib.crc32(segments[names[1]]):08x}").write_bytes(short)
    # A download in progress that no live prefetcher owns.
    (restore.spool / f"{TMP_PREFIX}dl.{names[2]}.x").write_bytes(short)
    # Zeros, or nothing, under a published name.
    (restore.spool / f"{names[4]}.{SEG}.{zlib.crc32(segments[names[4]]):08x}").write_bytes(
        bytes(SEG)
    )
    (restore.spool / f"{names[5]}.{SEG}.{zlib.crc32(segments[names[5]]):08x}").write_bytes(b"")
    # Another remote's spool holding wrong bytes under the right name.
    elsewhere = restore.data_dir / "spool" / remote_id("file:///elsewhere", None) / str(ttid)
    elsewhere.mkdir(parents=True)
    (elsewhere / f"{names[3]}.{SEG}.{zlib.crc32(garbage):08x}").write_bytes(garbage)

    for name in names[:6]:
        run = restore.fetch(name)
        assert run.returncode == 0, run.stderr
        assert Path(restore.dest).read_bytes() == segments[name]
        os.unlink(restore.dest)
    for name in (names[0], names[1], names[4], names[5]):  # the bad files were deleted
        assert not list(restore.spool.glob(f"{name}.{SEG}.*")), name
    wait_for(restore.prefetcher_gone, 60, "the prefetcher to exit")


def test_a_directory_under_a_spooled_name_does_not_end_the_prefetcher(tmp_path: Path) -> None:
    """The restore drill: the prefetcher cleaning up what the consumer is
    past met a directory under a spooled segment's name, and died (unlink:
    EISDIR): every later segment was fetched directly."""
    url = (tmp_path / "remote").as_uri()
    ttid = new_ttid()
    segments = upload(url, None, ttid, tmp_path)
    restore = Restore(tmp_path, url, None, ttid)
    names = sorted(segments)
    restore.spool.mkdir(parents=True)
    (restore.spool / f"{names[0]}.{SEG}.00000000").mkdir()
    for name in names[:3]:
        run = restore.fetch(name)
        assert run.returncode == 0, run.stderr
        assert Path(restore.dest).read_bytes() == segments[name]
        os.unlink(restore.dest)
    # Past names[0]: the prefetcher has cleaned up, and goes on spooling.
    wait_for(lambda: any(s.startswith(names[5]) for s in restore.spooled()), 30, "spooling on")
    assert prefetcher_running(restore.spool)
