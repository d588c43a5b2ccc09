"""Encoders: NuPIC's RDSE buckets and DateEncoder bits (spec §2), and the traced NAB encodings."""

from __future__ import annotations

import csv
import json
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from htmengine.htm.encoders import (
    MultiEncoder,
    RandomDistributedScalarEncoder,
    TimeOfDayEncoder,
    python2_round,
    to_dense,
)

SEED_42_MIDDLE = [
    300,
    333,
    282,
    346,
    265,
    100,
    94,
    316,
    312,
    331,
    80,
    66,
    218,
    120,
    171,
    235,
    149,
    361,
    314,
    41,
    119,
]
TRACED_FILES = ["nyc_taxi", "art_daily_jumpsup"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.5, 1),
        (2.5, 3),
        (-0.5, -1),
        (-2.5, -3),
        (0.49999999999999994, 0),
        (-1.4, -1),
        (-1.6, -2),
        (3.0, 3),
    ],
)
def test_python2_round(value: float, expected: int) -> None:
    assert python2_round(value) == expected


def test_rdse_initial_bucket_seed_42() -> None:
    rdse = RandomDistributedScalarEncoder(resolution=1.0)
    assert rdse.bucket_bits(500).tolist() == SEED_42_MIDDLE


def test_rdse_first_value_is_the_centre_and_buckets_grow_in_request_order() -> None:
    rdse = RandomDistributedScalarEncoder(resolution=1.0)
    assert rdse.encode(10.0).tolist() == sorted(SEED_42_MIDDLE)
    assert rdse.offset == 10.0
    rdse.encode(11.0)  # bucket 501: slot 501 % 21 = 18 replaced, 314 -> 69
    expected_501 = list(SEED_42_MIDDLE)
    expected_501[18] = 69
    assert rdse.bucket_bits(501).tolist() == expected_501
    rdse.encode(9.0)  # bucket 499: slot 16 replaced, 149 -> 288
    expected_499 = list(SEED_42_MIDDLE)
    expected_499[16] = 288
    assert rdse.bucket_bits(499).tolist() == expected_499


def test_rdse_overlap_rule_holds_between_all_buckets() -> None:
    rdse = RandomDistributedScalarEncoder(resolution=0.5)
    rdse.encode(0.0)
    rdse.encode(20.0)  # creates 501..540 at once
    rdse.encode(-7.3)
    for i in range(rdse.min_index, rdse.max_index + 1):
        for j in range(i + 1, rdse.max_index + 1):
            overlap = len(set(rdse.bucket_bits(i)) & set(rdse.bucket_bits(j)))
            if j - i < 21:
                assert overlap == 21 - (j - i)
            else:
                assert overlap <= 2


def test_rdse_missing_and_clipped_values() -> None:
    rdse = RandomDistributedScalarEncoder(resolution=1.0)
    assert rdse.encode(float("nan")).size == 0
    assert rdse.encode(None).size == 0
    assert rdse.offset is None
    rdse.encode(0.0)
    assert rdse.bucket_index(1e9) == 999
    assert rdse.bucket_index(-float("inf")) == 0


def test_rdse_state_round_trip_continues_identically() -> None:
    rdse = RandomDistributedScalarEncoder(resolution=1.0)
    for v in (0.0, 3.0, -2.0):
        rdse.encode(v)
    clone = RandomDistributedScalarEncoder.from_state(rdse.get_state())
    for v in (7.0, -9.0, 40.0, 1.0):
        np.testing.assert_array_equal(clone.encode(v), rdse.encode(v))


@pytest.mark.parametrize(("w", "resolution", "n"), [(20, 1.0, 400), (21, 0.0, 400), (21, 1.0, 126)])
def test_rdse_rejects_invalid_parameters(w: int, resolution: float, n: int) -> None:
    with pytest.raises(ValueError):
        RandomDistributedScalarEncoder(resolution=resolution, w=w, n=n)


@pytest.mark.parametrize(
    ("hour", "minute", "expected"),
    [
        (0, 0, list(range(0, 11)) + list(range(44, 54))),
        (12, 0, list(range(17, 38))),
        (23, 59, list(range(0, 10)) + list(range(43, 54))),
        (5, 20, list(range(2, 23))),
    ],
)
@pytest.mark.parametrize("radius", [9.49, 9.4912233474773693])
def test_time_of_day_bits(hour: int, minute: int, expected: list[int], radius: float) -> None:
    encoder = TimeOfDayEncoder(radius=radius)
    assert encoder.n == 54
    assert encoder.encode(datetime(2015, 3, 1, hour, minute, 59)).tolist() == expected


def test_multi_encoder_layout() -> None:
    encoder = MultiEncoder(TimeOfDayEncoder(), RandomDistributedScalarEncoder(resolution=1.0))
    assert encoder.width == 454
    bits = encoder.encode(datetime(2015, 3, 1, 12, 0), 5.0)
    assert bits.dtype == np.int32
    assert bits.tolist() == list(range(17, 38)) + [b + 54 for b in sorted(SEED_42_MIDDLE)]
    assert to_dense(bits, 454).sum() == 42
    assert encoder.encode(datetime(2015, 3, 1, 12, 0), float("nan")).tolist() == list(range(17, 38))


def load_trace(nab_dir: Path, name: str) -> tuple[dict, list[list]]:
    """Header and rows of a NuPIC 0.5.6 trace; skips when the trace is absent."""
    path = nab_dir / "traces" / f"{name}.first2000.jsonl"
    if not path.exists():
        pytest.skip(f"trace {path} not found")
    lines = path.read_text().splitlines()
    return json.loads(lines[0]), [json.loads(line) for line in lines[1:]]


def load_nab_rows(nab_dir: Path, relative: str) -> list[tuple[datetime, float]]:
    with open(nab_dir / "data" / relative, newline="") as handle:
        return [
            (datetime.fromisoformat(r["timestamp"]), float(r["value"]))
            for r in csv.DictReader(handle)
        ]


@pytest.mark.parametrize("name", TRACED_FILES)
def test_encoder_bits_equal_the_nupic_trace(nab_dir: Path, name: str) -> None:
    header, trace = load_trace(nab_dir, name)
    rows = load_nab_rows(nab_dir, header["file"])
    encoder = MultiEncoder(
        TimeOfDayEncoder(radius=9.49),
        RandomDistributedScalarEncoder(resolution=header["resolution"]),
    )
    for row, expected_bits, *_ in trace:
        timestamp, value = rows[row]
        assert encoder.encode(timestamp, value).tolist() == expected_bits, f"row {row}"
