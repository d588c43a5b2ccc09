"""Spatial pooler: NuPIC's initialisation, inhibition tie-breaks and traced active columns (spec §3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from htmengine.htm.encoders import MultiEncoder, RandomDistributedScalarEncoder, TimeOfDayEncoder
from htmengine.htm.spatial_pooler import (
    SpatialPooler,
    _inhibit_ties_to_higher_index,
    _inhibit_with_tie_breaker,
)

from .test_encoders import TRACED_FILES, load_nab_rows, load_trace

COLUMN_0_PERMS = [
    0.97355002,
    0.92624003,
    0.13618,
    0.042619999,
    0.033399999,
    0.97951001,
    0.42296001,
    0.82374001,
]


@pytest.fixture(scope="module")
def fresh_sp() -> SpatialPooler:
    return SpatialPooler()


def test_initial_pools_and_permanences_v056(fresh_sp: SpatialPooler) -> None:
    assert fresh_sp.pool_inputs.shape == (2048, 363)
    assert fresh_sp.pool_inputs[0, :8].tolist() == [0, 1, 2, 3, 4, 5, 6, 8]
    np.testing.assert_array_equal(
        fresh_sp.pool_perms[0, :8], np.array(COLUMN_0_PERMS, dtype=np.float32)
    )
    assert fresh_sp.pool_inputs[1000, :8].tolist() == [1, 2, 4, 8, 9, 11, 12, 13]
    dense = fresh_sp.permanences(0)
    assert dense[7] == 0.0 and dense[8] == np.float32(0.82374001)


def test_v034_pools_come_from_the_sorted_population() -> None:
    old = SpatialPooler(syn_perm_connected=0.1, syn_perm_active_inc=0.0015, version="0.3.4")
    new = SpatialPooler(syn_perm_connected=0.1, syn_perm_active_inc=0.0015)
    # Same draws, different population order: column 0 is centred at input 0 in both, others differ.
    np.testing.assert_array_equal(old.pool_inputs[0], new.pool_inputs[0])
    assert not np.array_equal(old.pool_inputs[1000], new.pool_inputs[1000])
    assert old.tie_breaker.max() < 0.01 and old.tie_breaker.min() >= 0.0


def test_ties_go_to_the_higher_column_in_v056() -> None:
    overlaps = np.zeros(2048, dtype=np.int32)
    overlaps[[3, 10, 500, 501, 1999]] = 3
    active = _inhibit_ties_to_higher_index(overlaps, 40)
    assert active.tolist() == [3, 10, 500, 501, 1999] + list(range(2013, 2048))
    overlaps[:] = 7
    assert _inhibit_ties_to_higher_index(overlaps, 40).tolist() == list(range(2008, 2048))


def test_ties_go_to_the_lower_column_with_tie_breakers_in_v034() -> None:
    overlaps = np.zeros(2048, dtype=np.int32)
    overlaps[[3, 10, 500]] = 3
    tie_breaker = np.zeros(2048, dtype=np.float32)
    tie_breaker[[20, 30]] = 0.005
    active = _inhibit_with_tie_breaker(overlaps, tie_breaker, 40)
    assert active.tolist() == sorted(
        [3, 10, 500, 20, 30] + [c for c in range(40) if c not in (3, 10, 20, 30)][:35]
    )


def test_learning_moves_permanences_by_the_f32_increments() -> None:
    sp = SpatialPooler()
    before = sp.pool_perms.copy()
    on_bits = np.arange(0, 454, 11, dtype=np.int32)
    input_vector = np.zeros(454, dtype=np.uint8)
    input_vector[on_bits] = 1
    active = sp.compute(input_vector)
    assert active.dtype == np.int32 and len(active) == 40
    column = int(active[0])
    inputs = sp.pool_inputs[column]
    old = before[column]
    expected = np.where(
        np.isin(inputs, on_bits), old + np.float32(0.003), old - np.float32(0.0005)
    ).astype(np.float32)
    expected = np.clip(expected, 0, 1)
    expected[expected < np.float32(0.0015)] = 0
    np.testing.assert_array_equal(sp.pool_perms[column], expected)
    untouched = np.setdiff1d(np.arange(2048), active)
    np.testing.assert_array_equal(sp.pool_perms[untouched], before[untouched])
    assert sp.overlap_duty.max() == 1.0


def test_inference_only_step_changes_nothing_but_the_iteration() -> None:
    sp = SpatialPooler()
    input_vector = np.zeros(454, dtype=np.uint8)
    input_vector[::11] = 1
    before = sp.pool_perms.copy()
    active = sp.compute(input_vector, learn=False)
    assert len(active) == 40  # core 0.4.10 does not strip never-learned columns
    np.testing.assert_array_equal(sp.pool_perms, before)
    assert (sp.iteration, sp.learn_iteration, sp.overlap_duty.max()) == (1, 0, 0.0)


def test_weak_columns_are_bumped_after_the_min_duty_refresh() -> None:
    sp = SpatialPooler(num_inputs=40, num_columns=64, num_active_columns=4)
    input_vector = np.zeros(40, dtype=np.uint8)
    input_vector[:3] = 1
    for _ in range(50):
        sp.compute(input_vector)
    assert sp.min_overlap_duty > 0
    weak = np.flatnonzero(sp.overlap_duty < sp.min_overlap_duty)
    assert weak.size > 0
    before = sp.pool_perms.copy()
    active = sp.compute(input_vector)
    bumped = np.setdiff1d(weak, active)
    assert bumped.size > 0
    expected = np.minimum(before[bumped] + np.float32(0.02), np.float32(1.0))
    np.testing.assert_array_equal(sp.pool_perms[bumped], expected)


def test_state_round_trip_continues_identically() -> None:
    sp = SpatialPooler()
    rng = np.random.default_rng(5)
    inputs = [np.sort(rng.choice(454, 42, replace=False)).astype(np.int32) for _ in range(120)]
    for on_bits in inputs[:60]:
        sp.compute_on_bits(on_bits)
    state = sp.get_state()
    assert 0 < len(state["touched_columns"]) < 2048  # only columns that learned are stored
    clone = SpatialPooler.from_state(state)
    assert clone.pool_inputs is sp.pool_inputs  # seeded pools are shared, read-only
    for on_bits in inputs[60:]:
        np.testing.assert_array_equal(clone.compute_on_bits(on_bits), sp.compute_on_bits(on_bits))
    np.testing.assert_array_equal(clone.pool_perms, sp.pool_perms)
    np.testing.assert_array_equal(clone.connected_by_input, sp.connected_by_input)


def test_invalid_state_is_rejected() -> None:
    state = SpatialPooler(num_inputs=40, num_columns=64, num_active_columns=4).get_state()
    state["touched_perms"] = np.zeros((1, 5), dtype=np.float32)
    with pytest.raises(ValueError):
        SpatialPooler.from_state(state)
    with pytest.raises(ValueError):
        SpatialPooler(version="9.9")


def run_traced(nab_dir: Path, name: str, rows_limit: int | None) -> None:
    header, trace = load_trace(nab_dir, name)
    rows = load_nab_rows(nab_dir, header["file"])
    encoder = MultiEncoder(
        TimeOfDayEncoder(radius=9.49), RandomDistributedScalarEncoder(header["resolution"])
    )
    sp = SpatialPooler()
    for row, _bits, expected_columns, *_ in trace[:rows_limit]:
        timestamp, value = rows[row]
        active = sp.compute_on_bits(encoder.encode(timestamp, value))
        assert active.tolist() == expected_columns, f"{name} row {row}"


@pytest.mark.parametrize("name", TRACED_FILES)
def test_active_columns_equal_the_nupic_trace(nab_dir: Path, name: str) -> None:
    run_traced(nab_dir, name, None)
