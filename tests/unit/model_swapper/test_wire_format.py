"""The model swapper wire format: the original's exact bytes, lossless round trips, clear errors."""

from __future__ import annotations

import datetime
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from htmengine.model_swapper.model_swapper_interface import (
    ModelCommand,
    ModelCommandResult,
    ModelInferenceResult,
    ModelInputRow,
    WireFormatError,
    decode_datetime,
    decode_request_message,
    decode_result_message,
    encode_datetime,
    encode_request_message,
    encode_result_message,
    new_batch_id,
)


def test_request_message_bytes_match_the_original_layout() -> None:
    requests = [
        ModelCommand("cmd1", "defineModel", {"a": 1}),
        ModelInputRow(7, [datetime.datetime(2013, 9, 21, 2, 24, 21, 5), 1.5]),
    ]
    body = encode_request_message("b1", requests)
    assert body == (
        b'b1\n[["mc", "cmd1", "defineModel", {"a": 1}], ["i", 7, [[1379730261, 5], 1.5], [0]]]'
    )


def test_result_message_bytes_match_the_original_layout() -> None:
    results = [
        ModelCommandResult("c", "deleteModel", 0),
        ModelCommandResult("d", "defineModel", 2, errorMessage="exists"),
        ModelInferenceResult(3, 0, 0.25),
        ModelInferenceResult(4, 1, errorMessage="boom"),
    ]
    body = encode_result_message("m1", results)
    assert body == (
        b'm1\n[["mcR", "c", "deleteModel", 0, null, null], '
        b'["mcR", "d", "defineModel", 2, null, "exists"], '
        b'["iRv2", 3, 0, 0.25, null, null], ["iRv2", 4, 1, null, "boom", null]]'
    )


def test_request_round_trip_keeps_order_and_datetimes() -> None:
    when = datetime.datetime(2024, 2, 29, 23, 59, 59, 999999)
    requests = [
        ModelInputRow(1, [when, 10.0]),
        ModelCommand(5, "deleteModel"),
        ModelInputRow(2, [when + datetime.timedelta(seconds=300), -3]),
    ]
    batch_id, items = decode_request_message(encode_request_message("xyz", requests))
    assert batch_id == "xyz"
    assert list(items) == requests


def test_result_round_trip() -> None:
    results = [
        ModelInferenceResult(9, 0, 0.5, None, {"1": 3.0}),
        ModelCommandResult("c", "defineModel", 0, args={"x": [1, 2]}),
    ]
    model_id, items = decode_result_message(encode_result_message("abc", results))
    assert model_id == "abc"
    assert list(items) == results


def test_legacy_inference_result_decodes_without_predictions() -> None:
    body = 'm\n[["iR", 11, 0, 0.75, null]]'
    _, (item,) = decode_result_message(body)
    assert item == ModelInferenceResult(11, 0, 0.75, None, None)


def test_batch_ids_are_uuid1_hex() -> None:
    first, second = new_batch_id(), new_batch_id()
    assert len(first) == 32 and first != second
    int(first, 16)


@given(
    st.datetimes(min_value=datetime.datetime(1970, 1, 1), max_value=datetime.datetime(2200, 1, 1))
)
def test_datetime_codec_is_lossless(when: datetime.datetime) -> None:
    state = encode_datetime(when)
    assert json.loads(json.dumps(state)) == state
    assert decode_datetime(state) == when


def test_aware_datetime_is_encoded_as_utc() -> None:
    aware = datetime.datetime(
        2020, 1, 1, 1, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=1))
    )
    assert decode_datetime(encode_datetime(aware)) == datetime.datetime(2020, 1, 1, 0, 0)


@pytest.mark.parametrize(
    "body",
    [
        b"no header line",
        b"b\nnot json",
        b'b\n{"a": 1}',
        b'b\n[["zz", 1]]',
        b'b\n[["i", 1, [1.0]]]',
        b'b\n[["i", 1, [[1, 2, 3], 1.0], [0]]]',
        b'b\n[["mcR", "c", "m", 0, null, null]]',
    ],
)
def test_malformed_request_messages_raise_wire_format_error(body: bytes) -> None:
    with pytest.raises(WireFormatError):
        decode_request_message(body)


def test_result_item_invariants() -> None:
    with pytest.raises(WireFormatError):
        ModelInferenceResult(1, 0)  # success without a score
    with pytest.raises(WireFormatError):
        ModelInferenceResult(1, 1, 0.5)  # error without a message
    with pytest.raises(WireFormatError):
        ModelCommandResult("c", "m", 3, args={"a": 1}, errorMessage="x")
    with pytest.raises(WireFormatError):
        ModelInputRow(1, [])
