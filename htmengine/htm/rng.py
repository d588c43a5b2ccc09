"""NuPIC's random number generator (``nupic::Random``), bit for bit.

Every random draw of the encoders, the spatial pooler and the temporal memory must come from this
generator, in NuPIC's order, or the models diverge from the originals after the first draw. The state
is a small NumPy array so that Numba-compiled code can draw from it directly and so it checkpoints as
plain data.

State layout (``uint64``, length 33): ``s[0..30]`` the lagged-Fibonacci table, ``s[31]`` the front
index ``f``, ``s[32]`` the rear index ``r``. All values are < 2**32.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

STATE_LENGTH = 33
_TABLE = 31
_FRONT = 31
_REAR = 32
_MODULUS = 0xFFFFFFFF  # 2**32 - 1: NuPIC reduces modulo this, not modulo 2**32
_DISCARDED_AT_SEED = 310


@njit(cache=True)
def rng_raw(state: np.ndarray) -> int:
    """One raw 31-bit output; advances ``state`` in place."""
    f = np.int64(state[_FRONT])
    r = np.int64(state[_REAR])
    value = (np.int64(state[f]) + np.int64(state[r])) % _MODULUS
    state[f] = np.uint64(value)
    f += 1
    if f >= _TABLE:
        f = 0
        r += 1
    else:
        r += 1
        if r >= _TABLE:
            r = 0
    state[_FRONT] = np.uint64(f)
    state[_REAR] = np.uint64(r)
    return value >> 1


@njit(cache=True)
def rng_uint32(state: np.ndarray, n: int) -> int:
    """``getUInt32(n)``: one raw value modulo ``n`` (NuPIC's rejection test never fires for n < 2**31)."""
    return rng_raw(state) % n


@njit(cache=True)
def rng_real64(state: np.ndarray) -> float:
    """``getReal64()``: a double in [0, 1) from two raws, low word first."""
    lo = rng_raw(state)
    hi = rng_raw(state)
    return (lo | ((hi & 0xFFFF) << 32)) / 281474976710656.0


@njit(cache=True)
def rng_uint64(state: np.ndarray, n: int) -> int:
    """``getUInt64(n)``: two raws (low first) joined, modulo ``n``; ``n <= 0`` means no reduction."""
    lo = rng_raw(state)
    hi = rng_raw(state)
    value = lo | (hi << 32)
    if n > 0:
        return value % n
    return value


@njit(cache=True)
def rng_sample(state: np.ndarray, population: np.ndarray, k: int) -> np.ndarray:
    """Selection sampling of ``k`` items; the result keeps population order (one draw per item seen)."""
    n = population.shape[0]
    if k > n:
        raise ValueError("sample size exceeds population size")
    out = np.empty(k, dtype=np.int64)
    taken = 0
    for i in range(n):
        if taken >= k:
            break
        if rng_uint32(state, n - i) < k - taken:
            out[taken] = population[i]
            taken += 1
    return out


@njit(cache=True)
def rng_shuffle(state: np.ndarray, arr: np.ndarray) -> None:
    """In-place shuffle in NuPIC's order: position j swaps with j + getUInt32(N - j)."""
    n = arr.shape[0]
    for j in range(n):
        x = rng_uint32(state, n - j)
        tmp = arr[j]
        arr[j] = arr[j + x]
        arr[j + x] = tmp


@njit(cache=True)
def _seed_state(seed: int) -> np.ndarray:
    state = np.zeros(STATE_LENGTH, dtype=np.uint64)
    previous = np.int64(seed % _MODULUS)
    state[0] = np.uint64(previous)
    for i in range(1, _TABLE):
        hi = previous // 127773
        lo = previous % 127773
        t = 16807 * lo - 2836 * hi
        if t < 0:
            t += 2147483647
        previous = t % _MODULUS
        state[i] = np.uint64(previous)
    state[_FRONT] = np.uint64(3)
    state[_REAR] = np.uint64(0)
    for _ in range(_DISCARDED_AT_SEED):
        rng_raw(state)
    return state


def rng_new(seed: int) -> np.ndarray:
    """A fresh generator state seeded like ``nupic::Random(seed)`` (seed must be > 0)."""
    if seed <= 0:
        raise ValueError(
            f"seed must be a positive integer (0 means 'from the clock' in NuPIC): {seed}"
        )
    return _seed_state(int(seed))


class Random:
    """Object wrapper over an ``rng_*`` state array, for non-jitted callers and tests."""

    def __init__(self, seed: int) -> None:
        self.state = rng_new(seed)

    def get_uint32(self, n: int | None = None) -> int:
        """``getUInt32(n)``; without ``n`` the raw value itself."""
        if n is None:
            return int(rng_raw(self.state))
        return int(rng_uint32(self.state, n))

    def get_real64(self) -> float:
        return float(rng_real64(self.state))

    def get_uint64(self, n: int | None = None) -> int:
        return int(rng_uint64(self.state, 0 if n is None else n))

    def sample(self, population: Any, k: int) -> np.ndarray:
        return rng_sample(self.state, np.asarray(population, dtype=np.int64), k)

    def shuffle(self, arr: np.ndarray) -> None:
        rng_shuffle(self.state, arr)

    def get_state(self) -> dict[str, Any]:
        return {"state": self.state.copy()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Random:
        array = np.asarray(state["state"], dtype=np.uint64)
        if array.shape != (STATE_LENGTH,):
            raise ValueError(f"RNG state must have {STATE_LENGTH} words, got shape {array.shape}")
        obj = cls.__new__(cls)
        obj.state = array.copy()
        return obj
