"""The deployment files users run: Procfile + .env.example (run for real with
honcho), docker/Dockerfile and docker/compose.yaml with its Prometheus and
Grafana files (checked; built and run only where a Docker engine answers;
the alert rules and the dashboard's queries run in test_alerting)."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from pytest_celery import *  # noqa: F403 - pytest-celery's fixtures, for the Docker smoke test only
from pytest_celery import CeleryTestSetup, CeleryWorkerContainer
from pytest_docker_tools import container, fxtr

from tasks.config import Settings
from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.core.segments import xlog_file_name
from tasks.dev.simulate import simulate
from tasks.state.redis import RedisState
from tests.cluster import SEG_SIZE, wait_for
from tests.servers import env_without_walbackup, free_port, http_get

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
NODE_IDS = (1, 2, 3)


def _env_file_vars(text: str) -> dict[str, str]:
    """KEY=value lines of an env file (comments skipped)."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value
    return out


def _commented_vars(text: str) -> set[str]:
    return set(re.findall(r"^#\s*([A-Z][A-Z0-9_]+)=", text, re.MULTILINE))


def _pids_with_env(name: str, value: str) -> set[int]:
    """Processes whose environment has ``name=value``."""
    wanted = f"{name}={value}".encode()
    found = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if wanted in environ:
            found.add(int(proc.name))
    return found


# -- Procfile and .env.example ------------------------------------------------


def test_env_example_documents_every_setting() -> None:
    text = (REPO / ".env.example").read_text()
    documented = set(_env_file_vars(text)) | _commented_vars(text)
    settings = {f"WALBACKUP_{name.upper()}" for name in Settings.model_fields}
    missing = (settings | {"WALBACKUP_CONFIG_FILE"}) - documented
    assert not missing, f".env.example does not mention {sorted(missing)}"
    # What the Procfile needs is set, not commented out.
    assert {"WALBACKUP_REDIS_URL", "WALBACKUP_DATA_DIR", "FLOWER_BASIC_AUTH"} <= set(
        _env_file_vars(text)
    )


def test_honcho_check_accepts_the_procfile() -> None:
    result = subprocess.run(
        [str(BIN / "honcho"), "check"], cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert "Valid procfile detected (node1, node2, node3, beat, flower)" in result.stderr


def test_procfile_cluster_backs_up_and_stops_cleanly(redis_url: str, tmp_path: Path) -> None:
    """`honcho start` with .env.example (pointed at our Redis and free ports):
    three nodes, beat and Flower come up, back up WAL, and all stop on SIGINT."""
    data = tmp_path / "data"
    flower_port = free_port()
    metrics_base = _free_port_run(len(NODE_IDS))
    overrides = {
        "WALBACKUP_REDIS_URL": redis_url,
        "WALBACKUP_DATA_DIR": str(data),
        "FLOWER_PORT": str(flower_port),
        "METRICS_BASE_PORT": str(metrics_base),
    }
    lines = []
    for line in (REPO / ".env.example").read_text().splitlines():
        key = line.partition("=")[0]
        lines.append(f"{key}={overrides.pop(key)}" if key in overrides else line)
    lines.append(f"WALBACKUP_WAL_SEG_SIZE={SEG_SIZE}")
    assert not overrides, f".env.example lacks {sorted(overrides)}"
    env_file = tmp_path / "env"
    env_file.write_text("\n".join(lines) + "\n")
    user, _, password = _env_file_vars(env_file.read_text())["FLOWER_BASIC_AUTH"].partition(":")

    env = env_without_walbackup()
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    log = (tmp_path / "honcho.log").open("wb")
    honcho = subprocess.Popen(
        [str(BIN / "honcho"), "-f", str(REPO / "Procfile"), "-e", str(env_file), "start"],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    state = RedisState.from_url(redis_url)
    ttid = TenantTimelineId(secrets.token_hex(16), secrets.token_hex(16))
    try:
        wait_for(lambda: set(NODE_IDS) <= set(state.nodes()), 60, "node heartbeats")
        simulate([data / f"node{n}" for n in NODE_IDS], [ttid], segments=3, seg_size=SEG_SIZE)
        end = Lsn.from_segment(4, 0, SEG_SIZE)
        wait_for(
            lambda: (state.timeline(str(ttid)).backup_lsn or 0) >= end, 60, "backup of 3 segments"
        )
        for segno in (1, 2, 3):
            rel = Path(ttid.tenant_id, ttid.timeline_id, xlog_file_name(segno, SEG_SIZE))
            assert (data / "remote" / rel).read_bytes() == (data / "node1" / rel).read_bytes()

        flower = f"http://127.0.0.1:{flower_port}"
        wait_for(lambda: http_get(f"{flower}/healthcheck")[0] == 200, 30, "Flower")
        assert http_get(f"{flower}/api/workers")[0] == 401
        assert http_get(f"{flower}/api/workers", (user, password))[0] == 200
        for n in NODE_IDS:
            status, body = http_get(f"http://127.0.0.1:{metrics_base + n}/metrics")
            assert status == 200 and b"backed_up_segments_total" in body
        children = _pids_with_env("WALBACKUP_DATA_DIR", str(data))
        assert len(children) >= 5, "3 nodes, beat and Flower"
    except BaseException:
        _stop(honcho)
        print((tmp_path / "honcho.log").read_text(errors="replace")[-6000:])
        raise
    finally:
        state.r.close()
    honcho.send_signal(signal.SIGINT)
    assert honcho.wait(timeout=40) == 130  # honcho's code for "interrupted"
    log_text = (tmp_path / "honcho.log").read_text(errors="replace")
    for name in ("node1", "node2", "node3", "beat", "flower"):
        assert f"{name}.1 stopped (rc=0)" in log_text, log_text[-6000:]
    assert not _pids_with_env("WALBACKUP_DATA_DIR", str(data)), "a process outlived honcho"


def _free_port_run(count: int) -> int:
    """A base port such that base+1 .. base+count are free (best effort)."""
    for _ in range(50):
        base = free_port()
        if base + count <= 65535 and all(_port_free(base + i) for i in range(1, count + 1)):
            return base
    raise AssertionError("no run of free ports")


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# -- Dockerfile and compose ---------------------------------------------------


def test_dockerfile_is_slim_and_non_root() -> None:
    lines = [
        line.strip()
        for line in (REPO / "docker" / "Dockerfile").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert lines[0] == "FROM python:3.11-slim"
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] == "walbackup"
    assert any(line.startswith("RUN pip install") for line in lines)


def _compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    return doc


def test_compose_file_describes_the_cluster() -> None:
    services = _compose()["services"]
    assert {"redis", "minio", "createbucket", "beat", "flower"} | {
        f"node{n}" for n in NODE_IDS
    } <= set(services)
    redis_cmd = services["redis"]["command"]
    assert "--appendonly" in redis_cmd and redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"
    policy = redis_cmd[redis_cmd.index("--maxmemory-policy") + 1]
    assert policy == "noeviction"
    assert "mc mb" in " ".join(services["createbucket"]["command"])
    volumes = set()
    for n in NODE_IDS:
        node = services[f"node{n}"]
        env = node["environment"]
        assert env["WALBACKUP_NODE_ID"] == str(n)
        assert env["WALBACKUP_REMOTE_STORAGE"] == "s3://walbackup/wal"
        assert env["WALBACKUP_S3_ENDPOINT_URL"] == "http://minio:9000"
        (volume,) = node["volumes"]
        name, _, target = volume.partition(":")
        assert target == env["WALBACKUP_WORKDIR"]
        volumes.add(name)
    assert len(volumes) == len(NODE_IDS), "each node has its own volume"
    assert volumes <= set(_compose()["volumes"])
    assert services["flower"]["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH")
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_compose_services_are_supervised() -> None:
    """Nothing should die on a Redis restart, but a supervisor is still the rule."""
    services = _compose()["services"]
    for name, service in services.items():
        if name != "createbucket":  # one shot
            assert service.get("restart") == "unless-stopped", name


# -- Prometheus and Grafana in compose -------------------------------------------

PROMETHEUS_DIR = REPO / "docker" / "prometheus"
GRAFANA_DIR = REPO / "docker" / "grafana"


def _bind_mounts(service: dict[str, Any]) -> dict[PurePosixPath, Path]:
    """Container path -> file of this repository, for a service's ``./`` mounts."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, _, rest = volume.partition(":")
        if source.startswith("./"):
            target = PurePosixPath(rest.partition(":")[0])
            mounts[target] = (REPO / "docker" / source).resolve()
    return mounts


def test_compose_prometheus_scrapes_every_node_and_loads_the_alert_rules() -> None:
    services = _compose()["services"]
    prometheus = services["prometheus"]
    mounts = _bind_mounts(prometheus)
    (flag,) = [a for a in prometheus["command"] if a.startswith("--config.file=")]
    config_path = PurePosixPath(flag.partition("=")[2])
    assert mounts[config_path] == PROMETHEUS_DIR / "prometheus.yml"
    config = yaml.safe_load(mounts[config_path].read_text())
    # Rule files are relative to the config: each must be mounted beside it.
    rule_files = {mounts.get(config_path.parent / name) for name in config["rule_files"]}
    assert rule_files == {PROMETHEUS_DIR / "alerts.yml"}
    # One job, "walbackup" (the name alerts.yml's up{job="walbackup"} means),
    # scraping each node service on the port its WALBACKUP_METRICS_PORT says.
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "walbackup"
    assert 'up{job="walbackup"}' in (PROMETHEUS_DIR / "alerts.yml").read_text()
    targets = {target for static in job["static_configs"] for target in static["targets"]}
    nodes = {
        f"{name}:{service['environment']['WALBACKUP_METRICS_PORT']}"
        for name, service in services.items()
        if "WALBACKUP_NODE_ID" in service.get("environment", {})
    }
    assert targets == nodes and len(nodes) == len(NODE_IDS)
    assert prometheus["ports"] == ["127.0.0.1:9090:9090"]  # Prometheus's own port


def test_compose_grafana_has_the_dashboard_and_the_prometheus_datasource() -> None:
    services = _compose()["services"]
    grafana = services["grafana"]
    mounts = _bind_mounts(grafana)
    provisioning = PurePosixPath("/etc/grafana/provisioning")
    (datasources,) = [f for t, f in mounts.items() if t.parent == provisioning / "datasources"]
    (source,) = yaml.safe_load(datasources.read_text())["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"  # the compose service above
    assert "prometheus" in services and source["isDefault"]
    (providers,) = [f for t, f in mounts.items() if t.parent == provisioning / "dashboards"]
    (provider,) = yaml.safe_load(providers.read_text())["providers"]
    folder = PurePosixPath(provider["options"]["path"])
    assert {f for t, f in mounts.items() if t.parent == folder} == {GRAFANA_DIR / "walbackup.json"}
    env = grafana["environment"]
    assert env["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")
    assert PurePosixPath(env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]).parent == folder


def test_grafana_dashboard_is_well_formed() -> None:
    """What Grafana needs to import it anywhere: panels on a 24-column grid
    that do not overlap, each query on the dashboard's datasource variable.
    (The queries themselves run against a real Prometheus in test_alerting.)"""
    dashboard = json.loads((GRAFANA_DIR / "walbackup.json").read_text())
    assert dashboard["uid"] == "walbackup" and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    datasource = {"type": "prometheus", "uid": "${datasource}"}
    cells: set[tuple[int, int]] = set()
    ids = set()
    for panel in dashboard["panels"]:
        assert panel["id"] not in ids, panel["title"]
        ids.add(panel["id"])
        pos = panel["gridPos"]
        x, y, w, h = pos["x"], pos["y"], pos["w"], pos["h"]
        assert x >= 0 and x + w <= 24, panel["title"]
        area = {(i, j) for i in range(x, x + w) for j in range(y, y + h)}
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == datasource and panel["description"], panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == datasource and target["expr"], panel["title"]


# -- systemd units ------------------------------------------------------------

SYSTEMD = REPO / "docker" / "systemd"
UNITS = ("walbackup-node@.service", "walbackup-beat.service", "walbackup-flower.service")


def _unit(name: str) -> dict[str, list[tuple[str, str]]]:
    """Section -> (key, value) lines of a unit file (keys may repeat)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for line in (SYSTEMD / name).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
        else:
            key, _, value = line.partition("=")
            current.append((key, value))
    return sections


def _values(section: list[tuple[str, str]], key: str) -> list[str]:
    return [v for k, v in section if k == key]


def test_systemd_units_restart_always() -> None:
    commands = {}
    for name in UNITS:
        unit = _unit(name)
        service = unit["Service"]
        assert _values(service, "Restart") == ["always"], name
        assert _values(unit["Unit"], "StartLimitIntervalSec") == ["0"], name  # never give up
        assert _values(service, "User") == ["walbackup"], name
        assert "/etc/walbackup/walbackup.env" in _values(service, "EnvironmentFile"), name
        assert _values(unit["Install"], "WantedBy") == ["multi-user.target"], name
        (commands[name],) = _values(service, "ExecStart")
    assert commands["walbackup-beat.service"].endswith("celery -A tasks beat --loglevel=INFO")
    assert "/celery -A tasks flower --address=127.0.0.1 " in commands["walbackup-flower.service"]
    # The node template: the instance is the node id; %%h is Celery's %h.
    node = _unit("walbackup-node@.service")["Service"]
    assert "WALBACKUP_NODE_ID=%i" in _values(node, "Environment")
    assert any(v.startswith("WALBACKUP_WORKDIR=") for v in _values(node, "Environment"))
    assert commands["walbackup-node@.service"].endswith(
        "celery -A tasks worker -n node%i@%%h --loglevel=INFO"
    )
    assert _values(node, "KillSignal") == ["SIGTERM"]  # Celery's warm shutdown


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_units_verify(tmp_path: Path) -> None:
    """``systemd-analyze verify`` accepts the units (celery pointed at this venv)."""
    paths = []
    for name in UNITS:
        text = (SYSTEMD / name).read_text()
        text = text.replace("/opt/walbackup/venv/bin/celery", str(BIN / "celery"))
        path = tmp_path / name.replace("@.", "@1.")  # an instance of the template
        path.write_text(text)
        paths.append(str(path))
    result = subprocess.run(
        ["systemd-analyze", "verify", *paths], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def _docker_compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(
        ["docker", "compose", "version"], capture_output=True, text=True, timeout=30
    )
    return probe.returncode == 0


@pytest.mark.skipif(
    not _docker_compose_available(), reason="no docker client with the compose plugin"
)
def test_docker_compose_config_validates() -> None:
    env = dict(os.environ, FLOWER_BASIC_AUTH="user:pass", GRAFANA_ADMIN_PASSWORD="secret")
    result = subprocess.run(
        ["docker", "compose", "-f", str(REPO / "docker" / "compose.yaml"), "config", "--quiet"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


# -- Docker smoke test (pytest-celery) -----------------------------------------


def _docker_engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0
    except subprocess.TimeoutExpired:
        return False


class WalbackupNodeContainer(CeleryWorkerContainer):  # type: ignore[misc]
    """Node 1 from docker/Dockerfile, on pytest-celery's Redis broker."""

    @property
    def client(self) -> Any:
        return self

    @classmethod
    def worker_name(cls) -> str:
        return "node1"

    @classmethod
    def worker_queue(cls) -> str:
        return "walbackup"

    @classmethod
    def command(cls, *args: str, **kwargs: Any) -> list[str]:
        return ["celery", "-A", "tasks", "worker", "-n", "node1@%h", "--loglevel=INFO", *args]


@pytest.fixture(scope="session")
def walbackup_image(docker_client: Any) -> Any:
    """Built as a user builds it (BuildKit honours docker/Dockerfile.dockerignore)."""
    subprocess.run(
        ["docker", "build", "-f", "docker/Dockerfile", "-t", "walbackup:smoke", "."],
        cwd=REPO,
        check=True,
        timeout=900,
    )
    return docker_client.images.get("walbackup:smoke")


default_worker_container = container(
    image="{walbackup_image.id}",
    environment=fxtr("default_worker_env"),
    network="{default_pytest_celery_network.name}",
    wrapper_class=WalbackupNodeContainer,
    timeout=120,
    command=fxtr("default_worker_command"),
)


@pytest.fixture
def default_worker_container_cls() -> type[CeleryWorkerContainer]:
    return WalbackupNodeContainer


@pytest.fixture(scope="session")
def default_worker_container_session_cls() -> type[CeleryWorkerContainer]:
    return WalbackupNodeContainer


@pytest.fixture
def default_worker_env(celery_worker_cluster_config: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = WalbackupNodeContainer.initial_env(celery_worker_cluster_config)
    env.update(
        {
            "WALBACKUP_REDIS_URL": env["CELERY_BROKER_URL"],
            "WALBACKUP_NODE_ID": "1",
            "WALBACKUP_WORKDIR": "/var/lib/walbackup/wal",
            "WALBACKUP_REMOTE_STORAGE": "file:///var/lib/walbackup/remote",
        }
    )
    return env


@pytest.fixture
def celery_broker(celery_redis_broker: Any) -> Any:
    """Redis only: walbackup keeps its coordination state in the broker's Redis."""
    return celery_redis_broker


@pytest.fixture
def celery_backend_cluster() -> None:
    """walbackup stores no task results."""
    return None


@pytest.mark.docker
@pytest.mark.skipif(not _docker_engine_answers(), reason="no Docker engine answers `docker info`")
def test_docker_image_runs_a_node(celery_setup: CeleryTestSetup) -> None:
    """The image boots a node worker that serves the walbackup tasks."""
    ttid = str(TenantTimelineId(secrets.token_hex(16), secrets.token_hex(16)))
    celery_setup.worker.assert_log_exists("node1@")
    celery_setup.app.send_task("walbackup.trigger", args=[[ttid]], queue="walbackup")
    celery_setup.worker.assert_log_exists("walbackup.trigger", timeout=60)
    celery_setup.worker.assert_log_exists("succeeded", timeout=60)
