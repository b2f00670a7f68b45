"""The Celery app: ``celery -A tasks worker|beat|flower``.

A worker started with ``WALBACKUP_NODE_ID`` and ``WALBACKUP_WORKDIR`` is that
node: it consumes ``node.<id>`` besides the shared ``walbackup`` queue and runs
the node service (heartbeats, WORKDIR watcher, lease upkeep, metrics).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from celery import Celery, signals
from kombu.entity import Queue
from kombu.exceptions import OperationalError

from beat.schedule import build_schedule
from tasks.config import get_settings
from tasks.errors import BrokerUnavailable, InvalidInput
from tasks.memory import limit_arenas
from tasks.names import ELECT_ALL, SHARED_QUEUE, node_queue
from tasks.state.keys import REDBEAT_PREFIX

log = logging.getLogger("walbackup.app")

try:
    settings = get_settings()
except InvalidInput as exc:
    # One line, not Celery's "Unable to load celery application" and a traceback.
    print(f"walbackup: {exc}", file=sys.stderr)
    raise SystemExit(2) from None


_queues = [Queue(SHARED_QUEUE)]
if settings.node_id is not None:
    _queues.append(Queue(node_queue(settings.node_id)))
    limit_arenas()  # before the worker starts its threads


def _transport_options() -> dict[str, Any]:
    if settings.broker_is_redis:
        return {
            # Well above the longest upload (a 1 GiB segment at a slow 5 MB/s),
            # so a running upload is never delivered twice.
            "visibility_timeout": 3600,
            "unacked_restore_interval": 5,
            # A Redis black-holed by the network (no FIN, no RST), for good
            # on the connections a flushed NAT or conntrack table lost: kombu
            # waits forever by default, and the worker's event loop hung in a
            # publish of task events; its heartbeats (timed out, reconnected)
            # kept it elected, and its timelines stalled. Every broker command
            # is quick, and each dead connection the event loop meets after
            # a partition blocks it this long.
            "socket_timeout": 5,
            "socket_connect_timeout": 5,
            # kombu drops a BRPOP (or pub/sub connection) left unanswered for
            # 1-2 of these (25 s by default).
            "health_check_interval": 5,
            # With WALBACKUP_REDIS_SENTINELS (and no broker URL of its own): the
            # master's name, and the Sentinels' password (Celery masks it in
            # `inspect conf`, as every *password* key).
            **settings.broker_sentinel_options,
        }
    # RabbitMQ: a publish returns once the broker has the (persistent)
    # message, so an upload task sent just before a broker crash is not lost
    # silently. Its unacked deliveries come back by themselves when a channel
    # closes: no visibility timeout.
    return {"confirm_publish": True}


# amqp: Celery's broker plumbing, with the Redis transport of tasks.broker.
app = Celery(
    "walbackup",
    broker=settings.effective_broker_url,
    include=["tasks.jobs"],
    amqp="tasks.broker:AMQP",
)
app.conf.update(
    # JSON only: anyone who can write to Redis could run code through pickle.
    task_serializer="json",
    accept_content=["json"],
    result_serializer="json",
    event_serializer="json",
    task_ignore_result=True,
    # A message is acked after its task ran; a worker lost mid-task gives the
    # message back. Exceptions are retried explicitly by the tasks.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    # After a reconnect Celery lowers the prefetch count, then raises it again
    # from the ack of each task still running: on RabbitMQ that is a
    # synchronous basic.qos sent from a pool thread while the main thread
    # reads the same connection, which can hang the qos (and the consumer,
    # waiting for its lock) for good: a node that stops receiving tasks.
    worker_enable_prefetch_count_reduction=settings.broker_is_redis,
    # A Redis restart is survived in-process (SPEC §9): reconnect forever
    # (kombu's default gives up after 100 attempts, ~50 minutes, and the
    # worker exits), through the Redis transport of tasks/broker.py (the
    # `amqp` class above), which turns kombu's crash on a channel closed by a
    # lost connection into a logged connection error.
    broker_connection_retry=True,
    broker_connection_retry_on_startup=True,
    broker_connection_max_retries=None,
    # Off (Celery 5's default, made explicit): cancelling acks-late tasks on a
    # connection loss needs a pool that can kill a running task, and the
    # threads pool a node runs cannot (it only logs "Failed to cancel").
    # Their messages are redelivered anyway (restored when the channel
    # closes, or after visibility_timeout), so such a task may run twice:
    # every walbackup task is idempotent, and an upload whose lease changed
    # meanwhile is fenced at its commit.
    worker_cancel_long_running_tasks_on_connection_loss=False,
    # A message published while Redis restarts waits for it (~30 s) instead
    # of failing after Celery's default 3 quick attempts (~0.6 s): a claimed
    # segment's upload task or an upload's retry lost that way stalls its
    # timeline until the claim times out (minutes).
    task_publish_retry_policy={
        "max_retries": 30,
        "interval_start": 0,
        "interval_step": 0.5,
        "interval_max": 1,
    },
    broker_transport_options=_transport_options(),
    # RabbitMQ only (Redis has no heartbeats): a broker gone silent without
    # closing the connection (a partition) is noticed within two intervals.
    broker_heartbeat=30,
    # Flower.
    worker_send_task_events=True,
    task_send_sent_event=True,
    task_default_queue=SHARED_QUEUE,
    task_queues=_queues,
    task_create_missing_queues=True,
    worker_concurrency=settings.parallel_jobs + 4,
    # Beat: schedule and its lock in Redis, so a second beat waits instead of
    # doubling the work (RedBeat, through beat/scheduler.py, which survives
    # Redis restarts). RedBeat's Redis URL is set by that scheduler, in beat
    # only: a setting here would show the Redis password in every worker's
    # `inspect conf` and in Flower (Celery masks broker_url, not redbeat_*).
    beat_scheduler="beat.scheduler:WalBackupScheduler",
    redbeat_key_prefix=REDBEAT_PREFIX,
    beat_max_loop_interval=1,
    redbeat_lock_timeout=10,
    beat_schedule=build_schedule(settings.election_interval, settings.scrub_interval),
)


@signals.worker_init.connect
def _default_to_threads_pool(sender: Any = None, **_: Any) -> None:
    """Uploads are I/O bound and the node keeps per-process state (leases,
    metrics), so a node runs the ``threads`` pool unless ``-P`` says otherwise.
    ``worker_init`` fires before the pool class is resolved."""
    if not any(arg in ("-P", "--pool") or arg.startswith("--pool=") for arg in sys.argv):
        sender.pool_cls = "threads"


def send(
    name: str,
    args: list[Any],
    queue: str,
    kwargs: dict[str, Any] | None = None,
    retry_policy: dict[str, Any] | None = None,
) -> None:
    """Publish task ``name`` to ``queue``. A broker still unreachable once the
    publish retry policy gave up raises ``BrokerUnavailable`` (walbackup's own,
    retryable), not kombu's ``OperationalError``."""
    options: dict[str, Any] = {"kwargs": kwargs or {}, "queue": queue}
    if retry_policy is not None:
        options["retry_policy"] = retry_policy
    try:
        app.send_task(name, args=args, **options)
    except OperationalError as exc:
        raise BrokerUnavailable(f"cannot send {name}: {exc}") from exc


class _QuietElectionRound(logging.Filter):
    """Beat's election round runs every ``election_interval`` (1 s): its
    "received" and "succeeded" lines would bury the uploads in a worker's log,
    so they are logged at DEBUG (failures still at their own level)."""

    def filter(self, record: logging.LogRecord) -> bool:
        data = getattr(record, "data", None)
        if record.levelno != logging.INFO or not isinstance(data, dict):
            return True
        if data.get("name") != ELECT_ALL:
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


for _name in ("celery.worker.strategy", "celery.app.trace"):
    logging.getLogger(_name).addFilter(_QuietElectionRound())


class _OneLineLostAck(logging.Filter):
    """A task that ends while the broker is away cannot be acked: Celery logs
    that at CRITICAL with three chained tracebacks, once per task in flight.
    One line says it all (the message is delivered again, and every
    walbackup task is idempotent); the traceback goes to DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and str(record.msg).startswith("Couldn't ack"):
            logging.getLogger(record.name).debug("lost ack", exc_info=record.exc_info)
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg = f"{record.msg} (the broker redelivers it; tasks are idempotent)"
        return True


logging.getLogger("celery.worker.request").addFilter(_OneLineLostAck())


# By name: the step (and through it the node service) is imported only when a
# worker starts, never by a client that merely imports the app.
app.steps["worker"].add("tasks.steps:NodeStep")
