"""The model's input encoders, bit-faithful to NuPIC (spec §2).

``MultiEncoder`` concatenates a time-of-day ``DateEncoder`` (bits 0..53) and a
``RandomDistributedScalarEncoder`` (bits 54..453). Every ``encode`` returns the **sorted on-bit
indices** as ``int32`` (the spatial pooler and the traces both speak indices); ``to_dense`` turns them
into the 0/1 ``uint8`` vector when one is needed.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import numpy as np
from numba import njit

from htmengine.htm._jit import entry_kernel
from htmengine.htm.rng import Random, rng_shuffle, rng_uint32

_MAX_BUCKETS = 1000  # NuPIC's INITIAL_BUCKETS: bucket indices are clipped into [0, 999]
_MIDDLE_BUCKET = _MAX_BUCKETS // 2
_MAX_OVERLAP = 2


def python2_round(value: float) -> int:
    """Round half away from zero on the exact double, as Python 2's ``round`` did."""
    floor = math.floor(value)
    fraction = value - floor
    if value >= 0:
        return int(floor) + 1 if fraction >= 0.5 else int(floor)
    return int(floor) + 1 if fraction > 0.5 else int(floor)


def to_dense(on_bits: np.ndarray, width: int) -> np.ndarray:
    """0/1 ``uint8`` vector of ``width`` with ``on_bits`` set."""
    dense = np.zeros(width, dtype=np.uint8)
    dense[on_bits] = 1
    return dense


@njit(cache=True)
def _representation_ok(
    buckets: np.ndarray, min_index: int, max_index: int, new_index: int, member: np.ndarray, w: int
) -> bool:
    """NuPIC's overlap rule for a candidate bucket against every existing bucket."""
    for j in range(min_index, max_index + 1):
        overlap = 0
        for k in range(w):
            overlap += member[buckets[j, k]]
        distance = abs(j - new_index)
        if distance < w:
            if overlap != w - distance:
                return False
        elif overlap > _MAX_OVERLAP:
            return False
    return True


@njit(cache=True)
def _new_representation(
    rng_state: np.ndarray,
    buckets: np.ndarray,
    min_index: int,
    max_index: int,
    new_index: int,
    neighbour: int,
    n: int,
) -> None:
    """Fill ``buckets[new_index]`` from its neighbour by redrawing one slot until the rule holds."""
    w = buckets.shape[1]
    slot = new_index % w
    candidate = buckets[neighbour].copy()
    in_neighbour = np.zeros(n, dtype=np.uint8)
    for k in range(w):
        in_neighbour[candidate[k]] = 1
    member = in_neighbour.copy()
    replaced = candidate[slot]
    member[replaced] = 0
    while True:
        bit = rng_uint32(rng_state, n)
        if in_neighbour[bit] == 0:
            member[bit] = 1
            if _representation_ok(buckets, min_index, max_index, new_index, member, w):
                candidate[slot] = bit
                buckets[new_index] = candidate
                return
            member[bit] = 0


@entry_kernel
@njit(cache=True)
def _ensure_bucket(
    rng_state: np.ndarray, buckets: np.ndarray, bounds: np.ndarray, index: int, n: int
) -> None:
    """Create ``index`` and every bucket between it and the current range, nearest first."""
    while index < bounds[0]:
        new_index = bounds[0] - 1
        _new_representation(rng_state, buckets, bounds[0], bounds[1], new_index, new_index + 1, n)
        bounds[0] = new_index
    while index > bounds[1]:
        new_index = bounds[1] + 1
        _new_representation(rng_state, buckets, bounds[0], bounds[1], new_index, new_index - 1, n)
        bounds[1] = new_index


class RandomDistributedScalarEncoder:
    """NuPIC's RDSE: the first value encoded becomes the centre bucket; buckets grow on demand.

    Bucket representations are ordered lists of ``w`` bit indices (the order decides which slot a
    new neighbour replaces), created with draws from NuPIC's ``Random(seed)`` in request order.
    """

    def __init__(
        self,
        resolution: float,
        w: int = 21,
        n: int = 400,
        seed: int = 42,
        offset: float | None = None,
    ) -> None:
        if w <= 0 or w % 2 == 0:
            raise ValueError(f"w must be a positive odd integer, got {w}")
        if not resolution > 0:
            raise ValueError(f"resolution must be positive, got {resolution}")
        if n <= 6 * w:
            raise ValueError(f"n must be an int strictly greater than 6*w, got n={n}, w={w}")
        self.resolution = float(resolution)
        self.w = w
        self.n = n
        self.seed = seed
        self.offset = offset
        self._rng = Random(seed)
        self._buckets = np.zeros((_MAX_BUCKETS, w), dtype=np.int32)
        self._bounds = np.array([_MIDDLE_BUCKET, _MIDDLE_BUCKET], dtype=np.int64)
        permutation = np.arange(n, dtype=np.int64)
        rng_shuffle(self._rng.state, permutation)
        self._buckets[_MIDDLE_BUCKET] = permutation[:w]

    @property
    def min_index(self) -> int:
        return int(self._bounds[0])

    @property
    def max_index(self) -> int:
        return int(self._bounds[1])

    def bucket_bits(self, index: int) -> np.ndarray:
        """The ordered bit list of an existing bucket (for inspection and tests)."""
        if not self.min_index <= index <= self.max_index:
            raise KeyError(f"bucket {index} has not been created")
        return self._buckets[index].copy()

    def bucket_index(self, value: float | None) -> int | None:
        """Bucket of ``value``, or None for a missing value; sets the offset on first use."""
        if value is None or math.isnan(value):
            return None
        if self.offset is None:
            self.offset = value
        scaled = (value - self.offset) / self.resolution
        # Anything this far out is clipped anyway; keeps infinities out of the rounding.
        scaled = min(max(scaled, -2.0 * _MAX_BUCKETS), 2.0 * _MAX_BUCKETS)
        index = _MIDDLE_BUCKET + python2_round(scaled)
        return min(max(index, 0), _MAX_BUCKETS - 1)

    def encode(self, value: float | None) -> np.ndarray:
        """Sorted on-bit indices (of ``n``); empty for a missing value."""
        index = self.bucket_index(value)
        if index is None:
            return np.empty(0, dtype=np.int32)
        if not self._bounds[0] <= index <= self._bounds[1]:
            _ensure_bucket(self._rng.state, self._buckets, self._bounds, index, self.n)
        return np.sort(self._buckets[index])

    def get_state(self) -> dict[str, Any]:
        lo, hi = self.min_index, self.max_index
        return {
            "resolution": self.resolution,
            "w": self.w,
            "n": self.n,
            "seed": self.seed,
            "offset": self.offset,
            "min_index": lo,
            "max_index": hi,
            "buckets": self._buckets[lo : hi + 1].astype(np.uint16),
            "rng": self._rng.state.copy(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RandomDistributedScalarEncoder:
        obj = cls.__new__(cls)
        obj.resolution = float(state["resolution"])
        obj.w = int(state["w"])
        obj.n = int(state["n"])
        obj.seed = int(state["seed"])
        obj.offset = None if state["offset"] is None else float(state["offset"])
        obj._rng = Random.from_state({"state": state["rng"]})
        lo, hi = int(state["min_index"]), int(state["max_index"])
        buckets = np.asarray(state["buckets"])
        if not 0 <= lo <= hi < _MAX_BUCKETS or buckets.shape != (hi - lo + 1, obj.w):
            raise ValueError("RDSE state: bucket range and bucket table do not match")
        obj._buckets = np.zeros((_MAX_BUCKETS, obj.w), dtype=np.int32)
        obj._buckets[lo : hi + 1] = buckets
        obj._bounds = np.array([lo, hi], dtype=np.int64)
        return obj


class TimeOfDayEncoder:
    """NuPIC's DateEncoder with only ``timeOfDay`` on: a periodic 24-hour scalar encoder.

    ``n = ceil(w * 24 / radius)`` (54 for both radii NuPIC used); seconds are ignored and the
    naive datetime's fields are used as they are (no time-zone conversion).
    """

    def __init__(self, w: int = 21, radius: float = 9.49) -> None:
        if w <= 0 or w % 2 == 0:
            raise ValueError(f"w must be a positive odd integer, got {w}")
        if not radius > 0:
            raise ValueError(f"radius must be positive, got {radius}")
        self.w = w
        self.radius = float(radius)
        self.n = int(math.ceil(w * 24.0 / radius))
        if self.n < w:
            raise ValueError(f"radius {radius} too large for w={w}")
        # Bits depend only on the centre bin, so all n encodings are made once.
        first = np.arange(self.n)[:, None] - w // 2
        self._bits_by_centre = np.sort((first + np.arange(w)) % self.n, axis=1).astype(np.int32)
        self._bits_by_centre.flags.writeable = False

    def encode(self, timestamp: datetime) -> np.ndarray:
        """Sorted on-bit indices (of ``n``) for the timestamp's hour and minute."""
        time_of_day = timestamp.hour + timestamp.minute / 60.0
        return self._bits_by_centre[int(time_of_day * self.n / 24.0)]


class MultiEncoder:
    """Time of day then value, as NuPIC's sensor ordered them (by encoder name)."""

    def __init__(
        self, time_of_day: TimeOfDayEncoder, value: RandomDistributedScalarEncoder
    ) -> None:
        self.time_of_day = time_of_day
        self.value = value

    @property
    def width(self) -> int:
        return self.time_of_day.n + self.value.n

    def encode(self, timestamp: datetime, value: float | None) -> np.ndarray:
        """Sorted on-bit indices of the whole input (of ``width``); value bits may be absent."""
        return np.concatenate(
            (self.time_of_day.encode(timestamp), self.value.encode(value) + self.time_of_day.n)
        ).astype(np.int32)
