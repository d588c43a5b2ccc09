"""Model spec validation (monitorMetric's input): what is accepted, and that errors say why."""

from __future__ import annotations

import pytest

from htmengine.adapters.datasource.model_spec import (
    validate_custom_metric_spec,
    validate_model_spec,
)
from htmengine.engine.swarm_params import (
    generate_swarm_params,
    padded_range,
    swarm_params_from_complete_model_params,
)

COMPLETE = {
    "modelConfig": {"model": "CLA", "modelParams": {}},
    "inferenceArgs": {"predictedField": "value"},
    "timestampFieldName": "ts",
    "valueFieldName": "value",
}


@pytest.mark.parametrize(
    "spec",
    [
        {"datasource": "custom", "metricSpec": {"metric": "cpu"}},
        {
            "datasource": "custom",
            "metricSpec": {"uid": "abc"},
            "modelParams": {"min": 0, "max": 100},
        },
        {
            "datasource": "custom",
            "metricSpec": {"metric": "cpu", "unit": "%", "resource": "web1", "userInfo": {"a": 1}},
            "modelParams": {"min": -1.5, "max": 2, "minResolution": 0.01, "enableClassifier": True},
        },
        {"datasource": "custom", "metricSpec": {"metric": "cpu"}, "completeModelParams": COMPLETE},
        {
            "datasource": "custom",
            "metricSpec": {"metric": "flat"},
            "modelParams": {"min": 5, "max": 5},
        },
    ],
)
def test_valid_specs_pass_and_are_copied(spec):
    checked = validate_model_spec(spec)
    assert checked == spec
    assert checked is not spec
    validate_custom_metric_spec(checked["metricSpec"])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("cpu", "must be a JSON object"),
        ({"metricSpec": {"metric": "cpu"}}, "'datasource' is a required property"),
        ({"datasource": "custom"}, "'metricSpec' is a required property"),
        ({"datasource": "custom", "metricSpec": {"metric": "cpu"}, "extra": 1}, "extra"),
        (
            {"datasource": "custom", "metricSpec": {"metric": "cpu"}, "modelParams": {"min": "0"}},
            "modelParams/min",
        ),
        (
            {"datasource": "custom", "metricSpec": {"metric": "cpu"}, "modelParams": {"min": 1}},
            "both min and max",
        ),
        (
            {
                "datasource": "custom",
                "metricSpec": {"metric": "c"},
                "modelParams": {"min": 2, "max": 1},
            },
            "greater than max",
        ),
        (
            {"datasource": "custom", "metricSpec": {"metric": "c"}, "modelParams": {"bogus": 1}},
            "bogus",
        ),
        (
            {
                "datasource": "custom",
                "metricSpec": {"metric": "cpu"},
                "modelParams": {"min": 0, "max": 1},
                "completeModelParams": COMPLETE,
            },
            "not both",
        ),
        (
            {
                "datasource": "custom",
                "metricSpec": {"metric": "cpu"},
                "completeModelParams": {**COMPLETE, "inferenceArgs": {"predictedField": "c1"}},
            },
            "predictedField",
        ),
        (
            {
                "datasource": "custom",
                "metricSpec": {"metric": "cpu"},
                "completeModelParams": {"modelConfig": {}},
            },
            "completeModelParams",
        ),
    ],
)
def test_invalid_specs_name_the_problem(spec, message):
    with pytest.raises(ValueError, match=message):
        validate_model_spec(spec)


@pytest.mark.parametrize(
    ("metric_spec", "message"),
    [
        ({}, "needs 'metric'"),
        ({"metric": "a", "uid": "b"}, "not both"),
        ({"metric": ""}, "metric"),
        ({"metric": "cpu", "colour": "red"}, "colour"),
        ({"uid": "x" * 41}, "uid"),
    ],
)
def test_invalid_custom_metric_specs(metric_spec, message):
    with pytest.raises(ValueError, match=message):
        validate_custom_metric_spec(metric_spec)


def test_swarm_params_from_min_max():
    params = generate_swarm_params(0.0, 100.0, None, enable_classifier=True)
    assert params["inputRecordSchema"] == [["c0", "datetime", "T"], ["c1", "float", ""]]
    assert params["modelConfig"]["modelParams"]["clEnable"] is True
    encoder = params["modelConfig"]["modelParams"]["sensorParams"]["encoders"]["c1"]
    assert encoder["resolution"] == pytest.approx(100.0 / 130)
    assert generate_swarm_params(None, None) is None


def test_swarm_params_from_complete_params():
    params = swarm_params_from_complete_model_params(COMPLETE)
    assert params["inputRecordSchema"] == [["ts", "datetime", "T"], ["value", "float", ""]]
    assert params["modelConfig"] is COMPLETE["modelConfig"]


def test_padded_range_widens_by_a_fifth_and_handles_flat_data():
    assert padded_range(0.0, 10.0) == (-2.0, 12.0)
    assert padded_range(5.0, 5.0) == pytest.approx((4.8, 6.2))
