"""NuPIC's C++ spatial pooler as NAB and htmengine ran it (spec §3), bit for bit.

Only the configuration those pipelines used is supported: 1-D topology with the potential radius
covering the whole input, global inhibition, boosting disabled (``max_boost = 1``) and stimulus
threshold 0. Within that, every f32 operation, every random draw and every tie-break follows the
original, so active columns match NuPIC's on every record. Active-column duty cycles and boost
factors are not kept: with boosting off they influence nothing (core 0.4.10 does not strip
unlearned columns when ``learn`` is false either).

State is sparse where it pays: each column's potential pool is a fixed-size sorted index row and its
permanences live beside it (``pool_perms[c, j]`` belongs to input ``pool_inputs[c, j]``); the
connected synapses are mirrored input-major so a record's overlaps are 42 row additions. Every
pooler with one parameter set starts from the same seeded tables, shared read-only in the process;
a pooler owns a permanence row only for a column that has learned (a few hundred of 2,048 after a
NAB file), copied from the shared row the first time the column changes.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from numba import njit

from htmengine.htm._jit import entry_kernel
from htmengine.htm.rng import Random, rng_real64, rng_sample

VERSIONS = ("0.5.6", "0.3.4")
_UPDATE_PERIOD = 50  # min duty cycles are refreshed every 50 iterations
_CONNECTED_PCT = 0.5  # share of the pool initialised connected (initConnectedPct)
_F32 = np.float32


@njit(cache=True)
def _store_column(
    inputs: np.ndarray,
    row: np.ndarray,
    connected_by_input: np.ndarray,
    column: int,
    perms: np.ndarray,
    raise_perms: bool,
    connected_perm: np.float32,
    trim_threshold: np.float32,
) -> None:
    """NuPIC's updatePermanencesForColumn_ (raise loop is a clip at stimulus threshold 0).

    ``row`` is the column's stored permanence row (``inputs`` its pool), updated in place.
    Invariant: ``connected_by_input[i, c] == (stored permanence >= connected_perm)`` (trimming never
    crosses the threshold), so the mirror is only written where connectedness flips.
    """
    zero = np.float32(0.0)
    one = np.float32(1.0)
    flips = 0
    for j in range(perms.shape[0]):  # branch-free passes: this loop is most of the pooler's time
        p = perms[j]
        if raise_perms:
            p = min(max(p, zero), one)
            perms[j] = p
        flips += (p >= connected_perm) != (row[j] >= connected_perm)
    if flips:
        for j in range(perms.shape[0]):
            connected = perms[j] >= connected_perm
            if connected != (row[j] >= connected_perm):
                connected_by_input[inputs[j], column] = 1 if connected else 0
    for j in range(perms.shape[0]):
        p = min(perms[j], one)
        row[j] = p if p >= trim_threshold else zero


@entry_kernel
@njit(cache=True)
def _initialize(
    rng_state: np.ndarray,
    pool_inputs: np.ndarray,
    pool_perms: np.ndarray,
    connected_by_input: np.ndarray,
    tie_breaker: np.ndarray,
    centred_pools: bool,
    connected_perm: np.float32,
    trim_threshold: np.float32,
) -> None:
    """Draw the tie-breakers, pools and initial permanences in NuPIC's exact RNG order."""
    num_columns, pool_size = pool_inputs.shape
    num_inputs = connected_by_input.shape[0]
    for c in range(num_columns):
        tie_breaker[c] = np.float32(0.01 * rng_real64(rng_state))
    ratio = np.float32(num_inputs) / np.float32(num_columns)
    one_minus_connected = np.float32(1.0) - connected_perm
    population = np.empty(num_inputs, dtype=np.int64)
    in_pool = np.zeros(num_inputs, dtype=np.uint8)
    perms = np.empty(pool_size, dtype=np.float32)
    for c in range(num_columns):
        start = int(np.floor((c + 0.5) * ratio)) if centred_pools else 0
        for i in range(num_inputs):
            population[i] = (start + i) % num_inputs
        pool = np.sort(rng_sample(rng_state, population, pool_size))
        in_pool[:] = 0
        for j in range(pool_size):
            pool_inputs[c, j] = pool[j]
            in_pool[pool[j]] = 1
        j = 0
        for i in range(num_inputs):
            if in_pool[i] == 0:
                continue
            if rng_real64(rng_state) <= _CONNECTED_PCT:
                p = np.float32(connected_perm + one_minus_connected * rng_real64(rng_state))
            else:
                p = np.float32(connected_perm * rng_real64(rng_state))
            scaled = np.float32(p * np.float32(100000.0))
            p = np.float32(np.float32(np.int64(scaled)) / np.float32(100000.0))
            if p < trim_threshold:
                p = np.float32(0.0)
            perms[j] = p
            j += 1
        _store_column(
            pool_inputs[c],
            pool_perms[c],
            connected_by_input,
            c,
            perms,
            True,
            connected_perm,
            trim_threshold,
        )


@entry_kernel
@njit(cache=True)
def _overlaps(connected_by_input: np.ndarray, on_bits: np.ndarray) -> np.ndarray:
    overlaps = np.zeros(connected_by_input.shape[1], dtype=np.int32)
    for b in on_bits:
        row = connected_by_input[b]
        for c in range(overlaps.shape[0]):
            overlaps[c] += row[c]
    return overlaps


@entry_kernel
@njit(cache=True)
def _inhibit_ties_to_higher_index(overlaps: np.ndarray, num_active: int) -> np.ndarray:
    """Top ``num_active`` overlaps; among equal overlaps the higher column index wins (v0.5.6)."""
    counts = np.zeros(overlaps.max() + 1, dtype=np.int64)
    for v in overlaps:
        counts[v] += 1
    threshold = counts.shape[0] - 1
    above = 0
    while above + counts[threshold] < num_active:
        above += counts[threshold]
        threshold -= 1
    at_threshold_wanted = num_active - above
    active = np.empty(num_active, dtype=np.int32)
    n = 0
    for c in range(overlaps.shape[0] - 1, -1, -1):
        v = overlaps[c]
        if v > threshold:
            active[n] = c
            n += 1
        elif v == threshold and at_threshold_wanted > 0:
            active[n] = c
            n += 1
            at_threshold_wanted -= 1
    return np.sort(active)


@entry_kernel
@njit(cache=True)
def _inhibit_with_tie_breaker(
    overlaps: np.ndarray, tie_breaker: np.ndarray, num_active: int
) -> np.ndarray:
    """Top ``num_active`` of overlap + random tie-breaker (f32); exact ties to the lower index (v0.3.4)."""
    scores = overlaps.astype(np.float32) + tie_breaker
    order = np.argsort(-scores, kind="mergesort")
    return np.sort(order[:num_active].astype(np.int32))


@njit(cache=True)
def _own_row(
    column: int,
    initial_perms: np.ndarray,
    own_row: np.ndarray,
    own_perms: np.ndarray,
    n_own: np.ndarray,
) -> np.ndarray:
    """The pooler's own permanence row of ``column``, copied from the shared table on first use."""
    r = own_row[column]
    if r < 0:
        r = n_own[0]
        n_own[0] += 1
        own_row[column] = r
        own_perms[r] = initial_perms[column]
    return own_perms[r]


@entry_kernel
@njit(cache=True)
def _learn(
    on_bits: np.ndarray,
    active: np.ndarray,
    overlaps: np.ndarray,
    pool_inputs: np.ndarray,
    initial_perms: np.ndarray,
    own_row: np.ndarray,
    own_perms: np.ndarray,
    n_own: np.ndarray,
    connected_by_input: np.ndarray,
    overlap_duty: np.ndarray,
    min_overlap_duty: np.float32,
    iteration: int,
    duty_cycle_period: int,
    active_inc: np.float32,
    inactive_dec: np.float32,
    below_stimulus_inc: np.float32,
    connected_perm: np.float32,
    trim_threshold: np.float32,
) -> int:
    """Permanence learning, duty cycles and the weak-column bump of one learning step.

    ``own_perms`` must have room for every active column not yet owned. If it has none for the
    weak columns, the bump is left undone and the number of rows it needs is returned (then
    :func:`_bump_weak_columns` finishes the step); otherwise 0.
    """
    num_inputs = connected_by_input.shape[0]
    pool_size = pool_inputs.shape[1]
    delta = np.full(num_inputs, -inactive_dec, dtype=np.float32)
    for b in on_bits:
        delta[b] = active_inc
    perms = np.empty(pool_size, dtype=np.float32)
    for c in active:
        row = _own_row(c, initial_perms, own_row, own_perms, n_own)
        for j in range(pool_size):
            perms[j] = row[j] + delta[pool_inputs[c, j]]
        _store_column(
            pool_inputs[c],
            row,
            connected_by_input,
            c,
            perms,
            True,
            connected_perm,
            trim_threshold,
        )

    period = min(duty_cycle_period, iteration)
    keep = np.float32(period - 1)
    divisor = np.float32(period)
    weak = 0
    rows_needed = 0
    for c in range(overlap_duty.shape[0]):
        had_overlap = np.float32(1.0) if overlaps[c] > 0 else np.float32(0.0)
        duty = (overlap_duty[c] * keep + had_overlap) / divisor
        overlap_duty[c] = duty
        if duty < min_overlap_duty:
            weak += 1
            rows_needed += own_row[c] < 0
    if weak == 0:
        return 0
    if n_own[0] + rows_needed > own_perms.shape[0]:
        return rows_needed
    _bump_weak_columns(
        pool_inputs,
        initial_perms,
        own_row,
        own_perms,
        n_own,
        connected_by_input,
        overlap_duty,
        min_overlap_duty,
        below_stimulus_inc,
        connected_perm,
        trim_threshold,
    )
    return 0


@njit(cache=True)
def _bump_weak_columns(
    pool_inputs: np.ndarray,
    initial_perms: np.ndarray,
    own_row: np.ndarray,
    own_perms: np.ndarray,
    n_own: np.ndarray,
    connected_by_input: np.ndarray,
    overlap_duty: np.ndarray,
    min_overlap_duty: np.float32,
    below_stimulus_inc: np.float32,
    connected_perm: np.float32,
    trim_threshold: np.float32,
) -> None:
    """Raise every permanence of the columns whose overlap duty is below the minimum.

    ``own_perms`` must have room for every such column not yet owned.
    """
    pool_size = pool_inputs.shape[1]
    perms = np.empty(pool_size, dtype=np.float32)
    for c in range(overlap_duty.shape[0]):
        if overlap_duty[c] < min_overlap_duty:
            row = _own_row(c, initial_perms, own_row, own_perms, n_own)
            for j in range(pool_size):
                perms[j] = row[j] + below_stimulus_inc
            _store_column(
                pool_inputs[c],
                row,
                connected_by_input,
                c,
                perms,
                False,
                connected_perm,
                trim_threshold,
            )


@functools.lru_cache(maxsize=4)
def _initial_tables(
    num_inputs: int,
    num_columns: int,
    pool_size: int,
    seed: int,
    centred_pools: bool,
    connected_perm: np.float32,
    trim_threshold: np.float32,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read-only initial (pool inputs, permanences, connected mirror, tie-breakers).

    NuPIC seeds every pooler with the same fixed seed, so all models with one parameter set start
    from identical tables: they are drawn once per process. Pools and tie-breakers never change and
    are shared; permanences and the connected mirror are copied by each pooler. This is also what
    lets a checkpoint store only the columns that have learned.
    """
    pool_inputs = np.zeros((num_columns, pool_size), dtype=np.int16)
    pool_perms = np.zeros((num_columns, pool_size), dtype=np.float32)
    connected_by_input = np.zeros((num_inputs, num_columns), dtype=np.uint8)
    tie_breaker = np.zeros(num_columns, dtype=np.float32)
    _initialize(
        Random(seed).state,
        pool_inputs,
        pool_perms,
        connected_by_input,
        tie_breaker,
        centred_pools,
        connected_perm,
        trim_threshold,
    )
    tables = (pool_inputs, pool_perms, connected_by_input, tie_breaker)
    for table in tables:
        table.flags.writeable = False
    return tables


class SpatialPooler:
    """Global-inhibition spatial pooler; ``compute`` returns the sorted active column indices."""

    def __init__(
        self,
        num_inputs: int = 454,
        num_columns: int = 2048,
        num_active_columns: int = 40,
        potential_pct: float = 0.8,
        syn_perm_connected: float = 0.2,
        syn_perm_active_inc: float = 0.003,
        syn_perm_inactive_dec: float = 0.0005,
        min_pct_overlap_duty_cycle: float = 0.001,
        duty_cycle_period: int = 1000,
        seed: int = 1956,
        version: str = "0.5.6",
    ) -> None:
        if version not in VERSIONS:
            raise ValueError(
                f"unknown spatial pooler version {version!r}; expected one of {VERSIONS}"
            )
        if not 0 < num_active_columns <= num_columns:
            raise ValueError(
                f"num_active_columns must be in 1..{num_columns}, got {num_active_columns}"
            )
        if not 0.0 < potential_pct <= 1.0:
            raise ValueError(f"potential_pct must be in (0, 1], got {potential_pct}")
        self.num_inputs = num_inputs
        self.num_columns = num_columns
        self.num_active_columns = num_active_columns
        self.potential_pct = potential_pct
        self.syn_perm_connected = syn_perm_connected
        self.syn_perm_active_inc = syn_perm_active_inc
        self.syn_perm_inactive_dec = syn_perm_inactive_dec
        self.min_pct_overlap_duty_cycle = min_pct_overlap_duty_cycle
        self.duty_cycle_period = duty_cycle_period
        self.seed = seed
        self.version = version
        self._derive_constants()
        self._start_from_initial_tables()
        self.overlap_duty = np.zeros(num_columns, dtype=np.float32)
        self.min_overlap_duty = _F32(0.0)
        self.iteration = 0
        self.learn_iteration = 0

    def _derive_constants(self) -> None:
        """The f32 constants NuPIC derives, in its exact order of operations."""
        self._connected = _F32(self.syn_perm_connected)
        self._active_inc = _F32(self.syn_perm_active_inc)
        self._inactive_dec = _F32(self.syn_perm_inactive_dec)
        self._below_stimulus_inc = _F32(float(self._connected) / 10.0)
        self._trim = _F32(float(self._active_inc) / 2.0)
        self._min_pct_overlap = _F32(self.min_pct_overlap_duty_cycle)

    def _start_from_initial_tables(self, owned_rows: int = 0) -> None:
        self.pool_inputs, self._initial_perms, connected, self.tie_breaker = _initial_tables(
            self.num_inputs,
            self.num_columns,
            self._pool_size(),
            self.seed,
            self.version != "0.3.4",
            self._connected,
            self._trim,
        )
        self.connected_by_input = connected.copy()
        # column -> row of _own_perms, -1 while the column keeps its initial permanences
        self._own_row = np.full(self.num_columns, -1, dtype=np.int32)
        self._own_perms = np.empty(
            (owned_rows + self.num_active_columns, self.pool_inputs.shape[1]), dtype=np.float32
        )
        self._n_own = np.zeros(1, dtype=np.int64)

    def _reserve_own_rows(self, new_rows: int) -> None:
        """Room for ``new_rows`` more owned permanence rows (grown by half, never past the columns)."""
        needed = int(self._n_own[0]) + new_rows
        capacity = self._own_perms.shape[0]
        if needed <= capacity:
            return
        grown = np.empty(
            (min(self.num_columns, max(needed, capacity * 3 // 2)), self._own_perms.shape[1]),
            dtype=np.float32,
        )
        grown[:capacity] = self._own_perms
        self._own_perms = grown

    @property
    def touched(self) -> np.ndarray:
        """1 for the columns whose permanences have moved from their initial values."""
        return (self._own_row >= 0).astype(np.uint8)

    @property
    def pool_perms(self) -> np.ndarray:
        """All columns' permanence rows, as a new dense array (for inspection and tests)."""
        perms = self._initial_perms.copy()
        owned = np.flatnonzero(self._own_row >= 0)
        perms[owned] = self._own_perms[self._own_row[owned]]
        return perms

    def _pool_size(self) -> int:
        scaled = float(_F32(self.num_inputs) * _F32(self.potential_pct))  # f32 product, as in C++
        return int(np.floor(scaled + 0.5))  # C round(): half away from zero (positive here)

    def compute(self, input_vector: np.ndarray, learn: bool = True) -> np.ndarray:
        """Active columns (sorted ``int32``) for a dense 0/1 input vector of ``num_inputs``."""
        input_vector = np.asarray(input_vector)
        if input_vector.shape != (self.num_inputs,):
            raise ValueError(
                f"input must have shape ({self.num_inputs},), got {input_vector.shape}"
            )
        return self.compute_on_bits(np.flatnonzero(input_vector).astype(np.int32), learn)

    def compute_on_bits(self, on_bits: np.ndarray, learn: bool = True) -> np.ndarray:
        """Same as ``compute`` but from the sorted on-bit indices the encoders produce."""
        self.iteration += 1
        overlaps = _overlaps(self.connected_by_input, on_bits)
        if self.version == "0.3.4":
            active = _inhibit_with_tie_breaker(overlaps, self.tie_breaker, self.num_active_columns)
        else:
            active = _inhibit_ties_to_higher_index(overlaps, self.num_active_columns)
        if not learn:
            # Core 0.4.10 returns the inhibition winners as they are (no unlearned-column stripping).
            return active
        self.learn_iteration += 1
        self._reserve_own_rows(active.size)
        rows_needed = _learn(
            on_bits,
            active,
            overlaps,
            self.pool_inputs,
            self._initial_perms,
            self._own_row,
            self._own_perms,
            self._n_own,
            self.connected_by_input,
            self.overlap_duty,
            self.min_overlap_duty,
            self.iteration,
            self.duty_cycle_period,
            self._active_inc,
            self._inactive_dec,
            self._below_stimulus_inc,
            self._connected,
            self._trim,
        )
        if rows_needed:
            # rare (own rows grow by half): _bump_weak_columns is not an entry kernel, as _learn
            # links it, so calling it here keeps its (small) linking IR loaded
            self._reserve_own_rows(rows_needed)
            _bump_weak_columns(
                self.pool_inputs,
                self._initial_perms,
                self._own_row,
                self._own_perms,
                self._n_own,
                self.connected_by_input,
                self.overlap_duty,
                self.min_overlap_duty,
                self._below_stimulus_inc,
                self._connected,
                self._trim,
            )
        if self.iteration % _UPDATE_PERIOD == 0:
            self.min_overlap_duty = _F32(self._min_pct_overlap * self.overlap_duty.max())
        return active

    def permanences(self, column: int) -> np.ndarray:
        """Dense f32 permanence row of one column (zeros outside the pool)."""
        row = np.zeros(self.num_inputs, dtype=np.float32)
        owned = self._own_row[column]
        perms = self._own_perms[owned] if owned >= 0 else self._initial_perms[column]
        row[self.pool_inputs[column]] = perms
        return row

    def get_state(self) -> dict[str, Any]:
        """Parameters, counters, duty cycles and the permanences of the columns that learned.

        Pools and the other columns' permanences are the seeded initial tables, rebuilt on load.
        """
        touched = np.flatnonzero(self._own_row >= 0)
        return {
            "num_inputs": self.num_inputs,
            "num_columns": self.num_columns,
            "num_active_columns": self.num_active_columns,
            "potential_pct": self.potential_pct,
            "syn_perm_connected": self.syn_perm_connected,
            "syn_perm_active_inc": self.syn_perm_active_inc,
            "syn_perm_inactive_dec": self.syn_perm_inactive_dec,
            "min_pct_overlap_duty_cycle": self.min_pct_overlap_duty_cycle,
            "duty_cycle_period": self.duty_cycle_period,
            "seed": self.seed,
            "version": self.version,
            "touched_columns": touched.astype(np.uint16),
            "touched_perms": self._own_perms[self._own_row[touched]],
            "overlap_duty": self.overlap_duty.copy(),
            "min_overlap_duty": float(self.min_overlap_duty),
            "iteration": self.iteration,
            "learn_iteration": self.learn_iteration,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> SpatialPooler:
        obj = cls.__new__(cls)
        for name in (
            "num_inputs",
            "num_columns",
            "num_active_columns",
            "duty_cycle_period",
            "seed",
            "iteration",
            "learn_iteration",
        ):
            setattr(obj, name, int(state[name]))
        for name in (
            "potential_pct",
            "syn_perm_connected",
            "syn_perm_active_inc",
            "syn_perm_inactive_dec",
            "min_pct_overlap_duty_cycle",
        ):
            setattr(obj, name, float(state[name]))
        obj.version = str(state["version"])
        if obj.version not in VERSIONS:
            raise ValueError(f"spatial pooler state has unknown version {obj.version!r}")
        obj._derive_constants()
        columns = np.asarray(state["touched_columns"], dtype=np.int64)
        perms = np.asarray(state["touched_perms"], dtype=np.float32)
        obj._start_from_initial_tables(owned_rows=columns.size)
        pool_size = obj.pool_inputs.shape[1]
        if (
            perms.shape != (columns.size, pool_size)
            or (columns.size and (columns.min() < 0 or columns.max() >= obj.num_columns))
            or np.unique(columns).size != columns.size
        ):
            raise ValueError("spatial pooler state: learned columns do not match the parameters")
        obj._own_perms[: columns.size] = perms
        obj._own_row[columns] = np.arange(columns.size, dtype=np.int32)
        obj._n_own[0] = columns.size
        inputs = obj.pool_inputs[columns].ravel()
        obj.connected_by_input[inputs, np.repeat(columns, pool_size)] = (
            perms >= obj._connected
        ).ravel()
        obj.overlap_duty = np.array(state["overlap_duty"], dtype=np.float32)
        if obj.overlap_duty.shape != (obj.num_columns,):
            raise ValueError("spatial pooler state: duty cycles have the wrong shape")
        obj.min_overlap_duty = _F32(state["min_overlap_duty"])
        return obj
