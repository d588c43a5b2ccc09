"""ScalarAnomalyModel: checkpoints continue bit-identically; NAB raw scores equal NuPIC 0.5.6's."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from htmengine.htm import serialization
from htmengine.htm.model import CheckpointFormatError, ScalarAnomalyModel
from htmengine.htm.params import get_scalar_metric_params

from .test_encoders import load_nab_rows, load_trace

REPO = Path(__file__).resolve().parents[3]


def synthetic_stream(n: int) -> list[tuple[datetime, float]]:
    """A daily-ish wave with a level shift: enough structure for the TM to predict and miss."""
    start = datetime(2015, 1, 1)
    rows = []
    for i in range(n):
        value = 50 + 40 * math.sin(2 * math.pi * i / 48) + (30 if i > n * 0.8 else 0)
        rows.append((start + timedelta(minutes=30 * i), round(value, 1)))
    return rows


def make_model(version: str = "0.5.6") -> ScalarAnomalyModel:
    return ScalarAnomalyModel(get_scalar_metric_params(0.0, 130.0, version=version)["modelConfig"])


@pytest.fixture(scope="module")
def stream() -> list[tuple[datetime, float]]:
    return synthetic_stream(400)


@pytest.fixture(scope="module")
def reference_scores(stream: list[tuple[datetime, float]]) -> list[float]:
    model = make_model()
    return [model.run(ts, v) for ts, v in stream]


def test_scores_are_f32_multiples_of_one_fortieth(reference_scores: list[float]) -> None:
    assert reference_scores[0] == 1.0
    assert all(float(np.float32(round(s * 40) / 40)) == s for s in reference_scores)
    assert min(reference_scores[100:]) < 0.5  # the TM learned something


@pytest.mark.parametrize("compress", [False, True])
def test_save_load_mid_stream_continues_identically(
    stream: list[tuple[datetime, float]], reference_scores: list[float], compress: bool
) -> None:
    model = make_model()
    for ts, v in stream[:250]:
        model.run(ts, v)
    blob = model.save(compress=compress)
    restored = ScalarAnomalyModel.load(blob)
    assert restored.save(compress=compress) == blob
    assert [restored.run(ts, v) for ts, v in stream[250:]] == reference_scores[250:]


def test_a_second_process_continues_identically(
    tmp_path: Path, stream: list[tuple[datetime, float]], reference_scores: list[float]
) -> None:
    model = make_model()
    for ts, v in stream[:200]:
        model.run(ts, v)
    (tmp_path / "model.bin").write_bytes(model.save())
    (tmp_path / "rows.json").write_text(json.dumps([(ts.isoformat(), v) for ts, v in stream[200:]]))
    script = (
        "import json, sys\n"
        "from datetime import datetime\n"
        "from pathlib import Path\n"
        "from htmengine.htm.model import ScalarAnomalyModel\n"
        "d = Path(sys.argv[1])\n"
        "m = ScalarAnomalyModel.load((d / 'model.bin').read_bytes())\n"
        "rows = json.loads((d / 'rows.json').read_text())\n"
        "print(json.dumps([m.run(datetime.fromisoformat(t), v) for t, v in rows]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    assert json.loads(result.stdout) == reference_scores[200:]


def test_v034_scores_are_doubles() -> None:
    model = make_model("0.3.4")
    scores = [model.run(ts, v) for ts, v in synthetic_stream(60)]
    assert all(round(s * 40) / 40 == s for s in scores)
    assert ScalarAnomalyModel.load(model.save()).version == "0.3.4"


def test_missing_values_still_run() -> None:
    model = make_model()
    assert model.run(datetime(2015, 1, 1), float("nan")) == 1.0
    assert model.run(datetime(2015, 1, 1, 0, 5), None) == 1.0
    assert model.encoder.value.offset is None


def test_corrupt_and_foreign_blobs_are_rejected() -> None:
    blob = make_model().save()
    corrupt = bytearray(blob)
    corrupt[len(blob) // 2] ^= 0xFF
    for bad in (
        bytes(corrupt),
        blob[: len(blob) // 2],
        b"",
        b"PK\x03\x04 a zip file",
        b"\x89HTMCKP\n" + b"\0" * 20,
    ):
        with pytest.raises(CheckpointFormatError):
            ScalarAnomalyModel.load(bad)
    assert issubclass(CheckpointFormatError, ValueError)


def test_unsupported_configs_are_refused() -> None:
    config = get_scalar_metric_params(0.0, 1.0)["modelConfig"]
    config["modelParams"]["sensorParams"]["encoders"]["c0_dayOfWeek"] = {
        "type": "DateEncoder",
        "dayOfWeek": [21, 1],
    }
    with pytest.raises(ValueError):
        ScalarAnomalyModel(config)
    config = get_scalar_metric_params(0.0, 1.0)["modelConfig"]
    config["modelParams"]["spParams"]["maxBoost"] = 2.0
    with pytest.raises(ValueError):
        ScalarAnomalyModel(config)


def nab_model_and_rows(
    nab_dir: Path, relative: str
) -> tuple[ScalarAnomalyModel, list[tuple[datetime, float]]]:
    """NAB's detector setup (spec §7): whole-file min/max padded by 20 %, v0.5.6 params."""
    rows = load_nab_rows(nab_dir, relative)
    values = [v for _, v in rows]
    pad = abs(max(values) - min(values)) * 0.2
    params = get_scalar_metric_params(min(values) - pad, max(values) + pad, min_resolution=0.001)
    return ScalarAnomalyModel(params["modelConfig"]), rows


@pytest.mark.parametrize("name", ["art_daily_jumpsup", "nyc_taxi"])
def test_first_2000_rows_follow_the_nupic_trace(nab_dir: Path, name: str) -> None:
    header, trace = load_trace(nab_dir, name)
    model, rows = nab_model_and_rows(nab_dir, header["file"])
    for row, _bits, _columns, predicted, segments, synapses, raw in trace:
        timestamp, value = rows[row]
        score = model.run(timestamp, value)
        assert (score, model.prev_predicted.tolist()) == (raw, predicted), f"row {row}"
        assert (model.tm.n_segments, model.tm.n_synapses) == (segments, synapses), f"row {row}"


def first_divergence(nab_dir: Path, relative: str) -> tuple[int, float, float] | None:
    """First row whose raw score differs from NAB's published NuPIC 0.5.6 one, or None."""
    category, filename = relative.split("/")
    published = nab_dir / "results" / "numenta" / category / f"numenta_{filename}"
    with open(published, newline="") as handle:
        expected = [float(r["raw_score"]) for r in csv.DictReader(handle)]
    model, rows = nab_model_and_rows(nab_dir, relative)
    assert len(rows) == len(expected)
    for i, (timestamp, value) in enumerate(rows):
        score = model.run(timestamp, value)
        if abs(score - expected[i]) >= 1e-6:
            return i, score, expected[i]
    return None


@pytest.mark.nab
@pytest.mark.parametrize(
    "relative", ["artificialWithAnomaly/art_daily_jumpsup.csv", "realKnownCause/nyc_taxi.csv"]
)
def test_raw_scores_equal_nab_published_numenta_results(nab_dir: Path, relative: str) -> None:
    assert first_divergence(nab_dir, relative) is None


@pytest.mark.nab
@pytest.mark.slow
def test_raw_scores_equal_nab_published_numenta_results_on_every_file(nab_dir: Path) -> None:
    files = sorted(
        p.relative_to(nab_dir / "data").as_posix() for p in (nab_dir / "data").glob("*/*.csv")
    )
    assert len(files) == 58
    divergences = {f: d for f in files if (d := first_divergence(nab_dir, f)) is not None}
    assert divergences == {}


def test_serialization_round_trips_arrays_and_values_exactly() -> None:
    state = {
        "perms": np.array([0.1, 0.2], dtype=np.float32),
        "ids": np.arange(6, dtype=np.uint16).reshape(2, 3),
        "flags": np.array([True, False]),
        "empty": np.zeros(0, dtype=np.int32),
        "value": np.float32(0.3),
        "config": {"a": [1, 2.5, None], "b": "x"},
        "nan": float("nan"),
    }
    for compress in (False, True):
        loaded = serialization.unpack(
            serialization.pack(state, "thing", compress=compress), "thing"
        )
        for key in ("perms", "ids", "flags", "empty"):
            assert loaded[key].dtype == state[key].dtype
            np.testing.assert_array_equal(loaded[key], state[key])
        loaded["perms"][0] = 1.0  # arrays come back writable
        assert loaded["value"] == float(np.float32(0.3))
        assert loaded["config"] == state["config"] and math.isnan(loaded["nan"])


def test_serialization_refuses_other_kinds_versions_and_types() -> None:
    blob = serialization.pack({"x": 1}, "thing")
    with pytest.raises(CheckpointFormatError, match="expected a 'other'"):
        serialization.unpack(blob, "other")
    newer = bytearray(blob)
    newer[8] = serialization.FORMAT_VERSION + 1
    with pytest.raises(CheckpointFormatError, match="version"):
        serialization.unpack(bytes(newer), "thing")
    with pytest.raises(TypeError):
        serialization.pack({"x": np.array(["text"])}, "thing")
    with pytest.raises(TypeError):
        serialization.pack({1: 2}, "thing")  # type: ignore[dict-item]
