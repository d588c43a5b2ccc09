"""The storer's pure decisions: which messages are dead-lettered, which samples are scrubbed."""

from __future__ import annotations

import datetime
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from htmengine.protocol.data_queue import decode_data_message
from htmengine.protocol.errors import UndecodableMessage
from htmengine.protocol.timestamps import to_datetime, to_epoch_seconds
from htmengine.runtime.metric_storer import partition_by_size
from htmengine.runtime.metric_streamer import scrub


def test_original_format_messages_decode_to_their_lines() -> None:
    body = json.dumps({"protocol": "plain", "data": ["cpu_percent 12.5 1434174392"]}).encode()
    assert decode_data_message(body) == ["cpu_percent 12.5 1434174392"]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "not JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"data": []}', "no protocol"),
        (b'{"protocol": "pickle", "data": []}', "unknown protocol 'pickle'"),
        (b'{"protocol": "plain"}', "data is not a list of strings"),
        (b'{"protocol": "plain", "data": "m 1 2"}', "data is not a list of strings"),
        (b'{"protocol": "plain", "data": ["m 1 2", 3]}', "data is not a list of strings"),
    ],
)
def test_unusable_messages_are_rejected_with_a_reason(body: bytes, reason: str) -> None:
    with pytest.raises(UndecodableMessage) as caught:
        decode_data_message(body)
    assert caught.value.reason == reason


def test_scrub_drops_older_and_equal_timestamps_and_counts_them() -> None:
    samples = [(10, 1.0), (20, 2.0), (20, 2.5), (15, 3.0), (30, 4.0), (5, 5.0), (31, 6.0)]
    accepted, out_of_order, duplicate = scrub(samples, last_timestamp=None)
    assert accepted == [(10, 1.0), (20, 2.0), (30, 4.0), (31, 6.0)]
    assert (out_of_order, duplicate) == (2, 1)


def test_scrub_starts_from_the_newest_stored_timestamp() -> None:
    accepted, out_of_order, duplicate = scrub([(29, 1.0), (30, 2.0), (31, 3.0)], 30)
    assert accepted == [(31, 3.0)]
    assert (out_of_order, duplicate) == (1, 1)


@given(st.lists(st.integers(min_value=0, max_value=100)), st.none() | st.integers(0, 100))
def test_scrub_output_is_strictly_increasing_and_accounts_for_every_sample(
    stamps: list[int], last: int | None
) -> None:
    samples = [(ts, float(i)) for i, ts in enumerate(stamps)]
    accepted, out_of_order, duplicate = scrub(samples, last)
    times = [ts for ts, _ in accepted]
    assert times == sorted(set(times))
    assert last is None or all(ts > last for ts in times)
    assert len(accepted) + out_of_order + duplicate == len(samples)
    # A redelivery of the same samples stores nothing.
    assert scrub(samples, times[-1] if times else last)[0] == []


def test_epoch_seconds_round_trip_through_naive_utc_datetimes() -> None:
    assert to_datetime(1434174392) == datetime.datetime(2015, 6, 13, 5, 46, 32)
    assert to_epoch_seconds(to_datetime(1370000000)) == 1370000000
    assert to_datetime(0) == datetime.datetime(1970, 1, 1)


@given(
    st.dictionaries(st.text(min_size=1, max_size=5), st.integers(1, 50), max_size=30),
    st.integers(1, 4),
)
def test_partition_keeps_each_metric_whole_and_balances_sizes(
    sizes: dict[str, int], parts: int
) -> None:
    samples_by_uid = {uid: [(t, 0.0) for t in range(n)] for uid, n in sizes.items()}
    groups = partition_by_size(samples_by_uid, parts)
    assert len(groups) <= parts
    merged = {uid: samples for group in groups for uid, samples in group.items()}
    assert merged == samples_by_uid
    assert sum(len(group) for group in groups) == len(samples_by_uid)
    totals = [sum(len(s) for s in group.values()) for group in groups]
    if totals:
        # Greedy largest-first: no group exceeds another by more than the largest metric.
        assert max(totals) - min(totals) <= max(sizes.values())
