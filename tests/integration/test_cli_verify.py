"""`walbackup verify` as a user runs it when there is nothing it can verify: a
storage it cannot use is exit 3 (as for an unreachable one), a timeline it
could not check is never shown as ``ok``, and a mistyped id is refused."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest

from tasks.dev.embedded import free_port
from tasks.state.redis import RedisState
from tests.fixtures_s3 import MotoServer
from tests.integration.test_cli_cluster import assert_one_line, ttid, walbackup

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("missing_bucket", "does not exist"),
        ("missing_profile", "The config profile (nosuchprofile) could not be found"),
    ],
)
def test_a_storage_it_cannot_use_is_exit_3_with_one_line(
    moto_server: MotoServer, s3_bucket_url: str, redis_url: str, setting: str, message: str
) -> None:
    env = {"WALBACKUP_S3_ENDPOINT_URL": moto_server.endpoint_url}
    if setting == "missing_bucket":
        env["WALBACKUP_REMOTE_STORAGE"] = f"s3://no-bucket-{secrets.token_hex(4)}/wal"
    else:
        env |= {"WALBACKUP_REMOTE_STORAGE": s3_bucket_url, "AWS_PROFILE": "nosuchprofile"}
    run = walbackup("verify", ttid(), redis_url=redis_url, **env)
    assert_one_line(run, 3, message)
    assert run.stdout == ""  # no table row claiming anything


def test_a_timeline_it_could_not_check_is_not_ok(redis_url: str, tmp_path: Path) -> None:
    timeline = ttid()
    pages = tmp_path / "remote" / timeline / "_ledger"
    pages.mkdir(parents=True)
    (pages / "000000010000000000000001-000000010000000000000002.json").write_text("garbage")
    env = {"WALBACKUP_REMOTE_STORAGE": (tmp_path / "remote").as_uri()}

    run = walbackup("verify", timeline, redis_url=redis_url, **env)
    assert run.returncode == 1, run.stderr
    [row] = [line for line in run.stdout.splitlines() if timeline in line and "│" in line]
    assert "not verified" in row and " ok " not in row
    assert f"{timeline}: cannot verify: " in run.stdout and "is unreadable" in run.stdout

    as_json = walbackup("verify", "--json", timeline, redis_url=redis_url, **env)
    assert as_json.returncode == 1
    [report] = json.loads(as_json.stdout)
    assert report["ok"] is False and "is unreadable" in report["error"]


def test_a_timeline_neither_redis_nor_the_archive_knows_is_refused(
    redis_url: str, state: RedisState, tmp_path: Path
) -> None:
    """A mistyped id must not pass as "nothing to verify" (README: verify
    --deep before a restore drill); one that is registered, or archived, is
    checked as before."""
    typo, registered, archived = ttid(), ttid(), ttid()
    state.register([registered])  # as `trigger --create` does: nothing archived yet
    remote = tmp_path / "remote"
    (remote / archived).mkdir(parents=True)
    (remote / archived / "000000010000000000000001").write_bytes(b"\0" * 8192)
    env = {"WALBACKUP_REMOTE_STORAGE": remote.as_uri()}

    run = walbackup("verify", "--deep", registered, typo, redis_url=redis_url, **env)
    assert_one_line(run, 2, f"unknown timeline {typo}: not registered and nothing in the archive")
    assert registered not in run.stderr and run.stdout == ""

    for known in (registered, archived):
        run = walbackup("verify", known, redis_url=redis_url, **env)
        assert run.returncode == 0, run.stderr
        assert "nothing to verify" in run.stdout

    down = f"redis://127.0.0.1:{free_port()}/0"
    run = walbackup("verify", typo, redis_url=down, **env)
    assert run.returncode == 3
    assert f"the archive holds nothing of timeline {typo}" in run.stderr
