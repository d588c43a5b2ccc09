"""Graphite "plaintext" protocol: the line grammar, its validation, and batching of good lines.

Pure logic shared by the listener (bytes off the wire) and the storer (text lines out of JSON
messages), so both sides accept and reject exactly the same lines.

A line is ``<name> <value> <timestamp>`` separated by whitespace:

* name: printable, non-space characters, at most 255 bytes of UTF-8 (it is copied into VARCHAR(255)
  columns);
* value: a finite float;
* timestamp: Unix epoch seconds from 1970-01-01 up to (not including) 2100-01-01; fractions are
  allowed and dropped (rows keep whole seconds, so the timestamp is floored).

Blank lines are ignored (they are neither samples nor errors).

Timestamps from the future: a sample more than ``max_future_seconds`` ahead of the receiving
clock is rejected (reason `FUTURE_TIMESTAMP`): stored, it would make every later real sample of
its metric "out of order" until that moment comes. Historic replays are accepted. The rule is
`timestamp_limit`; the listener and the storer both apply it through the ``limit`` argument of
`normalize_lines` / `parse_samples`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

MAX_NAME_BYTES = 255
# 2100-01-01T00:00:00Z: the first timestamp no longer accepted.
MAX_TIMESTAMP = 4102444800
DEFAULT_MAX_LINE_BYTES = 16384
DEFAULT_MAX_FUTURE_SECONDS = 86400

# Rejection reasons: a closed set (they are label values of the services' /metrics).
LINE_TOO_LONG = "line too long"
WRONG_FIELD_COUNT = "expected 3 fields"
NAME_TOO_LONG = "name longer than 255 bytes"
NAME_NOT_UTF8 = "name is not UTF-8"
NAME_NOT_PRINTABLE = "name has non-printable characters"
BAD_VALUE = "value is not a finite number"
BAD_TIMESTAMP = "timestamp is not epoch seconds in 1970..2099"
FUTURE_TIMESTAMP = "timestamp too far in the future"
NOT_A_STRING = "line is not a string"
REJECTION_REASONS = (
    LINE_TOO_LONG,
    WRONG_FIELD_COUNT,
    NAME_TOO_LONG,
    NAME_NOT_UTF8,
    NAME_NOT_PRINTABLE,
    BAD_VALUE,
    BAD_TIMESTAMP,
    FUTURE_TIMESTAMP,
    NOT_A_STRING,
)


def timestamp_limit(now: float, max_future_seconds: int) -> int:
    """The first epoch second not accepted at wall-clock time `now` (the future-timestamp rule)."""
    return min(MAX_TIMESTAMP, math.floor(now + max_future_seconds) + 1)


# Printable ASCII except space: a name made only of these needs no further check.
_PRINTABLE_ASCII = bytes(range(0x21, 0x7F))


class LineError(ValueError):
    """A line that breaks the grammar; `reason` is a short stable label (used as a log key)."""

    def __init__(self, reason: str, line: bytes | str) -> None:
        super().__init__(f"{reason}: {line[:200]!r}")
        self.reason = reason
        self.line = line


def _check_name_bytes(name: bytes) -> str | None:
    """The reason a wire name is invalid, or None."""
    if len(name) > MAX_NAME_BYTES:
        return NAME_TOO_LONG
    if not name.translate(None, _PRINTABLE_ASCII):
        return None
    try:
        text = name.decode("utf-8")
    except UnicodeDecodeError:
        return NAME_NOT_UTF8
    if not text.isprintable():
        return NAME_NOT_PRINTABLE
    return None


def _check_name_text(name: str) -> str | None:
    """The reason a text name is invalid, or None."""
    if not name.isprintable():
        return NAME_NOT_PRINTABLE
    if len(name) > MAX_NAME_BYTES or (not name.isascii() and len(name.encode()) > MAX_NAME_BYTES):
        return NAME_TOO_LONG
    return None


def _parse_value(token: bytes | str) -> float | None:
    if not token.isascii():  # float() would take other scripts' digits from a str
        return None
    try:
        value = float(token)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


# Longest all-digit timestamp token read with int(); longer ones (zero-padded or absurd) go
# through float(), which is linear in the length and has no digit limit (int() raises beyond
# sys.int_info.default_max_str_digits, 4300).
_MAX_INT_DIGITS = 18


def _parse_timestamp(token: bytes | str) -> int | None:
    """Whole epoch seconds (floored, >= 0), or None when the token is not such a number.

    The upper bound is the caller's (see `timestamp_limit`).
    """
    if not token.isascii():
        return None
    if token.isdigit() and len(token) <= _MAX_INT_DIGITS:
        return int(token)
    try:
        number = float(token)
    except ValueError:
        return None
    if not math.isfinite(number) or number < 0:
        return None
    return math.floor(number)


def _timestamp_reason(seconds: int | None) -> str:
    """Why a timestamp at or past the caller's limit (or unparseable, None) is rejected."""
    if seconds is None or seconds >= MAX_TIMESTAMP:
        return BAD_TIMESTAMP
    return FUTURE_TIMESTAMP


@dataclass(frozen=True, slots=True)
class Sample:
    """One parsed line: metric name, value, whole epoch seconds (UTC)."""

    name: str
    value: float
    timestamp: int


def parse_line(line: bytes | str, *, limit: int = MAX_TIMESTAMP) -> Sample | None:
    """Parse one line; None for a blank line; LineError when the line breaks the grammar.

    `limit` is the first epoch second not accepted (`timestamp_limit`; default: 2100-01-01).
    """
    fields = line.split()
    if not fields:
        return None
    if len(fields) != 3:
        raise LineError(WRONG_FIELD_COUNT, line)
    name, value_token, ts_token = fields
    if isinstance(name, bytes):
        reason = _check_name_bytes(name)
        text_name = name.decode("utf-8") if reason is None else ""
    else:
        reason = _check_name_text(name)
        text_name = name
    if reason is not None:
        raise LineError(reason, line)
    value = _parse_value(value_token)
    if value is None:
        raise LineError(BAD_VALUE, line)
    timestamp = _parse_timestamp(ts_token)
    if timestamp is None or timestamp >= limit:
        raise LineError(_timestamp_reason(timestamp), line)
    return Sample(text_name, value, timestamp)


@dataclass(slots=True)
class ParsedLines:
    """Result of parsing many lines: the good ones, and how many (with one example) were bad."""

    good: list = field(default_factory=list)
    bad_by_reason: dict[str, int] = field(default_factory=dict)
    bad_example: LineError | None = None

    @property
    def bad_count(self) -> int:
        return sum(self.bad_by_reason.values())

    def reject(self, reason: str, line: bytes | str) -> None:
        self.bad_by_reason[reason] = self.bad_by_reason.get(reason, 0) + 1
        if self.bad_example is None:
            self.bad_example = LineError(reason, line)


def normalize_lines(
    lines: Iterable[bytes],
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    *,
    limit: int = MAX_TIMESTAMP,
) -> ParsedLines:
    """Validate wire lines; `good` holds them normalised as ``name value seconds`` (bytes).

    `limit` is the first epoch second not accepted (`timestamp_limit`; default: 2100-01-01).
    The listener's hot loop: per line one split, one float, one int, no objects beyond the
    output line. The value token is kept as sent (it is a valid float literal); a fractional or
    non-canonical timestamp is replaced by its whole seconds.
    """
    result = ParsedLines()
    good = result.good
    append = good.append
    isfinite = math.isfinite
    for line in lines:
        if len(line) > max_line_bytes:
            result.reject(LINE_TOO_LONG, line)
            continue
        fields = line.split()
        if len(fields) != 3:
            if fields:
                result.reject(WRONG_FIELD_COUNT, line)
            continue
        name, value_token, ts_token = fields
        if len(name) > MAX_NAME_BYTES or name.translate(None, _PRINTABLE_ASCII):
            reason = _check_name_bytes(name)
            if reason is not None:
                result.reject(reason, line)
                continue
        try:
            value = float(value_token)  # bytes: ASCII only
        except ValueError:
            value = math.nan
        if not isfinite(value):
            result.reject(BAD_VALUE, line)
            continue
        if ts_token.isdigit():
            try:
                seconds = int(ts_token)
            except ValueError:  # more digits than int() converts (sys.int_info): float() them
                seconds = _parse_timestamp(ts_token)
                if seconds is None:
                    result.reject(BAD_TIMESTAMP, line)
                    continue
                ts_token = b"%d" % seconds
            if seconds >= limit:
                result.reject(_timestamp_reason(seconds), line)
                continue
            if len(line) == len(name) + len(value_token) + len(ts_token) + 2:
                append(line)
                continue
        else:
            seconds = _parse_timestamp(ts_token)
            if seconds is None or seconds >= limit:
                result.reject(_timestamp_reason(seconds), line)
                continue
            ts_token = b"%d" % seconds
        append(b"%s %s %s" % (name, value_token, ts_token))
    return result


def parse_samples(lines: Iterable[str], *, limit: int = MAX_TIMESTAMP) -> ParsedLines:
    """Parse text lines (the storer's input); `good` holds ``(name, value, seconds)`` tuples.

    `limit` is the first epoch second not accepted (`timestamp_limit`; default: 2100-01-01).
    Anything that is not a str counts as a bad line.
    """
    result = ParsedLines()
    append = result.good.append
    isfinite = math.isfinite
    nan = math.nan
    max_int_digits = _MAX_INT_DIGITS
    for line in lines:
        if not isinstance(line, str):
            result.reject(NOT_A_STRING, f"<{type(line).__name__}>")
            continue
        fields = line.split()
        if len(fields) != 3:
            if fields:
                result.reject(WRONG_FIELD_COUNT, line)
            continue
        name, value_token, ts_token = fields
        if not (len(name) <= MAX_NAME_BYTES and name.isascii() and name.isprintable()):
            reason = _check_name_text(name)
            if reason is not None:
                result.reject(reason, line)
                continue
        try:
            # float() would also take other scripts' digits from a str: ASCII only, as on the wire
            value = float(value_token) if value_token.isascii() else nan
        except ValueError:
            value = nan
        if not isfinite(value):
            result.reject(BAD_VALUE, line)
            continue
        if ts_token.isdigit() and ts_token.isascii() and len(ts_token) <= max_int_digits:
            seconds = int(ts_token)
        else:
            seconds = _parse_timestamp(ts_token)
        if seconds is None or seconds >= limit:
            result.reject(_timestamp_reason(seconds), line)
            continue
        append((name, value, seconds))
    return result


# Resident bytes of one line held in a batch beyond its text: the bytes object's header
# (sys.getsizeof(b"")) and its slot in the batch's list. Buffers bounded "in bytes" count these.
LINE_OVERHEAD_BYTES = 33 + 8


def held_bytes(lines: list[bytes]) -> int:
    """Memory a batch of lines holds (text plus per-line object overhead)."""
    return sum(map(len, lines)) + LINE_OVERHEAD_BYTES * len(lines)


def max_body_bytes(batch_max_bytes: int, batch_max_lines: int) -> int:
    """The largest message body (``{"protocol":"plain","data":[...]}``, JSON with ASCII escapes)
    of a batch of at most `batch_max_lines` lines and `batch_max_bytes` bytes of text.

    A valid line's character costs at most 3 times its UTF-8 bytes in the body (a 2-byte or
    4-byte character becomes 6 or 12 bytes of \\u escapes); each line adds quotes and a comma.
    """
    return 3 * batch_max_bytes + 3 * batch_max_lines + 64


class LineBatcher:
    """Groups good lines into batches of at most `max_lines`, none older than `max_delay` seconds.

    Pure bookkeeping: the caller passes the clock and arms a timer for `deadline`.
    """

    def __init__(self, max_lines: int, max_delay: float) -> None:
        if max_lines < 1:
            raise ValueError(f"max_lines must be >= 1, got {max_lines}")
        if max_delay < 0:
            raise ValueError(f"max_delay must be >= 0, got {max_delay}")
        self.max_lines = max_lines
        self.max_delay = max_delay
        self._pending: list = []
        self._first_added: float | None = None

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def deadline(self) -> float | None:
        """When the pending lines must be flushed (None when nothing is pending)."""
        if self._first_added is None:
            return None
        return self._first_added + self.max_delay

    def add(self, lines: list, now: float) -> list[list]:
        """Queue `lines`; return the batches that are full (and due, when the deadline passed)."""
        if not lines:
            return self.take_due(now)
        if self._first_added is None:
            self._first_added = now
        pending = self._pending
        pending.extend(lines)
        batches = []
        size = self.max_lines
        if len(pending) >= size:
            whole = len(pending) - len(pending) % size
            batches = [pending[i : i + size] for i in range(0, whole, size)]
            del pending[:whole]
            self._first_added = now if pending else None
        batches.extend(self.take_due(now))
        return batches

    def take_due(self, now: float) -> list[list]:
        """The pending lines as one batch if their deadline has passed."""
        deadline = self.deadline
        if deadline is not None and now >= deadline:
            return [self.flush()]
        return []

    def flush(self) -> list:
        """Everything pending, now (empty list when nothing is pending)."""
        batch, self._pending, self._first_added = self._pending, [], None
        return batch


def split_by_bytes(lines: list[bytes], max_bytes: int) -> list[list[bytes]]:
    """`lines` cut, in order, into runs of at most `max_bytes` bytes of text (a longer line
    makes a run of its own)."""
    runs = []
    start = total = 0
    for i, line in enumerate(lines):
        total += len(line)
        if total > max_bytes and i > start:
            runs.append(lines[start:i])
            start, total = i, len(line)
    if start < len(lines):
        runs.append(lines[start:])
    return runs
