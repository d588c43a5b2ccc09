"""HtmCoreAnomalyModel: the optional htm.core backend.

The htm.core tests skip where htm.core is not installed (as in CI); the error raised without it is
checked everywhere, by hiding htm.core from the import system.
"""

from __future__ import annotations

import importlib
import math
import sys
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import htmengine.htm
from htmengine.htm import serialization
from htmengine.htm.params import get_scalar_metric_params
from htmengine.htm.serialization import CheckpointFormatError

BACKEND_MODULE = "htmengine.htm.htmcore_backend"
HTM_CORE_MODULES = (
    "htm",
    "htm.bindings",
    "htm.bindings.algorithms",
    "htm.bindings.encoders",
    "htm.bindings.sdr",
)


def model_config() -> dict[str, Any]:
    return get_scalar_metric_params(0.0, 130.0)["modelConfig"]


def synthetic_stream(n: int) -> list[tuple[datetime, float]]:
    """A wave with a period of a day of 30-minute records: regular enough for the TM to learn."""
    start = datetime(2015, 1, 1)
    return [
        (start + timedelta(minutes=30 * i), round(50 + 40 * math.sin(2 * math.pi * i / 48), 1))
        for i in range(n)
    ]


def test_without_htm_core_construction_and_load_say_it_is_not_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in HTM_CORE_MODULES:
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules makes import fail
    monkeypatch.delitem(sys.modules, BACKEND_MODULE, raising=False)
    monkeypatch.delattr(htmengine.htm, "htmcore_backend", raising=False)
    # a fresh import of the backend module: importing it needs no htm.core
    backend = importlib.import_module(BACKEND_MODULE)

    with pytest.raises(backend.HtmCoreNotInstalledError, match="htm.core is not installed"):
        backend.HtmCoreAnomalyModel(model_config())
    with pytest.raises(ImportError, match="htm.core is not installed"):
        backend.HtmCoreAnomalyModel.load(b"any blob")


@pytest.fixture(scope="module")
def backend() -> Any:
    # ImportError, not only ModuleNotFoundError: a build of htm without its extensions skips too
    pytest.importorskip(
        "htm.bindings.algorithms", reason="htm.core is not installed", exc_type=ImportError
    )
    return importlib.import_module(BACKEND_MODULE)


@pytest.fixture(scope="module")
def stream() -> list[tuple[datetime, float]]:
    return synthetic_stream(480)


@pytest.fixture(scope="module")
def reference_scores(backend: Any, stream: list[tuple[datetime, float]]) -> list[float]:
    model = backend.HtmCoreAnomalyModel(model_config())
    return [model.run(ts, v) for ts, v in stream]


def test_scores_are_fractions_in_unit_interval_and_fall_as_the_wave_is_learned(
    reference_scores: list[float],
) -> None:
    assert reference_scores[0] == 1.0  # nothing predicted before the first record
    assert all(0.0 <= s <= 1.0 for s in reference_scores)
    assert np.mean(reference_scores[-96:]) < 0.5 * np.mean(reference_scores[:48])


def test_same_config_and_input_give_the_same_scores(
    backend: Any, stream: list[tuple[datetime, float]], reference_scores: list[float]
) -> None:
    model = backend.HtmCoreAnomalyModel(model_config())
    assert [model.run(ts, v) for ts, v in stream[:100]] == reference_scores[:100]


@pytest.mark.parametrize("compress", [False, True])
def test_save_load_mid_stream_continues_identically(
    backend: Any,
    stream: list[tuple[datetime, float]],
    reference_scores: list[float],
    compress: bool,
) -> None:
    model = backend.HtmCoreAnomalyModel(model_config())
    middle = 240
    for ts, v in stream[:middle]:
        model.run(ts, v)
    blob = model.save(compress=compress)
    restored = backend.HtmCoreAnomalyModel.load(blob)
    assert restored.records_seen == middle
    assert restored.model_config == model.model_config
    assert [restored.run(ts, v) for ts, v in stream[middle:]] == reference_scores[middle:]


def test_missing_value_runs_on_time_of_day_only(backend: Any) -> None:
    model = backend.HtmCoreAnomalyModel(model_config())
    for ts, v in synthetic_stream(10):
        model.run(ts, v)
    assert 0.0 <= model.run(datetime(2015, 1, 2), None) <= 1.0
    assert 0.0 <= model.run(datetime(2015, 1, 2, 0, 30), float("nan")) <= 1.0
    assert model.records_seen == 12


def test_corrupt_blob_raises_checkpoint_format_error(backend: Any) -> None:
    model = backend.HtmCoreAnomalyModel(model_config())
    for ts, v in synthetic_stream(20):
        model.run(ts, v)
    blob = bytearray(model.save())
    blob[len(blob) // 2] ^= 0xFF
    with pytest.raises(CheckpointFormatError):
        backend.HtmCoreAnomalyModel.load(bytes(blob))
    with pytest.raises(CheckpointFormatError):
        backend.HtmCoreAnomalyModel.load(model.save()[:-100])


def test_other_kind_of_checkpoint_is_refused(backend: Any) -> None:
    foreign = serialization.pack({"records_seen": 0}, "ScalarAnomalyModel")
    with pytest.raises(CheckpointFormatError, match="ScalarAnomalyModel"):
        backend.HtmCoreAnomalyModel.load(foreign)


def test_component_bytes_htm_core_cannot_read_raise_checkpoint_format_error(
    backend: Any,
) -> None:
    model = backend.HtmCoreAnomalyModel(model_config())
    state = serialization.unpack(model.save(), backend.CHECKPOINT_KIND)
    state["tm"] = state["tm"][:64]  # a well-formed container around a truncated component
    with pytest.raises(CheckpointFormatError, match="htm.core could not load"):
        backend.HtmCoreAnomalyModel.load(serialization.pack(state, backend.CHECKPOINT_KIND))


class FlakyRdse:
    """Stands in for htm.core's RDSE: refuses the first ``failures`` constructions."""

    constructions = 0

    def __init__(self, params: Any, failures: int, message: str) -> None:
        FlakyRdse.constructions += 1
        if FlakyRdse.constructions <= failures:
            raise RuntimeError(message)
        self.params = params


def fake_htm(failures: int, message: str) -> SimpleNamespace:
    FlakyRdse.constructions = 0
    return SimpleNamespace(
        RDSE_Parameters=SimpleNamespace,
        RDSE=lambda params: FlakyRdse(params, failures, message),
    )


def test_value_encoder_retries_only_htm_cores_random_self_check() -> None:
    from htmengine.htm import htmcore_backend

    spec = model_config()["modelParams"]["sensorParams"]["encoders"]["c1"]
    check_failure = "CHECK FAILED: Failed hash collision resistance check, please increase size"
    encoder = htmcore_backend._make_value_encoder(fake_htm(3, check_failure), spec)
    assert FlakyRdse.constructions == 4
    assert (encoder.params.size, encoder.params.activeBits, encoder.params.seed) == (400, 21, 42)
    assert encoder.params.resolution == spec["resolution"]

    with pytest.raises(RuntimeError, match="hash collision"):
        htmcore_backend._make_value_encoder(fake_htm(100, check_failure), spec)
    assert FlakyRdse.constructions == htmcore_backend._RDSE_CHECK_ATTEMPTS

    with pytest.raises(RuntimeError, match="resolution must be positive"):
        htmcore_backend._make_value_encoder(fake_htm(1, "resolution must be positive"), spec)
    assert FlakyRdse.constructions == 1
