"""What a decoder raises for a message body it cannot use, and the fixed set of reasons.

Every consumer decodes inside the bus's one guard (`htmengine.bus.PoisonGuard`): an
`UndecodableMessage` (or any other error of a pure decoder) sends the message to its queue's
dead-letter queue with the reason, acks it and counts it under `kind`, so one bad message never
stops a consumer. `kind` is one of `REJECT_KINDS` (a bounded /metrics label); `reason` is the
human text of the dead-letter header.
"""

from __future__ import annotations

import json
from typing import Any

# Body is not UTF-8 text.
NOT_UTF8 = "not_utf8"
# Body is not JSON (or not zlib data where compression is expected).
NOT_JSON = "not_json"
# JSON nested deeper than the decoder's recursion limit.
TOO_DEEP = "too_deep"
# A number too long to convert (Python refuses integers of more than 4,300 digits).
NUMBER_TOO_LONG = "number_too_long"
# A body larger than its format allows (e.g. a decompression bomb).
TOO_LARGE = "too_large"
# Valid JSON of the wrong shape or types (a string where a rowid belongs, a missing field...).
BAD_SHAPE = "bad_shape"
# The decoder itself failed in an unforeseen way (still the message's fault: decoders are pure).
UNDECODABLE = "undecodable"
# A decoded message its consumer could not process for a reason other than the database or the
# broker (a value it cannot handle): moved aside rather than redelivered forever.
PROCESSING_FAILED = "processing_failed"

REJECT_KINDS = (
    NOT_UTF8,
    NOT_JSON,
    TOO_DEEP,
    NUMBER_TOO_LONG,
    TOO_LARGE,
    BAD_SHAPE,
    UNDECODABLE,
    PROCESSING_FAILED,
)


class UndecodableMessage(ValueError):
    """A message body no reader can use; `kind` is one of REJECT_KINDS, `reason` says what."""

    def __init__(self, reason: str, kind: str = BAD_SHAPE) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind if kind in REJECT_KINDS else UNDECODABLE


def loads_json_text(text: str) -> Any:
    """`json.loads` that turns every failure into an UndecodableMessage with its kind."""
    try:
        return json.loads(text)
    except RecursionError:
        raise UndecodableMessage("JSON nested too deep", TOO_DEEP) from None
    except ValueError as exc:
        if "digits" in str(exc):  # int(): "Exceeds the limit (4300 digits) for integer string"
            raise UndecodableMessage("number too long", NUMBER_TOO_LONG) from None
        raise UndecodableMessage("not JSON", NOT_JSON) from None


def decode_utf8(body: bytes | bytearray | memoryview | str) -> str:
    """The body as text; UndecodableMessage (not_utf8) if it is not UTF-8."""
    if isinstance(body, str):
        return body
    try:
        return bytes(body).decode("utf-8")
    except UnicodeDecodeError:
        raise UndecodableMessage("not UTF-8", NOT_UTF8) from None


def loads_json(body: bytes | bytearray | memoryview | str) -> Any:
    """A UTF-8 JSON body decoded; UndecodableMessage with its kind otherwise.

    Strictly UTF-8: `json.loads` on bytes would also guess UTF-16/32, which no writer uses.
    """
    return loads_json_text(decode_utf8(body))
