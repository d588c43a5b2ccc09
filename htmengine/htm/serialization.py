"""The checkpoint container: a flat dict of NumPy arrays and JSON values <-> one versioned blob.

No pickle: a checkpoint is data, so loading one never runs code. Layout (little-endian)::

    magic      8 bytes  b"\\x89HTMCKP\\n"
    version    uint16   FORMAT_VERSION
    flags      uint16   bit 0: body is zlib-compressed
    crc32      uint32   of the (possibly compressed) body
    body:
      header_len uint32
      header     JSON    {"kind", "values": {key: JSON value}, "arrays": {key: {dtype, shape, offset}}}
      data       each array's bytes at its offset (8-byte aligned), relative to the data start

Anything that does not parse exactly raises :class:`CheckpointFormatError`, never a stray
``KeyError``/``struct.error``, so callers can tell a bad blob from a bug.
"""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any

import numpy as np

MAGIC = b"\x89HTMCKP\n"
FORMAT_VERSION = 1
_FLAG_ZLIB = 1
_PREFIX = struct.Struct("<8sHHI")
_HEADER_LEN = struct.Struct("<I")
_ALIGN = 8
_ARRAY_KINDS = "biuf"  # bool, signed, unsigned, float: plain data only


class CheckpointFormatError(ValueError):
    """The blob is not a checkpoint this code can read (foreign, corrupt, truncated or too new)."""


def pack(state: dict[str, Any], kind: str, compress: bool = False) -> bytes:
    """Serialize ``state`` (string keys; NumPy arrays or JSON-able values) into one blob."""
    values: dict[str, Any] = {}
    arrays: dict[str, dict[str, Any]] = {}
    chunks: list[bytes] = []
    offset = 0
    for key, value in state.items():
        if not isinstance(key, str):
            raise TypeError(f"checkpoint keys must be strings, got {key!r}")
        if isinstance(value, np.ndarray):
            if value.dtype.kind not in _ARRAY_KINDS:
                raise TypeError(f"array {key!r} has unsupported dtype {value.dtype}")
            data = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<")).tobytes()
            arrays[key] = {
                "dtype": value.dtype.newbyteorder("<").str,
                "shape": list(value.shape),
                "offset": offset,
            }
            padding = -len(data) % _ALIGN
            chunks.append(data + b"\0" * padding)
            offset += len(data) + padding
        else:
            values[key] = _plain(value)
    header = json.dumps({"kind": kind, "values": values, "arrays": arrays}).encode()
    body = b"".join([_HEADER_LEN.pack(len(header)), header, *chunks])
    flags = 0
    if compress:
        body = zlib.compress(body, 1)
        flags |= _FLAG_ZLIB
    return _PREFIX.pack(MAGIC, FORMAT_VERSION, flags, zlib.crc32(body)) + body


def unpack(blob: bytes, kind: str) -> dict[str, Any]:
    """Inverse of :func:`pack`; arrays come back writable. Checks magic, version, kind and CRC."""
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise CheckpointFormatError(f"a checkpoint is bytes, got {type(blob).__name__}")
    # no copies of the whole blob: each array is copied once, out of a view (a model's arrays are
    # most of its memory, and a freed multi-MB temporary makes glibc serve later arrays from the heap)
    blob = memoryview(blob).cast("B")
    if len(blob) < _PREFIX.size:
        raise CheckpointFormatError("not a checkpoint: too short")
    magic, version, flags, crc = _PREFIX.unpack_from(blob)
    if magic != MAGIC:
        raise CheckpointFormatError("not an htmengine checkpoint (bad magic bytes)")
    if version != FORMAT_VERSION:
        raise CheckpointFormatError(
            f"checkpoint format version {version} is not supported (this code reads {FORMAT_VERSION})"
        )
    body = blob[_PREFIX.size :]
    if zlib.crc32(body) != crc:
        raise CheckpointFormatError("checkpoint is corrupt or truncated (checksum mismatch)")
    if flags & ~_FLAG_ZLIB:
        raise CheckpointFormatError(f"checkpoint uses unknown flags {flags:#x}")
    try:
        if flags & _FLAG_ZLIB:
            body = memoryview(zlib.decompress(body))
        (header_len,) = _HEADER_LEN.unpack_from(body)
        header = json.loads(bytes(body[_HEADER_LEN.size : _HEADER_LEN.size + header_len]))
        if header.get("kind") != kind:
            raise CheckpointFormatError(
                f"checkpoint holds a {header.get('kind')!r}, expected a {kind!r}"
            )
        data = body[_HEADER_LEN.size + header_len :]
        state: dict[str, Any] = dict(header["values"])
        for key, spec in header["arrays"].items():
            dtype = np.dtype(spec["dtype"])
            if dtype.kind not in _ARRAY_KINDS:
                raise CheckpointFormatError(f"array {key!r} has unsupported dtype {dtype}")
            shape = tuple(int(n) for n in spec["shape"])
            count = int(np.prod(shape, dtype=np.int64))
            start = int(spec["offset"])
            if start < 0 or start + count * dtype.itemsize > len(data):
                raise CheckpointFormatError(f"array {key!r} runs past the end of the checkpoint")
            array = np.frombuffer(data, dtype=dtype, count=count, offset=start).reshape(shape)
            state[key] = array.astype(dtype.newbyteorder("="))  # a writable copy
    except CheckpointFormatError:
        raise
    except (zlib.error, struct.error, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointFormatError(f"checkpoint header or data is malformed: {exc}") from exc
    return state


def _plain(value: Any) -> Any:
    """NumPy scalars become Python numbers so the header is plain JSON; other values pass through."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
