"""The storer's after-commit hook: which rows go to a model, and when a PENDING_DATA model starts."""

from __future__ import annotations

import calendar
import datetime

from htmengine.exceptions import MetricStatusChangedError, ModelNotFound
from htmengine.repository import MetricStatus
from htmengine.runtime.metric_streamer import StoredRows
from htmengine.runtime.model_input_forwarder import ModelInputForwarder

T0 = datetime.datetime(2015, 6, 1)


class RecordingSwapper:
    """Stands in for ModelSwapperInterface.submitRequests; a model id in `missing` has no queue."""

    def __init__(self, missing: tuple[str, ...] = ()) -> None:
        self.batches: list[tuple[str, list]] = []
        self.missing = missing

    def submitRequests(self, model_id, requests):
        if model_id in self.missing:
            raise ModelNotFound(model_id)
        self.batches.append((model_id, list(requests)))
        return "batch"


def stored(uid: str, status: MetricStatus, first: int, count: int) -> StoredRows:
    """`count` new rows from rowid `first`; row r has timestamp T0 + 5r minutes and value r."""
    epoch = calendar.timegm(T0.utctimetuple())
    samples = [(epoch + 300 * rowid, float(rowid)) for rowid in range(first, first + count)]
    return StoredRows(uid=uid, status=status, first_rowid=first, samples=samples)


def test_active_rows_go_to_the_model_in_chunks_in_rowid_order():
    swapper = RecordingSwapper()
    forwarder = ModelInputForwarder(3, lambda uid: None, swapper)
    forwarder([stored("a", MetricStatus.ACTIVE, 5, 7)])
    assert [len(requests) for _, requests in swapper.batches] == [3, 3, 1]
    rows = [row for _, requests in swapper.batches for row in requests]
    assert [row.rowID for row in rows] == list(range(5, 12))
    assert rows[0].data == [T0 + datetime.timedelta(minutes=25), 5.0]


def test_other_statuses_are_not_forwarded():
    swapper = RecordingSwapper()
    activated: list[str] = []
    forwarder = ModelInputForwarder(10, activated.append, swapper)
    forwarder(
        [
            stored("u", MetricStatus.UNMONITORED, 1, 5),
            stored("c", MetricStatus.CREATE_PENDING, 1, 5),
            stored("p", MetricStatus.PENDING_DATA, 1, 287),
            stored("e", MetricStatus.ERROR, 1, 4),
        ]
    )
    assert swapper.batches == []
    assert activated == []


def test_pending_data_metric_is_activated_by_its_288th_row():
    activated: list[str] = []
    forwarder = ModelInputForwarder(10, activated.append, RecordingSwapper())
    forwarder([stored("p", MetricStatus.PENDING_DATA, 280, 9)])
    assert activated == ["p"]


def test_a_missing_model_or_a_failed_activation_does_not_stop_the_others():
    swapper = RecordingSwapper(missing=("gone",))

    def activate(uid: str) -> None:
        raise MetricStatusChangedError(uid)

    forwarder = ModelInputForwarder(10, activate, swapper)
    forwarder(
        [
            stored("gone", MetricStatus.ACTIVE, 1, 2),
            stored("p", MetricStatus.PENDING_DATA, 1, 300),
            stored("b", MetricStatus.ACTIVE, 1, 2),
        ]
    )
    assert [model for model, _ in swapper.batches] == ["b"]
