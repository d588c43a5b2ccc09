"""NuPIC's backtracking temporal memory (C++ ``Cells4`` behind ``TP10X2``), bit for bit.

The TM is what makes a model slow and large, so its state is a set of flat NumPy arrays (segments,
synapses, a forward index from source cells to segments) and a whole ``compute`` runs in Numba
(``_tm_kernels.py``). This module owns those arrays: it creates them, grows them between steps so the
kernel never runs out of room, and turns them into a compact checkpoint and back.

Behaviour follows htm-algorithms.md §4 for core 0.4.10 (nupic 0.5.6), including its stale-position
synapse freeing; ``version="0.3.4"`` selects the older freeing sort keys of nupic 0.3.4's core.
"""

from __future__ import annotations

import inspect
import mmap
from collections import namedtuple
from typing import Any, NamedTuple

import numpy as np

from htmengine.htm import _tm_kernels as k
from htmengine.htm.rng import STATE_LENGTH, rng_new

STATE_FORMAT = 2
# Synapse pools (measured on machine_temperature): a segment that outgrows its room moves with 4
# entries of slack; loads and compactions lay segments out tight (slack there costs ~0.5 MiB for
# fewer moves). A pool packed in place (< 1 ms for 500k synapses) that would keep less than a
# sixteenth of its synapses free for moves is replaced by one with an eighth free: compaction
# about every 150 steps.
_MOVE_SLACK = 4
_POOL_MIN_FREE_DIVISOR = 16
_POOL_FREE_DIVISOR = 8
_VERSIONS = ("0.5.6", "0.3.4")
_ERRORS = {
    k.ERR_POOL_FULL: "a list or synapse pool ran out of room inside one step",
    k.ERR_SEGMENT_TOO_LONG: "a segment outgrew its synapse stride",
    k.ERR_NO_EVICTABLE_SEGMENT: "a full column had no segment with duty cycle below 1.0",
}


def _uint_dtype(max_value: int) -> np.dtype:
    """The narrowest unsigned dtype that holds ``max_value``."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if max_value <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.uint64)


def _fresh_pages(size: int, dtype: type) -> np.ndarray:
    """A zeroed array on pages of its own (an anonymous mapping), for pools: room they never
    touch costs no resident memory, and their pages go back to the OS when they are freed,
    however fragmented malloc's heap is."""
    itemsize = np.dtype(dtype).itemsize
    return np.frombuffer(mmap.mmap(-1, max(size, 1) * itemsize), dtype=dtype, count=size)


# The TM's arrays, each listed once: this table allocates them (_allocate, _grow_segments), names
# the fields of the tuple the kernels take, and says what a checkpoint keeps of each.
class _Field(NamedTuple):
    """One of the TM's arrays: how it is allocated and how a checkpoint holds it."""

    name: str
    # dimensions: numbers, or sizes _sizes() derives from the config ("cells", "2*stride", ...)
    shape: tuple[int | str, ...]
    # a NumPy type, or the name of a dtype _sizes() derives from the config
    dtype: type | str
    # None: not saved (every step overwrites it before reading, or a load rebuilds it from what
    # is saved); "segments"/"updates": its first n_slots/n_updates entries under its own name,
    # narrowed to the dtype its `narrow` rule names; "packed": get_state's code packs it.
    saved: str | None
    narrow: str = "same"
    fill: int = 0
    pages: bool = False  # on pages of its own (_fresh_pages): the big pools


_FIELDS = (
    _Field("p", (k.P_SIZE,), np.int64, None),  # parameters, from the config
    _Field("pf", (k.PF_SIZE,), np.float32, None),
    _Field("s", (k.S_SIZE,), np.int64, "packed"),  # scalars: _SAVED_SCALARS, the rest rebuilt
    _Field("sf", (k.SF_SIZE,), np.float32, "packed"),
    _Field("rng", (STATE_LENGTH,), np.uint64, "packed"),
    # segments, indexed by global id
    _Field("seg_cell", ("segments",), np.int32, "segments", narrow="cell"),
    _Field("seg_slot", ("segments",), "slot", "segments"),
    _Field("seg_len", ("segments",), "synapse_count", "segments"),
    _Field("seg_nconn", ("segments",), "synapse_count", None),
    _Field("seg_seq", ("segments",), np.uint8, "segments"),
    # activation counts and iterations: 32 bits, as NuPIC's UInt
    _Field("seg_total", ("segments",), np.uint32, "segments", narrow="max"),
    _Field("seg_pos", ("segments",), np.uint32, "segments", narrow="max"),
    _Field("seg_last_active", ("segments",), np.uint32, "segments", narrow="iteration"),
    _Field("seg_dc", ("segments",), np.float32, "segments"),
    _Field("seg_dc_it", ("segments",), np.uint32, "segments", narrow="iteration"),
    _Field("seg_free_next", ("segments",), np.int32, "packed", fill=-1),  # free_segments
    _Field("seg_is_free", ("segments",), np.uint8, "packed"),
    _Field("seg_syn_start", ("segments",), np.int32, None),
    _Field("seg_syn_cap", ("segments",), "synapse_count", None),
    # synapse pools
    _Field("syn_src", ("synapses",), "source", "packed", pages=True),  # syn_src, syn_perm_*
    _Field("syn_perm", ("synapses",), np.float32, "packed", pages=True),
    # cells: slot lists (pool) and free-list heads
    _Field("cell_slot_start", ("cells",), np.int32, None),
    _Field("cell_slot_len", ("cells",), "slot_count", None),
    _Field("cell_slot_cap", ("cells",), "slot_count", None),
    _Field("slot_pool", ("4*cells",), np.int32, None),
    _Field("cell_free_head", ("cells",), np.int32, "packed", fill=-1),
    # forward index (pool): fwd_counts, fwd_entries, syn_missing_forward
    _Field("fwd_start", ("cells",), np.int32, None),
    _Field("fwd_len", ("cells",), np.int32, "packed"),
    _Field("fwd_cap", ("cells",), np.int32, None),
    _Field("fwd_pool", ("8*cells",), np.int32, "packed"),
    # activity counts scratch
    _Field("seg_count", ("segments",), np.uint16, None),
    _Field("seg_stale", ("segments",), np.uint8, None),
    _Field("reach_seg", ("segments",), np.int32, None),
    _Field("reach_count", ("segments",), np.int32, None),
    _Field("reach_connected", ("segments",), np.int32, None),
    # cell state sets (the t states saved as sorted members: inf_active, ...)
    _Field("st_flag", (k.N_STATES, "cells"), np.uint8, None),
    _Field("st_list", (k.N_STATES, "cells"), np.int32, "packed"),
    _Field("st_count", (k.N_STATES,), np.int64, "packed"),
    # column confidences: conf_columns, conf_values
    _Field("col_conf", (2, "cols"), np.float32, "packed"),
    _Field("col_list", (2, "cols"), np.int32, "packed"),
    _Field("col_count", (2,), np.int64, "packed"),
    # pattern queues: inf_queue(_len), lrn_queue(_len)
    _Field("inf_q", ("inf_rows", "cols"), np.int32, "packed"),
    _Field("inf_q_len", ("inf_rows",), np.int32, "packed"),
    _Field("lrn_q", ("lrn_rows", "cols"), np.int32, "packed"),
    _Field("lrn_q_len", ("lrn_rows",), np.int32, "packed"),
    # pending segment updates
    _Field("upd_cell", ("cols",), np.int32, "updates", narrow="cell"),
    _Field("upd_seg", ("cols",), np.int32, "updates"),
    _Field("upd_seq", ("cols",), np.uint8, "updates"),
    _Field("upd_time", ("cols",), np.int64, "updates", narrow="iteration"),
    _Field("upd_len", ("cols",), np.int32, "updates", narrow="stride"),
    _Field("upd_src", ("cols", "stride"), "source", "packed"),
    # scratch
    _Field("active_bits", ("cell_words",), np.uint64, None),
    _Field("col_flag", ("cols",), np.uint8, None),
    _Field("col_best", ("cols",), np.int32, None, fill=-1),
    _Field("col_best_count", ("cols",), np.int32, None),
    _Field("scr_src", ("2*stride",), np.int32, None),
    _Field("scr_perm", ("2*stride",), np.float32, None),
    _Field("scr_dec", ("2*stride",), np.int32, None),
    _Field("scr_inc", ("2*stride",), np.int32, None),
    _Field("scr_new", ("2*stride",), np.int32, None),
    _Field("scr_removed", ("4*stride",), np.int32, None),
    _Field("scr_upd", ("2*stride",), np.int32, None),
    _Field("scr_pos", ("2*stride",), np.int32, None),
    _Field("scr_flip", ("2*stride",), np.int32, None),
    _Field("scr_key", ("2*stride",), np.float32, None),
    _Field("scr_delete", ("2*stride",), np.uint8, None),
    _Field("scr_on", ("cells",), np.int32, None),
    _Field("scr_cand", ("cells",), np.int64, None),
)

TMArrays = namedtuple("TMArrays", [field.name for field in _FIELDS])

# Scalars of ``s`` a checkpoint keeps (the others are rebuilt on load or reset every step).
_SAVED_SCALARS = (
    ("n_iterations", k.S_N_ITERATIONS),
    ("n_lrn_iterations", k.S_N_LRN_ITERATIONS),
    ("pam_counter", k.S_PAM_COUNTER),
    ("learned_seq_length", k.S_LEARNED_SEQ_LENGTH),
)
# Cell state sets a checkpoint keeps, as sorted members (the t-1, backup and candidate states are
# overwritten by every step before it reads them).
_SAVED_SETS = (
    ("inf_active", k.INF_ACTIVE),
    ("inf_predicted", k.INF_PRED),
    ("lrn_active", k.LRN_ACTIVE),
    ("lrn_predicted", k.LRN_PRED),
)
# Pattern queues: (prefix of their arrays and state keys, their length in ``s``).
_QUEUES = (("inf", k.S_INF_QUEUE_LEN), ("lrn", k.S_LRN_QUEUE_LEN))


def _sizes(
    config: dict[str, Any], segment_capacity: int, synapse_capacity: int
) -> tuple[dict[str, int], dict[str, np.dtype]]:
    """The dimensions and derived dtypes _FIELDS names, for a TM of ``config``."""
    n_cols = config["num_columns"]
    n_cells = n_cols * config["cells_per_column"]
    stride = config["max_synapses_per_segment"] + config["new_synapse_count"]
    dims = {
        "cols": n_cols,
        "cells": n_cells,
        "cell_words": (n_cells + 63) // 64,
        "stride": stride,
        # activity counts are scanned 8 bytes at a time
        "segments": -(-segment_capacity // 8) * 8,
        "synapses": synapse_capacity,
        "inf_rows": config["max_inf_backtrack"] + 2,
        "lrn_rows": config["max_lrn_backtrack"] + 2,
    }
    dtypes = {
        # synapse sources are most of the TM's memory: 16 bits whenever the cell ids fit
        "source": np.dtype(np.uint16 if n_cells <= 1 << 16 else np.int32),
        # a cell's slot list: at most max_segments_per_cell, its room at most twice that + 4
        "slot_count": _uint_dtype(2 * config["max_segments_per_cell"] + 4),
        # a segment's synapse count, connected count and room never exceed the stride
        "synapse_count": _uint_dtype(stride),
        "slot": _uint_dtype(config["max_segments_per_cell"]),
    }
    return dims, dtypes


def _shape(field: _Field, dims: dict[str, int]) -> tuple[int, ...]:
    shape = []
    for dim in field.shape:
        if isinstance(dim, str):
            factor, _, name = dim.rpartition("*")
            dim = int(factor or 1) * dims[name]
        shape.append(dim)
    return tuple(shape)


def _new_array(field: _Field, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    if field.pages:
        return _fresh_pages(shape[0], dtype)
    if field.fill:
        return np.full(shape, field.fill, dtype=dtype)
    return np.zeros(shape, dtype=dtype)


class BacktrackingTM:
    """Backtracking TM with NuPIC's ``Cells4`` semantics (fixed-size segments, two backtracks)."""

    def __init__(
        self,
        num_columns: int = 2048,
        cells_per_column: int = 32,
        activation_threshold: int = 13,
        min_threshold: int = 10,
        new_synapse_count: int = 20,
        initial_perm: float = 0.21,
        connected_perm: float = 0.5,
        permanence_inc: float = 0.1,
        permanence_dec: float = 0.1,
        permanence_max: float = 1.0,
        max_segments_per_cell: int = 128,
        max_synapses_per_segment: int = 32,
        pam_length: int = 3,
        max_inf_backtrack: int = 10,
        max_lrn_backtrack: int = 5,
        max_seq_length: int = 32,
        seed: int = 1960,
        version: str = "0.5.6",
    ) -> None:
        arguments = {name: value for name, value in locals().items() if name != "self"}
        self._config = self._checked_config(arguments)
        stride = max_synapses_per_segment + new_synapse_count
        self._a = self._allocate(segment_capacity=1024, synapse_capacity=1024 * stride)
        self._max_active = 0  # most columns of any step so far (bounds a learning backtrack)
        self._a.rng[:] = rng_new(seed)
        self._a.s[k.S_PAM_COUNTER] = pam_length

    @staticmethod
    def _checked_config(arguments: dict[str, Any]) -> dict[str, Any]:
        """Constructor arguments validated and normalised (also what a checkpoint stores)."""
        defaults = inspect.signature(BacktrackingTM.__init__).parameters
        unknown = set(arguments) - set(defaults)
        if unknown:
            raise ValueError(f"unknown BacktrackingTM arguments: {sorted(unknown)}")
        merged = {
            name: arguments.get(name, p.default) for name, p in defaults.items() if name != "self"
        }
        if merged["version"] not in _VERSIONS:
            raise ValueError(
                f"unknown NuPIC version {merged['version']!r}; expected one of {_VERSIONS}"
            )
        if merged["cells_per_column"] < 2:
            raise ValueError("cells_per_column must be >= 2 (cell 0 is the start cell)")
        if merged["max_segments_per_cell"] <= 0 or merged["max_synapses_per_segment"] <= 0:
            raise ValueError("only NuPIC's fixed-size mode is implemented: both maxima must be > 0")
        # int / float / str like the defaults (JSON round trips keep them that way)
        return {name: type(defaults[name].default)(value) for name, value in merged.items()}

    # ------------------------------------------------------------------------------------------
    # public API

    @property
    def num_columns(self) -> int:
        return self._config["num_columns"]

    @property
    def n_segments(self) -> int:
        """Non-empty segments (NuPIC's ``nSegments``)."""
        return int(self._a.s[k.S_N_SEGMENTS])

    @property
    def n_synapses(self) -> int:
        return int(self._a.s[k.S_N_SYNAPSES])

    @property
    def work_counters(self) -> dict[str, int]:
        """Work done so far (for benchmarks): phase-2 passes, forward entries visited, adaptations."""
        s = self._a.s
        return {
            "inference_phase2": int(s[k.S_WORK_INF_PHASE2]),
            "learning_phase2": int(s[k.S_WORK_LRN_PHASE2]),
            "forward_entries": int(s[k.S_WORK_FWD_ENTRIES]),
            "adaptations": int(s[k.S_WORK_ADAPTS]),
        }

    @property
    def learn_active_cells(self) -> np.ndarray:
        """Sorted cells of the learning state lrnActive[t] (a diagnostic for tests and tools)."""
        return np.sort(self._members(k.LRN_ACTIVE))

    def compute(self, active_columns: np.ndarray, learn: bool = True) -> np.ndarray:
        """One step: inference, then learning if ``learn``.

        Returns the sorted columns with nonzero column confidence after the step — the prediction
        the next step's raw anomaly score is measured against.
        """
        cols = np.unique(np.asarray(active_columns, dtype=np.int64)).astype(np.int32)
        if cols.size and (cols[0] < 0 or cols[-1] >= self.num_columns):
            raise ValueError(f"active columns must lie in [0, {self.num_columns})")
        self._max_active = max(self._max_active, cols.size)
        self._reserve(self._max_active)
        predicted = k.tm_compute(self._a, cols, bool(learn))
        error = int(self._a.s[k.S_ERROR])
        if error:
            raise RuntimeError(f"temporal memory state is corrupt: {_ERRORS[error]}")
        return predicted

    # ------------------------------------------------------------------------------------------
    # storage

    def _allocate(self, segment_capacity: int, synapse_capacity: int) -> TMArrays:
        c = self._config
        dims, dtypes = _sizes(c, segment_capacity, synapse_capacity)
        a = TMArrays(
            *(_new_array(f, _shape(f, dims), dtypes.get(f.dtype, f.dtype)) for f in _FIELDS)
        )
        p = a.p
        p[k.P_NCOLS] = c["num_columns"]
        p[k.P_CPC] = c["cells_per_column"]
        p[k.P_ACT_THRESHOLD] = c["activation_threshold"]
        p[k.P_MIN_THRESHOLD] = c["min_threshold"]
        p[k.P_NEW_SYNAPSES] = c["new_synapse_count"]
        p[k.P_MAX_SEGMENTS] = c["max_segments_per_cell"]
        p[k.P_MAX_SYNAPSES] = c["max_synapses_per_segment"]
        p[k.P_PAM_LENGTH] = c["pam_length"]
        p[k.P_MAX_INF_BACKTRACK] = c["max_inf_backtrack"]
        p[k.P_MAX_LRN_BACKTRACK] = c["max_lrn_backtrack"]
        p[k.P_MAX_SEQ_LENGTH] = c["max_seq_length"]
        p[k.P_STRIDE] = dims["stride"]
        p[k.P_FREEING_034] = 1 if c["version"] == "0.3.4" else 0
        p[k.P_SYN_MOVE_SLACK] = _MOVE_SLACK
        pf = a.pf
        pf[k.PF_INITIAL] = c["initial_perm"]
        pf[k.PF_CONNECTED] = c["connected_perm"]
        pf[k.PF_INC] = c["permanence_inc"]
        pf[k.PF_DEC] = c["permanence_dec"]
        pf[k.PF_MAX] = c["permanence_max"]
        return a

    def _reserve(self, n_active: int) -> None:
        """Grow arrays so one step whose patterns (this one and any a learning backtrack
        replays) have at most ``n_active`` columns cannot run out of room."""
        a = self._a
        c = self._config
        passes = c["max_lrn_backtrack"] + 2
        new_segments = passes * n_active + 1
        needed = int(a.s[k.S_N_SLOTS]) + new_segments
        if needed > a.seg_cell.shape[0]:
            self._grow_segments(max(needed, a.seg_cell.shape[0] * 3 // 2))
        new_synapses = 2 * passes * n_active * c["new_synapse_count"]
        self._reserve_pool("fwd", k.S_FWD_POOL_USED, 2 * new_synapses + 1024)
        self._reserve_pool("slot", k.S_SLOT_POOL_USED, 4 * new_segments + 1024)
        self._reserve_synapses(n_active)

    def _synapse_margin(self, n_active: int) -> int:
        """Synapse pool entries one step may take: every segment it creates or adapts (two per
        column and learning pass) can move to the end of the pool with up to a stride of room."""
        passes = self._config["max_lrn_backtrack"] + 2
        return (2 * passes * n_active + 1) * int(self._a.p[k.P_STRIDE])

    def _reserve_synapses(self, n_active: int) -> None:
        """Compact the synapse pools when a step might not fit: in place, or into larger ones."""
        a = self._a
        margin = self._synapse_margin(n_active)
        if int(a.s[k.S_SYN_POOL_USED]) + margin <= a.syn_src.shape[0]:
            return
        live = int(a.s[k.S_N_SYNAPSES])
        syn_src, syn_perm = a.syn_src, a.syn_perm
        if live + live // _POOL_MIN_FREE_DIVISOR + margin > syn_src.shape[0]:
            size = self._synapse_pool_size(live, margin)
            syn_src = _fresh_pages(size, a.syn_src.dtype)
            syn_perm = _fresh_pages(size, a.syn_perm.dtype)
        a.s[k.S_SYN_POOL_USED] = k.syn_pool_compact(a, syn_src, syn_perm)
        self._a = a._replace(syn_src=syn_src, syn_perm=syn_perm)

    @staticmethod
    def _synapse_pool_size(live: int, margin: int) -> int:
        """A new pool: ``live`` synapses, a step's ``margin`` and room for many steps' moves."""
        return live + live // _POOL_FREE_DIVISOR + margin

    def _grow_segments(self, capacity: int) -> None:
        capacity = -(-capacity // 8) * 8
        a = self._a
        n = int(a.s[k.S_N_SLOTS])
        grown = {}
        for field in _FIELDS:
            if field.shape[0] != "segments":
                continue
            old = getattr(a, field.name)
            new = _new_array(field, (capacity,) + old.shape[1:], old.dtype)
            new[:n] = old[:n]
            grown[field.name] = new
        self._a = a._replace(**grown)

    def _reserve_pool(self, which: str, used_key: int, margin: int) -> None:
        a = self._a
        if which == "fwd":
            start, length, cap, pool = a.fwd_start, a.fwd_len, a.fwd_cap, a.fwd_pool
        else:
            start, length, cap, pool = (
                a.cell_slot_start,
                a.cell_slot_len,
                a.cell_slot_cap,
                a.slot_pool,
            )
        if int(a.s[used_key]) + margin <= pool.shape[0]:
            return
        target = 2 * (int(length.sum()) + margin) + 4 * start.shape[0]
        if target > pool.shape[0]:
            grown = _fresh_pages(target, pool.dtype)
            grown[: pool.shape[0]] = pool
            pool = grown
            self._a = a._replace(**{"fwd_pool" if which == "fwd" else "slot_pool": pool})
        a.s[used_key] = k.pool_compact(start, length, cap, pool)

    # ------------------------------------------------------------------------------------------
    # checkpoint

    def get_state(self) -> dict[str, Any]:
        """Everything needed to continue bit-identically, in the narrowest exact dtypes.

        Saved: slot layout (segment ids are (cell, slot)), LIFO free lists, synapses in order
        with their f32 permanences (as an index into the table of distinct values), which
        synapses lost their forward entry, the forward index's lists as they are (cheaper to
        store than to rebuild), counters and duty-cycle caches, the t cell states,
        column confidences, both pattern queues, pending segment updates, scalars and the RNG.
        Not saved, because every step overwrites them before reading: the t-1, backup and
        candidate cell states, cell confidences (nothing reads them) and all scratch arrays.
        """
        a = self._a
        c = self._config
        n_cells = c["num_columns"] * c["cells_per_column"]
        cell_dtype = _uint_dtype(n_cells - 1)
        col_dtype = _uint_dtype(c["num_columns"] - 1)
        n = int(a.s[k.S_N_SLOTS])
        stride = int(a.p[k.P_STRIDE])
        src, perm_values, perm_index, missing = k.pack_synapses(a)
        fwd_counts, fwd_entries = k.pack_forward_index(a)
        n_upd = int(a.s[k.S_N_UPDATES])
        upd_mask = np.arange(stride)[None, :] < a.upd_len[:n_upd, None]
        conf_cols = np.sort(a.col_list[k.CONF_T, : a.col_count[k.CONF_T]])
        narrowed = {
            "cell": lambda _: cell_dtype,
            "iteration": lambda _: _uint_dtype(int(a.s[k.S_N_LRN_ITERATIONS])),
            "max": lambda values: _uint_dtype(int(values.max(initial=0))),
            "stride": lambda _: _uint_dtype(stride),
            "same": lambda values: values.dtype,
        }

        def rows(saved: str, count: int) -> dict[str, np.ndarray]:
            out = {}
            for field in _FIELDS:
                if field.saved == saved:
                    values = getattr(a, field.name)[:count]
                    out[field.name] = values.astype(narrowed[field.narrow](values))
            return out

        state: dict[str, Any] = {"format": STATE_FORMAT, "config": dict(c)}
        state.update({key: int(a.s[i]) for key, i in _SAVED_SCALARS})
        state["float_scalars"] = a.sf.copy()
        state["rng"] = a.rng.astype(np.uint32)
        state.update(rows("segments", n))
        state["free_segments"] = self._free_segments_in_push_order()
        state["syn_src"] = src.astype(cell_dtype)
        state["syn_perm_values"] = perm_values
        state["syn_perm_index"] = perm_index.astype(_uint_dtype(max(perm_values.size - 1, 0)))
        state["syn_missing_forward"] = missing.astype(_uint_dtype(max(src.size, 1)))
        state["fwd_counts"] = fwd_counts.astype(_uint_dtype(int(fwd_counts.max(initial=0))))
        state["fwd_entries"] = fwd_entries.astype(_uint_dtype(max(2 * n - 1, 0)))
        for key, set_id in _SAVED_SETS:
            state[key] = np.sort(self._members(set_id)).astype(cell_dtype)
        state["conf_columns"] = conf_cols.astype(col_dtype)
        state["conf_values"] = a.col_conf[k.CONF_T, conf_cols].copy()
        for prefix, len_key in _QUEUES:
            queue, lengths = getattr(a, f"{prefix}_q"), getattr(a, f"{prefix}_q_len")
            rows_used = int(a.s[len_key])
            state[f"{prefix}_queue_len"] = lengths[:rows_used].astype(col_dtype)
            state[f"{prefix}_queue"] = np.concatenate(
                [queue[i, : lengths[i]] for i in range(rows_used)] or [np.zeros(0, np.int32)]
            ).astype(col_dtype)
        state.update(rows("updates", n_upd))
        state["upd_src"] = a.upd_src[:n_upd][upd_mask].astype(cell_dtype)
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> BacktrackingTM:
        """Rebuild a TM from :meth:`get_state`'s dict (slot lists and list capacities included)."""
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"unsupported BacktrackingTM state format {state.get('format')!r}")
        tm = cls.__new__(cls)
        tm._config = cls._checked_config(dict(state["config"]))
        seg_len = np.asarray(state["seg_len"], dtype=np.int32)
        n = seg_len.size
        n_upd = len(state["upd_len"])
        # small headroom: _reserve grows the arrays by half once a step could outrun it
        tm._a = tm._allocate(segment_capacity=n + 1024, synapse_capacity=0)
        a = tm._a
        for key, i in _SAVED_SCALARS:
            a.s[i] = state[key]
        a.sf[:] = np.asarray(state["float_scalars"], dtype=np.float32)
        rng = np.asarray(state["rng"])
        if rng.shape != (STATE_LENGTH,):
            raise ValueError(f"TM RNG state must have {STATE_LENGTH} words, got {rng.shape}")
        a.rng[:] = rng.astype(np.uint64)
        for field in _FIELDS:
            count = {"segments": n, "updates": n_upd}.get(field.saved)
            if count is not None:
                getattr(a, field.name)[:count] = state[field.name]

        stride = int(a.p[k.P_STRIDE])
        if n and int(seg_len.max()) > stride:
            raise ValueError("a segment in the state is longer than this TM's synapse stride")
        src = np.asarray(state["syn_src"])  # uint16/uint32 as saved: no conversion copy
        if src.size != int(seg_len.sum()):
            raise ValueError("synapse arrays do not match the segment lengths")
        n_lists = a.cell_slot_start.shape[0]
        fwd_counts = np.asarray(state["fwd_counts"], dtype=np.int32)
        fwd_entries = np.asarray(state["fwd_entries"], dtype=np.int32)
        missing = np.asarray(state["syn_missing_forward"], dtype=np.int64)
        if (
            fwd_counts.shape != (n_lists,)
            or int(fwd_counts.sum()) != fwd_entries.size
            or fwd_entries.size != src.size - missing.size
            or (fwd_entries.size and int(fwd_entries.max()) >= 2 * n)
        ):
            raise ValueError("the forward index in the state does not match its synapses")
        tm._max_active = int(np.asarray(state["lrn_queue_len"]).max(initial=0))
        margin = tm._synapse_margin(tm._max_active)
        syn_size = tm._synapse_pool_size(src.size, margin)
        tm._a = a = a._replace(
            slot_pool=_fresh_pages(2 * n + 4 * n_lists + 1024, np.int32),
            fwd_pool=_fresh_pages(2 * src.size + 4 * n_lists + 1024, np.int32),
            syn_src=_fresh_pages(syn_size, a.syn_src.dtype),
            syn_perm=_fresh_pages(syn_size, np.float32),
        )
        k.unpack_synapses(
            a,
            seg_len,
            src,
            np.asarray(state["syn_perm_values"], dtype=np.float32),
            np.asarray(state["syn_perm_index"]),
            missing,
            fwd_counts,
            fwd_entries,
        )
        for g in np.asarray(state["free_segments"], dtype=np.int64):
            cell = a.seg_cell[g]
            a.seg_free_next[g] = a.cell_free_head[cell]
            a.cell_free_head[cell] = g
            a.seg_is_free[g] = 1

        for key, set_id in _SAVED_SETS:
            tm._set_members(set_id, np.asarray(state[key], dtype=np.int32))
        conf_cols = np.asarray(state["conf_columns"], dtype=np.int32)
        a.col_list[k.CONF_T, : conf_cols.size] = conf_cols
        a.col_count[k.CONF_T] = conf_cols.size
        a.col_conf[k.CONF_T, conf_cols] = np.asarray(state["conf_values"], dtype=np.float32)
        for prefix, len_key in _QUEUES:
            queue, queue_lengths = getattr(a, f"{prefix}_q"), getattr(a, f"{prefix}_q_len")
            lengths = np.asarray(state[f"{prefix}_queue_len"], dtype=np.int64)
            flat = np.asarray(state[f"{prefix}_queue"], dtype=np.int32)
            offsets = np.concatenate([[0], np.cumsum(lengths)])
            for i, m in enumerate(lengths):
                queue[i, :m] = flat[offsets[i] : offsets[i + 1]]
                queue_lengths[i] = m
            a.s[len_key] = lengths.size
        upd_mask = np.arange(stride)[None, :] < a.upd_len[:n_upd, None]
        a.upd_src[:n_upd][upd_mask] = state["upd_src"]
        a.s[k.S_N_UPDATES] = n_upd
        return tm

    def _members(self, set_id: int) -> np.ndarray:
        return self._a.st_list[set_id, : self._a.st_count[set_id]].copy()

    def _set_members(self, set_id: int, cells: np.ndarray) -> None:
        a = self._a
        a.st_flag[set_id, :] = 0
        a.st_flag[set_id, cells] = 1
        a.st_list[set_id, : cells.size] = cells
        a.st_count[set_id] = cells.size

    def _free_segments_in_push_order(self) -> np.ndarray:
        """Each cell's free slots, oldest push first, so pushing them again rebuilds the stacks."""
        a = self._a
        out: list[int] = []
        for cell in np.flatnonzero(a.cell_free_head >= 0):
            stack = []
            g = int(a.cell_free_head[cell])
            while g >= 0:
                stack.append(g)
                g = int(a.seg_free_next[g])
            out.extend(reversed(stack))
        return np.asarray(out, dtype=_uint_dtype(max(int(a.s[k.S_N_SLOTS]), 1)))
