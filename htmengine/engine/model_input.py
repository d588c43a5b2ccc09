"""Hands metric_data rows to a model: request batches of at most `chunk_size` input rows.

Used by the storer's forwarding (new rows of ACTIVE metrics), the lifecycle (a model's backlog,
the rows stored while it was created) and the reconciler. Each row travels as
``ModelInputRow(rowID=<rowid>, data=[timestamp, value])``, i.e. fields c0 (datetime) and c1
(float) of the model's input schema.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence

from sqlalchemy.engine import Connection

from htmengine.config import Config, ConfigError, get_app_config
from htmengine.model_swapper.model_swapper_interface import ModelInputRow, ModelSwapperInterface
from htmengine.repository import queries
from htmengine.repository.schema import metric_data


def configured_chunk_size(config: Config | None = None) -> int:
    """``application.conf [metric_streamer] chunk_size``: input rows per request batch (>= 1)."""
    config = config if config is not None else get_app_config()
    chunk_size = config.getint("metric_streamer", "chunk_size")
    if chunk_size < 1:
        raise ConfigError(f"{config.path}: [metric_streamer] chunk_size must be >= 1")
    return chunk_size


def input_rows(rows: Iterable[tuple[int, datetime.datetime, float]]) -> list[ModelInputRow]:
    """ModelInputRows of (rowid, timestamp, value) triples."""
    return [ModelInputRow(rowid, [timestamp, float(value)]) for rowid, timestamp, value in rows]


def read_rows(
    conn: Connection, uid: str, start_rowid: int | None = None, stop_rowid: int | None = None
) -> list[ModelInputRow]:
    """A metric's stored rows (a rowid range, inclusive) as model input, in rowid order."""
    rows = queries.get_metric_data(
        conn,
        uid,
        (metric_data.c.rowid, metric_data.c.timestamp, metric_data.c.metric_value),
        start_rowid=start_rowid,
        stop_rowid=stop_rowid,
    )
    return input_rows((row.rowid, row.timestamp, row.metric_value) for row in rows)


def send_input_rows_to_model(
    model_id: str,
    rows: Sequence[ModelInputRow],
    chunk_size: int,
    swapper: ModelSwapperInterface,
) -> int:
    """Submit `rows` in order as request batches of at most `chunk_size`; returns the batch count.

    Raises ModelNotFound (from the swapper) when the model's input queue is gone; batches
    submitted before that stay submitted.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    batches = 0
    for start in range(0, len(rows), chunk_size):
        swapper.submitRequests(model_id, rows[start : start + chunk_size])
        batches += 1
    return batches
