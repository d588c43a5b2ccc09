"""Helpers for the engine's integration tests (adapter, anomaly service, end to end)."""

from __future__ import annotations

import datetime
import math
import random
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from htmengine.bus import MessageBus
from htmengine.exceptions import MetricNotFound
from htmengine.model_swapper.model_swapper_interface import decode_request_message
from htmengine.protocol.results import deserialize_model_result
from htmengine.repository import get_engine, queries

# 5-minute samples, like the original's target cadence.
STEP = datetime.timedelta(minutes=5)


def series(count: int, *, seed: int = 0, end: datetime.datetime | None = None) -> list[tuple]:
    """A daily sine with noise and a few spikes, as (naive UTC datetime, value), 5 minutes apart,
    ending a little before `end` (default now), so exportModel's 14-day window holds it."""
    rng = random.Random(seed)
    end = end or datetime.datetime.now(datetime.UTC).replace(tzinfo=None, microsecond=0)
    first = end - STEP * (count + 1)
    first = first.replace(second=0)
    rows = []
    for i in range(count):
        value = 50 + 30 * math.sin(2 * math.pi * i / 288) + rng.gauss(0, 2)
        if rng.random() < 0.01:
            value += 40
        rows.append((first + STEP * i, round(value, 3)))
    return rows


def insert_rows(uid: str, rows: list[tuple]) -> range:
    with get_engine().begin() as conn:
        return queries.add_metric_data(conn, uid, rows)


def metric_row(uid: str) -> Any:
    with get_engine().connect() as conn:
        return queries.get_metric(conn, uid)


def data_rows(uid: str) -> list[Any]:
    with get_engine().connect() as conn:
        return queries.get_metric_data(conn, uid)


def table_snapshot() -> tuple[list, list]:
    """Every metric and metric_data row (to check that a failed call changed nothing)."""
    with get_engine().connect() as conn:
        metrics = [tuple(r) for r in conn.execute(sa.text("SELECT * FROM metric ORDER BY uid"))]
        data = [
            tuple(r) for r in conn.execute(sa.text("SELECT * FROM metric_data ORDER BY uid, rowid"))
        ]
    return metrics, data


def drain_queue(bus: MessageBus, queue: str) -> list[tuple[str, tuple]]:
    """Take every request message from a model input queue (acked), decoded."""
    messages = []
    while True:
        message = bus.get(queue)
        if message is None:
            return messages
        messages.append(decode_request_message(message.body))
        message.ack()


class ResultsCapture:
    """A queue bound to the results exchange, as an app's consumer would have it."""

    def __init__(self, bus: MessageBus, exchange: str, queue: str) -> None:
        self.bus = bus
        self.queue = queue
        bus.declare_exchange(exchange, exchange_type="fanout", durable=True)
        bus.declare_queue(queue, durable=True)
        bus.bind_queue(queue, exchange)
        bus.purge_queue(queue)

    def take(self) -> list[tuple[dict, dict]]:
        """Every message so far: (headers, decoded payload)."""
        taken = []
        while True:
            message = self.bus.get(self.queue)
            if message is None:
                return taken
            taken.append((message.headers, deserialize_model_result(message.body)))
            message.ack()


def wait_for(
    condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.25
) -> Any:
    """Poll `condition` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def metric_uid(name: str) -> str | None:
    """The uid of custom metric `name`, or None if there is none."""
    with get_engine().connect() as conn:
        try:
            return queries.get_custom_metric_by_name(conn, name).uid
        except MetricNotFound:
            return None


def scored_count(uid: str) -> int:
    with get_engine().connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT COUNT(*) FROM metric_data WHERE uid = :uid AND anomaly_score IS NOT NULL"
            ),
            {"uid": uid},
        ).scalar_one()
