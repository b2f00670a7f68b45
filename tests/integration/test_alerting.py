"""The alerting users paste in: docker/prometheus/alerts.yml checked and
unit-tested by promtool, then loaded, with the Grafana dashboard's queries,
into a real Prometheus scraping a real three-node cluster, where every metric
they name must be one the node workers export.

promtool and prometheus come with Debian's prometheus package, which .ci/run
installs: these tests skip without it on a developer's machine, and fail
without it in CI.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.dev.simulate import simulate
from tests.cluster import SEG_SIZE, Cluster, wait_for
from tests.servers import free_port, http_get, terminate

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "docker" / "prometheus"
DASHBOARD = REPO / "docker" / "grafana" / "walbackup.json"
NODE_IDS = (1, 2, 3)
PROMETHEUS_OWN = {"up", "ALERTS"}
"""Series Prometheus makes itself, not the nodes."""


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        message = f"{name} not found: `apt-get install prometheus` (Debian's package; .ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def _run(*args: str, cwd: Path = PROMETHEUS_DIR) -> str:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


# -- promtool ------------------------------------------------------------------


def test_promtool_checks_the_rules_and_the_compose_prometheus_config() -> None:
    promtool = _tool("promtool")
    out = _run(promtool, "check", "rules", "alerts.yml")
    assert f"SUCCESS: {len(_rules())} rules found" in out, out
    out = _run(promtool, "check", "config", "prometheus.yml")  # and the rule files it names
    assert "is valid prometheus config file syntax" in out, out


def test_promtool_unit_tests_fire_and_clear_every_rule() -> None:
    out = _run(_tool("promtool"), "test", "rules", "alerts_test.yml")
    assert "SUCCESS" in out, out
    tests = yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yml").read_text())["tests"]
    cases = [case for test in tests for case in test["alert_rule_test"]]
    for rule in _rules():
        mine = [case for case in cases if case["alertname"] == rule["alert"]]
        assert any(case["exp_alerts"] for case in mine), f"{rule['alert']} is never shown firing"
        assert any(not case["exp_alerts"] for case in mine), f"{rule['alert']} never shown quiet"
    for rule in _rules():
        assert {"severity"} <= rule["labels"].keys() and rule["for"], rule["alert"]
        assert "walbackup " in rule["annotations"]["description"], f"{rule['alert']}: no command"


# -- every name in a query is a metric the nodes export -------------------------

_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "group_left", "group_right", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (Grafana variables allowed) selects."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", expr)  # label matchers, ranges
    expr = _LABEL_LISTS.sub("", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][\w:]*", expr):
        followed_by_call = expr[match.end() :].lstrip().startswith("(")
        if not followed_by_call and match.group().lower() not in _KEYWORDS:
            names.add(match.group())
    return names


def test_metric_names_reads_promql() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le) (rate(upload_duration_seconds_bucket[5m])))"
        ' / on (instance) group_left max by (timeline) (backup_lag_bytes{timeline=~"$timeline"})'
        ' > 8 * 16777216 or vector(0) unless time() - up{job="a b"} offset 5m > 1e3'
    )
    assert metric_names(expr) == {"upload_duration_seconds_bucket", "backup_lag_bytes", "up"}


def exported_names(exposition: str) -> set[str]:
    """Sample names a /metrics page can carry: from its ``# TYPE`` lines, so a
    labelled metric with no series yet counts too."""
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", exposition, re.MULTILINE):
        suffixes = {"histogram": ("_bucket", "_count", "_sum"), "summary": ("", "_count", "_sum")}
        names |= {name + suffix for suffix in suffixes.get(kind, ("",))}
    return names


def _grafana_to_promql(expr: str) -> str:
    """A dashboard query as Grafana sends it: its variables filled in."""
    for variable, value in (("$__rate_interval", "1m"), ("$timeline", ".*")):
        expr = expr.replace(variable, value)
    return expr


# -- a real Prometheus on a real cluster ---------------------------------------


class Prometheus:
    """A Prometheus process with the compose config, pointed at our nodes."""

    def __init__(self, tmp_path: Path, targets: list[str]) -> None:
        config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(PROMETHEUS_DIR / name) for name in config["rule_files"]]
        (job,) = config["scrape_configs"]
        job["static_configs"] = [{"targets": targets}]
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = (tmp_path / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                _tool("prometheus"),
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address={self.url.removeprefix('http://')}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        status, body = http_get(f"{self.url}/api/v1/{path}{query}")
        assert status == 200, (path, params, status, body[:500])
        reply = json.loads(body)
        assert reply["status"] == "success", reply
        return reply["data"]

    def query(self, expr: str) -> dict[str, float]:
        """``expr``'s instant vector as ``{labels: value}``."""
        data = self.api("query", query=expr)
        return {
            ",".join(f"{k}={v}" for k, v in sorted(s["metric"].items())): float(s["value"][1])
            for s in data["result"]
        }

    def stop(self) -> None:
        terminate(self.proc, 15)
        self.log.close()


@pytest.fixture
def watched(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> Iterator[tuple[Cluster, Prometheus, dict[int, int]]]:
    """Three node workers with metrics ports and beat, scraped by Prometheus."""
    _tool("prometheus")
    cluster = make_cluster()
    ports = {n: free_port() for n in NODE_IDS}
    for n in NODE_IDS:
        cluster.start_node(n, {"WALBACKUP_METRICS_PORT": str(ports[n])})
    cluster.start_beat()
    prometheus = Prometheus(tmp_path, [f"127.0.0.1:{ports[n]}" for n in NODE_IDS])
    try:
        cluster.wait_nodes(list(NODE_IDS))
        wait_for(lambda: http_get(f"{prometheus.url}/-/ready")[0] == 200, 30, "Prometheus to start")
        yield cluster, prometheus, ports
    finally:
        prometheus.stop()
        if prometheus.proc.returncode not in (0, -15):
            print((tmp_path / "prometheus.log").read_text(errors="replace")[-4000:])


def test_prometheus_loads_the_rules_and_every_query_names_exported_metrics(
    watched: tuple[Cluster, Prometheus, dict[int, int]],
) -> None:
    cluster, prometheus, ports = watched
    ttid = TenantTimelineId(secrets.token_hex(16), secrets.token_hex(16))
    simulate([cluster.workdir(n) for n in NODE_IDS], [ttid], segments=4, seg_size=SEG_SIZE)
    cluster.wait_backup(ttid, Lsn.from_segment(5, 0, SEG_SIZE), timeout=60)

    # What a node worker exports, from its own /metrics.
    status, body = http_get(f"http://127.0.0.1:{ports[1]}/metrics")
    assert status == 200
    exported = exported_names(body.decode())
    queries = [rule["expr"] for rule in _rules()] + _dashboard_exprs()
    variables = json.loads(DASHBOARD.read_text())["templating"]["list"]
    for variable in variables:
        if variable["type"] == "query":
            queries.append(re.sub(r"label_values\((\w+),.*", r"\1", variable["definition"]))
    for expr in queries:
        unknown = metric_names(expr) - exported - PROMETHEUS_OWN
        assert not unknown, f"{expr!r} names {sorted(unknown)}, which no node exports"

    # Prometheus scrapes the three nodes and evaluates every rule without error.
    wait_for(lambda: prometheus.query('sum(up{job="walbackup"})') == {"": 3.0}, 30, "3 targets up")
    groups = prometheus.api("rules")["groups"]
    loaded = {rule["name"]: rule for group in groups for rule in group["rules"]}
    assert set(loaded) == {rule["alert"] for rule in _rules()}
    wait_for(
        lambda: all(
            r["health"] == "ok" for g in prometheus.api("rules")["groups"] for r in g["rules"]
        ),
        30,
        "every rule to be evaluated without error",
    )
    for expr in _dashboard_exprs():
        prometheus.api("query", query=_grafana_to_promql(expr))  # parses and evaluates

    # The new gauges, as the rules read them: the timeline's offloader on every
    # node (one series per node, one value), nothing unarchived once caught
    # up, every node's heartbeat fresh as some node read it.
    offloader = cluster.state.timeline(str(ttid)).offloader
    assert offloader in NODE_IDS
    tl = f'{{timeline="{ttid}"}}'
    wait_for(
        lambda: (
            prometheus.query(f"count_values by (timeline) ('node', timeline_offloader{tl})")
            == {f"node={offloader},timeline={ttid}": 3.0}
        ),
        20,
        "the three nodes to export the timeline's offloader",
    )
    wait_for(
        lambda: (
            prometheus.query(f"max(oldest_unarchived_segment_age_seconds{tl})") == {"": 0.0}
            and prometheus.query(f"max(backup_lag_bytes{tl})") == {"": 0.0}
        ),
        20,
        "lag and unarchived age to read 0 once the backup caught up",
    )
    # The lag alert counts segments of the cluster's own size.
    assert prometheus.query("8 * max(wal_segment_size_bytes)") == {"": 8.0 * SEG_SIZE}
    ages = prometheus.query("time() - max by (node) (last_heartbeat_timestamp_seconds)")
    assert set(ages) == {f"node={n}" for n in NODE_IDS} and max(ages.values()) < 10, ages

    # A node dies: the others report its heartbeat ageing, and its scrape fails.
    cluster.kill("node3")
    wait_for(
        lambda: set(prometheus.query(_with_threshold("WalbackupNodeDown", "5"))) == {"node=3"},
        30,
        "WalbackupNodeDown's expression (at 5 s) to find node 3, and only it",
    )
    wait_for(
        lambda: (
            set(prometheus.query(_rule("WalbackupMetricsDown")["expr"]))
            == {f"__name__=up,instance=127.0.0.1:{ports[3]},job=walbackup"}
        ),
        30,
        "WalbackupMetricsDown's expression to find node 3's target",
    )
    assert prometheus.query(_rule("WalbackupNoOffloader")["expr"]) == {}


def _rule(name: str) -> dict[str, Any]:
    (rule,) = [rule for rule in _rules() if rule["alert"] == name]
    return rule


def _with_threshold(name: str, threshold: str) -> str:
    """The rule's expression with its ``> N`` threshold lowered to ``threshold``."""
    expr: str = _rule(name)["expr"]
    lowered = re.sub(r">\s*[\d.]+\s*$", f"> {threshold}", expr.strip())
    assert lowered != expr.strip(), expr
    return lowered
