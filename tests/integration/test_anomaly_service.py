"""The anomaly service against MariaDB and RabbitMQ: the service runs in a thread and the tests play
the model runner by publishing result batches to the results queue."""

from __future__ import annotations

import datetime
import json
import random
import threading
from collections.abc import Iterator

import pytest

from htmengine.adapters.datasource import createDatasourceAdapter
from htmengine.bus import MessageBus
from htmengine.config import get_app_config
from htmengine.engine.lifecycle import MODEL_START_KEY
from htmengine.exceptions import ERR, ERR_INVALID_ARG, ERR_NO_SUCH_MODEL
from htmengine.model_swapper.model_swapper_interface import (
    START_RESET_SUFFIX,
    ModelCommandResult,
    ModelInferenceResult,
    ModelSwapperInterface,
)
from htmengine.repository import MetricStatus
from htmengine.runtime.anomaly_likelihood_helper import (
    AnomalyLikelihoodHelper,
    ScoredRow,
    rescale_for_display,
)
from htmengine.runtime.anomaly_service import AnomalyService
from tests.support.engine import (
    ResultsCapture,
    data_rows,
    drain_queue,
    insert_rows,
    metric_row,
    scored_count,
    series,
    wait_for,
)


@pytest.fixture
def bus(app) -> Iterator[MessageBus]:
    with MessageBus() as message_bus:
        yield message_bus


@pytest.fixture
def swapper(bus) -> ModelSwapperInterface:
    return ModelSwapperInterface(bus=bus)


@pytest.fixture
def capture(app, bus) -> ResultsCapture:
    return ResultsCapture(bus, app.results_exchange, f"{app.name}.test_results")


@pytest.fixture
def service(clean_db, app, swapper, capture) -> Iterator[AnomalyService]:
    swapper.bus.declare_queue(swapper.results_queue, durable=True)
    swapper.bus.purge_queue(swapper.results_queue)
    service_bus = MessageBus()
    config = get_app_config()
    anomaly_service = AnomalyService(
        service_bus,
        ModelSwapperInterface(bus=service_bus),
        app.results_exchange,
        AnomalyLikelihoodHelper.from_config(config),
        config.getint("metric_streamer", "chunk_size"),
    )
    thread = threading.Thread(target=anomaly_service.run, daemon=True)
    thread.start()
    yield anomaly_service
    anomaly_service.stop()
    thread.join(timeout=30)
    service_bus.close()


@pytest.fixture
def monitored(service, swapper, bus):
    """A metric with 10 stored rows, monitored with min/max; its input queue drained.

    Returns (uid, define command id, input queue name)."""
    adapter = createDatasourceAdapter("custom")
    uid = adapter.createMetric("svc.metric")
    insert_rows(uid, series(10, seed=11))
    adapter.monitorMetric(
        {
            "datasource": "custom",
            "metricSpec": {"metric": "svc.metric"},
            "modelParams": {"min": 0, "max": 100},
        }
    )
    queue = swapper.model_input_queue(uid)
    drain_queue(bus, queue)
    command_id = json.loads(metric_row(uid).model_params)[MODEL_START_KEY]["commandId"]
    yield uid, command_id, queue
    bus.delete_queue(queue)


def activate(swapper, uid, command_id):
    swapper.submitResults(uid, [ModelCommandResult(command_id, "defineModel", 0, {})])
    wait_for(lambda: metric_row(uid).status == MetricStatus.ACTIVE, 30, "ACTIVE")


def raw_scores(count: int, seed: int = 3) -> list[float]:
    rng = random.Random(seed)
    return [rng.choice([0.0, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0]) for _ in range(count)]


def test_define_result_activates_and_is_published(monitored, swapper, capture):
    uid, command_id, _ = monitored
    activate(swapper, uid, command_id)
    row = metric_row(uid)
    assert row.message is None
    assert MODEL_START_KEY not in json.loads(row.model_params)
    ((headers, notice),) = wait_for(capture.take, 10, "command notice")
    assert headers == {"dataType": "model-cmd-result"}
    assert notice["method"] == "defineModel"
    assert notice["modelId"] == uid
    assert notice["commandId"] == command_id
    assert notice["status"] == 0
    assert notice["modelInfo"]["metricName"] == "svc.metric"
    assert notice["modelInfo"]["modelSpec"]["modelParams"] == {"min": 0, "max": 100}


def test_an_invalid_definition_puts_the_metric_in_error(monitored, swapper, capture):
    uid, command_id, _ = monitored
    swapper.submitResults(
        uid,
        [ModelCommandResult(command_id, "defineModel", ERR_INVALID_ARG, errorMessage="bad params")],
    )
    wait_for(lambda: metric_row(uid).status == MetricStatus.ERROR, 30, "ERROR")
    assert metric_row(uid).message == "bad params"
    ((headers, notice),) = wait_for(capture.take, 10, "command notice")
    assert notice["status"] == ERR_INVALID_ARG
    assert notice["errorMessage"] == "bad params"
    assert "modelInfo" not in notice


def test_a_transient_define_failure_leaves_the_start_pending(monitored, swapper, capture):
    """ERR (disk full, an outage...) proves nothing about the model: no ERROR; the reconciler
    starts the model again after its timeout."""
    uid, command_id, _ = monitored
    swapper.submitResults(
        uid, [ModelCommandResult(command_id, "defineModel", ERR, errorMessage="ENOSPC")]
    )
    ((headers, notice),) = wait_for(capture.take, 10, "command notice")
    assert notice["status"] == ERR
    row = metric_row(uid)
    assert (row.status, row.message) == (MetricStatus.CREATE_PENDING, None)


def test_a_failure_of_an_older_start_does_not_touch_the_pending_one(monitored, swapper, capture):
    """monitor --force: the failed defineModel of the model being replaced arrives after the new
    start was committed."""
    uid, command_id, _ = monitored
    swapper.submitResults(
        uid,
        [ModelCommandResult("old-start", "defineModel", ERR_INVALID_ARG, errorMessage="old")],
    )
    wait_for(capture.take, 10, "command notice")
    assert metric_row(uid).status == MetricStatus.CREATE_PENDING
    activate(swapper, uid, command_id)


def test_the_delete_that_begins_a_model_start_is_not_published(monitored, swapper, capture):
    """Applications asked for a model; the start's own reset (deleteModel first) is no news. An
    application's deleteModel still is."""
    uid, command_id, _ = monitored
    swapper.submitResults(
        uid,
        [
            ModelCommandResult(command_id + START_RESET_SUFFIX, "deleteModel", 0),
            ModelCommandResult("app-delete", "deleteModel", 0),
        ],
    )
    ((headers, notice),) = wait_for(capture.take, 10, "command notice")
    assert (notice["method"], notice["commandId"]) == ("deleteModel", "app-delete")


def test_stale_define_result_does_not_activate(monitored, swapper, capture):
    uid, command_id, _ = monitored
    swapper.submitResults(uid, [ModelCommandResult("someone-else", "defineModel", 0, {})])
    wait_for(capture.take, 10, "command notice")
    assert metric_row(uid).status == MetricStatus.CREATE_PENDING


def test_rows_stored_while_the_model_is_created_are_forwarded_on_activation(
    monitored, swapper, bus
):
    uid, command_id, queue = monitored
    insert_rows(uid, series(20, seed=12)[15:])  # 5 later rows: rowids 11..15
    activate(swapper, uid, command_id)
    messages = drain_queue(bus, queue)
    assert [item.rowID for _, items in messages for item in items] == [11, 12, 13, 14, 15]


def test_inference_results_are_scored_like_one_uninterrupted_run(monitored, swapper, capture):
    uid, command_id, _ = monitored
    insert_rows(uid, series(310, seed=13)[10:])  # rowids 11..310 follow the first 10
    activate(swapper, uid, command_id)
    capture.take()
    raws = raw_scores(310)
    predictions = {7: {"1": 42.5}}
    results = [
        ModelInferenceResult(rowid, 0, raws[rowid - 1], None, predictions.get(rowid))
        for rowid in range(1, 311)
    ]
    for start, stop in ((0, 1), (1, 50), (50, 299), (299, 310)):
        swapper.submitResults(uid, results[start:stop])
    wait_for(lambda: scored_count(uid) == 310, 60, "310 scored rows")

    rows = data_rows(uid)
    reference = [ScoredRow(r.rowid, r.timestamp, r.metric_value, raws[r.rowid - 1]) for r in rows]
    state = AnomalyLikelihoodHelper.from_config(get_app_config()).update_scores(
        reference, None, lambda limit: []
    )
    assert [r.raw_anomaly_score for r in rows] == raws
    assert [r.anomaly_score for r in rows] == [r.anomaly_score for r in reference]
    assert [r.display_value for r in rows] == [rescale_for_display(r.anomaly_score) for r in rows]
    assert rows[6].multi_step_best_predictions == json.dumps({"1": 42.5})
    assert rows[0].multi_step_best_predictions == "null"
    assert json.loads(metric_row(uid).model_params)["anomalyLikelihoodParams"] == state

    published = wait_for(lambda: capture.take(), 10, "published results")
    assert all(headers == {} for headers, _ in published)
    results_out = [item for _, message in published for item in message["results"]]
    assert [item["rowid"] for item in results_out] == list(range(1, 311))
    # the message carries the predictions themselves (as the original did), the column their JSON
    assert results_out[6]["multiStepBestPredictions"] == {"1": 42.5}
    assert results_out[0]["multiStepBestPredictions"] is None
    first = results_out[0]
    assert first["rawAnomaly"] == raws[0]
    assert first["anomaly"] == rows[0].anomaly_score
    assert first["value"] == rows[0].metric_value
    assert first["ts"] == rows[0].timestamp.replace(tzinfo=datetime.UTC).timestamp()
    metric_info = published[0][1]["metric"]
    assert metric_info["uid"] == uid
    assert metric_info["name"] == "svc.metric"
    assert metric_info["spec"] == {"metric": "svc.metric"}


def test_a_redelivered_batch_is_not_scored_twice(monitored, swapper):
    uid, command_id, _ = monitored
    insert_rows(uid, series(130, seed=14)[10:])  # rowids 11..130
    activate(swapper, uid, command_id)
    raws = raw_scores(130, seed=5)
    results = [ModelInferenceResult(rowid, 0, raws[rowid - 1]) for rowid in range(1, 131)]
    swapper.submitResults(uid, results[:110])
    wait_for(lambda: scored_count(uid) == 110, 60, "110 scored rows")
    before = [(r.raw_anomaly_score, r.anomaly_score) for r in data_rows(uid)[:110]]
    params_before = json.loads(metric_row(uid).model_params)["anomalyLikelihoodParams"]

    # the same results again (a model runner replaying after a crash), with other raw scores
    swapper.submitResults(uid, [ModelInferenceResult(r.rowID, 0, 0.99) for r in results[100:110]])
    swapper.submitResults(uid, results[110:])
    wait_for(lambda: scored_count(uid) == 130, 60, "130 scored rows")

    rows = data_rows(uid)
    assert [(r.raw_anomaly_score, r.anomaly_score) for r in rows[:110]] == before
    reference = [ScoredRow(r.rowid, r.timestamp, r.metric_value, raws[r.rowid - 1]) for r in rows]
    state = AnomalyLikelihoodHelper.from_config(get_app_config()).update_scores(
        reference, None, lambda limit: []
    )
    assert [r.anomaly_score for r in rows] == [r.anomaly_score for r in reference]
    assert json.loads(metric_row(uid).model_params)["anomalyLikelihoodParams"] == state
    assert params_before["last_rowid_for_stats"] == 100


def test_a_failed_row_is_reported_and_skipped(monitored, swapper):
    uid, command_id, _ = monitored
    activate(swapper, uid, command_id)
    results = [ModelInferenceResult(rowid, 0, 0.5) for rowid in range(1, 11)]
    results[3] = ModelInferenceResult(4, ERR, None, "numerical trouble")
    swapper.submitResults(uid, results)
    wait_for(lambda: scored_count(uid) == 9, 30, "9 scored rows")
    rows = data_rows(uid)
    assert rows[3].raw_anomaly_score is None
    assert metric_row(uid).status == MetricStatus.ACTIVE


def test_a_lost_model_puts_the_metric_in_error(monitored, swapper):
    uid, command_id, _ = monitored
    activate(swapper, uid, command_id)
    swapper.submitResults(uid, [ModelInferenceResult(1, ERR_NO_SUCH_MODEL, None, "no model")])
    wait_for(lambda: metric_row(uid).status == MetricStatus.ERROR, 30, "ERROR")
    assert metric_row(uid).message == "no model"


def test_results_of_a_metric_that_is_not_active_are_dropped(monitored, swapper, capture):
    uid, command_id, _ = monitored
    swapper.submitResults(uid, [ModelInferenceResult(rowid, 0, 0.5) for rowid in range(1, 11)])
    # a define result behind them proves they were handled (queue order)
    activate(swapper, uid, command_id)
    assert scored_count(uid) == 0
    assert all(r.raw_anomaly_score is None for r in data_rows(uid))
