"""Backtracking TM: parity with NuPIC 0.5.6's Cells4 on traced runs, checkpoints, basic behaviour."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from htmengine.htm.backtracking_tm import BacktrackingTM

from .test_encoders import TRACED_FILES, load_trace


def raw_score(active: np.ndarray, prev_predicted: np.ndarray) -> float:
    """v0.5.6 raw anomaly (spec §5), f32-rounded like the TM region's output."""
    hits = np.intersect1d(active, prev_predicted).size
    return float(np.float32((active.size - hits) / active.size))


def synapses_of(tm: BacktrackingTM, g: int) -> tuple[np.ndarray, np.ndarray]:
    """Views of segment g's synapse sources and permanences in the pools (white-box tests)."""
    a = tm._a
    start = a.seg_syn_start[g]
    end = start + a.seg_len[g]
    return a.syn_src[start:end], a.syn_perm[start:end]


def run_and_compare(tm: BacktrackingTM, rows: list[list], prev: np.ndarray) -> np.ndarray:
    """Feed traced SP columns; assert predictions, counts and raw score on every row."""
    for row, _bits, columns, expected_pred, segments, synapses, raw in rows:
        active = np.asarray(columns, dtype=np.int32)
        got_raw = raw_score(active, prev)
        predicted = tm.compute(active)
        assert (predicted.tolist(), tm.n_segments, tm.n_synapses, got_raw) == (
            expected_pred,
            segments,
            synapses,
            raw,
        ), f"first divergence at row {row}"
        prev = predicted
    return prev


@pytest.mark.parametrize("name", TRACED_FILES)
def test_every_traced_row_matches_nupic(nab_dir: Path, name: str) -> None:
    _header, rows = load_trace(nab_dir, name)
    assert len(rows) == 2000
    run_and_compare(BacktrackingTM(), rows, np.zeros(0, dtype=np.int32))


def test_early_run_table_of_the_spec(nab_dir: Path) -> None:
    """Spec §4.8: restarts on start cells every third record while out of sequence."""
    _header, rows = load_trace(nab_dir, "nyc_taxi")
    tm = BacktrackingTM()
    expected = [(0, 0, 0), (40, 800, 0), (80, 1600, 40), (120, 2400, 0), (160, 3200, 0)]
    expected.append((200, 4000, 40))
    for (_row, _bits, columns, *_), (segments, synapses, start_cells) in zip(
        rows, expected, strict=False
    ):
        tm.compute(np.asarray(columns))
        learning = tm.learn_active_cells
        assert (tm.n_segments, tm.n_synapses) == (segments, synapses)
        assert learning.size == 40
        assert np.count_nonzero(learning % 32 == 0) == start_cells


def test_restored_state_continues_identically(nab_dir: Path) -> None:
    _header, rows = load_trace(nab_dir, "nyc_taxi")
    tm = BacktrackingTM()
    prev = run_and_compare(tm, rows[:700], np.zeros(0, dtype=np.int32))
    state = tm.get_state()
    assert state["syn_src"].dtype == np.uint16
    assert state["syn_perm_values"].dtype == np.float32
    assert state["syn_perm_index"].dtype == np.uint8
    assert state["seg_cell"].dtype == np.uint16
    restored = BacktrackingTM.from_state(state)
    again = restored.get_state()
    assert again.keys() == state.keys()
    for key, value in state.items():
        np.testing.assert_array_equal(np.asarray(again[key]), np.asarray(value), err_msg=key)
    run_and_compare(restored, rows[700:1000], prev)


def test_second_step_grows_one_segment_per_column_from_the_first() -> None:
    rng = np.random.default_rng(7)
    tm = BacktrackingTM()
    first = np.sort(rng.choice(2048, 40, replace=False))
    second = np.sort(rng.choice(2048, 40, replace=False))
    assert tm.compute(first).size == 0
    assert (tm.n_segments, tm.n_synapses) == (0, 0)
    tm.compute(second)
    assert (tm.n_segments, tm.n_synapses) == (40, 800)
    assert np.all(tm.learn_active_cells % 32 != 0)  # new segments never go to the start cell


def test_a_repeated_sequence_becomes_predicted() -> None:
    rng = np.random.default_rng(3)
    patterns = [np.sort(rng.choice(2048, 40, replace=False)) for _ in range(6)]
    tm = BacktrackingTM()
    prev = np.zeros(0, dtype=np.int32)
    scores = []
    for _ in range(30):
        for pattern in patterns:
            scores.append(raw_score(pattern, prev))
            prev = tm.compute(pattern)
    assert scores[0] == 1.0
    assert max(scores[-12:]) == 0.0


def test_synthetic_restore_matches_and_learn_false_changes_nothing() -> None:
    rng = np.random.default_rng(11)
    patterns = [np.sort(rng.choice(2048, 40, replace=False)) for _ in range(5)]
    stream = [patterns[i % 5] if i % 7 else patterns[(i * 3) % 5] for i in range(120)]
    tm = BacktrackingTM()
    for columns in stream[:80]:
        tm.compute(columns)
    copy = BacktrackingTM.from_state(tm.get_state())
    for columns in stream[80:]:
        np.testing.assert_array_equal(tm.compute(columns), copy.compute(columns))
    assert (tm.n_segments, tm.n_synapses) == (copy.n_segments, copy.n_synapses)
    segments, synapses = tm.n_segments, tm.n_synapses
    tm.compute(patterns[0], learn=False)
    assert (tm.n_segments, tm.n_synapses) == (segments, synapses)


def assert_rooms_hold_their_segments(tm: BacktrackingTM) -> None:
    """Every live segment's synapses lie in its own room, inside the used part of the pools."""
    from htmengine.htm import _tm_kernels as k

    a = tm._a
    n = int(a.s[k.S_N_SLOTS])
    live = np.flatnonzero(a.seg_len[:n] > 0)
    start = a.seg_syn_start[live].astype(np.int64)
    room = a.seg_syn_cap[live].astype(np.int64)
    assert np.all(a.seg_len[live] <= room)
    order = np.argsort(start)
    ends = (start + room)[order]
    assert np.all(ends[:-1] <= start[order][1:]), "two segments share pool room"
    assert ends.max(initial=0) <= a.s[k.S_SYN_POOL_USED] <= a.syn_src.shape[0]
    assert a.syn_src.shape == a.syn_perm.shape


def test_synapse_rooms_survive_moves_and_compactions() -> None:
    """Segments that grow move to the end of the pool; compaction packs them in place, or into a
    larger pool. A copy restored tight, and the original, keep agreeing step by step."""
    from htmengine.htm import _tm_kernels as k

    rng = np.random.default_rng(5)
    patterns = [np.sort(rng.choice(2048, 40, replace=False)) for _ in range(9)]
    tm = BacktrackingTM()
    moved = packed_in_place = grown = 0
    for i in range(400):
        columns = patterns[rng.integers(9)] if i % 5 else patterns[i % 9]
        if i == 200:
            copy = BacktrackingTM.from_state(tm.get_state())
            assert copy._a.s[k.S_SYN_POOL_USED] == copy.n_synapses  # loaded tight
        pool, used = tm._a.syn_src, int(tm._a.s[k.S_SYN_POOL_USED])
        tm._reserve_synapses(columns.size)  # what compute does first
        if tm._a.syn_src is not pool:
            grown += 1
        elif tm._a.s[k.S_SYN_POOL_USED] < used:
            packed_in_place += 1
        starts = tm._a.seg_syn_start.copy()
        predicted = tm.compute(columns)
        live = np.flatnonzero(tm._a.seg_len[: len(starts)] > 0)
        moved += np.count_nonzero(tm._a.seg_syn_start[live] != starts[live])
        assert_rooms_hold_their_segments(tm)
        if i >= 200:
            np.testing.assert_array_equal(copy.compute(columns), predicted)
            assert_rooms_hold_their_segments(copy)
    assert moved > 0 and packed_in_place > 0 and grown > 0
    assert (copy.n_segments, copy.n_synapses) == (tm.n_segments, tm.n_synapses)
    assert copy.get_state()["syn_src"].tolist() == tm.get_state()["syn_src"].tolist()


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="version"):
        BacktrackingTM(version="9.9")
    tm = BacktrackingTM(num_columns=64, cells_per_column=4)
    with pytest.raises(ValueError, match="active columns"):
        tm.compute(np.array([3, 64]))
    with pytest.raises(ValueError, match="format"):
        BacktrackingTM.from_state({"format": 999})


def test_stale_position_freeing_of_core_0_4_10() -> None:
    """Spec §4.6 worked case: 32 synapses, 17 dec (3 fall to <= 0), 5 new. Two synapses must go;
    the two lowest keys are the moved synapse and its stale copy past the end, so only one is
    deleted and the segment ends with 33."""
    from htmengine.htm import _tm_kernels as k

    tm = BacktrackingTM()
    a = tm._a
    a.s[k.S_N_LRN_ITERATIONS] = 27
    sources = np.arange(100, 132, dtype=np.int32)  # position i holds source 100 + i
    k._create_segment(a, 62277, sources, 32, 1)
    g = 0
    f32 = np.float32
    near_zero = f32(f32(f32(0.21) - f32(0.1)) - f32(0.1))  # one decrement from removal
    dec_positions = [1, 3, 4, 5, 7, 8, 9, 10, 14, 15, 17, 21, 22, 24, 25, 27, 30]
    _sources, perm = synapses_of(tm, g)
    perm[:] = f32(0.41)
    perm[[7, 8, 10]] = near_zero
    perm[30] = f32(f32(0.21) - f32(0.1))
    inc = [100 + i for i in range(32) if i not in dec_positions]
    update = np.array(sorted(inc + [200, 201, 202, 203, 204]), dtype=np.int32)

    k._adapt_existing(a, g, update, update.size)

    kept = synapses_of(tm, g)[0].tolist()
    assert tm.n_synapses == len(kept) == 33
    assert kept == sorted(set(range(100, 132)) - {107, 108, 110, 130} | set(range(200, 205)))
    for source in range(100, 205):
        entries = a.fwd_pool[a.fwd_start[source] : a.fwd_start[source] + a.fwd_len[source]]
        assert (entries >> 1).tolist() == ([g] if source in kept else []), source


def test_stale_free_can_erase_the_forward_entry_of_a_surviving_synapse() -> None:
    """When the chosen stale position lies past the end, nothing is deleted there, yet its
    source (a synapse that moved left and stays) is reported removed: its forward entry goes."""
    from htmengine.htm import _tm_kernels as k

    tm = BacktrackingTM()
    a = tm._a
    a.s[k.S_N_LRN_ITERATIONS] = 5
    k._create_segment(a, 99, np.arange(100, 132, dtype=np.int32), 32, 1)
    g = 0
    f32 = np.float32
    _sources, perm = synapses_of(tm, g)
    perm[:] = f32(0.41)
    perm[0] = f32(f32(f32(0.21) - f32(0.1)) - f32(0.1))  # removed by the decrement
    perm[31] = f32(f32(0.21) - f32(0.1))  # lowest key after the decrement
    dec_positions = {0, 2, 4, 31}
    inc = [100 + i for i in range(32) if i not in dec_positions]
    update = np.array(inc + [200, 201], dtype=np.int32)

    k._adapt_existing(a, g, update, update.size)

    kept = synapses_of(tm, g)[0].tolist()
    assert kept == list(range(101, 132)) + [200, 201]
    assert tm.n_synapses == 33
    for source in kept:
        entries = a.fwd_pool[a.fwd_start[source] : a.fwd_start[source] + a.fwd_len[source]]
        assert (entries >> 1).tolist() == ([] if source == 131 else [g]), source
    assert a.seg_stale[g] == 1  # its active test now walks the synapses
