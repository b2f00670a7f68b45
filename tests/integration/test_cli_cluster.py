"""`walbackup trigger / status / forget` as a user runs them, against a real private Redis:
a mistyped id is refused, a timeline can be forgotten, and every setup or
connection problem is one line with its exit code, never a traceback."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tasks.core.election import PeerInfo
from tasks.core.lsn import Lsn
from tasks.dev.embedded import free_port
from tasks.names import SHARED_QUEUE
from tasks.state.keys import PREFIX
from tasks.state.records import peer_to_json
from tasks.state.redis import RedisState
from tests.cluster import Cluster, wait_for

pytestmark = pytest.mark.integration

SEG = 16 << 20


def ttid() -> str:
    return f"{secrets.token_hex(16)}/{secrets.token_hex(16)}"


def walbackup(*args: str, redis_url: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("WALBACKUP_")} | {
        "WALBACKUP_REDIS_URL": redis_url,
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "tasks.cli", *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def heartbeat(state: RedisState, timeline: str, node_id: int, age_s: float = 0.0) -> None:
    peer = PeerInfo(
        node_id=node_id,
        commit_lsn=Lsn(3 * SEG),
        local_start_lsn=Lsn(SEG),
        backup_lsn=Lsn(SEG),
        ts=time.time() - age_s,
    )
    # The beat's time is its own (the record's ts is when its facts were written).
    state.publish_heartbeats(node_id, [(timeline, peer_to_json(peer, SEG, None))], peer.ts)


def assert_one_line(run: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert run.returncode == code, (run.returncode, run.stderr)
    assert "Traceback" not in run.stderr
    (line,) = run.stderr.strip().splitlines()
    assert line.startswith("walbackup: ") and text in line, line


def test_trigger_refuses_a_timeline_no_node_holds(redis_url: str, state: RedisState) -> None:
    typo = ttid()
    run = walbackup("trigger", typo, redis_url=redis_url)
    assert_one_line(run, 2, f"no node holds timeline {typo}")
    assert state.r.llen(SHARED_QUEUE) == 0  # nothing sent, so nothing will register it

    created = walbackup("trigger", "--create", typo, redis_url=redis_url)
    assert created.returncode == 0, created.stderr
    assert state.r.llen(SHARED_QUEUE) == 1  # the trigger task, for a worker to run


def test_trigger_accepts_a_timeline_a_node_reported(redis_url: str, state: RedisState) -> None:
    held = ttid()
    heartbeat(state, held, node_id=1)
    run = walbackup("trigger", held, redis_url=redis_url)
    assert run.returncode == 0, run.stderr
    assert "triggered 1 timeline(s)" in run.stdout
    assert state.r.llen(SHARED_QUEUE) == 1


def test_forget_removes_registration_and_state(redis_url: str, state: RedisState) -> None:
    gone, kept = ttid(), ttid()
    state.register([gone, kept])
    heartbeat(state, gone, node_id=1, age_s=3600)  # a node that left long ago
    heartbeat(state, kept, node_id=1)
    state.raise_backup_lsn(gone, Lsn(SEG))
    state.record_error(gone, "typo")

    run = walbackup("forget", gone, redis_url=redis_url)
    assert run.returncode == 0, run.stderr
    assert state.registered() == [kept]
    assert not [k for k in state.r.keys(f"{PREFIX}*") if gone in k]
    assert state.peers(kept)  # another timeline untouched


def test_forget_refuses_a_timeline_a_live_node_holds(redis_url: str, state: RedisState) -> None:
    live = ttid()
    state.register([live])
    heartbeat(state, live, node_id=2)
    run = walbackup("forget", live, redis_url=redis_url)
    assert_one_line(run, 2, "held by live node(s) [2]")
    assert state.registered() == [live]

    forced = walbackup("forget", "--force", live, redis_url=redis_url)
    assert forced.returncode == 0, forced.stderr
    assert state.registered() == []


def test_status_table_off_a_terminal_keeps_whole_ids_and_shows_the_error(
    redis_url: str, state: RedisState
) -> None:
    timeline = ttid()
    state.register([timeline])
    heartbeat(state, timeline, node_id=1)
    state.record_error(timeline, "segno 2: remote storage unavailable")
    run = walbackup("status", redis_url=redis_url)
    assert run.returncode == 0, run.stderr
    assert timeline in run.stdout  # not cut at 80 columns by a pipe
    assert "segno 2: remote storage unavailable" in run.stdout


def test_status_says_when_nothing_is_registered(redis_url: str, tmp_path: Path) -> None:
    remote = (tmp_path / "remote").as_uri()
    run = walbackup("status", redis_url=redis_url, WALBACKUP_REMOTE_STORAGE=remote)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [f"storage: {remote}", "no timelines registered"]
    as_json = walbackup("status", "--json", redis_url=redis_url)
    assert json.loads(as_json.stdout)["timelines"] == []


def test_status_refuses_a_timeline_neither_redis_nor_the_archive_knows(
    redis_url: str, state: RedisState, tmp_path: Path
) -> None:
    typo, registered = ttid(), ttid()
    state.register([registered])  # as `trigger --create` does: no node, nothing archived
    (tmp_path / "remote").mkdir()
    env = {"WALBACKUP_REMOTE_STORAGE": (tmp_path / "remote").as_uri()}
    run = walbackup("status", registered, typo, redis_url=redis_url, **env)
    assert_one_line(run, 2, f"unknown timeline {typo}: not registered and nothing in the archive")
    assert registered not in run.stderr

    run = walbackup("status", "--json", registered, redis_url=redis_url, **env)
    assert run.returncode == 0, run.stderr
    assert [t["timeline"] for t in json.loads(run.stdout)["timelines"]] == [registered]


@pytest.mark.parametrize(
    "command", [["status"], ["trigger", "--create", ttid()], ["forget", ttid()]]
)
def test_redis_down_is_one_line_exit_3(command: list[str]) -> None:
    down = f"redis://127.0.0.1:{free_port()}/0"  # nobody listens there
    run = walbackup(*command, redis_url=down)
    assert_one_line(run, 3, f"cannot reach Redis at {down}")


def test_a_password_in_the_url_is_not_printed() -> None:
    down = f"redis://:hunter2-secret@127.0.0.1:{free_port()}/0"
    run = walbackup("status", redis_url=down)
    assert_one_line(run, 3, "cannot reach Redis at redis://***@127.0.0.1")
    assert "hunter2" not in run.stderr


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WALBACKUP_PARALLEL_JOBS": "0"}, "WALBACKUP_PARALLEL_JOBS"),
        ({"WALBACKUP_CONFIG_FILE": "/nonexistent/walbackup.toml"}, "does not exist"),
    ],
)
def test_a_bad_setting_is_one_line_exit_2(
    redis_url: str, env: dict[str, str], message: str
) -> None:
    for command in (["status"], ["trigger", ttid()], ["forget", ttid()]):
        assert_one_line(walbackup(*command, redis_url=redis_url, **env), 2, message)


def test_a_toml_syntax_error_is_one_line_exit_2(redis_url: str, tmp_path: Path) -> None:
    config = tmp_path / "walbackup.toml"
    config.write_text("parallel_jobs = = 3\n")
    run = walbackup("status", redis_url=redis_url, WALBACKUP_CONFIG_FILE=str(config))
    assert_one_line(run, 2, "is not valid TOML")


def test_version() -> None:
    run = walbackup("--version", redis_url="redis://127.0.0.1:1/0")
    assert run.returncode == 0
    assert run.stdout.startswith("walbackup ")


def test_a_worker_with_a_workdir_but_no_node_id_says_it_backs_nothing_up(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    cluster = make_cluster()
    env = dict(cluster.env) | {"WALBACKUP_WORKDIR": str(tmp_path / "wal")}
    env.pop("WALBACKUP_NODE_ID", None)
    cluster.spawn("shared", ["worker", "-n", "shared@%h", "--loglevel=INFO"], env)
    wait_for(
        lambda: (
            "WALBACKUP_NODE_ID is not: this worker runs only the shared queue"
            in cluster.log_path("shared").read_text()
        ),
        30,
        "the worker's warning",
    )


def test_a_node_whose_workdir_is_missing_stops_with_one_line(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    cluster = make_cluster()
    env = dict(cluster.env) | {"WALBACKUP_NODE_ID": "4", "WALBACKUP_WORKDIR": str(tmp_path / "no")}
    cluster.spawn("node4", ["worker", "-n", "node4@%h", "--loglevel=INFO"], env)
    proc = cluster.procs["node4"]
    assert proc.wait(timeout=60) == 2
    log = cluster.log_path("node4").read_text()
    assert f"Node 4 cannot start: workdir {tmp_path / 'no'} is not a directory" in log
    assert "Traceback" not in log


def test_a_node_whose_metrics_port_is_taken_stops_with_one_line(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    """Two nodes on one host given the same port: one line naming the setting,
    exit 2, not an "Unrecoverable error" traceback."""
    cluster = make_cluster()
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        workdir = tmp_path / "wal"
        workdir.mkdir()
        env = dict(cluster.env) | {
            "WALBACKUP_NODE_ID": "4",
            "WALBACKUP_WORKDIR": str(workdir),
            "WALBACKUP_METRICS_PORT": str(port),
        }
        cluster.spawn("node4", ["worker", "-n", "node4@%h", "--loglevel=INFO"], env)
        assert cluster.procs["node4"].wait(timeout=60) == 2
    log = cluster.log_path("node4").read_text()
    assert f"Node 4 cannot start: WALBACKUP_METRICS_PORT {port}: Address already in use" in log
    assert "Traceback" not in log
