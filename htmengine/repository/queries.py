"""Every SQL statement htmengine runs, one function each, taking the connection first.

Callers own the transaction (``with engine.begin() as conn:``), so the unit of work is visible
where the side effects happen. Statements use bound parameters only. Rows come back as
SQLAlchemy ``Row`` objects (attribute access by column name).

Locking conventions (MySQL InnoDB):
* ``lock_metric_for_update`` / ``get_metric(..., for_update=True)`` take the metric row's
  exclusive lock: it serialises row allocation (storer) with monitorMetric (adapter).
* ``get_metric(..., for_share=True)`` waits for an uncommitted monitorMetric (anomaly service).
* ``lock_metrics_table`` takes the ``lock`` row ``metrics``: it serialises metric creation, since
  names are unique by convention only (no unique index, as in the original).
"""

from __future__ import annotations

import datetime
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from htmengine.exceptions import MetricNotFound, MetricStatusChangedError
from htmengine.repository import MetricStatus
from htmengine.repository.schema import METRICS_LOCK_NAME, lock, metric, metric_data

CUSTOM_DATASOURCE = "custom"

# poll_interval of custom metrics (their clients push every 5 minutes by convention).
CUSTOM_POLL_INTERVAL_SEC = 300

# Rows per multi-row statement: keeps each statement well under max_allowed_packet (16 MiB).
_ROWS_PER_STATEMENT = 1000

Field = str | sa.ColumnElement[Any]


class ScoreUpdate(NamedTuple):
    """New model outputs of one metric_data row (anomaly service)."""

    rowid: int
    raw_anomaly_score: float | None
    anomaly_score: float | None
    display_value: int | None
    multi_step_best_predictions: str | None


def _columns(table: sa.Table, fields: Iterable[Field] | None) -> list[sa.ColumnElement[Any]]:
    if fields is None:
        return list(table.c)
    return [table.c[f] if isinstance(f, str) else f for f in fields]


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# -- metric ----------------------------------------------------------------------------------


def get_metric(
    conn: Connection,
    uid: str,
    fields: Iterable[Field] | None = None,
    *,
    for_update: bool = False,
    for_share: bool = False,
) -> Row:
    """One metric row, optionally locked (FOR UPDATE, or LOCK IN SHARE MODE with `for_share`).

    Raises MetricNotFound.
    """
    query = sa.select(*_columns(metric, fields)).where(metric.c.uid == uid)
    if for_update:
        query = query.with_for_update()
    elif for_share:
        query = query.with_for_update(read=True)
    row = conn.execute(query).first()
    if row is None:
        raise MetricNotFound(f"metric uid={uid} does not exist")
    return row


def lock_metric_for_update(conn: Connection, uid: str) -> Row:
    """Lock a metric row and return its (uid, status, last_rowid, datasource, name).

    Serialises row allocation and status changes of one metric until the transaction ends.
    Raises MetricNotFound.
    """
    return get_metric(
        conn,
        uid,
        (metric.c.uid, metric.c.status, metric.c.last_rowid, metric.c.datasource, metric.c.name),
        for_update=True,
    )


def get_custom_metric_by_name(
    conn: Connection, name: str, fields: Iterable[Field] | None = None
) -> Row:
    """The custom metric called `name` (the oldest if duplicates exist). Raises MetricNotFound."""
    query = (
        sa.select(*_columns(metric, fields))
        .where(metric.c.datasource == CUSTOM_DATASOURCE, metric.c.name == name)
        .limit(1)
    )
    row = conn.execute(query).first()
    if row is None:
        raise MetricNotFound(f"custom metric {name!r} does not exist")
    return row


def get_custom_metrics(conn: Connection, fields: Iterable[Field] | None = None) -> list[Row]:
    """Every metric of the custom datasource."""
    query = sa.select(*_columns(metric, fields)).where(metric.c.datasource == CUSTOM_DATASOURCE)
    return list(conn.execute(query))


def get_metrics_by_status(
    conn: Connection, statuses: Iterable[int], fields: Iterable[Field] | None = None
) -> list[Row]:
    """Metrics whose status is one of `statuses` (e.g. the scheduler's ACTIVE/CREATE_PENDING)."""
    query = sa.select(*_columns(metric, fields)).where(
        metric.c.status.in_([int(s) for s in statuses])
    )
    return list(conn.execute(query))


def get_metrics_by_uids(
    conn: Connection, uids: Sequence[str], fields: Iterable[Field] | None = None
) -> list[Row]:
    """Those of the metrics `uids` that exist (a few statements for many uids)."""
    columns = _columns(metric, fields)
    found: list[Row] = []
    for chunk in _chunks(uids, _ROWS_PER_STATEMENT):
        found.extend(conn.execute(sa.select(*columns).where(metric.c.uid.in_(chunk))))
    return found


def get_all_models(conn: Connection, fields: Iterable[Field] | None = None) -> list[Row]:
    """Metrics that have (or are getting) a model: status != UNMONITORED."""
    query = sa.select(*_columns(metric, fields)).where(
        metric.c.status != int(MetricStatus.UNMONITORED)
    )
    return list(conn.execute(query))


def get_instances(conn: Connection) -> list[Row]:
    """Monitored metrics grouped by server: (server, location, status = OR of statuses, count)."""
    query = (
        sa.select(
            metric.c.server,
            sa.func.max(metric.c.location).label("location"),
            sa.func.bit_or(metric.c.status).label("status"),
            sa.func.count().label("metric_count"),
        )
        .where(metric.c.status != int(MetricStatus.UNMONITORED))
        .group_by(metric.c.server)
        .order_by(metric.c.server)
    )
    return list(conn.execute(query))


def lock_metrics_table(conn: Connection) -> None:
    """Take the ``lock`` row that serialises metric creation (until the transaction ends)."""
    query = sa.select(lock.c.name).where(lock.c.name == METRICS_LOCK_NAME).with_for_update()
    if conn.execute(query).first() is None:
        raise RuntimeError(
            f"lock row {METRICS_LOCK_NAME!r} is missing: the database was not created by the "
            "htmengine migrations"
        )


def insert_metric(conn: Connection, **values: Any) -> str:
    """Insert a metric row; `values` are column values, `uid` is generated when absent."""
    values.setdefault("uid", uuid.uuid4().hex)
    values.setdefault("last_rowid", 0)
    conn.execute(metric.insert().values(**values))
    return values["uid"]


def create_custom_metric(conn: Connection, name: str) -> tuple[str, bool]:
    """Create the UNMONITORED custom metric `name` unless it exists; returns (uid, created).

    Holds the ``metrics`` lock row, so two processes creating the same name get one metric.
    The server defaults to the name (see schema.py for the widened columns).
    """
    uids, created = create_custom_metrics(conn, [name])
    return uids[name], bool(created)


def create_custom_metrics(
    conn: Connection, names: Iterable[str]
) -> tuple[dict[str, str], list[str]]:
    """Create the UNMONITORED custom metrics among `names` that do not exist yet.

    Returns ({name: uid} for every name, names created here, sorted). Takes the ``metrics`` lock
    row once and re-checks every name under it, so concurrent callers create each name once; one
    indexed lookup and one multi-row INSERT per 1,000 names, whatever the table's size.
    """
    wanted = sorted(set(names))
    lock_metrics_table(conn)
    uids = get_custom_metric_uids(conn, wanted)
    created = [name for name in wanted if name not in uids]
    for chunk in _chunks(created, _ROWS_PER_STATEMENT):
        rows = [
            {
                "uid": uuid.uuid4().hex,
                "datasource": CUSTOM_DATASOURCE,
                "name": name,
                "description": f"Custom metric {name}",
                "server": name,
                "location": "",
                "poll_interval": CUSTOM_POLL_INTERVAL_SEC,
                "status": int(MetricStatus.UNMONITORED),
                "last_rowid": 0,
            }
            for name in chunk
        ]
        conn.execute(metric.insert(), rows)
        uids.update((row["name"], row["uid"]) for row in rows)
    return uids, created


def _raise_not_found_or_changed(conn: Connection, uid: str, expected_status: int) -> None:
    current = conn.execute(sa.select(metric.c.status).where(metric.c.uid == uid)).first()
    if current is None:
        raise MetricNotFound(f"metric uid={uid} does not exist")
    raise MetricStatusChangedError(
        f"metric uid={uid}: status is {current.status}, expected {int(expected_status)}"
    )


def update_metric_columns(
    conn: Connection,
    uid: str,
    values: Mapping[str, Any],
    *,
    expected_status: int | None = None,
) -> None:
    """Set columns of a metric, only if its status is `expected_status` when that is given.

    Raises MetricNotFound, or MetricStatusChangedError when the status differs.
    """
    query = metric.update().where(metric.c.uid == uid).values(**values)
    if expected_status is not None:
        query = query.where(metric.c.status == int(expected_status))
    # The MySQL dialects report matched (not changed) rows, so an identical update counts.
    if conn.execute(query).rowcount == 0:
        if expected_status is None:
            raise MetricNotFound(f"metric uid={uid} does not exist")
        _raise_not_found_or_changed(conn, uid, expected_status)


def set_metric_status(
    conn: Connection,
    uid: str,
    status: int,
    message: str | None = None,
    *,
    expected_status: int | None = None,
) -> None:
    """Set status and message (None clears it), conditionally on the old status if given."""
    update_metric_columns(
        conn, uid, {"status": int(status), "message": message}, expected_status=expected_status
    )


def unmonitor_metric(conn: Connection, uid: str) -> None:
    """Forget a metric's model: UNMONITORED, spec/params/message cleared, scores cleared."""
    update_metric_columns(
        conn,
        uid,
        {
            "parameters": None,
            "model_params": None,
            "message": None,
            "status": int(MetricStatus.UNMONITORED),
        },
    )
    clear_metric_scores(conn, uid)


def delete_metric(conn: Connection, uid: str) -> None:
    """Delete a metric; its metric_data rows go with it (ON DELETE CASCADE). Raises MetricNotFound."""
    if conn.execute(metric.delete().where(metric.c.uid == uid)).rowcount == 0:
        raise MetricNotFound(f"metric uid={uid} does not exist")


# -- metric_data -----------------------------------------------------------------------------


def add_metric_data(
    conn: Connection,
    uid: str,
    rows: Sequence[tuple[datetime.datetime, float]],
    *,
    last_rowid: int | None = None,
) -> range:
    """Append samples to a metric under its row lock; returns the rowids they got, in order.

    Rowids are contiguous: ``last_rowid + 1 .. last_rowid + len(rows)``. Pass `last_rowid`
    when the caller already locked the metric with ``lock_metric_for_update`` in this
    transaction; otherwise the lock is taken here. Timestamps are naive UTC and are stored with
    whole seconds (fractions are dropped here, so every server version behaves the same).
    Raises MetricNotFound.
    """
    if not rows:
        return range(0)
    if last_rowid is None:
        last_rowid = lock_metric_for_update(conn, uid).last_rowid or 0
    first = last_rowid + 1
    conn.execute(
        metric.update().where(metric.c.uid == uid).values(last_rowid=last_rowid + len(rows))
    )
    parameters = [
        (uid, first + i, timestamp.replace(microsecond=0), float(value))
        for i, (timestamp, value) in enumerate(rows)
    ]
    # PyMySQL's executemany rewrites this into multi-row INSERT statements (up to ~1 MiB each).
    conn.exec_driver_sql(
        "INSERT INTO metric_data (uid, rowid, timestamp, metric_value) VALUES (%s, %s, %s, %s)",
        parameters,
    )
    return range(first, first + len(rows))


def get_metric_data(
    conn: Connection,
    uid: str | None = None,
    fields: Iterable[Field] | None = None,
    *,
    rowid: int | None = None,
    start_rowid: int | None = None,
    stop_rowid: int | None = None,
    from_timestamp: datetime.datetime | None = None,
    to_timestamp: datetime.datetime | None = None,
    score: float | None = None,
    processed: bool | None = None,
    limit: int | None = None,
    sort: sa.ColumnElement[Any] | Sequence[sa.ColumnElement[Any]] | None = None,
) -> list[Row]:
    """metric_data rows filtered by metric, rowid, rowid range (inclusive), timestamp range
    (inclusive), minimum anomaly score and whether a raw score exists; ordered by `sort`
    (default: uid, rowid ascending); at most `limit` rows.
    """
    query = sa.select(*_columns(metric_data, fields))
    if uid is not None:
        query = query.where(metric_data.c.uid == uid)
    if rowid is not None:
        query = query.where(metric_data.c.rowid == rowid)
    if start_rowid is not None:
        query = query.where(metric_data.c.rowid >= start_rowid)
    if stop_rowid is not None:
        query = query.where(metric_data.c.rowid <= stop_rowid)
    if from_timestamp is not None:
        query = query.where(metric_data.c.timestamp >= from_timestamp)
    if to_timestamp is not None:
        query = query.where(metric_data.c.timestamp <= to_timestamp)
    if score is not None:
        query = query.where(metric_data.c.anomaly_score >= score)
    if processed is True:
        query = query.where(metric_data.c.raw_anomaly_score.is_not(None))
    elif processed is False:
        query = query.where(metric_data.c.raw_anomaly_score.is_(None))
    if sort is None:
        query = query.order_by(metric_data.c.uid, metric_data.c.rowid)
    elif isinstance(sort, sa.ColumnElement):
        query = query.order_by(sort)
    else:
        query = query.order_by(*sort)
    if limit is not None:
        query = query.limit(limit)
    return list(conn.execute(query))


def get_metric_data_count(conn: Connection, uid: str) -> int:
    """Number of rows stored for a metric."""
    query = sa.select(sa.func.count()).select_from(metric_data).where(metric_data.c.uid == uid)
    return conn.execute(query).scalar_one()


def get_processed_metric_data_count(conn: Connection, uid: str) -> int:
    """Number of a metric's rows that have a raw anomaly score."""
    query = (
        sa.select(sa.func.count())
        .select_from(metric_data)
        .where(metric_data.c.uid == uid, metric_data.c.raw_anomaly_score.is_not(None))
    )
    return conn.execute(query).scalar_one()


def get_unprocessed_model_data_count(conn: Connection, uid: str | None = None) -> int:
    """Rows of ACTIVE metrics (or of metric `uid`, if ACTIVE) still without an anomaly score."""
    query = (
        sa.select(sa.func.count())
        .select_from(metric_data.join(metric, metric.c.uid == metric_data.c.uid))
        .where(
            metric.c.status == int(MetricStatus.ACTIVE),
            metric_data.c.anomaly_score.is_(None),
        )
    )
    if uid is not None:
        query = query.where(metric_data.c.uid == uid)
    return conn.execute(query).scalar_one()


def get_active_metrics_with_unscored_last_row(conn: Connection) -> list[Row]:
    """(uid, last_rowid) of ACTIVE metrics whose newest row has no raw score (primary-key lookups:
    cheap however many rows the metrics have)."""
    query = (
        sa.select(metric.c.uid, metric.c.last_rowid)
        .select_from(
            metric.join(
                metric_data,
                sa.and_(
                    metric_data.c.uid == metric.c.uid, metric_data.c.rowid == metric.c.last_rowid
                ),
            )
        )
        .where(
            metric.c.status == int(MetricStatus.ACTIVE),
            metric_data.c.raw_anomaly_score.is_(None),
        )
    )
    return list(conn.execute(query))


def get_last_scored_rowid(conn: Connection, uid: str) -> int:
    """The highest rowid of a metric that has a raw score (0 if none)."""
    query = (
        sa.select(metric_data.c.rowid)
        .where(metric_data.c.uid == uid, metric_data.c.raw_anomaly_score.is_not(None))
        .order_by(metric_data.c.rowid.desc())
        .limit(1)
    )
    return conn.execute(query).scalar() or 0


def get_metric_stats(conn: Connection, uid: str) -> dict[str, float | None]:
    """{"min": ..., "max": ...} of a metric's values (both None when it has no rows)."""
    query = sa.select(
        sa.func.min(metric_data.c.metric_value), sa.func.max(metric_data.c.metric_value)
    ).where(metric_data.c.uid == uid)
    low, high = conn.execute(query).one()
    return {"min": low, "max": high}


def get_last_timestamp(conn: Connection, uid: str, rowid: int) -> datetime.datetime | None:
    """Timestamp of one row of a metric (the streamer's reference: the row at last_rowid)."""
    query = sa.select(metric_data.c.timestamp).where(
        metric_data.c.uid == uid, metric_data.c.rowid == rowid
    )
    return conn.execute(query).scalar()


def get_metric_data_at(
    conn: Connection, uid: str, timestamps: Iterable[datetime.datetime]
) -> list[Row]:
    """A metric's rows (rowid, timestamp, metric_value) with the given timestamps, by rowid."""
    wanted = sorted(set(timestamps))
    if not wanted:
        return []
    query = (
        sa.select(metric_data.c.rowid, metric_data.c.timestamp, metric_data.c.metric_value)
        .where(metric_data.c.uid == uid, metric_data.c.timestamp.in_(wanted))
        .order_by(metric_data.c.rowid)
    )
    return list(conn.execute(query))


def update_metric_data_scores(conn: Connection, uid: str, updates: Sequence[ScoreUpdate]) -> int:
    """Write model outputs for many rows of one metric with a few multi-row UPDATEs.

    Each statement joins metric_data to a derived table of the new values (``SELECT .. UNION
    ALL SELECT ..``, which MySQL and MariaDB both accept). Returns how many rows matched; rows
    that do not exist are not created.
    """
    matched = 0
    for chunk in _chunks(updates, _ROWS_PER_STATEMENT):
        first = "SELECT %s AS rowid, %s AS raw_score, %s AS score, %s AS display, %s AS predictions"
        rest = " UNION ALL SELECT %s, %s, %s, %s, %s" * (len(chunk) - 1)
        statement = (
            "UPDATE metric_data AS md JOIN ("
            + first
            + rest
            + ") AS v ON md.uid = %s AND md.rowid = v.rowid "
            "SET md.raw_anomaly_score = v.raw_score, md.anomaly_score = v.score, "
            "md.display_value = v.display, md.multi_step_best_predictions = v.predictions"
        )
        parameters: list[Any] = []
        for update in chunk:
            parameters.extend(update)
        parameters.append(uid)
        matched += conn.exec_driver_sql(statement, tuple(parameters)).rowcount
    return matched


def clear_metric_scores(conn: Connection, uid: str) -> None:
    """Null the model outputs of every row of a metric (values and timestamps are kept)."""
    conn.execute(
        metric_data.update()
        .where(metric_data.c.uid == uid)
        .values(
            raw_anomaly_score=None,
            anomaly_score=None,
            display_value=None,
            multi_step_best_predictions=None,
        )
    )


def get_metric_ids_sorted_by_display_value(conn: Connection, period_hours: int) -> list[Row]:
    """(uid, display_value) of metrics, highest first: the sum over 24 equal time buckets of the
    last `period_hours` (before the newest timestamp in metric_data) of each bucket's maximum
    display_value.
    """
    newest = conn.execute(sa.select(sa.func.max(metric_data.c.timestamp))).scalar()
    if newest is None:
        return []
    since = newest - datetime.timedelta(hours=period_hours)
    bucket_sec = max(1, int(period_hours * 3600) // 24)
    bucket = sa.func.floor(sa.func.unix_timestamp(metric_data.c.timestamp) / bucket_sec)
    per_bucket = (
        sa.select(
            metric_data.c.uid,
            sa.func.max(metric_data.c.display_value).label("max_display_value"),
        )
        .where(metric_data.c.timestamp > since)
        .group_by(metric_data.c.uid, bucket)
        .subquery()
    )
    query = (
        sa.select(
            per_bucket.c.uid,
            sa.cast(sa.func.sum(per_bucket.c.max_display_value), sa.BigInteger).label(
                "display_value"
            ),
        )
        .group_by(per_bucket.c.uid)
        .order_by(sa.desc("display_value"))
    )
    return list(conn.execute(query))


# --- ingestion ---
# Batched forms used by the metric storer: one statement for many metrics, so a transaction that
# stores thousands of rows for hundreds of metrics costs a handful of round trips.


def get_custom_metric_uids(conn: Connection, names: Iterable[str]) -> dict[str, str]:
    """{name: uid} of the custom metrics among `names` (the oldest uid when duplicates exist)."""
    found: dict[str, str] = {}
    for chunk in _chunks(sorted(set(names)), _ROWS_PER_STATEMENT):
        query = (
            sa.select(metric.c.name, sa.func.min(metric.c.uid).label("uid"))
            .where(metric.c.datasource == CUSTOM_DATASOURCE, metric.c.name.in_(chunk))
            .group_by(metric.c.name)
        )
        found.update({row.name: row.uid for row in conn.execute(query)})
    return found


class LockedMetric(NamedTuple):
    """A metric row locked for appending, with the timestamp of its row at last_rowid."""

    uid: str
    status: int
    last_rowid: int | None
    last_timestamp: datetime.datetime | None


def lock_metrics_for_append(conn: Connection, uids: Iterable[str]) -> dict[str, LockedMetric]:
    """Lock many metric rows (in uid order, so concurrent storers cannot deadlock) and return
    {uid: (uid, status, last_rowid, last_timestamp)}; last_timestamp is the timestamp of the row
    at last_rowid (None when the metric has no rows). Missing uids are absent from the result.

    Only the metric rows are locked: the last rows' timestamps come from a second, plain read.
    (MariaDB ignores ``FOR UPDATE OF``, so one joined locking read would also lock each metric's
    newest metric_data row, which the anomaly service updates before it locks the metric row:
    a deadlock.) Under READ COMMITTED the plain read sees everything committed before the locks.
    """
    locked: dict[str, LockedMetric] = {}
    for chunk in _chunks(sorted(set(uids)), _ROWS_PER_STATEMENT):
        lock_query = (
            sa.select(metric.c.uid, metric.c.status, metric.c.last_rowid)
            .where(metric.c.uid.in_(chunk))
            .order_by(metric.c.uid)
            .with_for_update()
        )
        rows = conn.execute(lock_query).all()
        timestamps_query = (
            sa.select(metric_data.c.uid, metric_data.c.timestamp)
            .select_from(
                metric.join(
                    metric_data,
                    sa.and_(
                        metric_data.c.uid == metric.c.uid,
                        metric_data.c.rowid == metric.c.last_rowid,
                    ),
                )
            )
            .where(metric.c.uid.in_(chunk))
        )
        last_timestamps = dict(conn.execute(timestamps_query).all())
        for row in rows:
            locked[row.uid] = LockedMetric(
                row.uid, row.status, row.last_rowid, last_timestamps.get(row.uid)
            )
    return locked


def set_last_rowids(conn: Connection, last_rowids: Mapping[str, int]) -> None:
    """Set metric.last_rowid of many metrics with one statement per 1000 (caller holds the locks)."""
    items = sorted(last_rowids.items())
    for chunk in _chunks(items, _ROWS_PER_STATEMENT):
        case = sa.case({uid: last for uid, last in chunk}, value=metric.c.uid)
        conn.execute(
            metric.update()
            .where(metric.c.uid.in_([uid for uid, _ in chunk]))
            .values(last_rowid=case)
        )


# Rows per JSON_TABLE statement (~60 bytes of JSON each: far below max_allowed_packet).
_JSON_ROWS_PER_STATEMENT = 10_000

_INSERT_ROWS_FROM_JSON = (
    "INSERT INTO metric_data (uid, rowid, timestamp, metric_value) "
    "SELECT j.uid, j.rowid, TIMESTAMPADD(SECOND, j.ts, '1970-01-01 00:00:00'), j.v "
    "FROM JSON_TABLE(%s, '$[*]' COLUMNS ("
    "uid VARCHAR(40) PATH '$[0]', rowid INT PATH '$[1]', ts BIGINT PATH '$[2]', "
    "v DOUBLE PATH '$[3]')) AS j"
)


def insert_metric_data_rows(conn: Connection, rows: Sequence[tuple[str, int, int, float]]) -> None:
    """Insert (uid, rowid, epoch seconds, value) rows of any metrics; the caller allocated the
    rowids under the metric locks (see lock_metrics_for_append / set_last_rowids).

    The rows travel as one bound JSON document per 10,000 rows, expanded by the server with
    JSON_TABLE (MariaDB >= 10.6, MySQL >= 8.0.4): the client does one json.dumps instead of
    escaping four values per row, which is what limits a Python storer. Timestamps are whole
    seconds since the epoch (naive UTC; the arithmetic does not depend on the session time
    zone). Floats round-trip exactly (except that -0.0 becomes 0.0).
    """
    for chunk in _chunks(rows, _JSON_ROWS_PER_STATEMENT):
        conn.exec_driver_sql(_INSERT_ROWS_FROM_JSON, (json.dumps(chunk),))


# --- cli (htmengine command line) ---


def get_metric_summaries(conn: Connection) -> list[Row]:
    """Every custom metric with its row count, newest timestamp and newest anomaly score.

    Columns: uid, name, status, message, row_count, last_timestamp, last_anomaly_score (of the
    newest row that has one); ordered by name.
    """
    stats = (
        sa.select(
            metric_data.c.uid,
            sa.func.count().label("row_count"),
            sa.func.max(metric_data.c.timestamp).label("last_timestamp"),
        )
        .group_by(metric_data.c.uid)
        .subquery()
    )
    newest_score = (
        sa.select(metric_data.c.anomaly_score)
        .where(metric_data.c.uid == metric.c.uid, metric_data.c.anomaly_score.is_not(None))
        .order_by(metric_data.c.rowid.desc())
        .limit(1)
        .scalar_subquery()
    )
    query = (
        sa.select(
            metric.c.uid,
            metric.c.name,
            metric.c.status,
            metric.c.message,
            sa.func.coalesce(stats.c.row_count, 0).label("row_count"),
            stats.c.last_timestamp,
            newest_score.label("last_anomaly_score"),
        )
        .select_from(metric.outerjoin(stats, stats.c.uid == metric.c.uid))
        .where(metric.c.datasource == CUSTOM_DATASOURCE)
        .order_by(metric.c.name)
    )
    return list(conn.execute(query))


def count_metrics_by_status(conn: Connection) -> dict[int, int]:
    """{status: number of metrics} over all metrics."""
    query = sa.select(metric.c.status, sa.func.count()).group_by(metric.c.status)
    return {status: count for status, count in conn.execute(query)}


# --- webapp (HTTP API and dashboard) ---


def get_metric_list(
    conn: Connection,
    *,
    uid: str | None = None,
    monitored_only: bool = False,
    custom_only: bool = True,
    fields: Iterable[str] | None = None,
) -> list[Row]:
    """Metrics with their newest row: the metric columns `fields` (default: all except
    model_params), and last_timestamp, last_value, last_anomaly_score, last_display_value of the
    row at last_rowid (None when it has no rows or that row is not scored yet); ordered by name.

    One primary-key lookup per metric, so listing 10,000 metrics stays cheap.
    """
    newest = metric_data.alias("newest")
    if fields is None:
        columns = [c for c in metric.c if c.name not in ("model_params", "last_timestamp")]
    else:
        columns = [metric.c[name] for name in fields]
    query = (
        sa.select(
            *columns,
            newest.c.timestamp.label("last_timestamp"),
            newest.c.metric_value.label("last_value"),
            newest.c.anomaly_score.label("last_anomaly_score"),
            newest.c.display_value.label("last_display_value"),
        )
        .select_from(
            metric.outerjoin(
                newest,
                sa.and_(newest.c.uid == metric.c.uid, newest.c.rowid == metric.c.last_rowid),
            )
        )
        .order_by(metric.c.name, metric.c.uid)
    )
    if uid is not None:
        query = query.where(metric.c.uid == uid)
    if monitored_only:
        query = query.where(metric.c.status != int(MetricStatus.UNMONITORED))
    if custom_only:
        query = query.where(metric.c.datasource == CUSTOM_DATASOURCE)
    return list(conn.execute(query))


def get_recent_metric_data(
    conn: Connection, after_rowids: Mapping[str, int], fields: Iterable[Field] | None = None
) -> list[Row]:
    """Rows of several metrics whose rowid is above each metric's given rowid, ordered by uid
    and rowid (the dashboard's small charts: one range of the primary key per metric)."""
    if not after_rowids:
        return []
    ranges = [
        sa.and_(metric_data.c.uid == uid, metric_data.c.rowid > int(after))
        for uid, after in sorted(after_rowids.items())
    ]
    query = (
        sa.select(*_columns(metric_data, fields))
        .where(sa.or_(*ranges))
        .order_by(metric_data.c.uid, metric_data.c.rowid)
    )
    return list(conn.execute(query))
