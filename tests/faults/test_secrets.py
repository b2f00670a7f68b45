"""Secrets stay secret (SPEC §9): with a password-protected Redis and an AWS
secret key in the environment, neither shows in any log, in the output of the
commands users run (``walbackup status``, ``celery inspect``, ``celery
report``), or on any Flower page or API response.

A node worker, beat and Flower (behind basic auth) run on a private
redis-server started with ``--requirepass``; they back up a few segments and
live through a Redis restart (so connection errors get logged too)."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest
import redis

from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.dev.simulate import simulate
from tests.cluster import SEG_SIZE, Cluster, wait_for
from tests.servers import RedisServer, free_port, http_get

pytestmark = pytest.mark.integration

REDIS_PASSWORD = "redispw" + secrets.token_hex(20)
AWS_SECRET = "awssecret" + secrets.token_hex(20)
AUTH = ("walbackup", secrets.token_hex(8))
BIN = Path(sys.executable).parent


def run(args: list[str], env: dict[str, str]) -> str:
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    return f"$ {' '.join(args)} (rc={result.returncode})\n{result.stdout}\n{result.stderr}"


def celery(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "tasks", *args]


def test_no_secret_in_logs_command_output_or_flower(tmp_path: Path) -> None:
    server = RedisServer(appendonly=True, password=REDIS_PASSWORD)
    server.start()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=server.port).ping()  # the password is in force
    cluster = Cluster(
        tmp_path,
        server.url,
        (tmp_path / "remote").as_uri(),
        settings={
            "AWS_ACCESS_KEY_ID": "AKIAWALBACKUPTEST",
            "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
            "AWS_DEFAULT_REGION": "us-east-1",
        },
    )
    assert REDIS_PASSWORD in cluster.env["WALBACKUP_REDIS_URL"]
    port = free_port()
    flower = f"http://127.0.0.1:{port}"
    seen: dict[str, str] = {}  # where -> what it showed
    try:
        cluster.start_node(1)
        cluster.start_beat()
        cluster.spawn(
            "flower",
            ["flower", f"--port={port}", "--address=127.0.0.1", f"--basic_auth={':'.join(AUTH)}"],
            dict(cluster.env),
        )
        cluster.wait_nodes([1])

        ttid = TenantTimelineId(secrets.token_hex(16), secrets.token_hex(16))
        simulate([cluster.workdir(1)], [ttid], segments=3, seg_size=SEG_SIZE)
        cluster.wait_backup(ttid, Lsn.from_segment(4, 0, SEG_SIZE), timeout=60)
        # Connection errors get logged everywhere, then everything reconnects.
        server.kill()
        server.start()
        simulate([cluster.workdir(1)], [ttid], segments=2, seg_size=SEG_SIZE, start_segno=4)
        cluster.wait_backup(ttid, Lsn.from_segment(6, 0, SEG_SIZE), timeout=30)

        def flower_sees_node() -> bool:
            status, body = http_get(f"{flower}/api/workers?refresh=1", AUTH)
            return status == 200 and b"node1@" in body

        wait_for(flower_sees_node, 30, "Flower to show node1", interval=0.5)
        workers = json.loads(http_get(f"{flower}/api/workers?refresh=1", AUTH)[1])
        (worker,) = [name for name in workers if name.startswith("node1@")]
        tasks = json.loads(http_get(f"{flower}/api/tasks", AUTH)[1])
        assert tasks, "Flower shows no tasks"
        task_id = next(iter(tasks))
        pages = [
            "/",
            "/workers",
            f"/worker/{urllib.parse.quote(worker)}",
            "/tasks",
            "/tasks/datatable?draw=1&start=0&length=100&search%5Bvalue%5D="
            "&order%5B0%5D%5Bcolumn%5D=0&order%5B0%5D%5Bdir%5D=asc&columns%5B0%5D%5Bdata%5D=name",
            f"/task/{task_id}",
            "/broker",
            "/api/workers",
            "/api/workers?refresh=1",
            f"/api/workers?workername={urllib.parse.quote(worker)}",
            "/api/tasks",
            "/api/task/types",
            f"/api/task/info/{task_id}",
            "/api/queues/length",
            "/metrics",
            "/healthcheck",
        ]
        for page in pages:
            status, body = http_get(f"{flower}{page}", AUTH)
            seen[f"flower {page} ({status})"] = body.decode(errors="replace")
        assert "broker_url" in seen[f"flower /worker/{urllib.parse.quote(worker)} (200)"]
        assert "node1@" in seen["flower /api/workers (200)"]
        assert "walbackup" in seen["flower /broker (200)"]  # the queues, read from Redis

        env = dict(cluster.env)
        for args in (
            celery("inspect", "conf"),
            celery("inspect", "conf", "true"),  # with Celery's defaults
            celery("inspect", "stats"),
            celery("inspect", "report"),
            celery("inspect", "active_queues"),
            celery("report"),
            celery("status"),
            [str(BIN / "walbackup"), "status"],
            [str(BIN / "walbackup"), "status", "--json"],
            [str(BIN / "walbackup"), "trigger", str(ttid)],
        ):
            seen[" ".join([Path(args[0]).name, *args[1:]])] = run(args, env)
        python = Path(sys.executable).name
        assert "redis://:**" in seen[f"{python} -m celery -A tasks inspect conf"]  # masked
        assert "backup_lsn" in seen["walbackup status --json"]
    finally:
        cluster.stop()
        cluster.state.r.close()
        server.close()

    for path in sorted(tmp_path.rglob("*.log")):
        seen[str(path.relative_to(tmp_path))] = path.read_text(errors="replace")
    assert {"node1.log", "beat.log", "flower.log"} <= set(seen)
    leaks = [
        f"{where}: {name}"
        for where, text in seen.items()
        for name, secret in (("Redis password", REDIS_PASSWORD), ("AWS secret", AWS_SECRET))
        if secret in text
    ]
    assert not leaks, "\n".join(leaks)
