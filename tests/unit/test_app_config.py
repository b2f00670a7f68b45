"""The Celery app's safety-relevant configuration, as a node and as a plain worker.

The app reads its settings at import, so each case imports it in a fresh
interpreter with its own environment."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.servers import env_without_walbackup

PROBE = """
import json
from tasks.app import app
app.loader.import_default_modules()  # what a worker does at start
c = app.conf
print(json.dumps({
    "accept": list(c.accept_content), "serializer": c.task_serializer,
    "acks_late": c.task_acks_late, "reject_lost": c.task_reject_on_worker_lost,
    "prefetch": c.worker_prefetch_multiplier, "events": c.worker_send_task_events,
    "sent_event": c.task_send_sent_event,
    "visibility": c.broker_transport_options["visibility_timeout"],
    "queues": sorted(q.name for q in c.task_queues),
    "beat": [e["task"] for e in c.beat_schedule.values()],
    "tasks": sorted(t for t in app.tasks if t.startswith("walbackup.")),
}))
"""


def probe(env: dict[str, str]) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        env=env_without_walbackup() | env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_node_worker_config(tmp_path: Path) -> None:
    conf = probe({"WALBACKUP_NODE_ID": "7", "WALBACKUP_WORKDIR": str(tmp_path)})
    assert conf["accept"] == ["json"] and conf["serializer"] == "json"  # pickle refused
    assert conf["acks_late"] is True and conf["reject_lost"] is True
    assert conf["prefetch"] == 1
    assert conf["events"] is True and conf["sent_event"] is True
    assert isinstance(conf["visibility"], int) and conf["visibility"] >= 600
    assert conf["queues"] == ["node.7", "walbackup"]
    assert sorted(conf["beat"]) == ["walbackup.elect_all", "walbackup.scrub_all"]
    assert conf["tasks"] == [
        "walbackup.backup_timeline",
        "walbackup.elect_all",
        "walbackup.heal_segment",
        "walbackup.scrub_all",
        "walbackup.scrub_timelines",
        "walbackup.trigger",
        "walbackup.upload_segment",
        "walbackup.upload_segments",
    ]


def test_worker_without_node_id_serves_shared_queue_only() -> None:
    assert probe({})["queues"] == ["walbackup"]


BROKER_PROBE = """
import json
from tasks.app import app
conn = app.connection_for_write()
print(json.dumps({
    "conf": repr(app.conf.table(with_defaults=True)),
    "humanized": app.conf.humanize(with_defaults=True),
    "transport": type(conn.transport).__module__ + "." + type(conn.transport).__name__,
    "uri": conn.as_uri(),
    "max_retries": app.conf.broker_connection_max_retries,
    "beat_scheduler": app.conf.beat_scheduler,
}))
"""


def test_broker_survives_restarts_and_hides_the_password() -> None:
    password = "pw" + "0123456789abcdef" * 2
    out = subprocess.run(
        [sys.executable, "-c", BROKER_PROBE],
        env=env_without_walbackup()
        | {"WALBACKUP_REDIS_URL": f"redis://:{password}@127.0.0.1:6379/0"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    conf = json.loads(out.stdout)
    # The transport of tasks/broker.py, behind an unchanged redis:// URL.
    assert conf["transport"] == "tasks.broker.Transport"
    assert conf["uri"] == "redis://:**@127.0.0.1:6379/0"
    assert conf["max_retries"] is None  # reconnect forever
    assert conf["beat_scheduler"] == "beat.scheduler:WalBackupScheduler"
    # What `celery inspect conf` and `celery report` show (Flower too).
    assert password not in conf["conf"] and password not in conf["humanized"]


RABBIT_PROBE = """
import json
from tasks.app import app
conn = app.connection_for_write()
print(json.dumps({
    "transport": type(conn.transport).__module__ + "." + type(conn.transport).__name__,
    "uri": conn.as_uri(),
    "options": app.conf.broker_transport_options,
    "max_retries": app.conf.broker_connection_max_retries,
}))
"""


def test_rabbitmq_broker_uses_kombus_amqp_transport_with_confirms() -> None:
    out = subprocess.run(
        [sys.executable, "-c", RABBIT_PROBE],
        env=env_without_walbackup()
        | {"WALBACKUP_BROKER_URL": "amqp://walbackup:secret@127.0.0.1:5672/walbackup"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    conf = json.loads(out.stdout)
    # Not the Redis transport fix, and no Redis-only option.
    assert conf["transport"] == "kombu.transport.pyamqp.Transport"
    assert conf["uri"] == "amqp://walbackup:**@127.0.0.1:5672/walbackup"
    assert conf["options"] == {"confirm_publish": True}
    assert conf["max_retries"] is None


def test_broker_through_sentinels_hides_both_passwords() -> None:
    password, sentinel_password = "pw" + "0123456789abcdef" * 2, "sp" + "fedcba9876543210" * 2
    out = subprocess.run(
        [sys.executable, "-c", BROKER_PROBE],
        env=env_without_walbackup()
        | {
            "WALBACKUP_REDIS_URL": f"redis://:{password}@127.0.0.1:6379/0",
            "WALBACKUP_REDIS_SENTINELS": "10.0.0.1:26379,10.0.0.2:26380",
            "WALBACKUP_REDIS_MASTER_NAME": "wal",
            "WALBACKUP_REDIS_SENTINEL_PASSWORD": sentinel_password,
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    conf = json.loads(out.stdout)
    # kombu's Sentinel transport, with the fixes of tasks/broker.py.
    assert conf["transport"] == "tasks.broker.SentinelTransport"
    assert conf["uri"] == "sentinel://:**@10.0.0.1:26379/0"
    assert "'master_name': 'wal'" in conf["conf"]
    for secret in (password, sentinel_password):
        assert secret not in conf["conf"] and secret not in conf["humanized"]
