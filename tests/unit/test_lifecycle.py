"""Every metric status transition of `htmengine.engine.lifecycle`, on a fake connection.

The fake is an in-memory SQLite database with the repository's tables: the lifecycle's statements
are plain SQLAlchemy Core, so they run there unchanged (row locks are no-ops). The real MariaDB
runs them in the integration tests (adapter, anomaly service, end to end).
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from htmengine import exceptions
from htmengine.engine import lifecycle
from htmengine.engine.lifecycle import MODEL_START_KEY
from htmengine.exceptions import (
    MetricAlreadyMonitored,
    MetricNotFound,
    MetricStatusChangedError,
    ModelNotFound,
)
from htmengine.repository import MetricStatus
from htmengine.repository.schema import metric, metric_data
from tests.support.fake_repository import T0, FakeSwapper, add_metric, add_rows, fake_engine

PARAMS = {"modelConfig": {"model": "HTMPrediction"}, "inferenceArgs": {}}
SPEC = {"datasource": "custom", "metricSpec": {"metric": "cpu", "resource": "host1"}}


@pytest.fixture
def engine() -> Iterator[sa.Engine]:
    fake = fake_engine()
    yield fake
    fake.dispose()


def row_of(engine: sa.Engine, uid: str = "m1"):
    with engine.connect() as conn:
        return conn.execute(sa.select(metric).where(metric.c.uid == uid)).one()


def pending(uid_row) -> dict:
    return json.loads(uid_row.model_params)[MODEL_START_KEY]


def run(engine: sa.Engine, transition, *args, **kwargs):
    with engine.begin() as conn:
        return transition(conn, *args, **kwargs)


# -- monitor --------------------------------------------------------------------------------------


def test_monitor_with_a_range_requests_the_model_with_the_backlog(engine):
    add_metric(engine, rows=3)
    start = run(engine, lifecycle.monitor, "m1", SPEC, PARAMS, datasource="custom")
    row = row_of(engine)
    assert row.status == MetricStatus.CREATE_PENDING
    assert json.loads(row.parameters) == SPEC
    assert row.server == "host1"
    assert pending(row)["commandId"] == start.command_id
    assert pending(row)["backlogLastRowid"] == 3
    assert time.time() - pending(row)["requestedAt"] < 60
    assert json.loads(row.model_params)["modelConfig"] == PARAMS["modelConfig"]
    assert [item.rowID for item in start.backlog] == [1, 2, 3]
    assert start.backlog[0].data == [T0 + datetime.timedelta(minutes=5), 1.0]
    assert start.swarm_params == PARAMS


def test_monitor_without_a_range_waits_for_data(engine):
    add_metric(engine, rows=3)
    assert run(engine, lifecycle.monitor, "m1", SPEC, None, datasource="custom") is None
    row = row_of(engine)
    assert (row.status, json.loads(row.parameters)) == (MetricStatus.PENDING_DATA, SPEC)
    assert row.model_params is None


@pytest.mark.parametrize(
    "status", [MetricStatus.ACTIVE, MetricStatus.CREATE_PENDING, MetricStatus.ERROR]
)
def test_monitor_of_a_monitored_metric_is_refused_and_changes_nothing(engine, status):
    add_metric(engine, status=status)
    before = row_of(engine)
    with pytest.raises(MetricAlreadyMonitored) as caught:
        run(engine, lifecycle.monitor, "m1", SPEC, PARAMS, datasource="custom")
    assert caught.value.uid == "m1"
    assert row_of(engine) == before


def test_monitor_checks_the_datasource_and_the_uid(engine):
    add_metric(engine, datasource="cloudwatch")
    with pytest.raises(TypeError, match="cloudwatch"):
        run(engine, lifecycle.monitor, "m1", SPEC, PARAMS, datasource="custom")
    with pytest.raises(MetricNotFound):
        run(engine, lifecycle.monitor, "nope", SPEC, PARAMS, datasource="custom")


# -- activate -------------------------------------------------------------------------------------


def test_activate_starts_a_pending_data_metric(engine):
    add_metric(engine, status=MetricStatus.PENDING_DATA, rows=5)
    start = run(engine, lifecycle.activate, "m1", PARAMS)
    assert row_of(engine).status == MetricStatus.CREATE_PENDING
    assert [item.rowID for item in start.backlog] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("status", [MetricStatus.ACTIVE, MetricStatus.CREATE_PENDING])
def test_activate_of_a_started_model_does_nothing(engine, status):
    add_metric(engine, status=status)
    before = row_of(engine)
    assert run(engine, lifecycle.activate, "m1", PARAMS) is None
    assert row_of(engine) == before


def test_activate_refuses_an_error_metric(engine):
    add_metric(engine, status=MetricStatus.ERROR)
    with pytest.raises(MetricStatusChangedError):
        run(engine, lifecycle.activate, "m1", PARAMS)


def test_ready_for_activation_at_the_288th_row():
    assert not lifecycle.ready_for_activation(MetricStatus.PENDING_DATA, 287)
    assert lifecycle.ready_for_activation(MetricStatus.PENDING_DATA, 288)
    assert not lifecycle.ready_for_activation(MetricStatus.UNMONITORED, 1000)
    assert not lifecycle.ready_for_activation(MetricStatus.PENDING_DATA, None)


def test_swarm_params_from_data_pad_the_range(engine):
    add_metric(engine, status=MetricStatus.PENDING_DATA, rows=11)  # values 1..11
    with engine.connect() as conn:
        params = lifecycle.swarm_params_from_data(conn, "m1")
    encoder = params["modelConfig"]["modelParams"]["sensorParams"]["encoders"]["c1"]
    assert encoder["resolution"] == pytest.approx((13.0 - -1.0) / 130)
    add_metric(engine, uid="empty")
    with engine.connect() as conn, pytest.raises(ValueError, match="no data"):
        lifecycle.swarm_params_from_data(conn, "empty")


# -- confirm --------------------------------------------------------------------------------------


def test_confirm_activates_and_forwards_the_rows_stored_during_creation(engine):
    add_metric(engine, rows=3)
    start = run(engine, lifecycle.monitor, "m1", SPEC, PARAMS, datasource="custom")
    add_rows(engine, "m1", 4, 8)
    swapper = FakeSwapper()
    assert run(engine, lifecycle.confirm_model, "m1", start.command_id, swapper, 3) is True
    row = row_of(engine)
    assert (row.status, row.message) == (MetricStatus.ACTIVE, None)
    assert MODEL_START_KEY not in json.loads(row.model_params)
    assert swapper.requests == [("m1", [4, 5, 6]), ("m1", [7, 8])]


def test_confirm_of_another_command_changes_nothing(engine):
    add_metric(engine, rows=3)
    run(engine, lifecycle.monitor, "m1", SPEC, PARAMS, datasource="custom")
    before = row_of(engine)
    swapper = FakeSwapper()
    assert run(engine, lifecycle.confirm_model, "m1", "stale", swapper, 10) is False
    assert row_of(engine) == before
    assert swapper.requests == []


@pytest.mark.parametrize("status", [MetricStatus.UNMONITORED, MetricStatus.ERROR])
def test_confirm_outside_create_pending_changes_nothing(engine, status):
    add_metric(engine, status=status)
    assert run(engine, lifecycle.confirm_model, "m1", "any", FakeSwapper(), 10) is False
    assert row_of(engine).status == status


def test_confirm_survives_a_vanished_input_queue(engine):
    add_metric(engine, rows=1)
    start = run(engine, lifecycle.monitor, "m1", SPEC, PARAMS, datasource="custom")
    add_rows(engine, "m1", 2, 2)
    swapper = FakeSwapper()

    def gone(model_id, requests):
        raise ModelNotFound(model_id)

    swapper.submitRequests = gone
    assert run(engine, lifecycle.confirm_model, "m1", start.command_id, swapper, 10) is True
    assert row_of(engine).status == MetricStatus.ACTIVE


# -- unusable -------------------------------------------------------------------------------------


def test_permanent_and_transient_result_codes():
    assert not exceptions.is_permanent_failure(exceptions.SUCCESS)
    assert not exceptions.is_permanent_failure(exceptions.ERR)
    for code in (
        exceptions.ERR_NO_SUCH_MODEL,
        exceptions.ERR_INVALID_ARG,
        exceptions.ERR_MODEL_ALREADY_EXISTS,
        exceptions.ERR_MODEL_UNUSABLE,
    ):
        assert exceptions.is_permanent_failure(code)


@pytest.mark.parametrize("status", [MetricStatus.ACTIVE, MetricStatus.CREATE_PENDING])
def test_an_unusable_model_puts_its_metric_in_error_with_the_reason(engine, status):
    add_metric(engine, status=status)
    assert run(engine, lifecycle.model_unusable, "m1", "corrupt checkpoint") is True
    row = row_of(engine)
    assert (row.status, row.message) == (MetricStatus.ERROR, "corrupt checkpoint")


@pytest.mark.parametrize(
    "status", [MetricStatus.UNMONITORED, MetricStatus.PENDING_DATA, MetricStatus.ERROR]
)
def test_a_failure_for_a_metric_without_a_live_model_changes_nothing(engine, status):
    add_metric(engine, status=status)
    before = row_of(engine)
    assert run(engine, lifecycle.model_unusable, "m1", "late result") is False
    assert row_of(engine) == before


def test_a_failure_of_a_stale_command_does_not_fail_the_pending_start(engine):
    add_metric(engine)
    start = run(engine, lifecycle.monitor, "m1", SPEC, PARAMS, datasource="custom")
    assert run(engine, lifecycle.model_unusable, "m1", "old", command_id="older") is False
    assert row_of(engine).status == MetricStatus.CREATE_PENDING
    assert run(engine, lifecycle.model_unusable, "m1", "bad", command_id=start.command_id)
    assert row_of(engine).status == MetricStatus.ERROR


# -- unmonitor ------------------------------------------------------------------------------------


def test_unmonitor_forgets_the_model_and_its_scores_but_keeps_the_data(engine):
    add_metric(engine, status=MetricStatus.ERROR, rows=2, model_params=PARAMS)
    with engine.begin() as conn:
        conn.execute(
            metric_data.update().values(raw_anomaly_score=0.5, anomaly_score=0.1, display_value=0)
        )
    run(engine, lifecycle.unmonitor, "m1")
    row = row_of(engine)
    assert (row.status, row.parameters, row.model_params, row.message) == (
        MetricStatus.UNMONITORED,
        None,
        None,
        None,
    )
    with engine.connect() as conn:
        scores = conn.execute(sa.select(metric_data.c.raw_anomaly_score)).scalars().all()
    assert scores == [None, None]


def test_stop_model_commits_then_deletes_the_model(engine):
    add_metric(engine, status=MetricStatus.ACTIVE)
    swapper = FakeSwapper()
    lifecycle.stop_model(engine, "m1", swapper)
    assert row_of(engine).status == MetricStatus.UNMONITORED
    assert swapper.deleted == ["m1"]
    with pytest.raises(MetricNotFound):
        lifecycle.stop_model(engine, "nope", swapper)
    assert swapper.deleted == ["m1"]


# -- restart --------------------------------------------------------------------------------------


def test_restart_gives_a_stuck_start_a_new_command_and_the_whole_backlog(engine):
    add_metric(engine, rows=2)
    first = run(engine, lifecycle.monitor, "m1", SPEC, PARAMS, datasource="custom")
    add_rows(engine, "m1", 3, 4)
    assert run(engine, lifecycle.restart, "m1", 3600.0) is None  # not stuck yet
    again = run(engine, lifecycle.restart, "m1", 0.0)
    assert again.command_id != first.command_id
    assert [item.rowID for item in again.backlog] == [1, 2, 3, 4]
    assert again.swarm_params == PARAMS
    row = row_of(engine)
    assert row.status == MetricStatus.CREATE_PENDING
    assert pending(row)["commandId"] == again.command_id
    assert pending(row)["backlogLastRowid"] == 4


@pytest.mark.parametrize(
    "status", [MetricStatus.ACTIVE, MetricStatus.ERROR, MetricStatus.PENDING_DATA]
)
def test_restart_leaves_other_statuses_alone(engine, status):
    add_metric(engine, status=status, model_params=PARAMS)
    before = row_of(engine)
    assert run(engine, lifecycle.restart, "m1", 0.0) is None
    assert row_of(engine) == before


# -- commit, then publish ---------------------------------------------------------------------------


def test_start_model_publishes_the_committed_start(engine):
    add_metric(engine, rows=2)
    swapper = FakeSwapper()
    start = lifecycle.start_model(
        engine,
        lambda conn: lifecycle.monitor(conn, "m1", SPEC, PARAMS, datasource="custom"),
        swapper,
        1440,
    )
    assert swapper.starts == [("m1", PARAMS, start.command_id, [1, 2], 1440)]


def test_a_failed_publish_leaves_the_start_pending_for_the_reconciler(engine):
    add_metric(engine, rows=2)
    swapper = FakeSwapper(fail=ConnectionError("broker away"))
    with pytest.raises(ConnectionError):
        lifecycle.start_model(
            engine,
            lambda conn: lifecycle.monitor(conn, "m1", SPEC, PARAMS, datasource="custom"),
            swapper,
            1440,
        )
    row = row_of(engine)
    assert (row.status, row.message) == (MetricStatus.CREATE_PENDING, None)


def test_start_model_publishes_nothing_when_no_model_is_started(engine):
    add_metric(engine, rows=2)
    swapper = FakeSwapper()
    started = lifecycle.start_model(
        engine,
        lambda conn: lifecycle.monitor(conn, "m1", SPEC, None, datasource="custom"),
        swapper,
        1440,
    )
    assert started is None
    assert swapper.starts == []
