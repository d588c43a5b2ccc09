"""Scalar-metric params: NuPIC's layout, per-version numbers and the exact RDSE resolution."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from htmengine.htm.params import get_scalar_metric_params, rdse_resolution

from .test_encoders import TRACED_FILES, load_nab_rows, load_trace


def test_v056_defaults() -> None:
    params = get_scalar_metric_params(0.0, 130.0)
    model_params = params["modelConfig"]["modelParams"]
    encoders = model_params["sensorParams"]["encoders"]
    assert params["modelConfig"]["nupicVersion"] == "0.5.6"
    assert encoders["c0_timeOfDay"]["timeOfDay"] == [21, 9.49]
    assert encoders["c1"]["resolution"] == 1.0
    assert "numBuckets" not in encoders["c1"]
    assert model_params["spParams"]["synPermConnected"] == 0.2
    assert model_params["spParams"]["synPermActiveInc"] == 0.003
    assert model_params["tpParams"]["activationThreshold"] == 13
    assert params["inferenceArgs"]["predictedField"] == "c1"
    json.dumps(params)  # stored as JSON by the engine


def test_v034_set() -> None:
    params = get_scalar_metric_params(0.0, 114.0, version="0.3.4")
    model_params = params["modelConfig"]["modelParams"]
    assert model_params["sensorParams"]["encoders"]["c0_timeOfDay"]["timeOfDay"] == [
        21,
        9.4912233474773693,
    ]
    assert model_params["sensorParams"]["encoders"]["c1"]["resolution"] == 1.0
    assert model_params["spParams"]["synPermConnected"] == 0.1
    assert model_params["spParams"]["synPermActiveInc"] == 0.0015
    assert model_params["clParams"]["regionName"] == "CLAClassifierRegion"


def test_resolution_floor_and_flat_range() -> None:
    assert rdse_resolution(0.0, 0.01, 130.0) == 0.001
    assert rdse_resolution(5.0, 5.0, 130.0) == 1 / 130.0
    resolution = get_scalar_metric_params(5.0, 5.0)["modelConfig"]["modelParams"]["sensorParams"][
        "encoders"
    ]["c1"]
    assert resolution["resolution"] == 1 / 130.0
    assert rdse_resolution(0.0, 13.0, 130.0, min_resolution=0.5) == 0.5


def test_errors() -> None:
    with pytest.raises(ValueError):
        get_scalar_metric_params(0.0, 1.0, version="1.0.5")
    with pytest.raises(ValueError):
        get_scalar_metric_params(None, 1.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", TRACED_FILES)
def test_nab_padded_resolution_is_bit_exact(nab_dir: Path, name: str) -> None:
    header, _ = load_trace(nab_dir, name)
    values = [v for _, v in load_nab_rows(nab_dir, header["file"])]
    pad = abs(max(values) - min(values)) * 0.2
    params = get_scalar_metric_params(min(values) - pad, max(values) + pad)
    assert (
        params["modelConfig"]["modelParams"]["sensorParams"]["encoders"]["c1"]["resolution"]
        == header["resolution"]
    )
