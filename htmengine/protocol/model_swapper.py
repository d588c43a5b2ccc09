"""The model swapper's wire format: request and result messages, and scheduler notifications.

Shared by everything that submits requests (the storer's forwarding, the datasource adapter), the
model runner (it consumes requests and submits results) and the anomaly service (it consumes
results); `htmengine.model_swapper.model_swapper_interface` (the queues) re-exports it.
The byte layout is the original's, so messages left in a broker by either implementation decode in the
other:

* request message: ``<batchID>\\n<JSON array of item states>`` (batch id = ``uuid1().hex``);
* result message: ``<modelID>\\n<JSON array of item states>``;
* item state: a JSON array whose first element is a type tag:

  ======  ====================  =====================================================================
  tag     class                 remaining elements
  ======  ====================  =====================================================================
  mc      ModelCommand          commandID, method, args (dict or null)
  i       ModelInputRow         rowID, data list, indexes of datetime fields in data
  mcR     ModelCommandResult    commandID, method, status, args, errorMessage
  iRv2    ModelInferenceResult  rowID, status, anomalyScore, errorMessage, multiStepBestPredictions
  iR      (legacy)              rowID, status, anomalyScore, errorMessage (decoded with predictions null)
  ======  ====================  =====================================================================

  A datetime in an input row is ``[int epoch seconds, microseconds]`` (naive UTC).

Scheduler notification: a JSON string, the model id.
"""

from __future__ import annotations

import datetime
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from htmengine.protocol.errors import (
    BAD_SHAPE,
    NOT_UTF8,
    UndecodableMessage,
    decode_utf8,
    loads_json_text,
)
from htmengine.protocol.timestamps import epoch_parts, to_datetime


class WireFormatError(UndecodableMessage):
    """A message or item state that does not follow the wire format."""

    def __init__(self, reason: str, kind: str = BAD_SHAPE) -> None:
        super().__init__(reason, kind)


def _check_rowid(owner: str, row_id: Any) -> None:
    # A rowid is compared with the model's mark and matched with metric_data rows: an int only.
    if type(row_id) is not int and (not isinstance(row_id, int) or isinstance(row_id, bool)):
        raise WireFormatError(f"{owner} rowID must be an integer, got {row_id!r:.80}")


# --------------------------------------------------------------------------------------------------
# Items


@dataclass(eq=True)
class ModelCommand:
    """A command for a model: ``defineModel``, ``deleteModel`` or ``cloneModel``."""

    commandID: Any
    method: str
    args: dict | None = None

    TAG = "mc"

    def __post_init__(self) -> None:
        if not isinstance(self.method, str):
            raise WireFormatError(f"ModelCommand method must be a string, got {self.method!r:.200}")
        if self.args is not None and not isinstance(self.args, dict):
            raise WireFormatError(
                f"ModelCommand args must be a dict or None, got {self.args!r:.200}"
            )

    def to_state(self) -> list:
        return [self.TAG, self.commandID, self.method, self.args]


@dataclass(eq=True)
class ModelInputRow:
    """One input record for a model: its metric_data rowid and field values (datetime, value)."""

    rowID: Any
    data: list

    TAG = "i"

    def __post_init__(self) -> None:
        if type(self.rowID) is not int:  # the plain-int fast path: one row per call, 1440 a batch
            _check_rowid("ModelInputRow", self.rowID)
        if not isinstance(self.data, (list, tuple)) or not self.data:
            raise WireFormatError(
                f"ModelInputRow data must be a non-empty list, got {self.data!r:.200}"
            )

    def to_state(self) -> list:
        encoded = []
        datetime_indexes = []
        for index, value in enumerate(self.data):
            if isinstance(value, datetime.datetime):
                value = encode_datetime(value)
                datetime_indexes.append(index)
            encoded.append(value)
        return [self.TAG, self.rowID, encoded, datetime_indexes]


@dataclass(eq=True)
class ModelCommandResult:
    """The outcome of a ModelCommand: status 0 with optional args, or an error code and message."""

    commandID: Any
    method: str
    status: int
    args: dict | None = None
    errorMessage: str | None = None

    TAG = "mcR"

    def __post_init__(self) -> None:
        if not isinstance(self.status, int):
            raise WireFormatError(
                f"ModelCommandResult status must be an int, got {self.status!r:.200}"
            )
        if self.status == 0 and self.errorMessage is not None:
            raise WireFormatError("ModelCommandResult with status 0 cannot carry an errorMessage")
        if self.status != 0 and not isinstance(self.errorMessage, str):
            raise WireFormatError("ModelCommandResult with a non-zero status needs an errorMessage")
        if self.status != 0 and self.args is not None:
            raise WireFormatError("ModelCommandResult with a non-zero status cannot carry args")

    def to_state(self) -> list:
        return [self.TAG, self.commandID, self.method, self.status, self.args, self.errorMessage]


@dataclass(eq=True)
class ModelInferenceResult:
    """The outcome of one ModelInputRow: a raw anomaly score, or an error code and message."""

    rowID: Any
    status: int
    anomalyScore: float | None = None
    errorMessage: str | None = None
    multiStepBestPredictions: dict | None = None

    TAG = "iRv2"
    LEGACY_TAG = "iR"

    def __post_init__(self) -> None:
        _check_rowid("ModelInferenceResult", self.rowID)
        if not isinstance(self.status, int):
            raise WireFormatError(
                f"ModelInferenceResult status must be an int, got {self.status!r:.200}"
            )
        if self.status == 0:
            if not isinstance(self.anomalyScore, (int, float)) or isinstance(
                self.anomalyScore, bool
            ):
                raise WireFormatError(
                    f"ModelInferenceResult with status 0 needs a numeric anomalyScore, "
                    f"got {self.anomalyScore!r}"
                )
            if self.errorMessage is not None:
                raise WireFormatError("ModelInferenceResult with status 0 cannot carry an error")
        elif not isinstance(self.errorMessage, str):
            raise WireFormatError(
                "ModelInferenceResult with a non-zero status needs an errorMessage"
            )

    def to_state(self) -> list:
        return [
            self.TAG,
            self.rowID,
            self.status,
            self.anomalyScore,
            self.errorMessage,
            self.multiStepBestPredictions,
        ]


RequestItem = ModelCommand | ModelInputRow
ResultItem = ModelCommandResult | ModelInferenceResult


def encode_datetime(value: datetime.datetime) -> list[int]:
    """A naive-UTC datetime as ``[int epoch seconds, microseconds]`` (lossless)."""
    return list(epoch_parts(value))


def decode_datetime(state: Sequence[int]) -> datetime.datetime:
    """Inverse of encode_datetime."""
    try:
        seconds, microseconds = state
        return to_datetime(int(seconds), int(microseconds))
    except (TypeError, ValueError, OverflowError) as exc:
        raise WireFormatError(f"bad datetime state {state!r:.80}: {exc}") from exc


def _item_from_state(state: Any) -> RequestItem | ResultItem:
    if not isinstance(state, list) or not state:
        raise WireFormatError(f"item state must be a non-empty JSON array, got {state!r:.200}")
    tag, rest = state[0], state[1:]
    try:
        if tag == ModelInputRow.TAG:
            row_id, data, datetime_indexes = rest
            if not isinstance(data, list):
                raise WireFormatError(f"input row data must be an array, got {data!r:.200}")
            for index in datetime_indexes:
                data[index] = decode_datetime(data[index])
            return ModelInputRow(row_id, data)
        if tag == ModelCommand.TAG:
            command_id, method, args = rest
            return ModelCommand(command_id, method, args)
        if tag == ModelInferenceResult.TAG:
            row_id, status, score, error, predictions = rest
            return ModelInferenceResult(row_id, status, score, error, predictions)
        if tag == ModelInferenceResult.LEGACY_TAG:
            row_id, status, score, error = rest
            return ModelInferenceResult(row_id, status, score, error, None)
        if tag == ModelCommandResult.TAG:
            command_id, method, status, args, error = rest
            return ModelCommandResult(command_id, method, status, args, error)
    except (ValueError, TypeError, IndexError) as exc:
        if isinstance(exc, WireFormatError):
            raise
        raise WireFormatError(f"malformed {tag!r:.20} item state {state!r:.200}: {exc}") from exc
    raise WireFormatError(f"unknown item tag {tag!r:.20} in {state!r:.200}")


def encode_batch(items: Sequence[RequestItem | ResultItem]) -> str:
    """The JSON array of item states (the original's ``json.dumps`` layout: ``", "`` separators)."""
    return json.dumps([item.to_state() for item in items])


def decode_batch(text: str) -> tuple[RequestItem | ResultItem, ...]:
    """Inverse of encode_batch, preserving order."""
    try:
        states = loads_json_text(text)
    except UndecodableMessage as exc:
        raise WireFormatError(f"batch: {exc.reason}", exc.kind) from None
    if not isinstance(states, list):
        raise WireFormatError(f"batch must be a JSON array, got {type(states).__name__}")
    return tuple(_item_from_state(state) for state in states)


def _split_header(body: bytes | str, what: str) -> tuple[str, str]:
    try:
        text = decode_utf8(body)
    except UndecodableMessage:
        raise WireFormatError(f"{what} message is not UTF-8", NOT_UTF8) from None
    header, sep, rest = text.partition("\n")
    if not sep:
        raise WireFormatError(f"{what} message has no header line: {text[:80]!r}")
    return header, rest


def encode_request_message(batch_id: str, requests: Sequence[RequestItem]) -> bytes:
    """``<batchID>\\n<JSON array>`` as UTF-8."""
    if "\n" in batch_id:
        raise WireFormatError(f"batch id must not contain a newline: {batch_id!r}")
    return (batch_id + "\n" + encode_batch(requests)).encode("utf-8")


def decode_request_message(body: bytes | str) -> tuple[str, tuple[RequestItem, ...]]:
    """(batch id, request items) of a request message."""
    batch_id, batch = _split_header(body, "request")
    items = decode_batch(batch)
    for item in items:
        if not isinstance(item, (ModelCommand, ModelInputRow)):
            raise WireFormatError(f"request batch {batch_id} holds a result item {item!r:.200}")
    return batch_id, items  # type: ignore[return-value]


def encode_result_message(model_id: str, results: Sequence[ResultItem]) -> bytes:
    """``<modelID>\\n<JSON array>`` as UTF-8."""
    if "\n" in model_id:
        raise WireFormatError(f"model id must not contain a newline: {model_id!r}")
    return (model_id + "\n" + encode_batch(results)).encode("utf-8")


def decode_result_message(body: bytes | str) -> tuple[str, tuple[ResultItem, ...]]:
    """(model id, result items) of a result message."""
    model_id, batch = _split_header(body, "result")
    items = decode_batch(batch)
    for item in items:
        if not isinstance(item, (ModelCommandResult, ModelInferenceResult)):
            raise WireFormatError(f"result batch of model {model_id} holds a request {item!r:.200}")
    return model_id, items  # type: ignore[return-value]


def new_batch_id() -> str:
    """A request batch id, as the original made them (time-based uuid, hex)."""
    return uuid.uuid1().hex


def encode_notification(model_id: str) -> bytes:
    """A scheduler notification: the model id as a JSON string."""
    return json.dumps(model_id).encode("utf-8")


def decode_notification(body: bytes | str) -> str:
    """The model id of a scheduler notification."""
    try:
        model_id = loads_json_text(decode_utf8(body))
    except UndecodableMessage as exc:
        raise WireFormatError(f"scheduler notification: {exc.reason}", exc.kind) from None
    if not isinstance(model_id, str) or not model_id:
        raise WireFormatError(f"scheduler notification must be a JSON string, got {model_id!r:.80}")
    return model_id
