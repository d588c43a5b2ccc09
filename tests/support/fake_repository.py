"""A stand-in repository and model swapper for unit tests of the lifecycle and the reconciler.

The repository is an in-memory SQLite database with htmengine's tables: the lifecycle's and the
reconciler's statements are plain SQLAlchemy Core and run there unchanged (row locks are no-ops).
"""

from __future__ import annotations

import datetime
import json

import sqlalchemy as sa

from htmengine.repository import MetricStatus
from htmengine.repository.schema import metadata, metric, metric_data

T0 = datetime.datetime(2015, 6, 1)


def fake_engine() -> sa.Engine:
    engine = sa.create_engine("sqlite://")
    metadata.create_all(engine)
    return engine


class FakeSwapper:
    """Records what the lifecycle hands the model swapper."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.starts: list[tuple] = []
        self.requests: list[tuple[str, list]] = []
        self.deleted: list[str] = []
        self.pending: set[str] = set()  # models whose input queue holds messages
        self.fail = fail

    def modelInputPending(self, model_id):
        return model_id in self.pending

    def startModel(self, model_id, args, command_id, backlog, chunk_size):
        if self.fail is not None:
            raise self.fail
        self.starts.append((model_id, args, command_id, [row.rowID for row in backlog], chunk_size))

    def submitRequests(self, model_id, requests):
        self.requests.append((model_id, [row.rowID for row in requests]))

    def deleteModel(self, model_id, command_id):
        self.deleted.append(model_id)


def add_metric(
    engine: sa.Engine,
    uid: str = "m1",
    status: MetricStatus = MetricStatus.UNMONITORED,
    rows: int = 0,
    model_params: dict | None = None,
    datasource: str = "custom",
) -> str:
    """A metric with rows 1..`rows` (row r: value r, 5 r minutes after T0)."""
    with engine.begin() as conn:
        conn.execute(
            metric.insert().values(
                uid=uid,
                datasource=datasource,
                name=uid,
                server=uid,
                status=int(status),
                last_rowid=0,
                model_params=json.dumps(model_params) if model_params is not None else None,
            )
        )
    add_rows(engine, uid, 1, rows)
    return uid


def add_rows(engine: sa.Engine, uid: str, first: int, last: int) -> None:
    """Rows `first`..`last` of a metric (row r: value r, 5 r minutes after T0)."""
    with engine.begin() as conn:
        for rowid in range(first, last + 1):
            conn.execute(
                metric_data.insert().values(
                    uid=uid,
                    rowid=rowid,
                    timestamp=T0 + datetime.timedelta(minutes=5 * rowid),
                    metric_value=float(rowid),
                )
            )
        conn.execute(metric.update().where(metric.c.uid == uid).values(last_rowid=last))


def score_rows(engine: sa.Engine, uid: str, last: int) -> None:
    """Give rows 1..`last` of a metric a raw score, as the anomaly service would."""
    with engine.begin() as conn:
        conn.execute(
            metric_data.update()
            .where(metric_data.c.uid == uid, metric_data.c.rowid <= last)
            .values(raw_anomaly_score=0.5, anomaly_score=0.5)
        )
