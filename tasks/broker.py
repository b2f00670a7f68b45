"""kombu's Redis transport, made to survive a Redis restart.

``tasks.app`` creates the app with ``amqp="tasks.broker:AMQP"``: its broker
connections use this module's ``Transport`` where kombu would use its own
Redis transport (``redis://`` and ``rediss://`` URLs), or its Sentinel
transport (``sentinel://``). The URL keeps its scheme,
so logs and Flower (which picks its broker client by scheme) show ``redis://``;
naming the class in ``broker_transport`` would make that
``tasks.broker:Transport://``.

What kills a worker otherwise (kombu 5.7, seen with ``redis-server`` SIGKILLed
under load; kombu #582, #970, celery #7705, #8030, #9054):

1. On a lost connection the consumer tears it down twice: first
   ``Connection.collect()``, then ``Connection.close()``
   (``celery.worker.consumer.Consumer.on_connection_error_after_connected``).
   ``kombu.transport.redis.Channel.close`` first drains the BRPOP it has in
   flight; on the dead socket that read raises, so the channel is left open,
   its unacked messages unrestored. ``collect()`` swallows the connection
   error and then detaches the transport from its connection
   (``transport.client = None``).
2. ``close()`` then closes that channel again: ``Channel.close`` drops its
   connection pools and ``QoS.restore_unacked_once`` needs a new one, whose
   parameters ``Channel._connparams`` reads from ``transport.client``:
   ``AttributeError: 'NoneType' object has no attribute 'hostname'``. That is
   not a connection error, so ``ignore_errors`` lets it through and the worker
   stops with "Unrecoverable error".

The same ``_connparams`` failure waits for every task still running on the
threads pool: with ``task_acks_late`` its message is acked, after the task,
on the channel it came from, which is closed by then.

Fixes, each where the fault is:

- ``Channel.close`` closes the channel even with Redis unreachable: a failed
  drain of the BRPOP in flight, or a failed deletion of the bindings of its
  auto-delete queues (gossip, pidbox; kombu's first command at close), does
  not leave it open. Its unacked messages are given back to Redis if it
  answers, else they stay in Redis's unacked index until
  ``visibility_timeout`` (like those of a killed worker). Nor does the close
  raise: the callers are teardown paths, and one of them
  (``celery.bootsteps.ConsumerStep._close``, after the consumer dropped its
  connection) fails with ``AttributeError`` on any error.
- ``Channel._connparams``: a channel whose transport was detached raises
  ``BrokerConnectionLost``, a ``redis.ConnectionError``, instead of
  ``AttributeError``: every late use of it is a connection error, which
  kombu and Celery handle (ignored at teardown, logged by ``ack_log_error``).
- ``QoS.ack``/``QoS.reject`` on a closed channel raise
  ``BrokerConnectionLost`` at once, as AMQP does: a message can only be
  acknowledged on the channel that delivered it. Celery logs "Couldn't ack"
  and the message is delivered again (walbackup's tasks are idempotent and
  fenced by the upload lease), instead of each late ack building a connection
  pool on a dead channel.

And one change for speed: ``Channel.conn_or_acquire`` shares one
``redis.Redis`` per connection pool instead of building one per call.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from queue import Empty
from typing import Any

import redis
from celery.app.amqp import AMQP as CeleryAMQP
from kombu.connection import Connection
from kombu.transport import redis as kombu_redis

log = logging.getLogger("walbackup.broker")

RECONNECT_INTERVAL_MAX_S = 5
"""Longest wait between two attempts of a worker to reconnect to its broker."""


class BrokerConnectionLost(redis.exceptions.ConnectionError):
    """The channel closed with its broker connection: what it delivered can
    no longer be acked or rejected through it. Such a message is delivered
    again: given back when the channel closed, or from Redis's unacked index
    after ``visibility_timeout`` (unless Redis lost its data)."""


class QoS(kombu_redis.QoS):  # type: ignore[misc]
    def _check_open(self, action: str, delivery_tag: Any) -> None:
        if self.channel.closed:
            raise BrokerConnectionLost(
                f"cannot {action} message {delivery_tag}: its channel closed with the "
                "broker connection (the message is delivered again)"
            )

    def ack(self, delivery_tag: Any) -> None:
        self._check_open("ack", delivery_tag)
        super().ack(delivery_tag)

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        self._check_open("reject", delivery_tag)
        super().reject(delivery_tag, requeue=requeue)


class _SurvivingChannel(kombu_redis.Channel):  # type: ignore[misc]
    QoS = QoS
    _shared_client: Any = None

    def close(self) -> None:
        if self._in_poll:
            # kombu drains the BRPOP in flight first; on a dead connection
            # that read raises before the channel is marked closed.
            try:
                self._brpop_read()
            except Empty:
                pass
            except self.connection_errors as exc:
                log.debug("Broker channel closing without its pending BRPOP: %r", exc)
        try:
            super().close()
        except self.connection_errors as exc:
            # Redis is unreachable. kombu's close stops at its first command:
            # giving back unacked messages (they stay in Redis's unacked
            # index), or, before anything is closed, deleting the bindings
            # of the channel's auto-delete queues (gossip, pidbox).
            log.info("Broker channel closed with Redis unreachable: %s", exc)
            if not self.closed:
                self.auto_delete_queues.clear()  # cannot be deleted now
                with contextlib.suppress(*self.connection_errors):
                    super().close()

    @contextlib.contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        # kombu builds a new redis.Redis (parsing its options) for every
        # publish, task event and ack without a client: ~7% of a busy node's
        # CPU. A client is only a handle on the channel's connection pool,
        # safe to share between threads; one per pool is enough.
        if client is not None:
            yield client
            return
        pool = self.pool
        shared = self._shared_client
        if shared is None or shared.connection_pool is not pool:
            shared = self._shared_client = self._create_client()
        yield shared

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        if self.connection.client is None:  # detached by Connection.collect()/close()
            raise BrokerConnectionLost("broker channel used after its connection was closed")
        params: dict[str, Any] = super()._connparams(asynchronous=asynchronous)
        return params


class Channel(_SurvivingChannel):
    pass


class SentinelChannel(_SurvivingChannel, kombu_redis.SentinelChannel):  # type: ignore[misc]
    """kombu's Sentinel channel (``sentinel://`` URLs) with the same fixes:
    its connections find the master again through the Sentinels."""


class Transport(kombu_redis.Transport):  # type: ignore[misc]
    Channel = Channel


class SentinelTransport(kombu_redis.SentinelTransport):  # type: ignore[misc]
    Channel = SentinelChannel


_OURS = {kombu_redis.Transport: Transport, kombu_redis.SentinelTransport: SentinelTransport}


class BrokerConnection(Connection):  # type: ignore[misc]
    """The Redis transport above for Redis URLs; any other (``amqp://``)
    is kombu's own. Either way the worker reconnects at most
    ``RECONNECT_INTERVAL_MAX_S`` after the broker is back."""

    def get_transport_cls(self) -> Any:
        cls = super().get_transport_cls()
        return _OURS.get(cls, cls)

    def ensure_connection(self, *args: Any, **kwargs: Any) -> BrokerConnection:
        # Celery's consumer passes no intervals: kombu's default backoff
        # (2, 4, 6, … s, up to 30 s) lets a worker sleep through most of a
        # short outage, such as the ~6 s a RabbitMQ node takes to boot.
        kwargs.setdefault("interval_start", 1)
        kwargs.setdefault("interval_step", 1)
        kwargs.setdefault("interval_max", RECONNECT_INTERVAL_MAX_S)
        super().ensure_connection(*args, **kwargs)
        return self


class AMQP(CeleryAMQP):  # type: ignore[misc]
    """Celery's broker plumbing, connecting through ``BrokerConnection``."""

    Connection = BrokerConnection
