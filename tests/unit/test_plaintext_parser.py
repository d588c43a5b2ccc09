"""The graphite plaintext grammar: the listener's bytes path and the storer's text path agree."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from htmengine.runtime.plaintext_protocol import (
    BAD_TIMESTAMP,
    BAD_VALUE,
    FUTURE_TIMESTAMP,
    LINE_TOO_LONG,
    MAX_TIMESTAMP,
    LineError,
    Sample,
    normalize_lines,
    parse_line,
    parse_samples,
    timestamp_limit,
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


NOW = 1_700_000_000.5  # a fixed "receiving clock" for the future-timestamp rule
DAY = 86400
LIMIT = timestamp_limit(NOW, DAY)


def test_the_future_limit_is_max_future_seconds_ahead_of_the_clock() -> None:
    assert LIMIT == 1_700_000_000 + DAY + 1
    assert timestamp_limit(NOW, 0) == 1_700_000_001
    assert timestamp_limit(MAX_TIMESTAMP, DAY) == MAX_TIMESTAMP  # the format bound still holds


@pytest.mark.parametrize(
    ("line", "accepted"),
    [
        (b"probe 1 1700086400", True),  # exactly a day ahead
        (b"probe 1 1700086400.99", True),
        (b"probe 1 1700086401", False),
        (b"probe 1 1700086401.0", False),
        (b"probe 1 4000000000", False),  # 2096: would silence the metric until then
        (b"probe 1 1370000000", True),  # historic replays stay accepted
        (b"probe 1 0", True),
    ],
)
def test_timestamps_from_the_future_are_rejected_on_both_paths(line: bytes, accepted: bool) -> None:
    parsed = normalize_lines([line], limit=LIMIT)
    samples = parse_samples([line.decode()], limit=LIMIT)
    if accepted:
        assert len(parsed.good) == 1 and len(samples.good) == 1
        assert parse_line(line, limit=LIMIT) is not None
    else:
        assert parsed.bad_by_reason == {FUTURE_TIMESTAMP: 1}
        assert samples.bad_by_reason == {FUTURE_TIMESTAMP: 1}
        with pytest.raises(LineError) as caught:
            parse_line(line, limit=LIMIT)
        assert caught.value.reason == FUTURE_TIMESTAMP


def test_past_the_format_bound_is_a_bad_timestamp_not_a_future_one() -> None:
    parsed = normalize_lines([b"m 1 4102444800", b"m 1 99999999999"], limit=LIMIT)
    assert parsed.bad_by_reason == {BAD_TIMESTAMP: 2}


ABSURD = [
    (b"huge.ts 1 " + b"9" * 5000, BAD_TIMESTAMP),
    (b"huge.ts.frac 1 1370000000." + b"9" * 5000, None),  # valid: floored to 1370000000
    (b"padded.ts 1 " + b"0" * 5000 + b"1370000000", None),  # valid, zero-padded
    (b"huge.value " + b"9" * 5000 + b" 1370000000", BAD_VALUE),  # overflows to inf
    (b"long.value 0." + b"1" * 5000 + b" 1370000000", None),
    (b"neg.huge.ts 1 -" + b"9" * 5000, BAD_TIMESTAMP),
    (b"exp.ts 1 1e999999", BAD_TIMESTAMP),
    (b"nan.ts 1 nan", BAD_TIMESTAMP),
    (b"ctl.value 1\x00 1370000000", BAD_VALUE),
    (b"ctl.ts 1 137\x1c0000000", BAD_TIMESTAMP),
    (b"utf8.value \xd9\xa1 1370000000", BAD_VALUE),  # ARABIC-INDIC DIGIT ONE
    (b"utf8.ts 1 \xd9\xa1", BAD_TIMESTAMP),
    (b"bad.utf8.value \xff 1370000000", BAD_VALUE),
]


@pytest.mark.parametrize(("line", "reason"), ABSURD)
def test_absurd_tokens_are_rejected_alone_on_both_paths(line: bytes, reason: str | None) -> None:
    """A 5,000-digit timestamp used to raise (int() refuses > 4,300 digits) and lose the read."""
    lines = [b"before 1 1370000000", line, b"after 2 1370000001"]
    parsed = normalize_lines(lines, max_line_bytes=20_000)
    expected_good = 3 if reason is None else 2
    assert len(parsed.good) == expected_good
    assert parsed.good[0] == lines[0] and parsed.good[-1] == lines[2]
    assert parsed.bad_by_reason == ({} if reason is None else {reason: 1})
    try:
        texts = [item.decode() for item in lines]
    except UnicodeDecodeError:
        return
    samples = parse_samples(texts)
    assert len(samples.good) == expected_good
    # (str.split() also splits at \x1c..\x1f, so the text path may name another reason)
    assert samples.bad_count == (0 if reason is None else 1)


def test_the_storer_path_takes_only_ascii_numbers_as_the_listener_does() -> None:
    texts = ["m \u0661\u0662 1370000000", "m 1 \uff11\uff13\uff17\uff10000000", "m 1 1370000000"]
    parsed = parse_samples(texts)
    assert parsed.good == [("m", 1.0, 1370000000)]
    assert parsed.bad_by_reason == {BAD_VALUE: 1, BAD_TIMESTAMP: 1}
    assert normalize_lines([t.encode() for t in texts]).bad_by_reason == parsed.bad_by_reason


def test_a_non_string_item_is_rejected_without_formatting_it() -> None:
    # repr() of a 5,000-digit int raises; the rejection must not.
    parsed = parse_samples([10**5000, "m 1 2"])  # type: ignore[list-item]
    assert parsed.good == [("m", 1.0, 2)]
    assert parsed.bad_count == 1


def _good_lines(draw_count: int) -> list[bytes]:
    return [b"good.m%d %d.5 %d" % (i % 3, i, 1_370_000_000 + i) for i in range(draw_count)]


# Garbage that has broken parsers: huge numbers, special floats, control and non-UTF-8 bytes,
# and arbitrary bytes; some of it may happen to be a valid line, which is then kept too.
garbage_token = st.one_of(
    st.binary(max_size=12),
    st.sampled_from(
        [b"nan", b"-inf", b"infinity", b"1e999", b"-0", b"0x10", b"1_0", b"\xff", b"\x00", b"\x1c"]
    ),
    st.integers(min_value=1, max_value=6000).map(lambda n: b"9" * n),
    st.integers(min_value=1, max_value=6000).map(lambda n: b"1." + b"5" * n),
    st.integers(min_value=-(10**30), max_value=10**30).map(lambda n: b"%d" % n),
    st.floats().map(lambda f: repr(f).encode()),
    st.text(max_size=8).map(str.encode),
)
garbage_line = st.one_of(
    st.binary(max_size=80),
    st.lists(garbage_token, min_size=1, max_size=5).map(b" ".join),
    st.tuples(garbage_token, garbage_token, garbage_token).map(b" ".join),
    st.tuples(st.just(b"g"), garbage_token, garbage_token).map(b" ".join),
).filter(lambda line: b"\n" not in line)


@given(
    st.lists(st.tuples(st.booleans(), garbage_line), max_size=40),
    st.integers(min_value=0, max_value=2_000_000_000),
)
def test_good_lines_among_arbitrary_garbage_all_come_out(
    mix: list[tuple[bool, bytes]], now: int
) -> None:
    """No input raises; every good line comes out, in order; every other line is accounted for."""
    good = _good_lines(len(mix))
    lines = [good[i] if is_good else junk for i, (is_good, junk) in enumerate(mix)]
    expected = [good[i] for i, (is_good, _) in enumerate(mix) if is_good]
    limit = timestamp_limit(now, DAY) if now > 1_400_000_000 else MAX_TIMESTAMP
    parsed = normalize_lines(lines, max_line_bytes=20_000, limit=limit)
    blank = sum(1 for line in lines if not line.split())
    assert len(parsed.good) + parsed.bad_count + blank == len(lines)
    assert _is_subsequence(expected, parsed.good)
    for line in parsed.good:
        sample = parse_line(line, limit=limit)
        assert isinstance(sample, Sample)
    # The storer's path over the same lines (the ones that are text) agrees line by line.
    texts = [line.decode() for line in lines if _is_utf8(line)]
    samples = parse_samples(texts, limit=limit)
    assert len(samples.good) + samples.bad_count + sum(1 for t in texts if not t.split()) == len(
        texts
    )
    stored = {(name, ts) for name, _, ts in samples.good}
    assert all((line.split()[0].decode(), int(line.split()[2])) in stored for line in expected)


def _is_subsequence(needles: list[bytes], haystack: list[bytes]) -> bool:
    remaining = iter(haystack)
    return all(any(item == needle for item in remaining) for needle in needles)


def _is_utf8(line: bytes) -> bool:
    try:
        line.decode()
    except UnicodeDecodeError:
        return False
    return True
