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
from typing import Any

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

    def _allocate(self, segment_capacity: int, synapse_capacity: int) -> k.TMArrays:
        c = self._config
        n_cols = c["num_columns"]
        n_cells = n_cols * c["cells_per_column"]
        stride = c["max_synapses_per_segment"] + c["new_synapse_count"]
        p = np.zeros(k.P_SIZE, dtype=np.int64)
        p[k.P_NCOLS] = n_cols
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
        p[k.P_STRIDE] = stride
        p[k.P_FREEING_034] = 1 if c["version"] == "0.3.4" else 0
        p[k.P_SYN_MOVE_SLACK] = _MOVE_SLACK
        pf = np.zeros(k.PF_SIZE, dtype=np.float32)
        pf[k.PF_INITIAL] = c["initial_perm"]
        pf[k.PF_CONNECTED] = c["connected_perm"]
        pf[k.PF_INC] = c["permanence_inc"]
        pf[k.PF_DEC] = c["permanence_dec"]
        pf[k.PF_MAX] = c["permanence_max"]
        g = -(-segment_capacity // 8) * 8  # activity counts are scanned 8 bytes at a time
        inf_rows = c["max_inf_backtrack"] + 2
        # synapse sources are most of the TM's memory: 16 bits whenever the cell ids fit
        source_dtype = np.uint16 if n_cells <= 1 << 16 else np.int32
        # a cell's slot list: at most max_segments_per_cell, its room at most twice that + 4
        slot_count_dtype = _uint_dtype(2 * c["max_segments_per_cell"] + 4)
        # a segment's synapse count, connected count and room never exceed the stride
        synapse_count_dtype = _uint_dtype(stride)
        lrn_rows = c["max_lrn_backtrack"] + 2
        return k.TMArrays(
            p=p,
            pf=pf,
            s=np.zeros(k.S_SIZE, dtype=np.int64),
            sf=np.zeros(k.SF_SIZE, dtype=np.float32),
            rng=np.zeros(STATE_LENGTH, dtype=np.uint64),
            seg_cell=np.zeros(g, dtype=np.int32),
            seg_slot=np.zeros(g, dtype=_uint_dtype(c["max_segments_per_cell"])),
            seg_len=np.zeros(g, dtype=synapse_count_dtype),
            seg_nconn=np.zeros(g, dtype=synapse_count_dtype),
            seg_seq=np.zeros(g, dtype=np.uint8),
            # activation counts and iterations: 32 bits, as NuPIC's UInt
            seg_total=np.zeros(g, dtype=np.uint32),
            seg_pos=np.zeros(g, dtype=np.uint32),
            seg_last_active=np.zeros(g, dtype=np.uint32),
            seg_dc=np.zeros(g, dtype=np.float32),
            seg_dc_it=np.zeros(g, dtype=np.uint32),
            seg_free_next=np.full(g, -1, dtype=np.int32),
            seg_is_free=np.zeros(g, dtype=np.uint8),
            seg_syn_start=np.zeros(g, dtype=np.int32),
            seg_syn_cap=np.zeros(g, dtype=synapse_count_dtype),
            syn_src=_fresh_pages(synapse_capacity, source_dtype),
            syn_perm=_fresh_pages(synapse_capacity, np.float32),
            cell_slot_start=np.zeros(n_cells, dtype=np.int32),
            cell_slot_len=np.zeros(n_cells, dtype=slot_count_dtype),
            cell_slot_cap=np.zeros(n_cells, dtype=slot_count_dtype),
            slot_pool=np.zeros(4 * n_cells, dtype=np.int32),
            cell_free_head=np.full(n_cells, -1, dtype=np.int32),
            fwd_start=np.zeros(n_cells, dtype=np.int32),
            fwd_len=np.zeros(n_cells, dtype=np.int32),
            fwd_cap=np.zeros(n_cells, dtype=np.int32),
            fwd_pool=np.zeros(8 * n_cells, dtype=np.int32),
            seg_count=np.zeros(g, dtype=np.uint16),
            seg_stale=np.zeros(g, dtype=np.uint8),
            reach_seg=np.zeros(g, dtype=np.int32),
            reach_count=np.zeros(g, dtype=np.int32),
            reach_connected=np.zeros(g, dtype=np.int32),
            st_flag=np.zeros((k.N_STATES, n_cells), dtype=np.uint8),
            st_list=np.zeros((k.N_STATES, n_cells), dtype=np.int32),
            st_count=np.zeros(k.N_STATES, dtype=np.int64),
            col_conf=np.zeros((2, n_cols), dtype=np.float32),
            col_list=np.zeros((2, n_cols), dtype=np.int32),
            col_count=np.zeros(2, dtype=np.int64),
            inf_q=np.zeros((inf_rows, n_cols), dtype=np.int32),
            inf_q_len=np.zeros(inf_rows, dtype=np.int32),
            lrn_q=np.zeros((lrn_rows, n_cols), dtype=np.int32),
            lrn_q_len=np.zeros(lrn_rows, dtype=np.int32),
            upd_cell=np.zeros(n_cols, dtype=np.int32),
            upd_seg=np.zeros(n_cols, dtype=np.int32),
            upd_seq=np.zeros(n_cols, dtype=np.uint8),
            upd_time=np.zeros(n_cols, dtype=np.int64),
            upd_len=np.zeros(n_cols, dtype=np.int32),
            upd_src=np.zeros((n_cols, stride), dtype=source_dtype),
            active_bits=np.zeros((n_cells + 63) // 64, dtype=np.uint64),
            col_flag=np.zeros(n_cols, dtype=np.uint8),
            col_best=np.full(n_cols, -1, dtype=np.int32),
            col_best_count=np.zeros(n_cols, dtype=np.int32),
            scr_src=np.zeros(2 * stride, dtype=np.int32),
            scr_perm=np.zeros(2 * stride, dtype=np.float32),
            scr_dec=np.zeros(2 * stride, dtype=np.int32),
            scr_inc=np.zeros(2 * stride, dtype=np.int32),
            scr_new=np.zeros(2 * stride, dtype=np.int32),
            scr_removed=np.zeros(4 * stride, dtype=np.int32),
            scr_upd=np.zeros(2 * stride, dtype=np.int32),
            scr_pos=np.zeros(2 * stride, dtype=np.int32),
            scr_flip=np.zeros(2 * stride, dtype=np.int32),
            scr_key=np.zeros(2 * stride, dtype=np.float32),
            scr_delete=np.zeros(2 * stride, dtype=np.uint8),
            scr_on=np.zeros(n_cells, dtype=np.int32),
            scr_cand=np.zeros(n_cells, dtype=np.int64),
        )

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
        for name in k.TMArrays._fields:
            if not (name.startswith(("seg_", "reach_"))):
                continue
            old = getattr(a, name)
            shape = (capacity,) + old.shape[1:]
            if name == "seg_free_next":
                new = np.full(shape, -1, dtype=old.dtype)
            else:
                new = np.zeros(shape, dtype=old.dtype)
            new[:n] = old[:n]
            grown[name] = new
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
        lengths = a.seg_len[:n]
        stride = int(a.p[k.P_STRIDE])
        src, perm_values, perm_index, missing = k.pack_synapses(a)
        fwd_counts, fwd_entries = k.pack_forward_index(a)
        iteration_dtype = _uint_dtype(int(a.s[k.S_N_LRN_ITERATIONS]))
        n_upd = int(a.s[k.S_N_UPDATES])
        upd_lengths = a.upd_len[:n_upd]
        upd_mask = np.arange(stride)[None, :] < upd_lengths[:, None]
        inf_n = int(a.s[k.S_INF_QUEUE_LEN])
        lrn_n = int(a.s[k.S_LRN_QUEUE_LEN])
        conf_cols = np.sort(a.col_list[k.CONF_T, : a.col_count[k.CONF_T]])
        state: dict[str, Any] = {
            "format": STATE_FORMAT,
            "config": dict(c),
            "n_iterations": int(a.s[k.S_N_ITERATIONS]),
            "n_lrn_iterations": int(a.s[k.S_N_LRN_ITERATIONS]),
            "pam_counter": int(a.s[k.S_PAM_COUNTER]),
            "learned_seq_length": int(a.s[k.S_LEARNED_SEQ_LENGTH]),
            "float_scalars": a.sf.copy(),
            "rng": a.rng.astype(np.uint32),
            "seg_cell": a.seg_cell[:n].astype(cell_dtype),
            "seg_slot": a.seg_slot[:n].astype(_uint_dtype(c["max_segments_per_cell"])),
            "seg_len": lengths.astype(_uint_dtype(stride)),
            "seg_seq": a.seg_seq[:n].copy(),
            "seg_total": a.seg_total[:n].astype(_uint_dtype(int(a.seg_total[:n].max(initial=0)))),
            "seg_pos": a.seg_pos[:n].astype(_uint_dtype(int(a.seg_pos[:n].max(initial=0)))),
            "seg_last_active": a.seg_last_active[:n].astype(iteration_dtype),
            "seg_dc": a.seg_dc[:n].copy(),
            "seg_dc_it": a.seg_dc_it[:n].astype(iteration_dtype),
            "free_segments": self._free_segments_in_push_order(),
            "syn_src": src.astype(cell_dtype),
            "syn_perm_values": perm_values,
            "syn_perm_index": perm_index.astype(_uint_dtype(max(perm_values.size - 1, 0))),
            "syn_missing_forward": missing.astype(_uint_dtype(max(src.size, 1))),
            "fwd_counts": fwd_counts.astype(_uint_dtype(int(fwd_counts.max(initial=0)))),
            "fwd_entries": fwd_entries.astype(_uint_dtype(max(2 * n - 1, 0))),
            "inf_active": np.sort(self._members(k.INF_ACTIVE)).astype(cell_dtype),
            "inf_predicted": np.sort(self._members(k.INF_PRED)).astype(cell_dtype),
            "lrn_active": np.sort(self._members(k.LRN_ACTIVE)).astype(cell_dtype),
            "lrn_predicted": np.sort(self._members(k.LRN_PRED)).astype(cell_dtype),
            "conf_columns": conf_cols.astype(col_dtype),
            "conf_values": a.col_conf[k.CONF_T, conf_cols].copy(),
            "inf_queue_len": a.inf_q_len[:inf_n].astype(col_dtype),
            "inf_queue": np.concatenate(
                [a.inf_q[i, : a.inf_q_len[i]] for i in range(inf_n)] or [np.zeros(0, np.int32)]
            ).astype(col_dtype),
            "lrn_queue_len": a.lrn_q_len[:lrn_n].astype(col_dtype),
            "lrn_queue": np.concatenate(
                [a.lrn_q[i, : a.lrn_q_len[i]] for i in range(lrn_n)] or [np.zeros(0, np.int32)]
            ).astype(col_dtype),
            "upd_cell": a.upd_cell[:n_upd].astype(cell_dtype),
            "upd_seg": a.upd_seg[:n_upd].copy(),
            "upd_seq": a.upd_seq[:n_upd].copy(),
            "upd_time": a.upd_time[:n_upd].astype(iteration_dtype),
            "upd_len": upd_lengths.astype(_uint_dtype(stride)),
            "upd_src": a.upd_src[:n_upd][upd_mask].astype(cell_dtype),
        }
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
        # small headroom: _reserve grows the arrays by half once a step could outrun it
        tm._a = tm._allocate(segment_capacity=n + 1024, synapse_capacity=0)
        a = tm._a
        a.s[k.S_N_ITERATIONS] = state["n_iterations"]
        a.s[k.S_N_LRN_ITERATIONS] = state["n_lrn_iterations"]
        a.s[k.S_PAM_COUNTER] = state["pam_counter"]
        a.s[k.S_LEARNED_SEQ_LENGTH] = state["learned_seq_length"]
        a.sf[:] = np.asarray(state["float_scalars"], dtype=np.float32)
        rng = np.asarray(state["rng"])
        if rng.shape != (STATE_LENGTH,):
            raise ValueError(f"TM RNG state must have {STATE_LENGTH} words, got {rng.shape}")
        a.rng[:] = rng.astype(np.uint64)

        a.seg_cell[:n] = state["seg_cell"]
        a.seg_slot[:n] = state["seg_slot"]
        a.seg_seq[:n] = state["seg_seq"]
        a.seg_total[:n] = state["seg_total"]
        a.seg_pos[:n] = state["seg_pos"]
        a.seg_last_active[:n] = state["seg_last_active"]
        a.seg_dc[:n] = state["seg_dc"]
        a.seg_dc_it[:n] = state["seg_dc_it"]
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

        for key, set_id in (
            ("inf_active", k.INF_ACTIVE),
            ("inf_predicted", k.INF_PRED),
            ("lrn_active", k.LRN_ACTIVE),
            ("lrn_predicted", k.LRN_PRED),
        ):
            tm._set_members(set_id, np.asarray(state[key], dtype=np.int32))
        conf_cols = np.asarray(state["conf_columns"], dtype=np.int32)
        a.col_list[k.CONF_T, : conf_cols.size] = conf_cols
        a.col_count[k.CONF_T] = conf_cols.size
        a.col_conf[k.CONF_T, conf_cols] = np.asarray(state["conf_values"], dtype=np.float32)
        for prefix, queue, lengths_arr, len_key in (
            ("inf", a.inf_q, a.inf_q_len, k.S_INF_QUEUE_LEN),
            ("lrn", a.lrn_q, a.lrn_q_len, k.S_LRN_QUEUE_LEN),
        ):
            lengths = np.asarray(state[f"{prefix}_queue_len"], dtype=np.int64)
            flat = np.asarray(state[f"{prefix}_queue"], dtype=np.int32)
            offsets = np.concatenate([[0], np.cumsum(lengths)])
            for i, m in enumerate(lengths):
                queue[i, :m] = flat[offsets[i] : offsets[i + 1]]
                lengths_arr[i] = m
            a.s[len_key] = lengths.size
        n_upd = len(state["upd_len"])
        upd_len = np.asarray(state["upd_len"], dtype=np.int32)
        a.upd_cell[:n_upd] = state["upd_cell"]
        a.upd_seg[:n_upd] = state["upd_seg"]
        a.upd_seq[:n_upd] = state["upd_seq"]
        a.upd_time[:n_upd] = state["upd_time"]
        a.upd_len[:n_upd] = upd_len
        upd_mask = np.arange(stride)[None, :] < upd_len[:, None]
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
