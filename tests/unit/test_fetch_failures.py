"""``run_fetch`` never exits 1 for anything but a file the archive lacks:
PostgreSQL reads 1 as "not in the archive" and ends a recovery there."""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path

import pytest

from tasks.core.ids import TenantTimelineId
from tasks.core.segments import MIN_SEG_SIZE, xlog_file_name
from tasks.restore import fetch
from tasks.storage import open_storage, segment_key


def test_a_prefetcher_that_cannot_start_does_not_fail_the_fetch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """DEST is restored before the prefetcher starts: whatever that start
    raises, the fetch succeeded (and says once why restores are slow)."""
    url = (tmp_path / "remote").as_uri()
    for name in [k for k in os.environ if k.startswith("WALBACKUP_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("WALBACKUP_REMOTE_STORAGE", url)
    monkeypatch.setenv("WALBACKUP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("WALBACKUP_WAL_SEG_SIZE", str(MIN_SEG_SIZE))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the once-an-hour marker

    def broken(*args: object) -> bool:
        raise RuntimeError("cannot start")

    monkeypatch.setattr(fetch, "start_prefetcher", broken)
    ttid = TenantTimelineId(secrets.token_hex(16), secrets.token_hex(16))
    name = xlog_file_name(1, MIN_SEG_SIZE)
    src = tmp_path / "src"
    src.write_bytes(os.urandom(MIN_SEG_SIZE))
    open_storage(url).upload_file(segment_key(ttid, name), src, MIN_SEG_SIZE)

    dest = tmp_path / "out"
    assert fetch.run_fetch(str(ttid), name, str(dest)) == fetch.EXIT_OK
    assert dest.read_bytes() == src.read_bytes()
    [warning] = capsys.readouterr().err.splitlines()
    assert "no restore spool" in warning and "cannot start" in warning
