"""The message bus: a small pika (AMQP 0-9-1) wrapper for RabbitMQ.

One ``MessageBus`` owns one connection; it is not thread-safe (use one per process or thread).
It keeps three channels on that connection:

* a *publish* channel in publisher-confirm mode, for publishes and declarations;
* a *batch* channel in transaction mode, for ``publish_many`` (confirms and transactions cannot
  share a channel);
* a *consume* channel, for ``consume``, ``get`` and the acks of the messages they return.

Delivery semantics: at-least-once.

* ``publish`` returns only after the broker confirmed the message (persistent messages on durable
  queues are then on disk). If the connection dies before the confirm, the message is published
  again on a new connection, so a consumer may see it twice.
* Consumers ack after their side effect is durable. If the connection dies first, the broker
  requeues every unacked message and delivers it again with ``redelivered=True``. ``Message.ack``
  on a message whose connection or channel is gone does not raise: it logs and returns False,
  since the broker has already requeued the message. Consumers must therefore be idempotent.

Throughput on the 2-core development machine (persistent messages, loaded machine): ``publish``
~400-2000 msg/s (one confirm round trip and broker fsync each); ``publish_many`` of 100 messages
~5,000-12,000 msg/s; consume with prefetch 50 and one ack per message ~5,000-15,000 msg/s. Batch
rows into fewer, larger messages, or use ``publish_many``, where throughput matters.

Connection loss (broker restart, network error) is retried with exponential backoff (0.05 s
doubling up to 2 s) for up to ``reconnect_timeout`` seconds per operation; ``consume`` rebuilds
its consumer on a new connection and keeps yielding.

Poison messages: one policy for every consumer (`PoisonGuard`). A message its consumer cannot
decode or validate is copied to the dead-letter queue ``<queue>.rejected`` with the headers
``x-rejected-reason`` (what was wrong), ``x-rejected-kind`` (one of
`htmengine.protocol.errors.REJECT_KINDS`) and ``x-rejected-from``, then acked, counted by kind
and logged (rate-limited); the consumer goes on with the next message.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import pika
import pika.exceptions
import tenacity
from pika.adapters.blocking_connection import BlockingChannel

from htmengine.config import Config, get_rabbitmq_config
from htmengine.exceptions import MessageQueueNotFound
from htmengine.logging_support import RateLimitedLogger
from htmengine.protocol.errors import UNDECODABLE, UndecodableMessage

LOGGER = logging.getLogger(__name__)

T = TypeVar("T")

# Suffix of the dead-letter queue of a queue: messages a consumer cannot process go there.
REJECTED_QUEUE_SUFFIX = ".rejected"
# Headers a dead-lettered copy carries.
REJECTED_REASON_HEADER = "x-rejected-reason"
REJECTED_KIND_HEADER = "x-rejected-kind"
REJECTED_FROM_HEADER = "x-rejected-from"
# Characters of a reason kept in its header.
_MAX_REASON_CHARS = 4000

# AMQP reply code of a missing queue or exchange.
_NOT_FOUND = 404
_PRECONDITION_FAILED = 406

# Seconds between heartbeats. Long enough for a consumer to spend a few minutes on one batch
# without calling into pika (the broker drops a connection after two missed heartbeats).
HEARTBEAT_SEC = 300

# A broker that blocks publishers (memory or disk alarm) for this long raises instead of hanging.
BLOCKED_CONNECTION_TIMEOUT_SEC = 300

# Default time budget of the reconnect-and-retry loop around one operation.
DEFAULT_RECONNECT_TIMEOUT_SEC = 120.0

_PERSISTENT = pika.DeliveryMode.Persistent
_TRANSIENT = pika.DeliveryMode.Transient

# Connection errors that will not go away by retrying.
_PERMANENT_CONNECTION_ERRORS = (
    pika.exceptions.AuthenticationError,
    pika.exceptions.ProbableAuthenticationError,
    pika.exceptions.ProbableAccessDeniedError,
    pika.exceptions.IncompatibleProtocolError,
)


class MessageBusError(Exception):
    """The broker refused a message (publisher nack) or another non-retryable bus failure."""


def rejected_queue_name(queue: str) -> str:
    """Name of the dead-letter queue of `queue`."""
    return queue + REJECTED_QUEUE_SUFFIX


def connection_parameters(config: Config | None = None) -> pika.ConnectionParameters:
    """The broker connection of rabbitmq.conf (ConfigError for a missing or bad key)."""
    config = config if config is not None else get_rabbitmq_config()
    return pika.ConnectionParameters(
        host=config.get("connection", "host"),
        port=config.getint("connection", "port"),
        virtual_host=config.get("connection", "virtual_host"),
        credentials=pika.PlainCredentials(
            config.get("credentials", "user"), config.get("credentials", "password")
        ),
        heartbeat=HEARTBEAT_SEC,
        blocked_connection_timeout=BLOCKED_CONNECTION_TIMEOUT_SEC,
        connection_attempts=1,
    )


def _is_connection_failure(exc: BaseException) -> bool:
    """True for failures a new connection can cure (broker restart, lost socket)."""
    if isinstance(exc, _PERMANENT_CONNECTION_ERRORS):
        return False
    return isinstance(
        exc, pika.exceptions.AMQPConnectionError | pika.exceptions.ChannelWrongStateError
    )


@dataclass(eq=False)
class Message:
    """A message taken from a queue; call ``ack()`` once its side effect is durable."""

    body: bytes
    headers: dict[str, Any]
    redelivered: bool
    queue: str
    delivery_tag: int
    _bus: MessageBus = field(repr=False)
    _channel: BlockingChannel = field(repr=False)

    def ack(self, *, multiple: bool = False) -> bool:
        """Acknowledge this message (and, with `multiple`, every earlier one on its channel).

        Returns False when the channel is gone: the broker has requeued the message and will
        deliver it again (at-least-once), so the caller need not do anything.
        """
        return self._bus._settle(self, lambda ch: ch.basic_ack(self.delivery_tag, multiple))

    def nack(self, requeue: bool = True) -> bool:
        """Reject this message, putting it back on its queue unless `requeue` is False."""
        return self._bus._settle(
            self, lambda ch: ch.basic_nack(self.delivery_tag, multiple=False, requeue=requeue)
        )

    def dead_letter(
        self, reason: str, kind: str | None = None, *, queue: str | None = None
    ) -> bool:
        """Move this message to its dead-letter queue (see `MessageBus.dead_letter`)."""
        return self._bus.dead_letter(self, reason, kind, queue=queue)


class _ConsumerLost(Exception):
    """A consumer's channel closed, or its connection was replaced by another operation."""


@dataclass(eq=False)
class _Subscription:
    """Bookkeeping of one basic.consume on the consume channel."""

    queue: str
    channel: BlockingChannel
    tag: str = ""
    pending: collections.deque = field(default_factory=collections.deque)
    cancelled_by_broker: bool = False


class MessageBus:
    """A connection to RabbitMQ configured by rabbitmq.conf; see the module docstring."""

    def __init__(
        self,
        config: Config | None = None,
        *,
        reconnect_timeout: float = DEFAULT_RECONNECT_TIMEOUT_SEC,
    ) -> None:
        self._parameters = connection_parameters(config)
        self.reconnect_timeout = reconnect_timeout
        self._connection: pika.BlockingConnection | None = None
        self._publish_channel: BlockingChannel | None = None
        self._batch_channel: BlockingChannel | None = None
        self._consume_channel: BlockingChannel | None = None
        self._consumers: dict[str, _Subscription] = {}  # active consumers of the consume channel
        self._returned: list[bytes] = []
        self._closed = False

    # -- connection management ---------------------------------------------------------------

    def __enter__(self) -> MessageBus:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection; unacked messages go back to their queues."""
        self._closed = True
        connection, self._connection = self._connection, None
        self._forget_channels()
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except pika.exceptions.AMQPError as exc:
                LOGGER.debug("ignoring error while closing the AMQP connection: %r", exc)

    def _forget_channels(self) -> None:
        self._publish_channel = self._batch_channel = self._consume_channel = None

    def _drop_connection(self) -> None:
        """Abandon the current connection after a failure; the next call opens a new one."""
        connection, self._connection = self._connection, None
        self._forget_channels()
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except (pika.exceptions.AMQPError, OSError) as exc:
                LOGGER.debug("ignoring error while dropping the AMQP connection: %r", exc)

    def _ensure_connection(self) -> pika.BlockingConnection:
        if self._closed:
            raise MessageBusError("the message bus is closed")
        if self._connection is None or not self._connection.is_open:
            self._forget_channels()
            self._connection = pika.BlockingConnection(self._parameters)
        return self._connection

    def _publish_ch(self) -> BlockingChannel:
        connection = self._ensure_connection()
        if self._publish_channel is None or not self._publish_channel.is_open:
            channel = connection.channel()
            channel.confirm_delivery()
            self._publish_channel = channel
        return self._publish_channel

    def _batch_ch(self) -> BlockingChannel:
        connection = self._ensure_connection()
        if self._batch_channel is None or not self._batch_channel.is_open:
            channel = connection.channel()
            channel.tx_select()
            channel.add_on_return_callback(
                lambda _ch, _method, _props, body: self._returned.append(body)
            )
            self._batch_channel = channel
        return self._batch_channel

    def _consume_ch(self) -> BlockingChannel:
        connection = self._ensure_connection()
        if self._consume_channel is None or not self._consume_channel.is_open:
            channel = connection.channel()
            channel.add_on_cancel_callback(self._on_broker_cancel)
            self._consumers = {}
            self._consume_channel = channel
        return self._consume_channel

    def _on_broker_cancel(self, frame) -> None:
        consumer = self._consumers.get(frame.method.consumer_tag)
        if consumer is not None:
            consumer.cancelled_by_broker = True

    def _retrying(self, operation: Callable[[], T], what: str) -> T:
        """Run `operation`, reconnecting with backoff while the broker is unreachable."""

        def before_sleep(state: tenacity.RetryCallState) -> None:
            LOGGER.warning(
                "AMQP %s failed (%r); reconnecting (attempt %d)",
                what,
                state.outcome.exception() if state.outcome else None,
                state.attempt_number,
            )
            self._drop_connection()

        retryer = tenacity.Retrying(
            retry=tenacity.retry_if_exception(_is_connection_failure),
            wait=tenacity.wait_exponential(multiplier=0.05, max=2.0),
            stop=tenacity.stop_after_delay(self.reconnect_timeout),
            before_sleep=before_sleep,
            reraise=True,
        )
        return retryer(operation)

    def _on_channel_closed(self, exc: pika.exceptions.ChannelClosedByBroker, kind: str, name: str):
        """Translate a broker channel close; the channel itself is reopened on next use."""
        if exc.reply_code == _NOT_FOUND:
            return MessageQueueNotFound(f"{kind} {name!r} does not exist ({exc.reply_text})")
        return MessageBusError(f"broker closed the channel on {kind} {name!r}: {exc!r}")

    # -- declarations ------------------------------------------------------------------------

    def declare_queue(
        self,
        name: str,
        durable: bool = True,
        passive: bool = False,
        *,
        exclusive: bool = False,
        auto_delete: bool = False,
    ) -> int:
        """Declare a queue and return its message count.

        With `passive`, only check that it exists (MessageQueueNotFound if not). An `exclusive`
        queue belongs to this connection and vanishes with it (a watcher's private queue).
        """

        def declare() -> int:
            try:
                frame = self._publish_ch().queue_declare(
                    name,
                    passive=passive,
                    durable=durable,
                    exclusive=exclusive,
                    auto_delete=auto_delete,
                )
            except pika.exceptions.ChannelClosedByBroker as exc:
                raise self._on_channel_closed(exc, "queue", name) from exc
            return frame.method.message_count

        return self._retrying(declare, f"declare queue {name}")

    def delete_queue(self, name: str, *, if_empty: bool = False) -> int | None:
        """Delete a queue (a missing one is fine) and return how many messages it held.

        With `if_empty`, the broker deletes it only if it holds no ready message, atomically; a
        queue that does is kept and None is returned (checking first and deleting after would
        lose whatever is published in between).
        """

        def delete() -> int | None:
            try:
                frame = self._publish_ch().queue_delete(name, if_empty=if_empty)
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code == _NOT_FOUND:
                    return 0
                if if_empty and exc.reply_code == _PRECONDITION_FAILED:
                    return None
                raise self._on_channel_closed(exc, "queue", name) from exc
            return frame.method.message_count

        return self._retrying(delete, f"delete queue {name}")

    def purge_queue(self, name: str) -> int:
        """Remove every ready message of a queue; returns how many (MessageQueueNotFound if missing)."""

        def purge() -> int:
            try:
                frame = self._publish_ch().queue_purge(name)
            except pika.exceptions.ChannelClosedByBroker as exc:
                raise self._on_channel_closed(exc, "queue", name) from exc
            return frame.method.message_count

        return self._retrying(purge, f"purge queue {name}")

    def declare_exchange(
        self, name: str, exchange_type: str = "fanout", durable: bool = True
    ) -> None:
        """Declare an exchange (idempotent for identical arguments)."""

        def declare() -> None:
            try:
                self._publish_ch().exchange_declare(
                    name, exchange_type=exchange_type, durable=durable
                )
            except pika.exceptions.ChannelClosedByBroker as exc:
                raise self._on_channel_closed(exc, "exchange", name) from exc

        self._retrying(declare, f"declare exchange {name}")

    def delete_exchange(self, name: str) -> None:
        """Delete an exchange (a missing one is fine)."""

        def delete() -> None:
            try:
                self._publish_ch().exchange_delete(name)
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code != _NOT_FOUND:
                    raise self._on_channel_closed(exc, "exchange", name) from exc

        self._retrying(delete, f"delete exchange {name}")

    def bind_queue(self, queue: str, exchange: str, routing_key: str = "") -> None:
        """Bind a queue to an exchange (MessageQueueNotFound if either is missing)."""

        def bind() -> None:
            try:
                self._publish_ch().queue_bind(queue, exchange, routing_key=routing_key)
            except pika.exceptions.ChannelClosedByBroker as exc:
                raise self._on_channel_closed(exc, "queue/exchange", f"{queue}/{exchange}") from exc

        self._retrying(bind, f"bind {queue} to {exchange}")

    # -- publishing --------------------------------------------------------------------------

    @staticmethod
    def _properties(persistent: bool, headers: dict[str, Any] | None) -> pika.BasicProperties:
        return pika.BasicProperties(
            delivery_mode=_PERSISTENT if persistent else _TRANSIENT, headers=headers
        )

    def publish(
        self,
        queue: str,
        body: bytes,
        *,
        persistent: bool = True,
        headers: dict[str, Any] | None = None,
    ) -> None:
        """Publish to a queue via the default exchange and wait for the broker's confirm.

        Mandatory: a missing queue raises MessageQueueNotFound (the message is dropped).
        """
        properties = self._properties(persistent, headers)

        def send() -> None:
            try:
                self._publish_ch().basic_publish(
                    "", queue, body, properties=properties, mandatory=True
                )
            except pika.exceptions.UnroutableError as exc:
                raise MessageQueueNotFound(f"queue {queue!r} does not exist") from exc
            except pika.exceptions.NackError as exc:
                raise MessageBusError(f"broker refused a message for queue {queue!r}") from exc

        self._retrying(send, f"publish to {queue}")

    def publish_many(
        self,
        queue: str,
        bodies: Iterable[bytes],
        *,
        persistent: bool = True,
        headers: dict[str, Any] | None = None,
    ) -> int:
        """Publish several messages to a queue in one AMQP transaction; returns how many.

        One commit (one broker fsync) for the whole batch instead of one confirm per message.
        All-or-nothing: a connection lost before the commit publishes the whole batch again on
        a new connection; a missing queue raises MessageQueueNotFound and nothing is enqueued.
        """
        messages = list(bodies)
        if not messages:
            return 0
        properties = self._properties(persistent, headers)

        def send() -> int:
            channel = self._batch_ch()
            self._returned.clear()
            try:
                for body in messages:
                    channel.basic_publish("", queue, body, properties=properties, mandatory=True)
                channel.tx_commit()
                # basic.return frames precede tx.commit-ok; dispatch them to the return callback.
                self._ensure_connection().process_data_events(time_limit=0)
            except pika.exceptions.ChannelClosedByBroker as exc:
                raise self._on_channel_closed(exc, "queue", queue) from exc
            if self._returned:
                returned = len(self._returned)
                self._returned.clear()
                raise MessageQueueNotFound(
                    f"queue {queue!r} does not exist ({returned} of {len(messages)} "
                    "messages returned)"
                )
            return len(messages)

        return self._retrying(send, f"publish {len(messages)} messages to {queue}")

    def publish_exchange(
        self,
        exchange: str,
        body: bytes,
        *,
        routing_key: str = "",
        persistent: bool = True,
        headers: dict[str, Any] | None = None,
    ) -> None:
        """Publish to an exchange with a confirm; not mandatory (no bound queue = dropped).

        A missing exchange raises MessageQueueNotFound.
        """
        properties = self._properties(persistent, headers)

        def send() -> None:
            try:
                self._publish_ch().basic_publish(
                    exchange, routing_key, body, properties=properties, mandatory=False
                )
            except pika.exceptions.ChannelClosedByBroker as exc:
                raise self._on_channel_closed(exc, "exchange", exchange) from exc
            except pika.exceptions.NackError as exc:
                raise MessageBusError(f"broker refused a message for {exchange!r}") from exc

        self._retrying(send, f"publish to exchange {exchange}")

    def dead_letter(
        self, message: Message, reason: str, kind: str | None = None, *, queue: str | None = None
    ) -> bool:
        """Move a message its consumer cannot process to ``<queue>.rejected``, then ack it.

        The copy keeps body and headers and adds ``x-rejected-reason``, ``x-rejected-from`` and,
        if given, ``x-rejected-kind``; `queue` names another dead-letter queue (a private queue's
        watcher shares one). The copy is confirmed before the original is acked, so the message
        is never lost (it may be in both queues if the ack fails). Returns the ack's result.
        """
        dead_letter_queue = queue or rejected_queue_name(message.queue)
        self.declare_queue(dead_letter_queue, durable=True)
        ours = {
            REJECTED_REASON_HEADER: reason[:_MAX_REASON_CHARS],
            REJECTED_FROM_HEADER: message.queue,
        }
        if kind is not None:
            ours[REJECTED_KIND_HEADER] = kind
        try:
            self.publish(dead_letter_queue, message.body, headers={**message.headers, **ours})
        except (TypeError, ValueError, pika.exceptions.UnsupportedAMQPFieldException):
            # Headers pika decoded but cannot encode again: keep the body and our headers.
            self.publish(dead_letter_queue, message.body, headers=ours)
        return message.ack()

    # -- consuming ---------------------------------------------------------------------------

    def _message(self, channel: BlockingChannel, queue: str, method, properties, body) -> Message:
        return Message(
            body=body if body is not None else b"",
            headers=dict(properties.headers or {}),
            redelivered=bool(method.redelivered),
            queue=queue,
            delivery_tag=method.delivery_tag,
            _bus=self,
            _channel=channel,
        )

    def _settle(self, message: Message, settle: Callable[[BlockingChannel], None]) -> bool:
        channel = message._channel
        if channel is not self._consume_channel or not channel.is_open:
            LOGGER.warning(
                "cannot settle message %d of %s: its channel is closed; the broker redelivers it",
                message.delivery_tag,
                message.queue,
            )
            return False
        try:
            settle(channel)
        except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError) as exc:
            LOGGER.warning(
                "settling message %d of %s failed (%r); the broker redelivers it",
                message.delivery_tag,
                message.queue,
                exc,
            )
            if _is_connection_failure(exc):
                self._drop_connection()
            return False
        return True

    def get(self, queue: str) -> Message | None:
        """Take one message from a queue without waiting (None if it is empty)."""

        def fetch() -> Message | None:
            channel = self._consume_ch()
            try:
                method, properties, body = channel.basic_get(queue, auto_ack=False)
            except pika.exceptions.ChannelClosedByBroker as exc:
                raise self._on_channel_closed(exc, "queue", queue) from exc
            if method is None:
                return None
            return self._message(channel, queue, method, properties, body)

        return self._retrying(fetch, f"get from {queue}")

    def _start_consumer(self, queue: str, prefetch: int) -> _Subscription:
        channel = self._consume_ch()
        consumer = _Subscription(queue=queue, channel=channel)

        def on_message(ch, method, properties, body) -> None:
            consumer.pending.append(self._message(ch, queue, method, properties, body))

        try:
            channel.basic_qos(prefetch_count=prefetch)
            consumer.tag = channel.basic_consume(queue, on_message, auto_ack=False)
        except pika.exceptions.ChannelClosedByBroker as exc:
            raise self._on_channel_closed(exc, "queue", queue) from exc
        self._consumers[consumer.tag] = consumer
        return consumer

    def _stop_consumer(self, consumer: _Subscription) -> None:
        """Cancel a consumer on a live channel; prefetched, unyielded messages go back."""
        channel = consumer.channel
        if channel is not self._consume_channel:
            return
        self._consumers.pop(consumer.tag, None)
        if consumer.cancelled_by_broker:
            return
        if not channel.is_open:
            return
        try:
            channel.basic_cancel(consumer.tag)
            for message in consumer.pending:
                channel.basic_nack(message.delivery_tag, multiple=False, requeue=True)
            consumer.pending.clear()
        except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError) as exc:
            LOGGER.debug("ignoring error while cancelling consumer on %s: %r", consumer.queue, exc)

    def _deliveries(
        self, consumer: _Subscription, inactivity_timeout: float | None
    ) -> Iterator[Message | None]:
        connection = consumer.channel.connection
        while True:
            # Messages held for a lost channel are requeued by the broker: never yield them.
            self._raise_if_consumer_lost(consumer)
            if consumer.pending:
                yield consumer.pending.popleft()
                continue
            if consumer.cancelled_by_broker:
                LOGGER.warning("broker cancelled the consumer of %s", consumer.queue)
                return
            if inactivity_timeout is None:
                connection.process_data_events(time_limit=None)
                continue
            deadline = time.monotonic() + inactivity_timeout
            while not consumer.pending and not consumer.cancelled_by_broker:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                connection.process_data_events(time_limit=remaining)
                self._raise_if_consumer_lost(consumer)
            if not consumer.pending and not consumer.cancelled_by_broker:
                yield None

    def _raise_if_consumer_lost(self, consumer: _Subscription) -> None:
        if consumer.channel is not self._consume_channel or not consumer.channel.is_open:
            raise _ConsumerLost(f"the consume channel of {consumer.queue} was closed")

    def consume(
        self, queue: str, *, prefetch: int = 50, inactivity_timeout: float | None = None
    ) -> Iterator[Message | None]:
        """Yield messages of a queue as they arrive, with manual ack and `prefetch` in flight.

        Yields None after `inactivity_timeout` seconds without a message (never, if None).
        Survives connection loss: the consumer is rebuilt on a new connection and the broker
        redelivers what was not acked. Ends when the broker cancels the consumer (the queue
        was deleted). Raises MessageQueueNotFound if the queue does not exist. Messages
        may still be acked after the loop ends, as long as the bus stays open. Consumers started on one bus share its consume channel.
        """
        while True:
            consumer = self._retrying(
                lambda: self._start_consumer(queue, prefetch), f"consume from {queue}"
            )
            try:
                yield from self._deliveries(consumer, inactivity_timeout)
                return
            except _ConsumerLost as exc:
                # E.g. the broker closed the channel over an invalid ack, or an ack or publish
                # found the connection dead and replaced it: start over on the current one.
                LOGGER.warning("%s; consuming again", exc)
            except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError) as exc:
                if not _is_connection_failure(exc):
                    raise
                LOGGER.warning("lost the consumer of %s (%r); reconnecting", queue, exc)
                if consumer.channel is self._consume_channel:
                    self._drop_connection()
            finally:
                self._stop_consumer(consumer)


class _Rejectable(Protocol):
    """What the guard needs of a message: its body (for the log) and a way to dead-letter it."""

    body: bytes

    def dead_letter(
        self, reason: str, kind: str | None = None, *, queue: str | None = None
    ) -> bool: ...


class PoisonGuard:
    """The one dead-letter policy: decode inside it, and a message that fails never stops you.

    `decode(message, decoder)` returns what `decoder(message.body)` returns, or None after the
    message was dead-lettered: an `UndecodableMessage` keeps its kind and reason; any other
    error of the decoder (decoders are pure, so the body is at fault) counts as ``undecodable``.
    `reject(message, exc)` applies the same policy to a message that failed after decoding.
    Each rejection is counted by kind (`rejected`, and the `count` hook, e.g. a Prometheus
    counter's ``labels(kind).inc``) and logged at most once per `log_interval` seconds per kind.
    """

    def __init__(
        self,
        log: logging.Logger | None = None,
        count: Callable[[str], None] | None = None,
        *,
        dead_letter_queue: str | None = None,
        log_interval: float = 10.0,
    ) -> None:
        self._log = RateLimitedLogger(log if log is not None else LOGGER, interval=log_interval)
        self._count = count
        self._dead_letter_queue = dead_letter_queue
        self.rejected: collections.Counter[str] = collections.Counter()

    def decode(self, message: _Rejectable, decoder: Callable[[bytes], T]) -> T | None:
        """`decoder(message.body)`, or None once the message has been dead-lettered."""
        try:
            return decoder(message.body)
        except Exception as exc:  # whatever a pure decoder raises, the body is at fault
            self.reject(message, exc)
            return None

    def reject(self, message: _Rejectable, exc: BaseException) -> None:
        """Dead-letter `message` (acked after its copy is confirmed), count it and log it."""
        if isinstance(exc, UndecodableMessage):
            kind, reason = exc.kind, exc.reason
        else:
            kind, reason = UNDECODABLE, f"{type(exc).__name__}: {str(exc)[:500]}"
        self.rejected[kind] += 1
        if self._count is not None:
            self._count(kind)
        self._log.warning(
            f"dead-letter:{kind}",
            "dead-lettered a message (%s: %s): %r",
            kind,
            reason,
            bytes(message.body[:120]),
        )
        message.dead_letter(reason, kind, queue=self._dead_letter_queue)
