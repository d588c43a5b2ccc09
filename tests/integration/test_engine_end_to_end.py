"""The whole engine under supervisord: graphite lines in over TCP, anomaly scores out (in MySQL and on
the results exchange). Scores are checked against ScalarAnomalyModel and the likelihood helper run
in this process over the same rows: swapping models between slots, killing services and any
batching must not change a single bit."""

from __future__ import annotations

import calendar
import json
import socket
from collections.abc import Iterator

import pika
import pytest

from htmengine.adapters.datasource import createDatasourceAdapter
from htmengine.bus import MessageBus
from htmengine.config import get_app_config, get_rabbitmq_config
from htmengine.engine.model_input import read_rows, send_input_rows_to_model
from htmengine.engine.swarm_params import generate_swarm_params, padded_range
from htmengine.exceptions import MessageQueueNotFound
from htmengine.htm.model import ScalarAnomalyModel
from htmengine.model_swapper.checkpoint_mgr import CheckpointManager
from htmengine.model_swapper.model_swapper_interface import ModelSwapperInterface
from htmengine.repository import MetricStatus, get_engine, queries
from htmengine.runtime.anomaly_likelihood_helper import AnomalyLikelihoodHelper, ScoredRow
from tests.support.engine import (
    ResultsCapture,
    data_rows,
    insert_rows,
    metric_row,
    metric_uid,
    scored_count,
    series,
    wait_for,
)

# Generous: the machine is shared and the first model run in a fresh process compiles/loads kernels.
SCORING_TIMEOUT = 900


@pytest.fixture
def bus(app) -> Iterator[MessageBus]:
    with MessageBus() as message_bus:
        yield message_bus


@pytest.fixture
def capture(app, bus) -> ResultsCapture:
    return ResultsCapture(bus, app.results_exchange, f"{app.name}.e2e_results")


@pytest.fixture
def suite(clean_db, app, bus, supervisor_factory):
    """All four services under supervisord, with two model slots."""
    app.override("model-swapper.conf", {"model_scheduler": {"concurrency": "2"}})
    bus.declare_queue(app.results_queue, durable=True)
    bus.purge_queue(app.results_queue)
    return supervisor_factory(
        ["model_scheduler", "metric_listener", "metric_storer", "anomaly_service"]
    )


def send_lines(port: int, lines: list[str]) -> None:
    """Graphite plaintext over TCP, as a client would."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(("\n".join(lines) + "\n").encode())
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1)


def lines_of(name: str, rows: list[tuple]) -> list[str]:
    return [f"{name} {value!r} {calendar.timegm(ts.utctimetuple())}" for ts, value in rows]


def row_count(uid: str) -> int:
    with get_engine().connect() as conn:
        return queries.get_metric_data_count(conn, uid)


def reference_run(rows: list[tuple], low: float, high: float) -> tuple[list, list, dict]:
    """(raw scores, anomaly scores, likelihood state) of one uninterrupted in-process run."""
    params = generate_swarm_params(low, high)
    model = ScalarAnomalyModel(params["modelConfig"])
    scored = [
        ScoredRow(rowid, ts, value, model.run(ts, value))
        for rowid, (ts, value) in enumerate(rows, 1)
    ]
    state = AnomalyLikelihoodHelper.from_config(get_app_config()).update_scores(
        scored, None, lambda limit: []
    )
    return [r.raw_anomaly_score for r in scored], [r.anomaly_score for r in scored], state


def assert_scored_like_reference(uid: str, rows: list[tuple], low: float, high: float) -> None:
    stored = data_rows(uid)
    assert [(r.timestamp, r.metric_value) for r in stored] == rows
    raws, scores, state = reference_run(rows, low, high)
    assert [r.raw_anomaly_score for r in stored] == raws
    assert [r.anomaly_score for r in stored] == scores
    assert json.loads(metric_row(uid).model_params).get("anomalyLikelihoodParams") == state


def test_walk_through(suite, app, capture):
    """Send lines, monitor with min/max, read scores with SQL, consume the results exchange."""
    rows = series(2000, seed=21)
    send_lines(app.ports["plaintext"], lines_of("e2e.cpu", rows))
    uid = wait_for(lambda: metric_uid("e2e.cpu"), 120, "metric created by the storer")
    wait_for(lambda: row_count(uid) == 2000, 300, "2000 rows stored")

    adapter = createDatasourceAdapter("custom")
    spec = {
        "datasource": "custom",
        "metricSpec": {"metric": "e2e.cpu"},
        "modelParams": {"min": 0, "max": 130},
    }
    assert adapter.monitorMetric(spec) == uid
    wait_for(lambda: metric_row(uid).status == MetricStatus.ACTIVE, SCORING_TIMEOUT, "ACTIVE")
    wait_for(lambda: scored_count(uid) == 2000, SCORING_TIMEOUT, "2000 scored rows")

    stored = data_rows(uid)
    assert all(
        r.raw_anomaly_score is not None
        and r.anomaly_score is not None
        and r.display_value is not None
        for r in stored
    )
    assert [r.anomaly_score for r in stored[:100]] == [0.0] * 100
    assert len({r.anomaly_score for r in stored[400:]}) > 20

    messages = capture.take()
    commands = [m for headers, m in messages if headers.get("dataType") == "model-cmd-result"]
    assert [(c["method"], c["status"], c["modelId"]) for c in commands] == [("defineModel", 0, uid)]
    published = sorted(
        item["rowid"] for headers, m in messages if not headers for item in m["results"]
    )
    assert published == list(range(1, 2001))


def test_swapping_six_models_in_two_slots_changes_no_score(suite, app):
    names = [f"e2e.swap{i}" for i in range(6)]
    adapter = createDatasourceAdapter("custom")
    ranges = {name: (0.0, 100.0 + 10 * i) for i, name in enumerate(names)}
    uids = {
        name: adapter.monitorMetric(
            {
                "datasource": "custom",
                "metricSpec": {"metric": name},
                "modelParams": {"min": low, "max": high},
            }
        )
        for name, (low, high) in ranges.items()
    }
    for uid in uids.values():
        wait_for(
            lambda uid=uid: metric_row(uid).status == MetricStatus.ACTIVE, SCORING_TIMEOUT, "ACTIVE"
        )

    data = {name: series(300, seed=30 + i) for i, name in enumerate(names)}
    # interleaved: every burst carries 30 rows of each metric
    for start in range(0, 300, 30):
        burst = []
        for name in names:
            burst.extend(lines_of(name, data[name][start : start + 30]))
        send_lines(app.ports["plaintext"], burst)
    for name, uid in uids.items():
        wait_for(lambda uid=uid: scored_count(uid) == 300, SCORING_TIMEOUT, f"{name} scored")
    for name, uid in uids.items():
        assert_scored_like_reference(uid, data[name], *ranges[name])


def test_killed_scheduler_and_anomaly_service_lose_and_repeat_nothing(suite, app):
    adapter = createDatasourceAdapter("custom")
    names = ["e2e.kill0", "e2e.kill1"]
    uids = {
        name: adapter.monitorMetric(
            {
                "datasource": "custom",
                "metricSpec": {"metric": name},
                "modelParams": {"min": 0, "max": 130},
            }
        )
        for name in names
    }
    for uid in uids.values():
        wait_for(
            lambda uid=uid: metric_row(uid).status == MetricStatus.ACTIVE, SCORING_TIMEOUT, "ACTIVE"
        )
    data = {name: series(900, seed=40 + i) for i, name in enumerate(names)}

    def send(start: int, stop: int) -> None:
        for step in range(start, stop, 50):
            burst = []
            for name in names:
                burst.extend(lines_of(name, data[name][step : min(step + 50, stop)]))
            send_lines(app.ports["plaintext"], burst)

    def scored_total() -> int:
        return sum(scored_count(uid) for uid in uids.values())

    send(0, 300)
    wait_for(lambda: scored_total() >= 100, SCORING_TIMEOUT, "first scores")
    send(300, 600)
    old = suite.kill("model_scheduler")
    suite.wait_restarted("model_scheduler", old)
    wait_for(lambda: scored_total() >= 700, SCORING_TIMEOUT, "scores after the scheduler restart")
    send(600, 900)
    old = suite.kill("anomaly_service")
    suite.wait_restarted("anomaly_service", old)
    for name, uid in uids.items():
        wait_for(lambda uid=uid: scored_count(uid) == 900, SCORING_TIMEOUT, f"{name} scored")
    for name, uid in uids.items():
        assert_scored_like_reference(uid, data[name], 0, 130)


def test_pending_data_model_starts_after_288_rows_with_the_data_range(suite, app):
    adapter = createDatasourceAdapter("custom")
    uid = adapter.monitorMetric({"datasource": "custom", "metricSpec": {"metric": "e2e.pending"}})
    assert metric_row(uid).status == MetricStatus.PENDING_DATA
    rows = series(400, seed=50)
    send_lines(app.ports["plaintext"], lines_of("e2e.pending", rows[:200]))
    wait_for(lambda: row_count(uid) == 200, 300, "200 rows stored")
    assert metric_row(uid).status == MetricStatus.PENDING_DATA
    send_lines(app.ports["plaintext"], lines_of("e2e.pending", rows[200:]))
    wait_for(lambda: metric_row(uid).status == MetricStatus.ACTIVE, SCORING_TIMEOUT, "ACTIVE")
    wait_for(lambda: scored_count(uid) == 400, SCORING_TIMEOUT, "400 scored rows")

    # min/max come from the rows stored when the 288th arrived (at least 288 of them), padded
    resolution = json.loads(metric_row(uid).model_params)["modelConfig"]["modelParams"][
        "sensorParams"
    ]["encoders"]["c1"]["resolution"]
    candidates = []
    for count in range(288, 401):
        values = [value for _, value in rows[:count]]
        low, high = padded_range(min(values), max(values))
        candidates.append((low, high))
    matching = [
        (low, high) for low, high in candidates if max(0.001, (high - low) / 130) == resolution
    ]
    assert matching, "encoder range is not the padded range of the stored data"
    assert_scored_like_reference(uid, rows, *matching[0])


def test_export_delete_import_then_unmonitor(suite, app, bus):
    adapter = createDatasourceAdapter("custom")
    rows = series(300, seed=60)
    send_lines(app.ports["plaintext"], lines_of("e2e.export", rows))
    uid = wait_for(lambda: metric_uid("e2e.export"), 120, "metric created")
    wait_for(lambda: row_count(uid) == 300, 300, "300 rows stored")
    spec = {
        "datasource": "custom",
        "metricSpec": {"metric": "e2e.export"},
        "modelParams": {"min": 0, "max": 130},
    }
    adapter.monitorMetric(spec)
    wait_for(lambda: scored_count(uid) == 300, SCORING_TIMEOUT, "300 scored rows")

    exported = adapter.exportModel(uid)
    adapter.deleteMetricByName("e2e.export")
    assert metric_uid("e2e.export") is None

    new_uid = adapter.importModel(exported)
    assert new_uid != uid
    wait_for(lambda: scored_count(new_uid) == 300, SCORING_TIMEOUT, "imported rows scored")
    assert_scored_like_reference(new_uid, rows, 0, 130)

    adapter.unmonitorMetric(new_uid)
    row = metric_row(new_uid)
    assert (row.status, row.model_params) == (MetricStatus.UNMONITORED, None)
    assert scored_count(new_uid) == 0
    queue = ModelSwapperInterface(bus=bus).model_input_queue(new_uid)

    def queue_gone() -> bool:
        try:
            bus.declare_queue(queue, passive=True)
        except MessageQueueNotFound:
            return True
        return False

    wait_for(queue_gone, 120, "the model's input queue deleted by the model runner")


def monitor_active(name: str) -> str:
    """Monitor metric `name` with the range 0..130 and wait until its model is ACTIVE."""
    uid = createDatasourceAdapter("custom").monitorMetric(
        {
            "datasource": "custom",
            "metricSpec": {"metric": name},
            "modelParams": {"min": 0, "max": 130},
        }
    )
    wait_for(lambda: metric_row(uid).status == MetricStatus.ACTIVE, SCORING_TIMEOUT, "ACTIVE")
    return uid


def requeue_as_redelivered(queue: str) -> None:
    """Take the queue's first message without acking it and close the channel: the broker puts
    it back with redelivered=True (what a storer killed before its ack leaves behind)."""
    config = get_rabbitmq_config()
    parameters = pika.ConnectionParameters(
        host=config.get("connection", "host"),
        port=config.getint("connection", "port"),
        virtual_host=config.get("connection", "virtual_host"),
        credentials=pika.PlainCredentials(
            config.get("credentials", "user"), config.get("credentials", "password")
        ),
    )
    connection = pika.BlockingConnection(parameters)
    try:
        channel = connection.channel()
        method, _properties, _body = channel.basic_get(queue, auto_ack=False)
        assert method is not None and not method.redelivered
        channel.close()
        channel = connection.channel()
        method, _properties, _body = channel.basic_get(queue, auto_ack=False)
        assert method is not None and method.redelivered
        channel.close()
    finally:
        connection.close()


def test_rows_committed_but_not_forwarded_are_scored_after_the_redelivery(suite, app, bus):
    """The storer died between its commit and forwarding: the redelivered message's samples are
    duplicates now, and the storer hands the stored rows to the model again."""
    uid = monitor_active("e2e.reforward")
    rows = series(40, seed=70)
    suite.server.supervisor.stopProcess("htmengine:metric_storer")
    insert_rows(uid, rows)  # committed by the storer that "died" before forwarding
    body = json.dumps({"protocol": "plain", "data": lines_of("e2e.reforward", rows)}).encode()
    bus.publish(app.data_queue, body)
    requeue_as_redelivered(app.data_queue)
    suite.server.supervisor.startProcess("htmengine:metric_storer")
    wait_for(lambda: scored_count(uid) == 40, 300, "the re-forwarded rows scored")
    assert row_count(uid) == 40
    assert_scored_like_reference(uid, rows, 0, 130)


def test_rows_forwarded_twice_change_no_score(suite, app):
    uid = monitor_active("e2e.twice")
    rows = series(120, seed=80)
    send_lines(app.ports["plaintext"], lines_of("e2e.twice", rows[:80]))
    wait_for(lambda: scored_count(uid) == 80, SCORING_TIMEOUT, "80 scored rows")
    with get_engine().connect() as conn:
        stored = read_rows(conn, uid)
    with ModelSwapperInterface() as swapper:
        send_input_rows_to_model(uid, stored, 25, swapper)  # every row a second time
    send_lines(app.ports["plaintext"], lines_of("e2e.twice", rows[80:]))
    wait_for(lambda: scored_count(uid) == 120, SCORING_TIMEOUT, "120 scored rows")
    assert_scored_like_reference(uid, rows, 0, 130)


def test_a_model_whose_checkpoint_cannot_be_loaded_puts_its_metric_in_error(suite, app):
    """ERROR with the reason; the metric keeps storing its data, and ``monitor --force``
    (unmonitor, then monitor) gives it a new model that scores every row."""
    uid = monitor_active("e2e.corrupt")
    rows = series(40, seed=90)
    send_lines(app.ports["plaintext"], lines_of("e2e.corrupt", rows[:20]))
    wait_for(lambda: scored_count(uid) == 20, SCORING_TIMEOUT, "20 scored rows")
    checkpoints = CheckpointManager()
    with checkpoints.model_lock(uid):  # not while a runner has the model loaded
        with open(f"{checkpoints.load(uid).store_dir}/model.bin", "wb") as fh:
            fh.write(b"a foreign blob, not a model")
    send_lines(app.ports["plaintext"], lines_of("e2e.corrupt", rows[20:30]))
    wait_for(lambda: metric_row(uid).status == MetricStatus.ERROR, SCORING_TIMEOUT, "ERROR")
    assert "load model" in metric_row(uid).message
    assert scored_count(uid) == 20

    send_lines(app.ports["plaintext"], lines_of("e2e.corrupt", rows[30:]))
    wait_for(lambda: row_count(uid) == 40, SCORING_TIMEOUT, "rows stored while in ERROR")
    adapter = createDatasourceAdapter("custom")
    adapter.unmonitorMetric(uid)
    monitor_active("e2e.corrupt")
    wait_for(lambda: scored_count(uid) == 40, SCORING_TIMEOUT, "40 scored rows")
    assert_scored_like_reference(uid, rows, 0, 130)


def test_unmonitor_then_monitor_at_once_recreates_the_model(suite, app):
    """What ``htmengine monitor --force`` does: the new defineModel and backlog queue up behind
    the deleteModel, and the runner must not delete them with the old model's queue."""
    uid = monitor_active("e2e.force")
    rows = series(60, seed=100)
    send_lines(app.ports["plaintext"], lines_of("e2e.force", rows[:40]))
    wait_for(lambda: scored_count(uid) == 40, SCORING_TIMEOUT, "40 scored rows")
    adapter = createDatasourceAdapter("custom")
    adapter.unmonitorMetric(uid)
    adapter.monitorMetric(
        {
            "datasource": "custom",
            "metricSpec": {"metric": "e2e.force"},
            "modelParams": {"min": 0, "max": 130},
        }
    )
    wait_for(lambda: metric_row(uid).status == MetricStatus.ACTIVE, 300, "ACTIVE again")
    send_lines(app.ports["plaintext"], lines_of("e2e.force", rows[40:]))
    wait_for(lambda: scored_count(uid) == 60, SCORING_TIMEOUT, "60 scored rows")
    assert_scored_like_reference(uid, rows, 0, 130)
