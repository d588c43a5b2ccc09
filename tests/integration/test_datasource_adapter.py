"""The custom datasource adapter against MariaDB and RabbitMQ (no model scheduler: the tests read
what the adapter put on the model's input queue)."""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator

import pytest

from htmengine.adapters.datasource import createDatasourceAdapter
from htmengine.adapters.datasource.custom import export_file_data
from htmengine.bus import MessageBus
from htmengine.engine.lifecycle import MODEL_START_KEY
from htmengine.exceptions import (
    MessageQueueNotFound,
    MetricAlreadyExists,
    MetricAlreadyMonitored,
    MetricNotFound,
)
from htmengine.model_swapper.model_swapper_interface import (
    ModelCommand,
    ModelInputRow,
    ModelSwapperInterface,
)
from htmengine.repository import MetricStatus
from tests.support.engine import (
    data_rows,
    drain_queue,
    insert_rows,
    metric_row,
    series,
    table_snapshot,
)


@pytest.fixture
def adapter(clean_db):
    return createDatasourceAdapter("custom")


@pytest.fixture
def bus(app) -> Iterator[MessageBus]:
    with MessageBus() as message_bus:
        yield message_bus


@pytest.fixture
def input_queue(app, bus):
    """Name of a model's input queue; deleted after the test."""
    swapper = ModelSwapperInterface(bus=bus)
    created: list[str] = []

    def queue_of(uid: str) -> str:
        created.append(swapper.model_input_queue(uid))
        return created[-1]

    yield queue_of
    for queue in created:
        bus.delete_queue(queue)


def monitor_spec(name: str, **model_params) -> dict:
    spec = {"datasource": "custom", "metricSpec": {"metric": name}}
    if model_params:
        spec["modelParams"] = model_params
    return spec


def test_create_metric_and_duplicate(adapter):
    uid = adapter.createMetric("web1.cpu")
    row = metric_row(uid)
    assert (row.name, row.datasource, row.status, row.server, row.location) == (
        "web1.cpu",
        "custom",
        MetricStatus.UNMONITORED,
        "web1.cpu",
        "",
    )
    assert row.description == "Custom metric web1.cpu"
    assert row.poll_interval == 300
    with pytest.raises(MetricAlreadyExists) as caught:
        adapter.createMetric("web1.cpu")
    assert caught.value.uid == uid


def test_monitor_with_min_max_defines_the_model_then_sends_the_backlog(adapter, bus, input_queue):
    uid = adapter.createMetric("cpu")
    rows = series(1500, seed=1)
    insert_rows(uid, rows)
    queue = input_queue(uid)

    assert adapter.monitorMetric(monitor_spec("cpu", min=0, max=100)) == uid

    row = metric_row(uid)
    assert row.status == MetricStatus.CREATE_PENDING
    assert json.loads(row.parameters) == monitor_spec("cpu", min=0, max=100)
    model_params = json.loads(row.model_params)
    assert model_params[MODEL_START_KEY]["backlogLastRowid"] == 1500
    encoder = model_params["modelConfig"]["modelParams"]["sensorParams"]["encoders"]["c1"]
    assert encoder["resolution"] == pytest.approx(100 / 130)

    messages = drain_queue(bus, queue)
    assert [len(items) for _, items in messages] == [1, 1, 1440, 60]
    # a fresh start: no checkpoint a lost deleteModel left behind is reused
    assert messages[0][1][0].method == "deleteModel"
    define = messages[1][1][0]
    assert isinstance(define, ModelCommand)
    assert define.method == "defineModel"
    assert define.commandID == model_params[MODEL_START_KEY]["commandId"]
    assert define.args["inputRecordSchema"] == [["c0", "datetime", "T"], ["c1", "float", ""]]
    assert define.args["modelConfig"] == model_params["modelConfig"]
    backlog = [item for _, items in messages[2:] for item in items]
    assert all(isinstance(item, ModelInputRow) for item in backlog)
    assert [item.rowID for item in backlog] == list(range(1, 1501))
    assert [tuple(item.data) for item in backlog] == [(ts, value) for ts, value in rows]


def test_monitor_by_uid_stores_the_canonical_spec(adapter, bus, input_queue):
    uid = adapter.createMetric("mem")
    input_queue(uid)
    spec = {
        "datasource": "custom",
        "metricSpec": {"uid": uid, "resource": "host7", "unit": "MB"},
        "modelParams": {"min": 0, "max": 10, "enableClassifier": True},
    }
    assert adapter.monitorMetric(spec) == uid
    row = metric_row(uid)
    stored = json.loads(row.parameters)
    assert stored["metricSpec"] == {"metric": "mem", "resource": "host7", "unit": "MB"}
    assert row.server == "host7"
    assert json.loads(row.model_params)["modelConfig"]["modelParams"]["clEnable"] is True
    assert spec["metricSpec"]["uid"] == uid  # the caller's dict is left alone


def test_monitor_creates_a_metric_named_in_the_spec(adapter, input_queue):
    uid = adapter.monitorMetric(monitor_spec("brand.new", min=1, max=2))
    input_queue(uid)
    row = metric_row(uid)
    assert row.name == "brand.new"
    assert row.status == MetricStatus.CREATE_PENDING


def test_double_monitor_is_refused_and_changes_nothing(adapter, input_queue):
    uid = adapter.monitorMetric(monitor_spec("cpu", min=0, max=1))
    input_queue(uid)
    before = table_snapshot()
    with pytest.raises(MetricAlreadyMonitored) as caught:
        adapter.monitorMetric(monitor_spec("cpu", min=5, max=6))
    assert caught.value.uid == uid
    assert table_snapshot() == before


@pytest.mark.parametrize(
    ("spec", "error", "message"),
    [
        ({"datasource": "custom", "metricSpec": {}}, ValueError, "needs 'metric'"),
        (
            {"datasource": "custom", "metricSpec": {"metric": "x", "uid": "y"}},
            ValueError,
            "not both",
        ),
        ({"datasource": "cloudwatch", "metricSpec": {"metric": "x"}}, ValueError, "datasource"),
        (
            {"datasource": "custom", "metricSpec": {"metric": "x"}, "modelParams": {"min": 1}},
            ValueError,
            "both min and max",
        ),
        (
            {"datasource": "custom", "metricSpec": {"metric": "x"}, "modelParms": {}},
            ValueError,
            "modelParms",
        ),
        (
            {"datasource": "custom", "metricSpec": {"uid": "f" * 32}},
            MetricNotFound,
            "does not exist",
        ),
    ],
)
def test_bad_specs_and_unknown_metrics_change_nothing(adapter, spec, error, message):
    adapter.createMetric("existing")
    before = table_snapshot()
    with pytest.raises(error, match=message):
        adapter.monitorMetric(spec)
    assert table_snapshot() == before


def test_pending_data_then_activation_with_range_from_the_data(adapter, bus, input_queue):
    uid = adapter.createMetric("disk")
    queue = input_queue(uid)
    insert_rows(uid, [(ts, v) for ts, v in series(100, seed=2)])
    assert adapter.monitorMetric(monitor_spec("disk")) == uid
    assert metric_row(uid).status == MetricStatus.PENDING_DATA
    with pytest.raises(MessageQueueNotFound):  # no model yet
        bus.declare_queue(queue, passive=True)

    more = series(400, seed=3)[200:]  # later timestamps than the first 100
    insert_rows(uid, more)
    assert adapter.activateModel(uid) is True
    row = metric_row(uid)
    assert row.status == MetricStatus.CREATE_PENDING
    values = [r.metric_value for r in data_rows(uid)]
    low, high = min(values), max(values)
    pad = (high - low) * 0.2
    encoder = json.loads(row.model_params)["modelConfig"]["modelParams"]["sensorParams"][
        "encoders"
    ]["c1"]
    assert encoder["resolution"] == ((high + pad) - (low - pad)) / 130
    messages = drain_queue(bus, queue)
    assert sum(len(items) for _, items in messages[2:]) == 300
    assert adapter.activateModel(uid) is False  # already being created


@pytest.fixture
def numenta_profile(app) -> Iterator[None]:
    """[anomaly_likelihood] profile = numenta for the test (the adapter reads it when built)."""
    app.override("application.conf", {"anomaly_likelihood": {"profile": "numenta"}})
    yield
    app.override("application.conf", {"anomaly_likelihood": {"profile": "htmengine"}})


def _encoder_resolution(uid: str) -> float:
    model_params = json.loads(metric_row(uid).model_params)
    return model_params["modelConfig"]["modelParams"]["sensorParams"]["encoders"]["c1"][
        "resolution"
    ]


def _first_day_resolution(values: list[float]) -> float:
    low, high = min(values[:288]), max(values[:288])
    pad = (high - low) * 0.2
    return ((high + pad) - (low - pad)) / 130


@pytest.mark.parametrize("stored", [288, 700])
def test_profile_range_is_the_first_288_rows_however_many_are_stored(
    clean_db, numenta_profile, input_queue, stored
):
    """Outside profile htmengine the activation's range does not depend on when it runs."""
    adapter = createDatasourceAdapter("custom")
    uid = adapter.createMetric("reproducible")
    input_queue(uid)
    assert adapter.monitorMetric(monitor_spec("reproducible")) == uid
    rows = series(700, seed=7)
    rows[500] = (rows[500][0], 500.0)  # far outside the first day: must not widen the range
    insert_rows(uid, rows[:stored])
    assert adapter.activateModel(uid) is True
    assert _encoder_resolution(uid) == _first_day_resolution([v for _, v in rows])


def test_profile_range_of_a_long_history_is_its_first_288_rows(
    clean_db, numenta_profile, input_queue
):
    adapter = createDatasourceAdapter("custom")
    uid = adapter.createMetric("backfilled")
    input_queue(uid)
    rows = series(1000, seed=8)
    rows[900] = (rows[900][0], -300.0)
    insert_rows(uid, rows)
    adapter.monitorMetric(monitor_spec("backfilled"))
    assert metric_row(uid).status == MetricStatus.CREATE_PENDING
    assert _encoder_resolution(uid) == _first_day_resolution([v for _, v in rows])


def test_monitor_without_range_but_enough_rows_starts_at_once(adapter, input_queue):
    uid = adapter.createMetric("net")
    input_queue(uid)
    insert_rows(uid, series(300, seed=4))
    adapter.monitorMetric(monitor_spec("net"))
    assert metric_row(uid).status == MetricStatus.CREATE_PENDING


def test_complete_model_params(adapter, bus, input_queue):
    from htmengine.htm.params import get_scalar_metric_params

    params = get_scalar_metric_params(0, 5)
    uid = adapter.createMetric("custom.params")
    queue = input_queue(uid)
    spec = {
        "datasource": "custom",
        "metricSpec": {"metric": "custom.params"},
        "completeModelParams": {
            "modelConfig": params["modelConfig"],
            "inferenceArgs": params["inferenceArgs"],
            "timestampFieldName": "c0",
            "valueFieldName": "c1",
        },
    }
    adapter.monitorMetric(spec)
    define = drain_queue(bus, queue)[1][1][0]
    assert define.args["modelConfig"] == params["modelConfig"]


def test_unmonitor_clears_scores_and_deletes_the_model(adapter, bus, input_queue):
    uid = adapter.monitorMetric(monitor_spec("cpu", min=0, max=1))
    queue = input_queue(uid)
    insert_rows(uid, series(5, seed=5))
    from sqlalchemy import text

    from htmengine.repository import get_engine

    with get_engine().begin() as conn:
        conn.execute(
            text(
                "UPDATE metric_data SET raw_anomaly_score = 0.5, anomaly_score = 0.1, "
                "display_value = 1000, multi_step_best_predictions = 'null' WHERE uid = :uid"
            ),
            {"uid": uid},
        )
    adapter.unmonitorMetric(uid)
    row = metric_row(uid)
    assert (row.status, row.parameters, row.model_params, row.message) == (
        MetricStatus.UNMONITORED,
        None,
        None,
        None,
    )
    rows = data_rows(uid)
    assert len(rows) == 5
    assert all(
        (r.raw_anomaly_score, r.anomaly_score, r.display_value, r.multi_step_best_predictions)
        == (None, None, None, None)
        for r in rows
    )
    # pending input was purged; the queue holds only the deleteModel command
    messages = drain_queue(bus, queue)
    assert [item.method for _, items in messages for item in items] == ["deleteModel"]


def test_export_delete_import_recreates_metric_data_and_model(adapter, bus, input_queue):
    uid = adapter.createMetric("exported")
    insert_rows(uid, series(50, seed=6))
    input_queue(uid)
    adapter.monitorMetric(monitor_spec("exported", min=0, max=120))
    exported = adapter.exportModel(uid)
    assert exported["metricSpec"] == {"metric": "exported"}
    assert len(exported["data"]) == 50
    # the original's layout: [value, naive-UTC datetime]
    assert all(
        isinstance(ts, datetime.datetime) and ts.tzinfo is None for _, ts in exported["data"]
    )
    # an export file holds the timestamps as text, and imports the same
    assert export_file_data(exported)["data"] == [
        [value, ts.strftime("%Y-%m-%d %H:%M:%S")] for value, ts in exported["data"]
    ]

    adapter.deleteMetricByName("exported")
    with pytest.raises(MetricNotFound):
        metric_row(uid)
    assert data_rows(uid) == []

    new_uid = adapter.importModel(exported)
    queue = input_queue(new_uid)
    assert new_uid != uid
    row = metric_row(new_uid)
    assert row.status == MetricStatus.CREATE_PENDING
    assert json.loads(row.parameters)["modelParams"] == {"min": 0, "max": 120}
    assert [(r.timestamp, r.metric_value) for r in data_rows(new_uid)] == [
        (ts, value) for value, ts in exported["data"]
    ]
    messages = drain_queue(bus, queue)
    assert [items[0].method for _, items in messages[:2]] == ["deleteModel", "defineModel"]
    assert sum(len(items) for _, items in messages[2:]) == 50
    # importing again is a no-op: the metric is already monitored
    assert adapter.importModel(exported) == new_uid


def test_delete_unknown_metric_names_it(adapter):
    with pytest.raises(MetricNotFound, match="nope"):
        adapter.deleteMetricByName("nope")


def test_unknown_datasource():
    with pytest.raises(ValueError, match="known: custom"):
        createDatasourceAdapter("cloudwatch")


def test_a_model_start_survives_its_queue_vanishing_before_the_publish(
    app, bus, input_queue, monkeypatch
):
    """``monitor --force``: the runner deletes the old model's empty input queue (its clean-up
    after deleteModel) between startModel's declare and its publish. Nothing was enqueued then, so
    the start is declared and published again instead of failing into ERROR."""
    swapper = ModelSwapperInterface(bus=bus)
    queue = input_queue("race")
    publish_many = bus.publish_many
    attempts: list[str] = []

    def runner_cleans_up_first(name, bodies, **kwargs):
        if not attempts:
            bus.delete_queue(name, if_empty=True)
        attempts.append(name)
        return publish_many(name, bodies, **kwargs)

    monkeypatch.setattr(bus, "publish_many", runner_cleans_up_first)
    backlog = [ModelInputRow(rowid, [ts, value]) for rowid, (ts, value) in enumerate(series(3), 1)]
    swapper.startModel("race", {"modelConfig": {}}, "cmd-1", backlog, 2)
    assert attempts == [queue, queue]
    messages = drain_queue(bus, queue)
    assert [type(items[0]).__name__ for _, items in messages] == [
        "ModelCommand",
        "ModelCommand",
        "ModelInputRow",
        "ModelInputRow",
    ]
    assert [items[0].method for _, items in messages[:2]] == ["deleteModel", "defineModel"]
    assert [item.rowID for _, items in messages[2:] for item in items] == [1, 2, 3]
