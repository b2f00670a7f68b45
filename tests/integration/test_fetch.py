"""`walbackup fetch` as PostgreSQL's restore_command, against both backends:
segments uploaded through the storage API come back byte-identical."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.core.ids import TenantTimelineId
from tasks.core.segments import xlog_file_name
from tasks.storage import open_storage, segment_key
from tests.fixtures_s3 import MotoServer
from tests.servers import env_without_walbackup

pytestmark = pytest.mark.integration

SEG = 16 << 20


@pytest.fixture(params=["file", "s3"])
def remote(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """(WALBACKUP_REMOTE_STORAGE, extra env) for each backend."""
    if request.param == "file":
        yield (tmp_path / "remote").as_uri(), {}
    else:
        moto: MotoServer = request.getfixturevalue("moto_server")
        url = request.getfixturevalue("s3_bucket_url")
        yield url, {"WALBACKUP_S3_ENDPOINT_URL": moto.endpoint_url}


def fetch(
    env: dict[str, str], *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    """``walbackup fetch ARGS``; ``cwd``: where PostgreSQL runs it, its data directory."""
    return subprocess.run(
        [sys.executable, "-m", "tasks.cli", "fetch", *args],
        env=env,
        capture_output=True,
        timeout=60,
        cwd=cwd,
    )


def test_fetch_restores_uploaded_segment(
    remote: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    url, extra = remote
    env = env_without_walbackup() | {"WALBACKUP_REMOTE_STORAGE": url} | extra
    ttid = TenantTimelineId(secrets.token_hex(16), secrets.token_hex(16))
    name = xlog_file_name(3, SEG)
    src = tmp_path / name
    data = os.urandom(SEG)
    src.write_bytes(data)
    storage = open_storage(url, s3_endpoint_url=extra.get("WALBACKUP_S3_ENDPOINT_URL"))
    storage.upload_file(segment_key(ttid, name), src, SEG)

    restore_dir = tmp_path / "pg_wal"
    restore_dir.mkdir()
    dest = restore_dir / "RECOVERYXLOG"
    run = fetch(env, str(ttid), name, str(dest))
    assert run.returncode == 0, run.stderr
    assert dest.read_bytes() == data
    assert sorted(p.name for p in restore_dir.iterdir()) == ["RECOVERYXLOG"]  # no temp left

    run = fetch(env, str(ttid), name, "-", "--offset", str(SEG - 1000))
    assert run.returncode == 0, run.stderr
    assert run.stdout == data[-1000:]

    nowhere = tmp_path / "nonexistent" / "x"
    run = fetch(env, str(ttid), name, str(nowhere))
    assert run.returncode == 203
    assert run.stderr.decode() == f"walbackup: [Errno 2] No such file or directory: '{nowhere}'\n"

    missing = xlog_file_name(4, SEG)
    run = fetch(env, str(ttid), missing, str(restore_dir / "other"))
    assert run.returncode == 1
    assert run.stderr.decode().count("\n") == 1 and "not found" in run.stderr.decode()
    assert not (restore_dir / "other").exists()
    assert sorted(p.name for p in restore_dir.iterdir()) == ["RECOVERYXLOG"]


@pytest.mark.parametrize(
    "args",
    [
        ["../x", "000000010000000000000001", "out"],
        ["A" * 32 + "/" + "b" * 32, "000000010000000000000001", "out"],
        ["a" * 32 + "/" + "b" * 32, "../../etc/passwd", "out"],
        ["a" * 32 + "/" + "b" * 32, "000000010000000000000001", "out", "--offset", "x"],
    ],
)
def test_fetch_bad_input_exits_200_and_writes_nothing(tmp_path: Path, args: list[str]) -> None:
    env = env_without_walbackup() | {"WALBACKUP_REMOTE_STORAGE": (tmp_path / "r").as_uri()}
    run = subprocess.run(
        [sys.executable, "-m", "tasks.cli", "fetch", *args],
        env=env,
        capture_output=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert run.returncode == 200
    assert run.stderr.startswith(b"walbackup: ")
    assert not (tmp_path / "out").exists()


def test_unknown_storage_scheme_is_a_clear_error(tmp_path: Path) -> None:
    env = env_without_walbackup() | {"WALBACKUP_REMOTE_STORAGE": "ftp://host/x"}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "tasks.cli",
            "fetch",
            "a" * 32 + "/" + "b" * 32,
            "000000010000000000000001",
            "out",
        ],
        env=env,
        capture_output=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert run.returncode == 200
    assert b"ftp://host/x" in run.stderr


def test_a_missing_history_file_is_a_quiet_not_found(
    remote: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    """Recovery probes for newer timelines' history files: absent is normal."""
    url, extra = remote
    if url.startswith("file:"):
        (tmp_path / "remote").mkdir()
    env = env_without_walbackup() | {"WALBACKUP_REMOTE_STORAGE": url} | extra
    run = fetch(env, "a" * 32 + "/" + "b" * 32, "00000002.history", str(tmp_path / "h"))
    assert (run.returncode, run.stderr) == (1, b"")
    assert not (tmp_path / "h").exists()


@pytest.mark.parametrize(
    ("storage", "code", "message"),
    [
        # An archive that is not there must not read as "end of the archive":
        # PostgreSQL would end the recovery there, early.
        ("file_missing_root", 201, b"is not a directory"),
        ("s3_missing_bucket", 201, b"remote storage unusable"),
        ("s3_missing_profile", 201, b"The config profile (nosuchprofile) could not be found"),
        ("toml_error", 200, b"is not valid TOML"),
        ("bad_setting", 200, b"WALBACKUP_PARALLEL_JOBS"),
    ],
)
def test_a_broken_archive_or_setup_stops_recovery_instead_of_ending_it(
    request: pytest.FixtureRequest, tmp_path: Path, storage: str, code: int, message: bytes
) -> None:
    """Exit statuses above 125 make PostgreSQL abort recovery; 1..125 end it."""
    env = env_without_walbackup() | {"WALBACKUP_REMOTE_STORAGE": (tmp_path / "gone").as_uri()}
    if storage == "s3_missing_bucket":
        moto: MotoServer = request.getfixturevalue("moto_server")
        env |= {
            "WALBACKUP_REMOTE_STORAGE": f"s3://no-such-bucket-{secrets.token_hex(4)}/wal",
            "WALBACKUP_S3_ENDPOINT_URL": moto.endpoint_url,
        }
    elif storage == "s3_missing_profile":
        moto = request.getfixturevalue("moto_server")
        env |= {
            "WALBACKUP_REMOTE_STORAGE": request.getfixturevalue("s3_bucket_url"),
            "WALBACKUP_S3_ENDPOINT_URL": moto.endpoint_url,
            "AWS_PROFILE": "nosuchprofile",
        }
    elif storage == "toml_error":
        (tmp_path / "w.toml").write_text("parallel_jobs = = 1\n")
        env["WALBACKUP_CONFIG_FILE"] = str(tmp_path / "w.toml")
    elif storage == "bad_setting":
        env["WALBACKUP_PARALLEL_JOBS"] = "0"
    run = fetch(env, "a" * 32 + "/" + "b" * 32, xlog_file_name(1, SEG), str(tmp_path / "out"))
    assert run.returncode == code, run.stderr
    assert run.returncode > 125
    assert run.stderr.startswith(b"walbackup: ") and run.stderr.count(b"\n") == 1, run.stderr
    assert message in run.stderr
    assert not (tmp_path / "out").exists()


def test_an_unforeseen_error_stops_recovery_with_one_line(tmp_path: Path) -> None:
    """An error nobody translated (here botocore's own ValueError for a
    malformed endpoint in boto3's environment) exits 203 with one line: a
    traceback's exit status, 1, would read as "not in the archive" and end a
    point-in-time recovery early."""
    env = env_without_walbackup() | {
        "WALBACKUP_REMOTE_STORAGE": "s3://bucket/wal",
        "WALBACKUP_DATA_DIR": str(tmp_path / "data"),
        "AWS_ENDPOINT_URL_S3": "notaurl",
    }
    run = fetch(env, "a" * 32 + "/" + "b" * 32, xlog_file_name(1, SEG), str(tmp_path / "out"))
    assert run.returncode == 203, run.stderr
    assert run.stderr == b"walbackup: unexpected error: ValueError: Invalid endpoint: notaurl\n"
    assert not (tmp_path / "out").exists()


def test_fetch_without_a_writable_spool_says_so_once_an_hour(tmp_path: Path) -> None:
    """restore_command as a user who cannot write WALBACKUP_DATA_DIR: the
    fetch works, and one warning (per hour, not per segment) says why
    restores are slow."""
    url = (tmp_path / "remote").as_uri()
    not_a_dir = tmp_path / "data"
    not_a_dir.write_text("a file where the data dir should be")
    (tmp_path / "tmp").mkdir()
    env = env_without_walbackup() | {
        "WALBACKUP_REMOTE_STORAGE": url,
        "WALBACKUP_DATA_DIR": str(not_a_dir),
        "TMPDIR": str(tmp_path / "tmp"),
    }
    ttid = TenantTimelineId(secrets.token_hex(16), secrets.token_hex(16))
    storage = open_storage(url)
    for segno in (1, 2):
        src = tmp_path / f"src{segno}"
        src.write_bytes(os.urandom(SEG))
        storage.upload_file(segment_key(ttid, xlog_file_name(segno, SEG)), src, SEG)
    first = fetch(env, str(ttid), xlog_file_name(1, SEG), str(tmp_path / "out1"))
    assert first.returncode == 0, first.stderr
    [warning] = first.stderr.decode().splitlines()
    assert "no restore spool" in warning and "WALBACKUP_DATA_DIR" in warning
    second = fetch(env, str(ttid), xlog_file_name(2, SEG), str(tmp_path / "out2"))
    assert (second.returncode, second.stderr) == (0, b"")
