"""The metric lifecycle: every change of ``metric.status``, one function per transition.

::

    UNMONITORED --monitor--> PENDING_DATA --activate--> CREATE_PENDING --confirm_model--> ACTIVE
    UNMONITORED --monitor (range known)---------------> CREATE_PENDING --restart--> CREATE_PENDING
    CREATE_PENDING, ACTIVE --model_unusable--> ERROR
    any --unmonitor--> UNMONITORED          (monitor --force = unmonitor, then monitor)

Database-only transitions take the caller's connection and run inside its transaction, holding
the metric row lock (``SELECT ... FOR UPDATE``, taken here), so the anomaly service can confirm
a model or give up on it in the transaction that applies the model's results. Transitions that
also talk to the model swapper commit first and publish after the commit (`start_model`,
`stop_model`): a failed publish never undoes database work, and a crash between the commit and
the publish is found and repaired by the reconciler.

How a model starts, so that it sees every row exactly once and in rowid order:

1. One transaction, holding the metric row lock: status CREATE_PENDING, ``model_params`` = the
   swarm params plus ``MODEL_START_KEY`` = {commandId, backlogLastRowid, requestedAt}, and the
   backlog rows ``1 .. backlogLastRowid`` are read. Commit.
2. deleteModel, defineModel and the backlog are published to the model's input queue in ONE
   broker transaction (`ModelSwapperInterface.startModel`), so nothing can slip between them and
   no checkpoint that a lost deleteModel left behind is reused. A publish that fails leaves the
   metric CREATE_PENDING (a broker outage proves nothing about the model); the reconciler
   starts it again after ``[reconciler] create_pending_timeout_sec``.
3. While the metric is CREATE_PENDING the storer stores new rows but does not forward them, and
   the anomaly service drops inference results (they belong to an earlier start).
4. The successful defineModel result of the pending commandId (`confirm_model`), under the row
   lock: the rows stored after ``backlogLastRowid`` are forwarded, then ACTIVE; from then on the
   storer forwards new rows. A result of any other commandId is stale and changes nothing.

Result codes (the contract with the model runner is in `htmengine.exceptions`): a command or
inference result whose status `is_permanent_failure` (corrupt checkpoint, invalid definition, no
such model) puts the metric into ERROR with the reason in ``metric.message``; ``ERR`` (one row or
command failed, the model is fine) changes no status: a failed row stays unscored, a metric whose
defineModel failed stays CREATE_PENDING and the reconciler starts it again. Transient faults
(disk full, I/O or memory errors) produce no result at all: the runner retries them. A metric in
ERROR keeps storing its data; ``htmengine monitor --force`` (unmonitor, then monitor) recovers it.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from htmengine.engine.model_input import read_rows, send_input_rows_to_model
from htmengine.engine.swarm_params import (
    MODEL_CREATION_RECORD_THRESHOLD,
    generate_swarm_params,
    model_range,
    padded_range,
)
from htmengine.exceptions import (
    MetricAlreadyMonitored,
    MetricNotFound,
    MetricStatusChangedError,
    ModelNotFound,
)
from htmengine.model_swapper.model_swapper_interface import ModelInputRow, ModelSwapperInterface
from htmengine.repository import MetricStatus, queries
from htmengine.repository.retry import retry_on_transient_db_errors
from htmengine.repository.schema import metric, metric_data

LOGGER = logging.getLogger("htmengine.lifecycle")

# Key of metric.model_params that describes the model start in progress (see the module doc).
MODEL_START_KEY = "modelStart"

# Statuses whose metric has (or is getting) a model: its checkpoint is not an orphan.
MODELLED_STATUSES = frozenset(
    {MetricStatus.ACTIVE, MetricStatus.CREATE_PENDING, MetricStatus.ERROR}
)


@dataclass(frozen=True)
class ModelStart:
    """A committed model start, to be published (`publish_model_start`)."""

    uid: str
    command_id: str
    swarm_params: dict[str, Any]
    backlog: list[ModelInputRow]


# A database-only transition that may start a model (`monitor`, `activate`, `restart`).
Transition = Callable[[Connection], ModelStart | None]


def _lock(conn: Connection, uid: str, *fields: str) -> Row:
    """The metric row, locked until the transaction ends. Raises MetricNotFound."""
    return queries.get_metric(conn, uid, ("status", "last_rowid", *fields), for_update=True)


def _status(row: Row) -> MetricStatus:
    return MetricStatus(row.status or 0)


def pending_start(model_params: str | None) -> dict[str, Any] | None:
    """The ``MODEL_START_KEY`` entry of a metric's model_params (None if no start is pending)."""
    return json.loads(model_params or "{}").get(MODEL_START_KEY)


# -- transitions in the caller's transaction ---------------------------------------------------


def _request_model(
    conn: Connection, uid: str, row: Row, swarm_params: dict[str, Any], command_id: str | None
) -> ModelStart:
    """→ CREATE_PENDING (from the locked `row`'s status); returns the start to publish."""
    command_id = command_id or uuid.uuid4().hex
    last_rowid = row.last_rowid or 0
    start = {"commandId": command_id, "backlogLastRowid": last_rowid, "requestedAt": time.time()}
    queries.update_metric_columns(
        conn,
        uid,
        {
            "status": int(MetricStatus.CREATE_PENDING),
            "message": None,
            "model_params": json.dumps(dict(swarm_params, **{MODEL_START_KEY: start})),
        },
        expected_status=_status(row),
    )
    backlog = read_rows(conn, uid, stop_rowid=last_rowid) if last_rowid else []
    return ModelStart(uid, command_id, swarm_params, backlog)


def monitor(
    conn: Connection,
    uid: str,
    spec: dict[str, Any],
    swarm_params: dict[str, Any] | None,
    *,
    datasource: str,
    command_id: str | None = None,
) -> ModelStart | None:
    """UNMONITORED → CREATE_PENDING (range known: returns the start) or PENDING_DATA (None).

    Stores the spec in ``metric.parameters`` (and its resource in ``server``). Raises
    MetricAlreadyMonitored (status not UNMONITORED), TypeError (another datasource),
    MetricNotFound.
    """
    row = _lock(conn, uid, "datasource")
    if row.datasource != datasource:
        raise TypeError(f"metric {uid} is not a {datasource} metric (datasource {row.datasource})")
    status = _status(row)
    if status != MetricStatus.UNMONITORED:
        raise MetricAlreadyMonitored(
            f"metric {uid} is already monitored (status {status.name})", uid=uid
        )
    values: dict[str, Any] = {"parameters": json.dumps(spec)}
    resource = spec.get("metricSpec", {}).get("resource")
    if resource is not None:
        values["server"] = resource
    queries.update_metric_columns(conn, uid, values)
    if swarm_params is None:
        queries.set_metric_status(conn, uid, MetricStatus.PENDING_DATA, expected_status=status)
        LOGGER.info("metric %s is PENDING_DATA until its range is known", uid)
        return None
    return _request_model(conn, uid, row, swarm_params, command_id)


def activate(
    conn: Connection, uid: str, swarm_params: dict[str, Any], command_id: str | None = None
) -> ModelStart | None:
    """PENDING_DATA (or UNMONITORED) → CREATE_PENDING now that the range is known.

    Returns None when the model already exists or is being created (ACTIVE, CREATE_PENDING).
    Raises MetricStatusChangedError from ERROR, MetricNotFound.
    """
    row = _lock(conn, uid)
    status = _status(row)
    if status in (MetricStatus.CREATE_PENDING, MetricStatus.ACTIVE):
        return None
    if status not in (MetricStatus.UNMONITORED, MetricStatus.PENDING_DATA):
        raise MetricStatusChangedError(
            f"metric {uid}: cannot start a model in status {status.name}"
        )
    return _request_model(conn, uid, row, swarm_params, command_id)


def restart(conn: Connection, uid: str, older_than: float) -> ModelStart | None:
    """CREATE_PENDING → CREATE_PENDING with a new commandId, for a start requested more than
    `older_than` seconds ago whose model never confirmed (the reconciler). None otherwise.

    The new start reads the whole backlog again and begins with deleteModel, so whatever the lost
    start did is undone; results of the old start are stale (another commandId) or dropped
    (the metric is not ACTIVE), and every row is scored once.
    """
    row = _lock(conn, uid, "model_params")
    if _status(row) != MetricStatus.CREATE_PENDING:
        return None
    model_params = json.loads(row.model_params or "{}")
    start = model_params.pop(MODEL_START_KEY, None) or {}
    if time.time() - start.get("requestedAt", 0.0) < older_than:
        return None
    if "modelConfig" not in model_params:
        LOGGER.warning("metric %s is CREATE_PENDING without a model definition", uid)
        return None
    return _request_model(conn, uid, row, model_params, None)


def confirm_model(
    conn: Connection,
    uid: str,
    command_id: Any,
    swapper: ModelSwapperInterface,
    chunk_size: int,
) -> bool:
    """CREATE_PENDING → ACTIVE on the successful defineModel result `command_id`.

    First hands the model the rows stored after its backlog (the storer does not forward while
    CREATE_PENDING). Returns False, changing nothing, for a result that is not the pending start's.
    """
    row = _lock(conn, uid, "name", "model_params")
    status = _status(row)
    model_params = json.loads(row.model_params or "{}")
    start = model_params.pop(MODEL_START_KEY, None)
    if status != MetricStatus.CREATE_PENDING or (
        start is not None and start["commandId"] != command_id
    ):
        LOGGER.warning(
            "defineModel result %s of model %s ignored: status %s, pending start %s",
            command_id,
            uid,
            status.name,
            start and start["commandId"],
        )
        return False
    if start is not None and (row.last_rowid or 0) > start["backlogLastRowid"]:
        rows = read_rows(conn, uid, start_rowid=start["backlogLastRowid"] + 1)
        try:
            send_input_rows_to_model(uid, rows, chunk_size, swapper)
        except ModelNotFound:
            LOGGER.warning("model %s lost its input queue while being activated", uid)
        LOGGER.info("model %s: forwarded %d rows stored while it was created", uid, len(rows))
    queries.update_metric_columns(
        conn,
        uid,
        {
            "status": int(MetricStatus.ACTIVE),
            "message": None,
            "model_params": json.dumps(model_params),
        },
        expected_status=MetricStatus.CREATE_PENDING,
    )
    LOGGER.info("model %s (%s) is ACTIVE", uid, row.name)
    return True


def model_unusable(conn: Connection, uid: str, reason: str, command_id: Any | None = None) -> bool:
    """CREATE_PENDING or ACTIVE → ERROR: the model proved unusable (a permanent failure result).

    `reason` goes to ``metric.message``. A result of a command other than the pending start's
    (`command_id` given, the metric CREATE_PENDING with another one), or for a metric that has no
    model (UNMONITORED, PENDING_DATA: a result of a deleted model) or is in ERROR already changes
    nothing; returns whether the status changed.
    """
    row = _lock(conn, uid, "model_params")
    status = _status(row)
    if status not in (MetricStatus.CREATE_PENDING, MetricStatus.ACTIVE):
        return False
    start = pending_start(row.model_params)
    if (
        command_id is not None
        and status == MetricStatus.CREATE_PENDING
        and start is not None
        and start["commandId"] != command_id
    ):
        LOGGER.warning("failure of stale command %s of model %s ignored", command_id, uid)
        return False
    queries.set_metric_status(conn, uid, MetricStatus.ERROR, reason, expected_status=status)
    LOGGER.error("model %s is unusable, metric in ERROR: %s", uid, reason)
    return True


def delete_orphan_model(conn: Connection, uid: str, swapper: ModelSwapperInterface) -> bool:
    """Delete the model of a metric that is gone or has no model by its status (UNMONITORED,
    PENDING_DATA): the checkpoint a lost deleteModel left behind. Returns False, sending nothing,
    when the metric has a model.

    deleteModel is published while this transaction holds the metric row lock, so the start of a
    concurrent monitorMetric (committed under the same lock, published after) comes after it.
    """
    try:
        row = _lock(conn, uid)
    except MetricNotFound:
        row = None
    if row is not None and _status(row) in MODELLED_STATUSES:
        return False
    swapper.deleteModel(uid, uuid.uuid4().hex)
    return True


def unmonitor(conn: Connection, uid: str) -> None:
    """Any status → UNMONITORED: spec, params, message and the rows' scores cleared (data kept).

    Raises MetricNotFound.
    """
    _lock(conn, uid)
    queries.unmonitor_metric(conn, uid)


# -- transitions that commit, then publish ------------------------------------------------------


def publish_model_start(swapper: ModelSwapperInterface, start: ModelStart, chunk_size: int) -> None:
    """Hand the swapper a committed start: deleteModel, defineModel and the backlog, atomically."""
    swapper.startModel(start.uid, start.swarm_params, start.command_id, start.backlog, chunk_size)


def start_model(
    engine: sa.Engine,
    transition: Transition,
    swapper: ModelSwapperInterface | None,
    chunk_size: int,
) -> ModelStart | None:
    """Run `transition(conn)` (`monitor`, `activate`, `restart`...) in its own transaction, then
    publish the start it returns; returns that start (None: nothing to publish).

    A failed publish is logged and re-raised; the metric stays CREATE_PENDING for the reconciler.
    `swapper` None: one is opened for the publish and closed.
    """
    start = _in_transaction(engine, transition)
    if start is None:
        return None
    try:
        if swapper is None:
            with ModelSwapperInterface() as own:
                publish_model_start(own, start, chunk_size)
        else:
            publish_model_start(swapper, start, chunk_size)
    except Exception:
        LOGGER.exception(
            "the model start of metric %s could not be submitted; it stays CREATE_PENDING "
            "and the reconciler retries it",
            start.uid,
        )
        raise
    LOGGER.info("model of metric %s defined with %d backlog rows", start.uid, len(start.backlog))
    return start


@retry_on_transient_db_errors
def _in_transaction(engine: sa.Engine, transition: Callable[[Connection], Any]) -> Any:
    with engine.begin() as conn:
        return transition(conn)


def range_from_data(conn: Connection, uid: str, range_rows: int | None) -> tuple[float, float]:
    """The encoder's min/max from a metric's stored values: its first `range_rows` rows (the same
    rows however they arrived), or with None every row stored now (the original's rule; profile
    ``htmengine``, see `htmengine.runtime.likelihood_profiles`). Raises ValueError without rows."""
    if range_rows is not None:
        rows = queries.get_metric_data(conn, uid, (metric_data.c.metric_value,), limit=range_rows)
        if not rows:
            raise ValueError(f"metric {uid} has no data to derive min/max from")
        return model_range([row.metric_value for row in rows])
    stats = queries.get_metric_stats(conn, uid)
    if stats["min"] is None:
        raise ValueError(f"metric {uid} has no data to derive min/max from")
    return padded_range(stats["min"], stats["max"])


def swarm_params_from_data(
    conn: Connection, uid: str, range_rows: int | None = None
) -> dict[str, Any]:
    """defineModel args of a metric from its stored values' range (`range_from_data`) and its
    spec's options. Raises ValueError when it has no rows."""
    row = queries.get_metric(conn, uid, (metric.c.parameters,))
    low, high = range_from_data(conn, uid, range_rows)
    params = (json.loads(row.parameters) if row.parameters else {}).get("modelParams", {})
    swarm_params = generate_swarm_params(
        low, high, params.get("minResolution"), params.get("enableClassifier", False)
    )
    assert swarm_params is not None
    return swarm_params


def activate_from_data(
    engine: sa.Engine,
    uid: str,
    swapper: ModelSwapperInterface | None,
    chunk_size: int,
    *,
    range_rows: int | None = None,
) -> bool:
    """Start the model of a PENDING_DATA metric with the range of its data (`activate`).

    Returns False if the model already exists or is being created.
    """
    with engine.connect() as conn:
        swarm_params = swarm_params_from_data(conn, uid, range_rows)
    started = start_model(
        engine, lambda conn: activate(conn, uid, swarm_params), swapper, chunk_size
    )
    return started is not None


def stop_model(engine: sa.Engine, uid: str, swapper: ModelSwapperInterface | None) -> None:
    """`unmonitor`, committed, then the model's deleteModel. Raises MetricNotFound.

    A lost deleteModel (a crash after the commit) leaves a checkpoint that no start reuses
    (every start begins with deleteModel) and the reconciler deletes.
    """
    _in_transaction(engine, lambda conn: unmonitor(conn, uid))
    if swapper is None:
        with ModelSwapperInterface() as own:
            own.deleteModel(uid, uuid.uuid4().hex)
    else:
        swapper.deleteModel(uid, uuid.uuid4().hex)


def ready_for_activation(status: MetricStatus, last_rowid: int | None) -> bool:
    """True for a PENDING_DATA metric whose rows are enough to take its range from."""
    return (
        status == MetricStatus.PENDING_DATA and (last_rowid or 0) >= MODEL_CREATION_RECORD_THRESHOLD
    )
