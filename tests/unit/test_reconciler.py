"""The reconciler's passes on a stand-in repository and swapper: what it repairs, and when not."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from htmengine.engine import lifecycle
from htmengine.engine.lifecycle import MODEL_START_KEY
from htmengine.engine.reconciler import Reconciler
from htmengine.repository import MetricStatus
from htmengine.repository.schema import metric
from tests.support.fake_repository import FakeSwapper, add_metric, fake_engine, score_rows

PARAMS = {"modelConfig": {"model": "HTMPrediction"}, "inferenceArgs": {}}
SPEC = {"datasource": "custom", "metricSpec": {"metric": "m1"}}
TIMEOUT = 600.0


@pytest.fixture
def engine() -> Iterator[sa.Engine]:
    fake = fake_engine()
    yield fake
    fake.dispose()


class Setup:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.swapper = FakeSwapper()
        self.archive: list[str] = []
        self.counted: list[str] = []
        self.reconciler = Reconciler(
            engine,
            self.swapper,
            100,
            interval=60.0,
            create_pending_timeout=TIMEOUT,
            checkpoint_ids=lambda: self.archive,
            count=self.counted.append,
        )

    def run(self) -> dict[str, int]:
        return {kind: n for kind, n in self.reconciler.run_once().items() if n}


@pytest.fixture
def setup(engine) -> Setup:
    return Setup(engine)


def committed_start(engine: sa.Engine, uid: str, age: float) -> str:
    """A start committed `age` seconds ago and never published; returns its commandId."""
    with engine.begin() as conn:
        start = lifecycle.monitor(conn, uid, SPEC, PARAMS, datasource="custom")
        where = metric.c.uid == uid
        params = json.loads(conn.execute(sa.select(metric.c.model_params).where(where)).scalar())
        params[MODEL_START_KEY]["requestedAt"] = time.time() - age
        conn.execute(metric.update().where(where).values(model_params=json.dumps(params)))
    return start.command_id


def test_a_stuck_start_is_started_again_with_the_whole_backlog(setup):
    add_metric(setup.engine, rows=5)
    old_command = committed_start(setup.engine, "m1", TIMEOUT + 1)
    assert setup.run() == {"create_pending": 1}
    ((uid, args, command, backlog, chunk),) = setup.swapper.starts
    assert (uid, args, backlog, chunk) == ("m1", PARAMS, [1, 2, 3, 4, 5], 100)
    assert command != old_command
    assert setup.counted == ["create_pending"]
    assert setup.run() == {}  # the new start is young


def test_a_young_or_still_queued_start_is_left_alone(setup):
    add_metric(setup.engine, uid="young")
    add_metric(setup.engine, uid="queued")
    committed_start(setup.engine, "young", TIMEOUT - 60)
    committed_start(setup.engine, "queued", TIMEOUT + 1)
    setup.swapper.pending.add("queued")
    assert setup.run() == {}
    assert setup.swapper.starts == []


def test_a_pending_data_metric_past_288_rows_is_activated_on_the_second_sighting(setup):
    add_metric(setup.engine, uid="ready", status=MetricStatus.PENDING_DATA, rows=288)
    add_metric(setup.engine, uid="short", status=MetricStatus.PENDING_DATA, rows=287)
    assert setup.run() == {}  # the storer may be activating it right now
    assert setup.run() == {"pending_data": 1}
    assert [start[0] for start in setup.swapper.starts] == ["ready"]
    assert setup.swapper.starts[0][3] == list(range(1, 289))


def test_checkpoints_of_metrics_without_a_model_are_deleted(setup):
    add_metric(setup.engine, uid="unmonitored")
    add_metric(setup.engine, uid="pending", status=MetricStatus.PENDING_DATA)
    for status in (MetricStatus.ACTIVE, MetricStatus.CREATE_PENDING, MetricStatus.ERROR):
        add_metric(setup.engine, uid=status.name.lower(), status=status)
    setup.archive[:] = ["unmonitored", "pending", "deleted", "active", "create_pending", "error"]
    assert setup.run() == {}
    assert setup.run() == {"orphan_checkpoint": 3}
    assert sorted(setup.swapper.deleted) == ["deleted", "pending", "unmonitored"]


def test_a_checkpoint_seen_once_is_not_deleted(setup):
    """An unmonitor whose deleteModel is simply on its way: gone by the next pass."""
    add_metric(setup.engine, uid="unmonitored")
    setup.archive[:] = ["unmonitored"]
    assert setup.run() == {}
    setup.archive.clear()
    assert setup.run() == {}
    assert setup.swapper.deleted == []


def test_unscored_rows_no_input_covers_are_forwarded_after_the_last_scored_one(setup):
    add_metric(setup.engine, status=MetricStatus.ACTIVE, rows=10)
    score_rows(setup.engine, "m1", 6)
    assert setup.run() == {}
    assert setup.run() == {"unscored_rows": 1}
    assert setup.swapper.requests == [("m1", [7, 8, 9, 10])]


def test_unscored_rows_still_on_their_way_are_left_alone(setup):
    add_metric(setup.engine, uid="moving", status=MetricStatus.ACTIVE, rows=10)
    add_metric(setup.engine, uid="queued", status=MetricStatus.ACTIVE, rows=10)
    add_metric(setup.engine, uid="done", status=MetricStatus.ACTIVE, rows=10)
    score_rows(setup.engine, "moving", 3)
    score_rows(setup.engine, "done", 10)
    setup.swapper.pending.add("queued")
    assert setup.run() == {}
    score_rows(setup.engine, "moving", 5)  # results arrived between the passes
    assert setup.run() == {}
    assert setup.swapper.requests == []


def test_a_failing_repair_does_not_stop_the_others(setup):
    add_metric(setup.engine, uid="a", status=MetricStatus.ACTIVE, rows=2)
    add_metric(setup.engine, uid="b", status=MetricStatus.ACTIVE, rows=2)
    calls: list[str] = []

    def submit(model_id, requests):
        calls.append(model_id)
        if model_id == "a":
            raise ConnectionError("broker away")

    setup.swapper.submitRequests = submit
    setup.run()
    assert setup.run() == {"unscored_rows": 1}
    assert calls == ["a", "b"]


def test_maybe_run_waits_for_the_interval_and_never_raises(setup, monkeypatch):
    assert setup.reconciler.maybe_run() is None  # the first pass waits one interval
    setup.reconciler._next_run = 0.0
    assert setup.reconciler.maybe_run() is not None
    assert setup.reconciler.maybe_run() is None  # within the interval

    def broken():
        raise RuntimeError("archive unreadable")

    setup.reconciler.checkpoint_ids = broken
    setup.reconciler._next_run = 0.0
    assert setup.reconciler.maybe_run() is None
