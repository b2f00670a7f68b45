"""`walbackup retain` and `walbackup delete` as a user runs them: against ``file://``
and moto S3 storage with the private Redis, and beside a live cluster."""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.dev.embedded import free_port
from tasks.dev.simulate import simulate
from tasks.state.redis import RedisState
from tasks.storage import RemoteStorage, open_storage
from tests.cluster import SEG_SIZE, Cluster
from tests.fixtures_s3 import MotoServer
from tests.integration.test_cli_cluster import assert_one_line, walbackup
from tests.integration.test_retention import backed_up_to, fill, heartbeat, name, partial, wal_names

pytestmark = pytest.mark.integration

SEG = SEG_SIZE  # 1 MiB, as test_retention's


@pytest.fixture(params=["file", "s3"])
def where(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[RemoteStorage, dict[str, str]]]:
    """The storage (to fill and inspect) and the settings the CLI gets for it."""
    env = {"WALBACKUP_WAL_SEG_SIZE": str(SEG)}
    if request.param == "file":
        url = (tmp_path / "remote").as_uri()
        storage = open_storage(url)
    else:
        endpoint = request.getfixturevalue("moto_server").endpoint_url
        url = request.getfixturevalue("s3_bucket_url")
        storage = open_storage(url, s3_endpoint_url=endpoint)
        env["WALBACKUP_S3_ENDPOINT_URL"] = endpoint
    env["WALBACKUP_REMOTE_STORAGE"] = url
    yield storage, env
    storage.close()


@pytest.fixture
def ttid() -> TenantTimelineId:
    return TenantTimelineId(secrets.token_hex(16), secrets.token_hex(16))


def run(redis_url: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return walbackup(*args, redis_url=redis_url, **env)


def test_delete_says_what_it_would_delete_and_needs_yes(
    where: tuple[RemoteStorage, dict[str, str]],
    redis_url: str,
    state: RedisState,
    ttid: TenantTimelineId,
) -> None:
    storage, env = where
    fill(storage, ttid, range(1, 6), partial(5), "_retained")
    backed_up_to(state, ttid, 5)
    heartbeat(state, ttid, node_id=3, age_s=3600)
    everything = wal_names(storage, ttid)

    refused = run(redis_url, env, "delete", str(ttid))
    assert_one_line(refused, 2, "refusing to delete without --yes; nothing deleted")
    assert (
        f"would delete 7 objects, {5 * SEG + 20} bytes: 5 segments ({name(1)} to {name(5)}), "
        "1 partial upload(s), 1 other object(s)" in refused.stdout
    )
    assert "node(s) [3] held it and stopped" in refused.stdout
    dry = run(redis_url, env, "delete", str(ttid), "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["plan"]["objects"] == 7
    assert json.loads(dry.stdout)["deleted"] is None
    assert wal_names(storage, ttid) == everything and state.registered() == [str(ttid)]

    done = run(redis_url, env, "delete", str(ttid), "--yes", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["deleted"]["objects"] == 7
    assert f"Timeline {ttid}: delete: deleted objects=7 bytes={5 * SEG + 20}" in done.stderr
    assert wal_names(storage, ttid) == [] and state.registered() == []
    again = run(redis_url, env, "delete", str(ttid), "--yes")
    assert again.returncode == 0 and "deleted 0 objects" in again.stdout


def test_delete_refuses_a_timeline_a_live_node_holds(
    tmp_path: Path, redis_url: str, state: RedisState, ttid: TenantTimelineId
) -> None:
    storage = open_storage((tmp_path / "remote").as_uri())
    env = {"WALBACKUP_REMOTE_STORAGE": storage.url, "WALBACKUP_WAL_SEG_SIZE": str(SEG)}
    fill(storage, ttid, range(1, 4))
    heartbeat(state, ttid, node_id=1, age_s=0)
    refused = run(redis_url, env, "delete", str(ttid), "--yes")
    assert_one_line(refused, 2, f"timeline {ttid} is held by live node(s) [1]")
    assert len(wal_names(storage, ttid)) == 3
    # The preview still works, and says why the real run would be refused.
    # (Each run beats again: three CLI starts on a loaded machine outlast
    # heartbeat_timeout, and node 1 would count as dead by the third.)
    heartbeat(state, ttid, node_id=1, age_s=0)
    dry = run(redis_url, env, "delete", str(ttid), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"would delete 3 objects, {3 * SEG} bytes" in dry.stdout
    assert "live node(s) [1] hold it: delete is refused" in dry.stdout
    heartbeat(state, ttid, node_id=1, age_s=0)
    dry_json = run(redis_url, env, "delete", str(ttid), "--dry-run", "--json")
    assert json.loads(dry_json.stdout)["plan"]["live_nodes"] == [1]
    assert len(wal_names(storage, ttid)) == 3 and state.peers(str(ttid))


def test_retain_needs_yes_dry_run_deletes_nothing_and_the_limit_holds(
    where: tuple[RemoteStorage, dict[str, str]],
    redis_url: str,
    state: RedisState,
    ttid: TenantTimelineId,
) -> None:
    storage, env = where
    fill(storage, ttid, range(1, 13), partial(3))
    backed_up_to(state, ttid, 12)
    everything = wal_names(storage, ttid)

    refused = run(redis_url, env, "retain", str(ttid), "--before", name(8))
    assert_one_line(refused, 2, "refusing to delete without --yes; nothing deleted")
    assert f"segments from {name(8)} on are kept" in refused.stdout
    assert f"would delete 8 objects, {7 * SEG + 10} bytes: 7 segments" in refused.stdout
    dry = run(redis_url, env, "retain", str(ttid), "--before", "0/800000", "--dry-run")
    assert dry.returncode == 0 and "would delete 8 objects" in dry.stdout, dry.stderr
    for before, message in (
        (name(12), f"segments from {name(11)} on are kept"),  # backup_lsn's own segment
        ("0/C00000", "reaches too far"),  # where backup_lsn is
        ("0/FFFFFFFF", "reaches too far"),
        ("junk", "--before 'junk'"),
    ):
        assert_one_line(
            run(redis_url, env, "retain", str(ttid), "--before", before, "--yes"), 2, message
        )
    assert wal_names(storage, ttid) == everything

    done = run(redis_url, env, "retain", str(ttid), "--before", name(8), "--yes")
    assert done.returncode == 0, done.stderr
    assert f"deleted 8 objects ({7 * SEG + 10} bytes) of timeline {ttid}" in done.stdout
    assert f"Timeline {ttid}: retain: deleted objects=8" in done.stderr
    assert "archive_start=0/800000" in done.stderr
    assert wal_names(storage, ttid) == [*(name(s) for s in range(8, 13)), "_retained"]
    status = json.loads(run(redis_url, env, "status", "--json", str(ttid)).stdout)
    assert status["timelines"][0]["archive_start_lsn"] == "0/800000"


def test_unusable_storage_or_redis_is_one_line_exit_3(
    redis_url: str, state: RedisState, ttid: TenantTimelineId, tmp_path: Path
) -> None:
    backed_up_to(state, ttid, 12)
    missing = {"WALBACKUP_REMOTE_STORAGE": (tmp_path / "nowhere").as_uri()}
    down = {
        "WALBACKUP_REMOTE_STORAGE": "s3://walbackup-down/wal",
        "WALBACKUP_S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
    }
    for env, text in ((missing, "is not a directory"), (down, "s3://walbackup-down/wal")):
        for command in (
            ["delete", str(ttid), "--dry-run"],
            ["retain", str(ttid), "--before", "0/1"],
        ):
            assert_one_line(run(redis_url, env, *command), 3, text)
    assert not (tmp_path / "nowhere").exists()
    no_redis = f"redis://127.0.0.1:{free_port()}/0"
    there = {"WALBACKUP_REMOTE_STORAGE": tmp_path.as_uri()}
    assert_one_line(run(no_redis, there, "delete", str(ttid)), 3, "cannot reach Redis")


def test_retain_beside_a_live_backup_which_delete_refuses(
    make_cluster: Callable[..., Cluster],
    moto_server: MotoServer,
    s3_bucket_url: str,
    ttid: TenantTimelineId,
) -> None:
    """The offloader keeps uploading after a retain and its scrub (every
    0.3 s here) leaves the retained segments deleted."""
    endpoint = moto_server.endpoint_url
    cluster = make_cluster(
        remote_storage=s3_bucket_url,
        s3_endpoint_url=endpoint,
        settings={"WALBACKUP_SCRUB_INTERVAL": "0.3"},
    )
    for node in (1, 2):
        cluster.start_node(node)
    cluster.start_beat()
    cluster.wait_nodes([1, 2])
    workdirs = [cluster.workdir(n) for n in (1, 2)]
    simulate(workdirs, [ttid], segments=12, seg_size=SEG)
    cluster.wait_backup(ttid, Lsn(13 * SEG), 60)
    env = {"WALBACKUP_S3_ENDPOINT_URL": endpoint, "WALBACKUP_REMOTE_STORAGE": s3_bucket_url}

    refused = run(cluster.redis_url, env, "delete", str(ttid), "--yes")
    assert_one_line(refused, 2, "held by live node(s) [1, 2]")
    done = run(cluster.redis_url, env, "retain", str(ttid), "--before", name(6), "--yes")
    assert done.returncode == 0, done.stderr

    simulate(workdirs, [ttid], segments=8, seg_size=SEG, start_segno=13)
    cluster.wait_backup(ttid, Lsn(21 * SEG), 60)
    storage = open_storage(s3_bucket_url, s3_endpoint_url=endpoint)
    assert wal_names(storage, ttid) == [*(name(s) for s in range(6, 21)), "_retained"]
    logs = "".join(cluster.log_path(f"node{n}").read_text() for n in (1, 2))
    assert "archive problem" not in logs


@pytest.mark.parametrize(
    ("command", "needles"),
    [
        ("retain", ["wholly below POINT", "WALBACKUP_RETAIN_KEEP_SEGMENTS (default 1)", "refused"]),
        ("delete", ["Refused while a live node holds the timeline", "run it again"]),
    ],
)
def test_help_says_what_it_does_with_an_example_and_the_exit_codes(
    command: str, needles: list[str]
) -> None:
    run = walbackup(command, "--help", redis_url="redis://127.0.0.1:1/0")
    assert run.returncode == 0, run.stderr
    text = " ".join(run.stdout.split())
    for needle in [*needles, f"Example: walbackup {command} ", "--yes", "--dry-run", "Exit codes"]:
        assert needle in text, needle
