"""Storing samples as metric_data rows: the scrubbing rule, row allocation, and the after-commit hook.

Shared by the metric storer (many metrics per transaction) and anything else that appends data
to a metric. The caller owns the transaction; after it commits, the caller passes what was stored
to `MetricStreamer.rows_committed`, which hands it to the `on_rows_stored` hook (the model-side
forwarding for CREATE_PENDING/ACTIVE metrics and PENDING_DATA activation plug in there).

Scrubbing rule (the original's, applied under the metric row lock so that several storer
processes agree): a sample whose timestamp is older than the metric's newest stored timestamp is
dropped as out of order; one equal to it is dropped as a duplicate; accepted samples advance the
reference. A redelivered message therefore stores nothing twice. Timestamps are whole epoch
seconds (rows keep whole seconds). A metric in ERROR still stores its data (the original dropped
it), so ``htmengine monitor --force`` later scores everything that arrived meanwhile.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from htmengine.exceptions import MetricNotFound
from htmengine.protocol.timestamps import to_datetime, to_epoch_seconds
from htmengine.repository import MetricStatus, queries

LOGGER = logging.getLogger(__name__)

# One sample of a metric as the streamer stores it: (whole epoch seconds UTC, value). Not the
# listener's parsed line (plaintext_protocol.Sample, which also carries the name).
DataPoint = tuple[int, float]


@dataclass
class StoredRows:
    """What one metric got from one transaction: the new rows and what was dropped.

    `status` is the metric's status under the row lock when the rows were stored. The new rows
    are numbered `first_rowid`, `first_rowid + 1`, ... in the order of `samples`.
    """

    uid: str
    status: MetricStatus
    first_rowid: int = 0
    samples: list[DataPoint] = field(default_factory=list)
    dropped_out_of_order: int = 0
    dropped_duplicate: int = 0

    @property
    def rows(self) -> list[tuple[int, datetime.datetime, float]]:
        """The new rows as ``(rowid, naive UTC datetime, value)`` in rowid order."""
        return [
            (rowid, to_datetime(seconds), value)
            for rowid, (seconds, value) in enumerate(self.samples, self.first_rowid)
        ]

    @property
    def last_rowid(self) -> int | None:
        return self.first_rowid + len(self.samples) - 1 if self.samples else None


def scrub(
    samples: Iterable[DataPoint], last_timestamp: int | None
) -> tuple[list[DataPoint], int, int]:
    """Keep samples strictly newer than everything before them.

    Returns (accepted samples, out-of-order count, duplicate count).
    """
    accepted: list[DataPoint] = []
    out_of_order = duplicate = 0
    reference = last_timestamp
    for sample in samples:
        seconds = sample[0]
        if reference is not None and seconds <= reference:
            if seconds == reference:
                duplicate += 1
            else:
                out_of_order += 1
            continue
        accepted.append(sample)
        reference = seconds
    return accepted, out_of_order, duplicate


class MissingMetricsError(MetricNotFound):
    """Some metrics vanished (deleted) before their rows could be stored; `uids` names them."""

    def __init__(self, uids: Sequence[str]) -> None:
        super().__init__(f"metrics do not exist: {', '.join(uids)}")
        self.uids = list(uids)


class MetricStreamer:
    """Appends scrubbed samples to metrics and reports what was stored after commit."""

    def __init__(self, on_rows_stored: Callable[[list[StoredRows]], None] | None = None) -> None:
        self.on_rows_stored = on_rows_stored

    def stream_metric_data(
        self, conn: Connection, uid: str, samples: Sequence[DataPoint]
    ) -> StoredRows:
        """Store one metric's samples in the caller's transaction (locks the metric row).

        Raises MetricNotFound. Call `rows_committed` with the result after the commit.
        """
        return self.store_samples(conn, {uid: samples})[0]

    def store_samples(
        self, conn: Connection, samples_by_uid: Mapping[str, Sequence[DataPoint]]
    ) -> list[StoredRows]:
        """Store many metrics' samples in the caller's transaction, one result per metric.

        Locks every metric row first (in uid order), allocates contiguous rowids after each
        metric's last_rowid, inserts all rows with multi-row INSERTs. Raises MissingMetricsError
        (before writing anything) when some uids do not exist.
        """
        if not samples_by_uid:
            return []
        locked = queries.lock_metrics_for_append(conn, samples_by_uid)
        missing = [uid for uid in samples_by_uid if uid not in locked]
        if missing:
            raise MissingMetricsError(missing)
        results: list[StoredRows] = []
        new_last_rowids: dict[str, int] = {}
        rows_to_insert: list[tuple[str, int, int, float]] = []
        for uid in sorted(samples_by_uid):
            samples = samples_by_uid[uid]
            state = locked[uid]
            status = MetricStatus(state.status or 0)
            stored = StoredRows(uid=uid, status=status)
            results.append(stored)
            last_seconds = (
                to_epoch_seconds(state.last_timestamp) if state.last_timestamp is not None else None
            )
            accepted, stored.dropped_out_of_order, stored.dropped_duplicate = scrub(
                samples, last_seconds
            )
            if not accepted:
                continue
            stored.first_rowid = (state.last_rowid or 0) + 1
            stored.samples = accepted
            new_last_rowids[uid] = stored.last_rowid
            rows_to_insert.extend(
                (uid, rowid, seconds, value)
                for rowid, (seconds, value) in enumerate(accepted, stored.first_rowid)
            )
        if new_last_rowids:
            queries.set_last_rowids(conn, new_last_rowids)
            queries.insert_metric_data_rows(conn, rows_to_insert)
        return results

    def rows_committed(self, stored: list[StoredRows]) -> None:
        """Hand rows that are now durable to the hook (forwarding to models, activation)."""
        if self.on_rows_stored is not None and stored:
            self.on_rows_stored(stored)


def stored_rows_at(
    conn: Connection, uid: str, seconds: Iterable[int]
) -> list[tuple[int, datetime.datetime, float]]:
    """A metric's stored rows with the given timestamps, as (rowid, datetime, value) by rowid."""
    rows = queries.get_metric_data_at(conn, uid, (to_datetime(s) for s in seconds))
    return [(row.rowid, row.timestamp, row.metric_value) for row in rows]


def ensure_custom_metrics(
    engine: sa.Engine, names: Iterable[str], known: Mapping[str, str]
) -> tuple[dict[str, str], list[str]]:
    """uids of custom metrics by name, creating the missing ones (UNMONITORED).

    `known` is the caller's cache; names in it are not looked up. Returns ({name: uid} for every
    name, names created here). Creation is race-safe across processes: it runs under the
    ``metrics`` lock row and re-checks each name first, all new names of a call at once.
    """
    wanted = set(names)
    uids = {name: known[name] for name in wanted if name in known}
    unknown = wanted - uids.keys()
    created: list[str] = []
    if not unknown:
        return uids, created
    with engine.connect() as conn:
        uids.update(queries.get_custom_metric_uids(conn, unknown))
        conn.rollback()
    unknown -= uids.keys()
    if unknown:
        with engine.begin() as conn:
            found, created = queries.create_custom_metrics(conn, unknown)
        uids.update(found)
    return uids, created
