"""A scalar metric's model definition (the defineModel args) from its value range or a spec."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from htmengine.htm.params import get_scalar_metric_params

# Rows a metric needs before min/max can be taken from its data: one day of 5-minute samples.
MODEL_CREATION_RECORD_THRESHOLD = 288

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
    of their min and max). Pure: the caller chooses the rows (see `lifecycle.range_from_data`)."""
    if not values:
        raise ValueError("a model's range needs at least one value")
    return padded_range(min(values), max(values))
