"""The pure formats of htmengine.protocol: round trips, the original's bytes, and every kind of
poison a decoder must refuse with an UndecodableMessage of a known kind (never another error)."""

from __future__ import annotations

import datetime
import json
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from htmengine.protocol import errors
from htmengine.protocol.data_queue import decode_data_message, encode_data_message
from htmengine.protocol.errors import REJECT_KINDS, UndecodableMessage
from htmengine.protocol.model_swapper import (
    ModelInferenceResult,
    ModelInputRow,
    decode_notification,
    decode_request_message,
    decode_result_message,
    encode_notification,
    encode_result_message,
)
from htmengine.protocol.results import (
    MAX_DECOMPRESSED_BYTES,
    deserialize_model_result,
    deserializeModelResult,
    is_command_result,
    result_row,
    serialize_model_result,
)
from htmengine.protocol.timestamps import epoch_parts, to_datetime, to_epoch_seconds

DEEP_JSON = b"[" * 100_000 + b"]" * 100_000
LONG_NUMBER = b"1" * 5000

# (body, kind) every JSON decoder must refuse.
POISON = [
    (b"\xff\xfe\x00garbage", errors.NOT_UTF8),
    (b"not json at all", errors.NOT_JSON),
    (DEEP_JSON, errors.TOO_DEEP),
    (LONG_NUMBER, errors.NUMBER_TOO_LONG),
]


@given(st.integers(min_value=-(10**10), max_value=10**10), st.integers(0, 999_999))
def test_epoch_parts_round_trip_through_naive_utc_datetimes(seconds: int, micros: int) -> None:
    moment = to_datetime(seconds, micros)
    assert moment.tzinfo is None
    assert epoch_parts(moment) == (seconds, micros)
    assert to_epoch_seconds(moment) == seconds


def test_timestamps_agree_with_the_standard_library() -> None:
    moment = datetime.datetime(2015, 6, 13, 5, 46, 32, 500)
    expected = int(moment.replace(tzinfo=datetime.UTC).timestamp())
    assert to_epoch_seconds(moment) == expected == 1434174392
    aware = datetime.datetime(
        2015, 6, 13, 7, 46, 32, tzinfo=datetime.timezone(datetime.timedelta(hours=2))
    )
    assert to_epoch_seconds(aware) == 1434174392


@given(
    st.lists(
        st.text(alphabet=st.characters(blacklist_characters="\n", blacklist_categories=["Cs"]))
    )
)
def test_data_message_round_trip(lines: list[str]) -> None:
    if not lines:
        lines = [""]
    assert decode_data_message(encode_data_message([line.encode() for line in lines])) == lines


@pytest.mark.parametrize(("body", "kind"), POISON)
def test_data_message_poison_is_refused_with_its_kind(body: bytes, kind: str) -> None:
    with pytest.raises(UndecodableMessage) as caught:
        decode_data_message(body)
    assert caught.value.kind == kind


@pytest.mark.parametrize(("body", "kind"), POISON)
def test_swapper_message_poison_is_refused_with_its_kind(body: bytes, kind: str) -> None:
    for decode in (decode_request_message, decode_result_message):
        with pytest.raises(UndecodableMessage) as caught:
            decode(b"id\n" + body)
        assert caught.value.kind == kind
    with pytest.raises(UndecodableMessage) as caught:
        decode_notification(body)
    assert caught.value.kind == kind


@pytest.mark.parametrize(
    "body",
    [
        b'b1\n[["i", "7", [[0, 0], 1.5], [0]]]',  # a string where a rowid belongs
        b'b1\n[["i", true, [[0, 0], 1.5], [0]]]',
        b'b1\n[["i", 7, [[0, 0], 1.5], "x"]]',
        b'b1\n[["i", 7, [[0, 0], 1.5], [5]]]',
        b'b1\n[["i", 7, [["a", 0], 1.5], [0]]]',
        b'b1\n[["i", 7, [[1e300, 0], 1.5], [0]]]',
        b'b1\n[["zz", 1]]',
        b"b1\n[[]]",
        b'b1\n{"a": 1}',
        b"no header line",
        b'b1\n[["iRv2", 1, 0, 0.5, null, null]]',  # a result in a request batch
    ],
)
def test_malformed_request_messages_are_refused(body: bytes) -> None:
    with pytest.raises(UndecodableMessage) as caught:
        decode_request_message(body)
    assert caught.value.kind in REJECT_KINDS


@pytest.mark.parametrize(
    "body",
    [
        b'm\n[["iRv2", "1", 0, 0.5, null, null]]',
        b'm\n[["iRv2", 1, "0", 0.5, null, null]]',
        b'm\n[["iRv2", 1, 0, "high", null, null]]',
        b'm\n[["mcR", "c", "defineModel", 1, null, null]]',  # an error without a message
        b'm\n[["mc", "c", "defineModel", null]]',  # a request in a result batch
    ],
)
def test_malformed_result_messages_are_refused(body: bytes) -> None:
    with pytest.raises(UndecodableMessage):
        decode_result_message(body)


@given(st.binary(max_size=200))
def test_decoders_refuse_any_bytes_with_an_undecodable_message_only(body: bytes) -> None:
    for decode in (
        decode_data_message,
        decode_request_message,
        decode_result_message,
        decode_notification,
        deserialize_model_result,
    ):
        try:
            decode(body)
        except UndecodableMessage as exc:
            assert exc.kind in REJECT_KINDS


def test_notifications_round_trip_and_must_be_strings() -> None:
    assert decode_notification(encode_notification("abc")) == "abc"
    for body in (b"42", b"null", b'""', b'["a"]'):
        with pytest.raises(UndecodableMessage):
            decode_notification(body)


def test_result_message_round_trip_keeps_predictions() -> None:
    results = [
        ModelInferenceResult(3, 0, 0.25, None, {"1": 2.5}),
        ModelInferenceResult(4, 1, None, "x"),
    ]
    assert decode_result_message(encode_result_message("m", results)) == ("m", tuple(results))
    assert ModelInputRow(1, [1.0]).rowID == 1


def test_results_body_is_zlib_json_and_keeps_the_originals_name() -> None:
    row = result_row(7, datetime.datetime(2014, 4, 1), 12.5, 0.25, 0.5, {"1": 42.5})
    message = {"metric": {"uid": "u"}, "results": [row]}
    body = serialize_model_result(message)
    assert json.loads(zlib.decompress(body)) == message
    assert deserializeModelResult is deserialize_model_result
    decoded = deserializeModelResult(body)
    assert decoded["results"][0] == {
        "rowid": 7,
        "ts": 1396310400.0,
        "value": 12.5,
        "rawAnomaly": 0.25,
        "anomaly": 0.5,
        "multiStepBestPredictions": {"1": 42.5},
    }
    assert is_command_result({"dataType": "model-cmd-result"})
    assert not is_command_result(None)


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (b"not zlib", errors.NOT_JSON),
        (zlib.compress(b"\xff\xfe"), errors.NOT_UTF8),
        (zlib.compress(DEEP_JSON), errors.TOO_DEEP),
        (zlib.compress(LONG_NUMBER), errors.NUMBER_TOO_LONG),
        (zlib.compress(b"[1]"), errors.BAD_SHAPE),
        (zlib.compress(b" " * (MAX_DECOMPRESSED_BYTES + 1)), errors.TOO_LARGE),
    ],
)
def test_results_body_poison_is_refused_with_its_kind(body: bytes, kind: str) -> None:
    with pytest.raises(UndecodableMessage) as caught:
        deserialize_model_result(body)
    assert caught.value.kind == kind
