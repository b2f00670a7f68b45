"""Monitoring as users see it: Flower's HTTP API (behind basic auth) shows the
node workers and their uploads; each node's Prometheus endpoint counts them."""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.dev.simulate import simulate
from tests.cluster import SEG_SIZE, Cluster, wait_for
from tests.servers import free_port, http_get

pytestmark = pytest.mark.integration

NODE_IDS = (1, 2, 3)
AUTH = ("walbackup", secrets.token_hex(8))


def new_ttid() -> TenantTimelineId:
    return TenantTimelineId(secrets.token_hex(16), secrets.token_hex(16))


def api(flower: str, path: str) -> Any:
    status, body = http_get(f"{flower}{path}", AUTH)
    assert status == 200, (path, status, body[:300])
    return json.loads(body)


@pytest.fixture
def flower(make_cluster: Callable[..., Cluster], tmp_path: Path) -> Iterator[tuple[Cluster, str]]:
    """Three node workers, beat, and Flower with basic auth, all real processes."""
    cluster = make_cluster()
    for n in NODE_IDS:
        cluster.start_node(n)
    cluster.start_beat()
    port = free_port()
    log = (tmp_path / "flower.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tasks",
            "flower",
            f"--port={port}",
            "--address=127.0.0.1",
            f"--basic_auth={AUTH[0]}:{AUTH[1]}",
        ],
        env=cluster.env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        cluster.wait_nodes(list(NODE_IDS))
        wait_for(lambda: http_get(f"{url}/healthcheck")[0] == 200, 30, "Flower to answer")
        # Flower follows the workers' event stream once it shows them online.
        wait_for(
            lambda: all(
                re.search(rf'flower_worker_online\{{worker="node{n}@[^"]+"\}} 1\.0', text)
                for text in [http_get(f"{url}/metrics")[1].decode()]
                for n in NODE_IDS
            ),
            30,
            "Flower to see the three node workers online",
        )
        yield cluster, url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_flower_shows_node_workers_and_their_uploads(flower: tuple[Cluster, str]) -> None:
    cluster, url = flower
    # Basic auth guards the UI and API; /metrics and /healthcheck stay open.
    assert http_get(f"{url}/api/workers")[0] == 401
    assert http_get(f"{url}/api/workers", ("walbackup", "wrong"))[0] == 401
    assert http_get(f"{url}/metrics")[0] == 200
    assert http_get(f"{url}/healthcheck")[0] == 200

    # A refresh is a broadcast inspect that Flower waits 1 s for: on a loaded
    # machine a worker's reply can miss it, and the next refresh shows it.
    seen: dict[str, Any] = {}

    def all_workers() -> bool:
        replies = api(url, "/api/workers?refresh=1")
        seen.update(
            (name, info)
            for name, info in replies.items()
            if info.get("registered") and info.get("active_queues")
        )
        return {f"node{n}" for n in NODE_IDS} <= {name.partition("@")[0] for name in seen}

    wait_for(all_workers, 20, "Flower's worker inspection to show the three nodes")
    workers = seen
    names = {name.partition("@")[0]: name for name in workers}
    for n in NODE_IDS:
        registered = workers[names[f"node{n}"]]["registered"]
        assert "walbackup.upload_segment" in registered
        queues = {q["name"] for q in workers[names[f"node{n}"]]["active_queues"]}
        assert {"walbackup", f"node.{n}"} <= queues

    ttid = new_ttid()
    k = 6
    simulate([cluster.workdir(n) for n in NODE_IDS], [ttid], segments=k, seg_size=SEG_SIZE)
    cluster.wait_backup(ttid, Lsn.from_segment(1 + k, 0, SEG_SIZE), timeout=60)

    def uploads() -> list[dict[str, Any]]:
        tasks: dict[str, Any] = api(url, "/api/tasks?taskname=walbackup.upload_segment")
        return [t for t in tasks.values() if f"'{ttid}'" in (t["args"] or "")]

    # A task may upload a run of segments; each is shown once finished.
    wait_for(
        lambda: (found := uploads()) and all(t["state"] == "SUCCESS" for t in found),
        20,
        "Flower to show the timeline's upload tasks, all finished",
    )
    # Uploads run on the offloader's own queue: a node worker (the offloader
    # may change while the nodes' heartbeats for a new timeline arrive).
    first_segnos = set()
    for task in uploads():
        assert task["worker"] in names.values(), task
        assert task["name"] == "walbackup.upload_segment"
        first_segnos.add(int(task["args"].split(",")[1]))
    assert 1 in first_segnos and first_segnos <= set(range(1, 1 + k)), first_segnos

    # Beat ran an election round every second all along: none of them is in
    # Flower's task list or in a worker's INFO log, where uploads are.
    assert api(url, "/api/tasks?taskname=walbackup.elect_all") == {}
    node_logs = "".join(cluster.log_path(f"node{n}").read_text() for n in NODE_IDS)
    assert "walbackup.upload_segment[" in node_logs  # "Task NAME[ID] received"
    assert "walbackup.elect_all[" not in node_logs


COUNTERS = ("backed_up_segments_total", "uploaded_bytes_total", "upload_duration_seconds_count")


def _scrape(port: int) -> str:
    status, body = http_get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    return body.decode()


def _sample(text: str, name: str, labels: str = "") -> float | None:
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


def test_prometheus_counts_backed_up_segments_and_lag(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster()
    ports = {n: free_port() for n in NODE_IDS}
    for n in NODE_IDS:
        cluster.start_node(n, extra_env={"WALBACKUP_METRICS_PORT": str(ports[n])})
    cluster.start_beat()
    cluster.wait_nodes(list(NODE_IDS))

    def total(name: str) -> float:
        return sum(_sample(_scrape(p), name) or 0.0 for p in ports.values())

    before = {m: total(m) for m in COUNTERS}
    for text in map(_scrape, ports.values()):
        assert _sample(text, "backup_errors_total") is not None

    ttid = new_ttid()
    k = 8
    simulate([cluster.workdir(n) for n in NODE_IDS], [ttid], segments=k, seg_size=SEG_SIZE)
    cluster.wait_backup(ttid, Lsn.from_segment(1 + k, 0, SEG_SIZE), timeout=60)
    offloader = cluster.state.timeline(str(ttid)).offloader
    assert offloader in NODE_IDS

    # Counted by whichever node committed (the offloader may change while the
    # nodes' first heartbeats for the new timeline arrive): summed, exactly K.
    # A worker counts just after its commit shows in Redis: allow it a moment.
    wait_for(
        lambda: total("backed_up_segments_total") - before["backed_up_segments_total"] >= k,
        5,
        "the counters to follow the commits",
    )
    moved = {m: total(m) - before[m] for m in COUNTERS}
    assert moved["backed_up_segments_total"] == k, moved
    # An upload fenced by a change of offloader is uploaded again: at least K.
    assert moved["uploaded_bytes_total"] >= k * SEG_SIZE, moved
    assert moved["upload_duration_seconds_count"] >= k, moved

    # The lag gauge is refreshed with each heartbeat: present, then 0 once caught up.
    lag = f'{{timeline="{ttid}"}}'
    wait_for(
        lambda: _sample(_scrape(ports[offloader]), "backup_lag_bytes", lag) == 0.0,
        10,
        "backup_lag_bytes of the timeline to read 0 on the offloader",
    )
