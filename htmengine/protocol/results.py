"""The results exchange's messages: what the anomaly service publishes and applications read.

Bodies are zlib-compressed UTF-8 JSON (the original's). Two kinds (facts §4.3):

* inference results (no ``dataType`` header)::

    {"metric": {"uid", "name", "description", "resource", "location", "datasource", "spec"},
     "results": [{"rowid", "ts" (epoch seconds, float), "value", "rawAnomaly", "anomaly",
                  "multiStepBestPredictions" (the model's value itself: null or a dict)}, ...]}

* model command results, header ``dataType: model-cmd-result``::

    {"method", "modelId", "commandId", "status", "errorMessage"[, "modelInfo":
     {"metricName", "resource", "modelSpec"}]}

Applications decode a body with `deserializeModelResult` (the original's name, as
``AnomalyService.deserializeModelResult``) and tell the kinds apart with `is_command_result`.
"""

from __future__ import annotations

import datetime
import json
import zlib
from collections.abc import Mapping
from typing import Any

from htmengine.protocol.errors import NOT_JSON, TOO_LARGE, UndecodableMessage, loads_json
from htmengine.protocol.timestamps import to_epoch_seconds

__all__ = [
    "COMMAND_RESULT_HEADERS",
    "COMMAND_RESULT_TYPE",
    "DATA_TYPE_HEADER",
    "MAX_DECOMPRESSED_BYTES",
    "deserializeModelResult",
    "deserialize_model_result",
    "inference_message",
    "is_command_result",
    "result_row",
    "serializeModelResult",
    "serialize_model_result",
]

# Header whose value marks a command result.
DATA_TYPE_HEADER = "dataType"
COMMAND_RESULT_TYPE = "model-cmd-result"
COMMAND_RESULT_HEADERS = {DATA_TYPE_HEADER: COMMAND_RESULT_TYPE}

# A body that inflates beyond this is refused (a decompression bomb must not exhaust memory).
# A batch of 1,440 rows with predictions inflates to well under a megabyte.
MAX_DECOMPRESSED_BYTES = 64 << 20


def serialize_model_result(message: Mapping[str, Any]) -> bytes:
    """The body of one results-exchange message."""
    return zlib.compress(json.dumps(message).encode("utf-8"))


def deserialize_model_result(payload: bytes) -> dict[str, Any]:
    """Inverse of serialize_model_result; UndecodableMessage for a body that is not one."""
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(payload, MAX_DECOMPRESSED_BYTES)
    except (zlib.error, TypeError):
        raise UndecodableMessage("not zlib-compressed", NOT_JSON) from None
    if inflater.unconsumed_tail:
        raise UndecodableMessage(f"inflates to more than {MAX_DECOMPRESSED_BYTES} bytes", TOO_LARGE)
    message = loads_json(text)
    if not isinstance(message, dict):
        raise UndecodableMessage("not a JSON object")
    return message


# The original's names (AnomalyService.serializeModelResult / deserializeModelResult).
serializeModelResult = serialize_model_result
deserializeModelResult = deserialize_model_result


def is_command_result(headers: Mapping[str, Any] | None) -> bool:
    """Whether a message with these headers carries a model command result."""
    return (headers or {}).get(DATA_TYPE_HEADER) == COMMAND_RESULT_TYPE


def result_row(
    rowid: int,
    timestamp: datetime.datetime,
    value: float,
    raw_anomaly: float,
    anomaly: float,
    predictions: dict | None,
) -> dict[str, Any]:
    """One row of an inference message (`timestamp` naive UTC)."""
    return {
        "rowid": rowid,
        "ts": float(to_epoch_seconds(timestamp)),
        "value": value,
        "rawAnomaly": raw_anomaly,
        "anomaly": anomaly,
        "multiStepBestPredictions": predictions,
    }


def inference_message(metric: Mapping[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """An inference message: the metric's description and its scored rows in rowid order."""
    return {"metric": dict(metric), "results": rows}
