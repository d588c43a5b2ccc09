"""Validation of model specs (monitorMetric's input) against the JSON schemas shipped beside this
file, with errors that say what is wrong and where."""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

import jsonschema

_HERE = Path(__file__).resolve().parent
MODEL_SPEC_SCHEMA_PATH = _HERE / "model_spec_schema.json"
CUSTOM_METRIC_SPEC_SCHEMA_PATH = _HERE / "custom" / "custom_metric_spec_schema.json"


@functools.cache
def _validator(path: Path) -> jsonschema.Draft7Validator:
    schema = json.loads(path.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def _check(instance: Any, path: Path, what: str) -> None:
    errors = sorted(_validator(path).iter_errors(instance), key=lambda e: list(e.absolute_path))
    if errors:
        error = jsonschema.exceptions.best_match(errors)
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise ValueError(f"invalid {what}: {where}: {error.message}")


def validate_model_spec(spec: Any) -> dict[str, Any]:
    """A deep copy of `spec` after checking it against model_spec_schema.json and the rules the
    schema cannot say (modelParams vs completeModelParams, min/max pairing and order).

    Raises ValueError naming the offending part.
    """
    if not isinstance(spec, dict):
        raise ValueError(f"a model spec must be a JSON object (dict), got {type(spec).__name__}")
    _check(spec, MODEL_SPEC_SCHEMA_PATH, "model spec")
    if "modelParams" in spec and "completeModelParams" in spec:
        raise ValueError("specify either modelParams or completeModelParams, not both")
    params = spec.get("modelParams", {})
    if ("min" in params) != ("max" in params):
        raise ValueError("modelParams: give both min and max, or neither")
    if "min" in params and params["min"] > params["max"]:
        raise ValueError(
            f"modelParams: min ({params['min']}) is greater than max ({params['max']})"
        )
    complete = spec.get("completeModelParams")
    if complete is not None:
        predicted = complete["inferenceArgs"].get("predictedField")
        if predicted != complete["valueFieldName"]:
            raise ValueError(
                "completeModelParams: inferenceArgs.predictedField "
                f"({predicted!r}) must equal valueFieldName ({complete['valueFieldName']!r})"
            )
    return copy.deepcopy(spec)


def validate_custom_metric_spec(metric_spec: dict[str, Any]) -> None:
    """Check a custom datasource metricSpec: the metric named by `metric` or by `uid`, not both."""
    if "metric" in metric_spec and "uid" in metric_spec:
        raise ValueError("metricSpec: name the metric by 'metric' or by 'uid', not both")
    if "metric" not in metric_spec and "uid" not in metric_spec:
        raise ValueError("metricSpec: needs 'metric' (the metric's name) or 'uid' (its uid)")
    _check(metric_spec, CUSTOM_METRIC_SPEC_SCHEMA_PATH, "metricSpec")
