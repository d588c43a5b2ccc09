"""No poison message stops a consumer: the whole engine under supervisord, fed every kind of body
its consumers cannot use (non-UTF-8, JSON nested 100,000 deep, a string where a rowid belongs, a
number of 5,000 digits, the wrong shape) on every queue they read, between good messages.

Each poison message must end in ``<queue>.rejected`` with its reason, be counted in the service's
/metrics, and the good messages after it must be processed by the same process (pid unchanged).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from htmengine.adapters.datasource import createDatasourceAdapter
from htmengine.bus import MessageBus, rejected_queue_name
from htmengine.protocol.data_queue import encode_data_message
from htmengine.repository import MetricStatus
from tests.integration.test_ingestion import counter_sum, read_counters
from tests.support.engine import metric_row, metric_uid, scored_count, series, wait_for

SERVICES = ["model_scheduler", "metric_storer", "anomaly_service"]
SCORING_TIMEOUT = 900
DEEP = b"[" * 100_000 + b"]" * 100_000
DIGITS = b"9" * 5000


def data_poison() -> list[tuple[bytes, str]]:
    return [
        (b"\xff\xfe not text", "not_utf8"),
        (DEEP, "too_deep"),
        (b'{"protocol": "plain", "data": [' + DIGITS + b"]}", "number_too_long"),
        (b'{"protocol": "plain", "data": "cpu 1 2"}', "bad_shape"),
        (b"{not json", "not_json"),
    ]


def swapper_poison(header: bytes, rowid_string: bytes) -> list[tuple[bytes, str]]:
    return [
        (header + b"\n\xff\xfe", "not_utf8"),
        (header + b"\n" + DEEP, "too_deep"),
        (header + b"\n" + rowid_string, "bad_shape"),
        (header + b"\n[" + DIGITS + b"]", "number_too_long"),
        (header + b'\n{"shape": "wrong"}', "bad_shape"),
    ]


def notification_poison() -> list[tuple[bytes, str]]:
    return [
        (b"\xff\xfe", "not_utf8"),
        (DEEP, "too_deep"),
        (DIGITS, "number_too_long"),
        (b'{"model": "not a string"}', "bad_shape"),
    ]


def lines(name: str, rows: list[tuple]) -> bytes:
    from htmengine.protocol.timestamps import to_epoch_seconds

    return encode_data_message(
        [f"{name} {value!r} {to_epoch_seconds(ts)}".encode() for ts, value in rows]
    )


def dead_letters(bus: MessageBus, queue: str, count: int) -> list[tuple[bytes, str, str]]:
    """Wait for `count` messages in `queue`'s dead-letter queue; (body, kind, reason) each."""
    taken: list[tuple[bytes, str, str]] = []

    def collect() -> bool:
        while (message := bus.get(rejected_queue_name(queue))) is not None:
            headers = message.headers
            taken.append(
                (message.body, headers.get("x-rejected-kind"), headers.get("x-rejected-reason"))
            )
            message.ack()
        return len(taken) >= count

    wait_for(collect, 120, f"{count} dead letters of {queue}")
    return taken


@pytest.fixture
def bus(app) -> Iterator[MessageBus]:
    with MessageBus() as message_bus:
        yield message_bus


@pytest.fixture
def engine(clean_db, app, bus, supervisor_factory):
    app.override("model-swapper.conf", {"model_scheduler": {"concurrency": "1"}})
    for queue in (app.data_queue, app.results_queue, app.notification_queue):
        bus.declare_queue(queue, durable=queue != app.notification_queue)
        bus.purge_queue(queue)
        bus.declare_queue(rejected_queue_name(queue))
        bus.purge_queue(rejected_queue_name(queue))
    supervisor = supervisor_factory(SERVICES)
    yield supervisor


def test_every_consumer_dead_letters_poison_and_goes_on(app, bus, engine) -> None:
    pids = {name: engine.pid(name) for name in SERVICES}
    rows = series(40, seed=21)

    # storer: poison between good messages
    poison = data_poison()
    bus.publish(app.data_queue, lines("poison.metric", rows[:10]))
    for body, _ in poison:
        bus.publish(app.data_queue, body)
    bus.publish(app.data_queue, lines("poison.metric", rows[10:20]))
    uid = wait_for(lambda: metric_uid("poison.metric"), 60, "metric created")
    wait_for(lambda: metric_row(uid).last_rowid == 20, 120, "20 rows stored")
    dead = dead_letters(bus, app.data_queue, len(poison))
    assert [(body, kind) for body, kind, _ in dead] == poison
    assert all(reason for _, _, reason in dead)

    # model runner, anomaly service, scheduler notifications: poison in their queues while the
    # model is created, scored and fed
    createDatasourceAdapter("custom").monitorMetric(
        {
            "datasource": "custom",
            "metricSpec": {"metric": "poison.metric"},
            "modelParams": {"min": 0, "max": 130},
        }
    )
    input_queue = app.model_input_queue_prefix + uid
    input_poison = swapper_poison(b"batch", b'[["i", "7", [[1370000000, 0], 1.5], [0]]]')
    result_poison = swapper_poison(uid.encode(), b'[["iRv2", "7", 0, 0.5, null, null]]')
    for body, _ in input_poison:
        bus.publish(input_queue, body)
    for body, _ in result_poison:
        bus.publish(app.results_queue, body)
    for body, _ in notification_poison():
        bus.publish(app.notification_queue, body, persistent=False)
    bus.publish(app.notification_queue, json.dumps(uid).encode(), persistent=False)
    wait_for(lambda: metric_row(uid).status == MetricStatus.ACTIVE, SCORING_TIMEOUT, "ACTIVE")
    wait_for(lambda: scored_count(uid) == 20, SCORING_TIMEOUT, "the backlog scored")

    bus.publish(app.data_queue, lines("poison.metric", rows[20:40]))
    wait_for(lambda: scored_count(uid) == 40, SCORING_TIMEOUT, "new rows scored")

    for queue, expected in (
        (input_queue, input_poison),
        (app.results_queue, result_poison),
        (app.notification_queue, notification_poison()),
    ):
        dead = dead_letters(bus, queue, len(expected))
        assert [(body, kind) for body, kind, _ in dead] == expected, queue
    bus.delete_queue(rejected_queue_name(input_queue))

    # no service restarted
    infos = engine.process_info()
    assert {name: (infos[name]["pid"], infos[name]["statename"]) for name in SERVICES} == {
        name: (pid, "RUNNING") for name, pid in pids.items()
    }
    storer = read_counters(app.ports["storer_metrics"])
    assert counter_sum(storer, "htmengine_storer_messages_rejected_total") == len(poison)
    assert storer['htmengine_storer_messages_rejected_total{reason="too_deep"}'] == 1
    anomaly = read_counters(app.ports["anomaly_metrics"])
    assert counter_sum(anomaly, "htmengine_anomaly_messages_rejected_total") == len(result_poison)
    # a slot worker reports its rejections when the model leaves the slot
    expected = len(input_poison) + len(notification_poison())
    wait_for(
        lambda: (
            counter_sum(
                read_counters(app.ports["scheduler_metrics"]),
                "htmengine_scheduler_messages_rejected_total",
            )
            == expected
        ),
        60,
        "the scheduler's count of rejected messages",
    )
