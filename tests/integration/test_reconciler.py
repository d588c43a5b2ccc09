"""The reconciler in the running suite: each commit-then-publish gap is made directly (the commit
without its publish, or rows stored without being forwarded) and must be repaired, every row
scored exactly once (the anomaly service's rows_scored counter) and as in one uninterrupted run.

The reconciler runs every second here, so on a slow host it may repeat a repair whose effect has
not shown yet (a re-forward, a deleteModel still queued); a repeat changes no score, which is what
rows_scored checks, so those repairs are counted as at least one."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import pytest

from htmengine.engine import lifecycle
from htmengine.engine.swarm_params import generate_swarm_params, padded_range
from htmengine.model_swapper.checkpoint_mgr import CheckpointManager
from htmengine.repository import MetricStatus, get_engine
from tests.integration.test_engine_end_to_end import (
    SCORING_TIMEOUT,
    assert_scored_like_reference,
    lines_of,
    monitor_active,
    row_count,
    send_lines,
)
from tests.support.app import Supervisor
from tests.support.engine import insert_rows, metric_row, scored_count, series, wait_for

SPEC = {
    "datasource": "custom",
    "metricSpec": {"metric": "gap"},
    "modelParams": {"min": 0, "max": 130},
}
ENV = "_NTA_UTILS_CONFIG__APPLICATION__RECONCILER__"


@pytest.fixture
def suite(clean_db, app, supervisor_factory, monkeypatch) -> Iterator[Supervisor]:
    """All four services; the anomaly service reconciles every second, a start is stuck after 10 s."""
    monkeypatch.setenv(ENV + "INTERVAL_SEC", "1")
    monkeypatch.setenv(ENV + "CREATE_PENDING_TIMEOUT_SEC", "10")
    yield supervisor_factory(
        ["model_scheduler", "metric_listener", "metric_storer", "anomaly_service"]
    )


def anomaly_counters(app) -> dict[str, float]:
    port = app.ports["anomaly_metrics"]
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            values[key] = float(value)
    return values


def repairs(app, kind: str) -> float:
    return anomaly_counters(app).get(f'htmengine_reconciler_repairs_total{{repair="{kind}"}}', 0.0)


def rows_scored(app) -> float:
    return anomaly_counters(app)["htmengine_anomaly_rows_scored_total"]


def create_metric(name: str, rows: list[tuple]) -> str:
    from htmengine.adapters.datasource import createDatasourceAdapter

    uid = createDatasourceAdapter("custom").createMetric(name)
    insert_rows(uid, rows)
    return uid


def commit_only(transition) -> None:
    """A lifecycle transition committed, its publish lost (the process died in between)."""
    with get_engine().begin() as conn:
        transition(conn)


def test_a_start_committed_but_never_published_is_started_again(suite, app):
    rows = series(60, seed=200)
    uid = create_metric("gap", rows)
    commit_only(
        lambda conn: lifecycle.monitor(
            conn, uid, SPEC, generate_swarm_params(0, 130), datasource="custom"
        )
    )
    assert metric_row(uid).status == MetricStatus.CREATE_PENDING
    wait_for(lambda: scored_count(uid) == 60, SCORING_TIMEOUT, "the backlog scored")
    assert metric_row(uid).status == MetricStatus.ACTIVE
    assert_scored_like_reference(uid, rows, 0, 130)
    assert repairs(app, "create_pending") >= 1
    assert rows_scored(app) == 60


def test_a_pending_data_metric_past_288_rows_is_activated(suite, app):
    rows = series(300, seed=201)
    uid = create_metric("gap", rows)
    pending_spec = {"datasource": "custom", "metricSpec": {"metric": "gap"}}
    commit_only(lambda conn: lifecycle.monitor(conn, uid, pending_spec, None, datasource="custom"))
    assert metric_row(uid).status == MetricStatus.PENDING_DATA
    wait_for(lambda: scored_count(uid) == 300, SCORING_TIMEOUT, "300 rows scored")
    values = [value for _, value in rows]
    assert_scored_like_reference(uid, rows, *padded_range(min(values), max(values)))
    assert repairs(app, "pending_data") == 1
    assert rows_scored(app) == 300


def test_a_lost_delete_model_leaves_no_checkpoint_behind(suite, app):
    uid = monitor_active("gap")
    rows = series(30, seed=202)
    send_lines(app.ports["plaintext"], lines_of("gap", rows))
    wait_for(lambda: scored_count(uid) == 30, SCORING_TIMEOUT, "30 scored rows")
    commit_only(lambda conn: lifecycle.unmonitor(conn, uid))  # its deleteModel is lost
    checkpoints = CheckpointManager()
    assert checkpoints.exists(uid)
    wait_for(lambda: not checkpoints.exists(uid), SCORING_TIMEOUT, "the orphan checkpoint deleted")
    assert repairs(app, "orphan_checkpoint") >= 1
    monitor_active("gap")
    wait_for(lambda: scored_count(uid) == 30, SCORING_TIMEOUT, "the backlog scored again")
    assert_scored_like_reference(uid, rows, 0, 130)
    assert rows_scored(app) == 60  # 30 by the first model, 30 by the new one


def test_a_re_monitor_after_a_lost_delete_model_does_not_reuse_the_old_checkpoint(suite, app):
    """The re-monitor comes before any reconciler pass: the model start's own deleteModel keeps
    the old model (which ran the backlog already and would skip it) from being reused."""
    uid = monitor_active("gap")
    rows = series(30, seed=203)
    send_lines(app.ports["plaintext"], lines_of("gap", rows))
    wait_for(lambda: scored_count(uid) == 30, SCORING_TIMEOUT, "30 scored rows")
    commit_only(lambda conn: lifecycle.unmonitor(conn, uid))
    monitor_active("gap")
    wait_for(lambda: scored_count(uid) == 30, SCORING_TIMEOUT, "the backlog scored again")
    assert_scored_like_reference(uid, rows, 0, 130)
    assert rows_scored(app) == 60


def test_rows_stored_but_never_forwarded_are_scored_once(suite, app):
    uid = monitor_active("gap")
    rows = series(40, seed=204)
    send_lines(app.ports["plaintext"], lines_of("gap", rows[:20]))
    wait_for(lambda: scored_count(uid) == 20, SCORING_TIMEOUT, "20 scored rows")
    insert_rows(uid, rows[20:])  # committed by a storer that died before forwarding
    assert row_count(uid) == 40
    wait_for(lambda: scored_count(uid) == 40, SCORING_TIMEOUT, "the unforwarded rows scored")
    assert_scored_like_reference(uid, rows, 0, 130)
    assert repairs(app, "unscored_rows") >= 1
    assert rows_scored(app) == 40
