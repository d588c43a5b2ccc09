"""Starting a scalar metric's model: its parameters, and the hand-off of its definition and backlog.

Shared by the custom datasource adapter (monitorMetric, activateModel) and the anomaly service
(the rows that arrive while a model is being created).

How a model starts, so that it sees every row exactly once and in rowid order:

1. One transaction, holding the metric row lock: status CREATE_PENDING, ``model_params`` = the
   swarm params plus ``MODEL_START_KEY`` = {commandId, backlogLastRowid}, and the backlog rows
   ``1 .. backlogLastRowid`` are read. Commit.
2. The defineModel command and the backlog are published to the model's input queue in ONE broker
   transaction (``publish_many``), so nothing can slip between them. A failure sets ERROR with
   the reason, in its own transaction.
3. While the metric is CREATE_PENDING the storer stores new rows but does not forward them.
4. The anomaly service, on the successful defineModel result, holds the metric row lock, forwards
   the rows after ``backlogLastRowid`` and sets ACTIVE; from then on the storer forwards new rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.engine import Connection

from htmengine.htm.params import get_scalar_metric_params
from htmengine.model_swapper.model_swapper_interface import (
    ModelCommand,
    ModelInputRow,
    ModelSwapperInterface,
    encode_request_message,
    new_batch_id,
)
from htmengine.repository import queries
from htmengine.repository.retry import retry_on_transient_db_errors
from htmengine.repository.schema import metric_data
from htmengine.runtime.model_data_feeder import input_rows

__all__ = [
    "MODEL_CREATION_RECORD_THRESHOLD",
    "MODEL_START_KEY",
    "generate_swarm_params",
    "input_record_schema",
    "padded_range",
    "publish_model_start",
    "read_rows",
    "retry_on_transient_db_errors",
    "swarm_params_from_complete_model_params",
]

# Rows a metric needs before min/max can be taken from its data: one day of 5-minute samples.
MODEL_CREATION_RECORD_THRESHOLD = 288

# Key of metric.model_params that describes the model start in progress (see the module doc).
MODEL_START_KEY = "modelStart"

# Share of the data's range added below min and above max when they come from the data.
STATS_PADDING = 0.2


def input_record_schema(timestamp_field: str = "c0", value_field: str = "c1") -> list[list[str]]:
    """The model's input schema: ``[[name, type, special], ...]`` (T marks the timestamp)."""
    return [[timestamp_field, "datetime", "T"], [value_field, "float", ""]]


def generate_swarm_params(
    min_val: float | None,
    max_val: float | None,
    min_resolution: float | None = None,
    enable_classifier: bool = False,
) -> dict[str, Any] | None:
    """defineModel args for a metric's value range; None when the range is not known yet."""
    if min_val is None or max_val is None:
        return None
    params = get_scalar_metric_params(
        min_val, max_val, min_resolution if min_resolution is not None else 0.001
    )
    params["modelConfig"]["modelParams"]["clEnable"] = bool(enable_classifier)
    params["inputRecordSchema"] = input_record_schema()
    return params


def swarm_params_from_complete_model_params(complete: dict[str, Any]) -> dict[str, Any]:
    """defineModel args from a spec's ``completeModelParams`` (already schema-validated)."""
    return {
        "modelConfig": complete["modelConfig"],
        "inferenceArgs": complete["inferenceArgs"],
        "inputRecordSchema": input_record_schema(
            complete["timestampFieldName"], complete["valueFieldName"]
        ),
    }


def padded_range(low: float, high: float) -> tuple[float, float]:
    """min/max for the encoder from a metric's stored values: widened by 20 % on both sides."""
    if high <= low:
        high = low + 1
    padding = (high - low) * STATS_PADDING
    return low - padding, high + padding


def model_range(values: Sequence[float]) -> tuple[float, float]:
    """The encoder's min/max from the values a metric's range is computed from (`padded_range`
    of their min and max). Pure: the caller chooses the rows (see `range_rows`)."""
    if not values:
        raise ValueError("a model's range needs at least one value")
    return padded_range(min(values), max(values))


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


def publish_model_start(
    swapper: ModelSwapperInterface,
    uid: str,
    swarm_params: dict[str, Any],
    command_id: str,
    backlog: Sequence[ModelInputRow],
    chunk_size: int,
) -> None:
    """Create the model's input queue and enqueue defineModel + backlog atomically, then ping the
    scheduler."""
    queue = swapper.model_input_queue(uid)
    swapper.bus.declare_queue(queue, durable=True)
    bodies = [
        encode_request_message(
            new_batch_id(), [ModelCommand(command_id, "defineModel", swarm_params)]
        )
    ]
    bodies.extend(
        encode_request_message(new_batch_id(), backlog[start : start + chunk_size])
        for start in range(0, len(backlog), chunk_size)
    )
    swapper.bus.publish_many(queue, bodies, persistent=True)
    swapper.notifyScheduler(uid)
