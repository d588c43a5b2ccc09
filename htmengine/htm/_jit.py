"""Numba housekeeping: give back the compiler memory that cached entry kernels keep pinned.

When Numba loads a kernel from its on-disk cache it parses the kernel's whole optimised LLVM module
back into memory and keeps it for the life of the process, only so that the kernel could later be
inlined into *another* jitted function. For the TM's ``tm_compute`` that module is ~11 MiB, a third
of what a process holding one model may use. An *entry* kernel is called from Python only, never
from jitted code, so nothing will ever link it: its module can go. The machine code stays loaded.

Only kernels registered here (by the module that defines them, which knows they are entries) are
touched. Dropping the module of a kernel that some later compilation *does* link would make that
compilation fail with Numba's "library unfit for linking", so callees must never be registered.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from typing import Any

_entry_kernels: list[Any] = []
_overloads_seen: list[int] = []  # per entry kernel: how many overloads were already handled


def entry_kernel(dispatcher: Callable) -> Callable:
    """Register a jitted function that is called from Python only (use above ``@njit``)."""
    _entry_kernels.append(dispatcher)
    _overloads_seen.append(0)
    return dispatcher


def release_compiler_memory() -> int:
    """Drop the linking IR of every entry kernel overload loaded so far; how many were dropped.

    Cheap when there is nothing new (one ``len`` per kernel), so callers may call it after each
    step. Walking the overloads is not: iterating Numba's OrderedDict hashes each signature, and
    the TM's (a tuple of 67 array types) takes ~50 us.
    """
    dropped = 0
    for index, dispatcher in enumerate(_entry_kernels):
        count = len(dispatcher.overloads)
        if count == _overloads_seen[index]:
            continue
        _overloads_seen[index] = count
        for result in dispatcher.overloads.values():
            library = getattr(result, "library", None)
            # Numba's private attribute (numba 0.68, pinned): the module kept for linking only
            if getattr(library, "_shared_module", None) is not None:
                library._shared_module = None
                dropped += 1
    if dropped:
        _return_free_heap_to_os()
    return dropped


def _return_free_heap_to_os() -> None:
    """LLVM frees the module into malloc's heap; glibc keeps it resident unless asked to trim."""
    if _malloc_trim is not None:
        _malloc_trim(0)


def _find_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None


_malloc_trim = _find_malloc_trim()
