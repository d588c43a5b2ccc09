"""MessageBus against a real RabbitMQ: publish, consume, ack, redelivery, reconnect."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from htmengine.bus import MessageBus, rejected_queue_name
from htmengine.exceptions import MessageQueueNotFound
from tests.support.app import restart_rabbitmq


@pytest.fixture
def bus(app) -> Iterator[MessageBus]:
    with MessageBus() as message_bus:
        yield message_bus


@pytest.fixture
def queue(app, bus: MessageBus) -> Iterator[str]:
    name = f"{app.name}.bus-test.{uuid.uuid4().hex[:8]}"
    bus.declare_queue(name)
    yield name
    with MessageBus() as cleaner:
        cleaner.delete_queue(name)
        cleaner.delete_queue(rejected_queue_name(name))


def _drain(bus: MessageBus, queue: str, timeout: float = 0.5) -> list[bytes]:
    bodies = []
    for message in bus.consume(queue, inactivity_timeout=timeout):
        if message is None:
            break
        bodies.append(message.body)
        assert message.ack()
    return bodies


def _bounded(consumer: Iterator, idle_limit: int = 150) -> Iterator:
    """Pass a consumer's items through, failing after `idle_limit` inactivity ticks in a row."""
    idle = 0
    for item in consumer:
        idle = idle + 1 if item is None else 0
        assert idle <= idle_limit, "no message arrived"
        yield item


def test_publish_consume_ack(bus: MessageBus, queue: str) -> None:
    for i in range(5):
        bus.publish(queue, b"m%d" % i, headers={"n": i})
    assert bus.declare_queue(queue, passive=True) == 5
    received = []
    for message in bus.consume(queue, prefetch=2, inactivity_timeout=1):
        assert message is not None
        received.append((message.body, message.headers, message.redelivered, message.queue))
        message.ack()
        if len(received) == 5:
            break
    assert received == [(b"m%d" % i, {"n": i}, False, queue) for i in range(5)]
    assert bus.declare_queue(queue, passive=True) == 0


def test_inactivity_timeout_yields_none(bus: MessageBus, queue: str) -> None:
    assert next(bus.consume(queue, inactivity_timeout=0.1)) is None


def test_unacked_messages_are_redelivered_after_the_consumer_closes(app, queue: str) -> None:
    with MessageBus() as publisher:
        publisher.publish_many(queue, [b"a", b"b", b"c"])
    first = MessageBus()
    taken = []
    for message in first.consume(queue, prefetch=10, inactivity_timeout=1):
        taken.append(message)
        if len(taken) == 2:
            break
    taken[0].ack()
    first.close()
    assert taken[1].ack() is False  # its connection is gone: not an error, it comes back

    with MessageBus() as second:
        redelivered = []
        for message in second.consume(queue, inactivity_timeout=0.5):
            if message is None:
                break
            redelivered.append((message.body, message.redelivered))
            message.ack()
    assert redelivered == [(b"b", True), (b"c", True)]


def test_messages_can_be_acked_after_leaving_the_loop(bus: MessageBus, queue: str) -> None:
    bus.publish_many(queue, [b"1", b"2", b"3"])
    kept = []
    for message in bus.consume(queue, prefetch=3, inactivity_timeout=1):
        kept.append(message)
        if len(kept) == 2:
            break
    assert kept[-1].ack(multiple=True)
    # The prefetched third message went back to the queue when the loop ended.
    assert _drain(bus, queue) == [b"3"]
    assert bus.declare_queue(queue, passive=True) == 0


def test_nack_requeues_and_get_takes_one(bus: MessageBus, queue: str) -> None:
    assert bus.get(queue) is None
    bus.publish(queue, b"x")
    message = bus.get(queue)
    assert message is not None and message.body == b"x" and not message.redelivered
    assert message.nack(requeue=True)
    again = bus.get(queue)
    assert again is not None and again.body == b"x" and again.redelivered
    assert again.nack(requeue=False)
    assert bus.get(queue) is None


def test_missing_queue_errors(bus: MessageBus, queue: str) -> None:
    missing = queue + ".missing"
    with pytest.raises(MessageQueueNotFound):
        bus.declare_queue(missing, passive=True)
    with pytest.raises(MessageQueueNotFound):
        bus.publish(missing, b"lost")
    with pytest.raises(MessageQueueNotFound):
        bus.publish_many(missing, [b"lost", b"lost"])
    with pytest.raises(MessageQueueNotFound):
        next(bus.consume(missing))
    with pytest.raises(MessageQueueNotFound):
        bus.purge_queue(missing)
    assert bus.delete_queue(missing) == 0
    # The bus is still usable after the broker closed channels over the errors.
    bus.publish(queue, b"ok")
    assert _drain(bus, queue) == [b"ok"]


def test_publish_many_keeps_order(bus: MessageBus, queue: str) -> None:
    bodies = [b"%d" % i for i in range(300)]
    assert bus.publish_many(queue, bodies) == 300
    assert bus.publish_many(queue, []) == 0
    assert _drain(bus, queue) == bodies


def test_purge_and_delete_report_counts(bus: MessageBus, queue: str) -> None:
    bus.publish_many(queue, [b"1", b"2"])
    assert bus.purge_queue(queue) == 2
    bus.publish(queue, b"3")
    assert bus.delete_queue(queue) == 1
    with pytest.raises(MessageQueueNotFound):
        bus.declare_queue(queue, passive=True)


def test_delete_if_empty_keeps_a_queue_with_messages(bus: MessageBus, queue: str) -> None:
    bus.publish(queue, b"late request")
    assert bus.delete_queue(queue, if_empty=True) is None
    assert _drain(bus, queue) == [b"late request"]
    assert bus.delete_queue(queue, if_empty=True) == 0
    with pytest.raises(MessageQueueNotFound):
        bus.declare_queue(queue, passive=True)


def test_consumer_ends_when_its_queue_is_deleted(app, bus: MessageBus, queue: str) -> None:
    consumer = bus.consume(queue, inactivity_timeout=0.2)
    assert next(consumer) is None
    with MessageBus() as other:
        other.delete_queue(queue)
    assert list(consumer) in ([], [None])


def test_deleting_one_queue_ends_only_its_consumer(app, bus: MessageBus, queue: str) -> None:
    other_queue = queue + ".other"
    bus.declare_queue(other_queue)
    try:
        doomed = bus.consume(queue, inactivity_timeout=0.2)
        survivor = bus.consume(other_queue, inactivity_timeout=0.2)
        assert next(doomed) is None
        assert next(survivor) is None
        with MessageBus() as other:
            other.delete_queue(queue)
            other.publish(other_queue, b"still here")
        assert list(doomed) in ([], [None])
        message = next(m for m in _bounded(survivor) if m is not None)
        assert message.body == b"still here"
        assert message.ack()
    finally:
        bus.delete_queue(other_queue)


def test_fanout_exchange_reaches_every_bound_queue(app, bus: MessageBus, queue: str) -> None:
    exchange = queue + ".exchange"
    second = queue + ".second"
    bus.declare_queue(second)
    try:
        bus.declare_exchange(exchange, "fanout", durable=True)
        bus.bind_queue(queue, exchange)
        bus.bind_queue(second, exchange)
        bus.publish_exchange(exchange, b"result", headers={"dataType": "model-cmd-result"})
        for name in (queue, second):
            message = bus.get(name)
            assert message is not None
            assert (message.body, message.headers) == (
                b"result",
                {"dataType": "model-cmd-result"},
            )
            message.ack()
        with pytest.raises(MessageQueueNotFound):
            bus.publish_exchange(exchange + ".missing", b"x")
    finally:
        bus.delete_queue(second)
        bus.delete_exchange(exchange)


def test_dead_letter_moves_the_message(bus: MessageBus, queue: str) -> None:
    bus.publish(queue, b"garbage", headers={"k": "v"})
    message = bus.get(queue)
    assert message is not None
    assert bus.dead_letter(message, "not JSON")
    assert bus.declare_queue(queue, passive=True) == 0
    rejected = bus.get(rejected_queue_name(queue))
    assert rejected is not None
    assert rejected.body == b"garbage"
    assert rejected.headers == {"k": "v", "x-rejected-reason": "not JSON", "x-rejected-from": queue}
    rejected.ack()


def test_consume_and_publish_survive_a_broker_restart(app, bus: MessageBus, queue: str) -> None:
    bus.publish_many(queue, [b"before-1", b"before-2"])
    consumer = bus.consume(queue, prefetch=1, inactivity_timeout=0.2)
    first = next(consumer)
    assert first is not None and first.body == b"before-1"

    restart_rabbitmq()

    # The ack cannot reach the broker any more; the broker requeued the message instead.
    assert first.ack() is False
    bus.publish(queue, b"after")  # reconnects
    received = []
    for message in _bounded(consumer):
        if message is None:
            if len(received) == 3:
                break
            continue
        received.append((message.body, message.redelivered))
        assert message.ack()
    assert sorted(received) == [(b"after", False), (b"before-1", True), (b"before-2", False)]
    assert bus.declare_queue(queue, passive=True) == 0


def test_idle_consumer_survives_a_broker_restart(app, bus: MessageBus, queue: str) -> None:
    consumer = bus.consume(queue, inactivity_timeout=0.2)
    assert next(consumer) is None

    restart_rabbitmq()

    with MessageBus() as publisher:
        publisher.publish(queue, b"after restart")
    for message in _bounded(consumer):
        if message is not None:
            assert message.body == b"after restart"
            assert message.ack()
            break
    assert bus.declare_queue(queue, passive=True) == 0
