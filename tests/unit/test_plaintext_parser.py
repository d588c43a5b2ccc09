"""The graphite plaintext grammar: the listener's bytes path and the storer's text path agree."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from htmengine.runtime.plaintext_protocol import (
    LINE_TOO_LONG,
    MAX_TIMESTAMP,
    LineError,
    Sample,
    normalize_lines,
    parse_line,
    parse_samples,
)

GOOD = [
    (b"cpu_percent 12.5 1434174392", Sample("cpu_percent", 12.5, 1434174392)),
    (b"a.b.c -1e3 0", Sample("a.b.c", -1000.0, 0)),
    (b"  spaced\t 7   1386288000.021  \r", Sample("spaced", 7.0, 1386288000)),
    (b"replay.2013 3 1370000000", Sample("replay.2013", 3.0, 1370000000)),
    (b"last.second 1 4102444799.9", Sample("last.second", 1.0, 4102444799)),
    ("caf\u00e9.temp 21 1434174392".encode(), Sample("caf\u00e9.temp", 21.0, 1434174392)),
    (b"n" * 255 + b" 1 1", Sample("n" * 255, 1.0, 1)),
]

BAD = [
    (b"only two", "expected 3 fields"),
    (b"one two three four", "expected 3 fields"),
    (b"m abc 1434174392", "value is not a finite number"),
    (b"m nan 1434174392", "value is not a finite number"),
    (b"m -inf 1434174392", "value is not a finite number"),
    (b"m 1 yesterday", "timestamp is not epoch seconds in 1970..2099"),
    (b"m 1 -1", "timestamp is not epoch seconds in 1970..2099"),
    (b"m 1 4102444800", "timestamp is not epoch seconds in 1970..2099"),
    (b"m 1 1e300", "timestamp is not epoch seconds in 1970..2099"),
    (b"m 1 inf", "timestamp is not epoch seconds in 1970..2099"),
    (b"n" * 256 + b" 1 1", "name longer than 255 bytes"),
    ("\u00e9".encode() * 128 + b" 1 1", "name longer than 255 bytes"),
    (b"bell\x07 1 1", "name has non-printable characters"),
    ("nb\u00a0sp 1 1".encode(), "name has non-printable characters"),
    (b"latin1\xe9 1 1", "name is not UTF-8"),
]


@pytest.mark.parametrize(("line", "sample"), GOOD)
def test_good_lines_parse_the_same_on_both_paths(line: bytes, sample: Sample) -> None:
    assert parse_line(line) == sample
    assert parse_line(line.decode()) == sample
    assert parse_samples([line.decode()]).good == [(sample.name, sample.value, sample.timestamp)]
    normalized = normalize_lines([line]).good
    assert len(normalized) == 1
    assert parse_line(normalized[0]) == sample


@pytest.mark.parametrize(("line", "reason"), BAD)
def test_bad_lines_are_rejected_with_a_reason(line: bytes, reason: str) -> None:
    with pytest.raises(LineError) as caught:
        parse_line(line)
    assert caught.value.reason == reason
    parsed = normalize_lines([line])
    assert parsed.good == []
    assert parsed.bad_by_reason == {reason: 1}
    try:
        text = line.decode()
    except UnicodeDecodeError:
        return
    assert parse_samples([text]).bad_count == 1


def test_blank_lines_are_neither_good_nor_bad() -> None:
    parsed = normalize_lines([b"", b"  ", b"\r", b"m 1 2"])
    assert parsed.good == [b"m 1 2"]
    assert parsed.bad_count == 0
    assert parse_line(b"   ") is None


def test_overlong_lines_are_rejected_before_splitting() -> None:
    line = b"m 1" + b" " * 100 + b"2"
    parsed = normalize_lines([line, b"m 1 2"], max_line_bytes=50)
    assert parsed.good == [b"m 1 2"]
    assert parsed.bad_by_reason == {LINE_TOO_LONG: 1}
    assert isinstance(parsed.bad_example, LineError)


def test_normalized_lines_are_canonical() -> None:
    parsed = normalize_lines([b"m\t1.50  1386288000.9\r", b"m 2 +17", b"m 3 0017"])
    assert parsed.good == [b"m 1.50 1386288000", b"m 2 17", b"m 3 0017"]


def test_non_string_items_are_bad_lines_for_the_storer() -> None:
    parsed = parse_samples(["m 1 2", 5, None])  # type: ignore[list-item]
    assert parsed.good == [("m", 1.0, 2)]
    assert parsed.bad_count == 2


names = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp", "Cf", "Co", "Cn")),
    min_size=1,
    max_size=60,
).filter(lambda s: s.isprintable() and len(s.split()) == 1 and s.split()[0] == s)
values = st.floats(allow_nan=False, allow_infinity=False)
timestamps = st.floats(min_value=0, max_value=MAX_TIMESTAMP - 1, allow_nan=False)


@given(names, values, timestamps)
def test_any_valid_sample_round_trips(name: str, value: float, timestamp: float) -> None:
    line = f"{name} {value!r} {timestamp!r}".encode()
    expected = Sample(name, value, math.floor(timestamp))
    assert parse_line(line) == expected
    (normalized,) = normalize_lines([line]).good
    assert parse_line(normalized) == expected
    assert parse_samples([normalized.decode()]).good == [
        (expected.name, expected.value, expected.timestamp)
    ]


@given(st.lists(st.binary(max_size=80), max_size=30))
def test_arbitrary_bytes_never_crash_and_every_line_is_accounted_for(lines: list[bytes]) -> None:
    parsed = normalize_lines(lines)
    blank = sum(1 for line in lines if not line.split())
    assert len(parsed.good) + parsed.bad_count + blank == len(lines)
    for line in parsed.good:
        assert isinstance(parse_line(line), Sample)
