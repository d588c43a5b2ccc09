"""The webapp's pure parts: the live fan-out, API key parsing, its settings."""

from __future__ import annotations

import asyncio
import base64
import os
import stat
import zlib

import pytest

from htmengine.config import Config, ConfigError
from htmengine.webapp import settings as webapp_settings
from htmengine.webapp.auth import presented_key
from htmengine.webapp.live import Hub, rows_of_result
from htmengine.webapp.ranking import sort_by_anomaly

INFERENCE = {
    "metric": {"uid": "u1", "name": "cpu"},
    "results": [{"rowid": 7, "ts": 1400000000.0, "value": 3.5, "rawAnomaly": 0.2, "anomaly": 0.5}],
}


def run(coroutine):
    return asyncio.run(coroutine)


def test_rows_of_result_are_api_data_rows() -> None:
    assert rows_of_result(INFERENCE) == [["2014-05-13 16:53:20", 3.5, 0.5, 7, 0.2, 1000]]


def test_hub_sends_a_metrics_rows_only_to_its_followers() -> None:
    async def scenario():
        hub = Hub(client_buffer_bytes=10_000)
        follower, other, everything = hub.subscribe("u1"), hub.subscribe("u2"), hub.subscribe(None)
        hub.publish(INFERENCE, {})
        assert b"event: rows" in follower.take()
        assert other.take() == b""
        assert everything.take() == b""  # the list pages get it coalesced
        hub.flush_latest()
        assert b"event: latest" in everything.take()
        hub.publish(
            {"method": "defineModel", "modelId": "u2", "status": 0},
            {"dataType": "model-cmd-result"},
        )
        assert b"event: model" in other.take() and b"event: model" in everything.take()
        assert follower.take() == b""
        hub.unsubscribe(follower)
        assert hub.subscriber_count == 2

    run(scenario())


def test_a_slow_client_overflows_and_is_dropped_alone() -> None:
    async def scenario():
        hub = Hub(client_buffer_bytes=300)
        slow, fast = hub.subscribe("u1"), hub.subscribe("u1")
        for _ in range(5):
            hub.publish(INFERENCE, {})
            fast.take()
        assert slow.overflowed and not fast.overflowed
        chunks = [chunk async for chunk in hub.stream(slow)]
        assert len(chunks) == 1  # the retry preamble, then the stream ends
        assert hub.subscriber_count == 1

    run(scenario())


def test_presented_key_is_the_basic_auth_user_name() -> None:
    def basic(text: str) -> str:
        return "Basic " + base64.b64encode(text.encode()).decode()

    assert presented_key(basic("KEY:")) == "KEY"
    assert presented_key(basic("KEY:ignored")) == "KEY"
    assert presented_key(basic("KEY")) == "KEY"
    assert presented_key("Bearer KEY") is None
    assert presented_key("Basic !!!") is None
    assert presented_key(None) is None


def test_sort_by_anomaly_follows_htm_its_order() -> None:
    metrics = [
        {"uid": "a", "name": "a", "server": "s1"},
        {"uid": "b", "name": "b", "server": "s2"},
        {"uid": "c", "name": "c", "server": "s1"},
        {"uid": "d", "name": "d", "server": "s3"},
    ]
    ordered = sort_by_anomaly(metrics, {"b": 5, "c": 9})
    assert [m["uid"] for m in ordered] == ["a", "c", "b", "d"]
    assert [m["anomaly_rank"] for m in ordered] == [0, 9, 5, 0]


def _config(tmp_path, text: str) -> Config:
    (tmp_path / "application.conf").write_text(text)
    return Config("application.conf", str(tmp_path))


def test_without_a_webapp_section_the_webapp_is_disabled(tmp_path) -> None:
    assert not webapp_settings.enabled(_config(tmp_path, "[repository]\ndb = x\n"))
    assert not webapp_settings.enabled(_config(tmp_path, "[webapp]\nenabled = false\n"))
    with pytest.raises(ConfigError, match="enabled"):
        webapp_settings.enabled(_config(tmp_path, "[webapp]\nhost = x\n"))


def test_an_empty_api_key_is_generated_once_into_a_private_file(tmp_path) -> None:
    path = tmp_path / "var" / "key"
    config = _config(tmp_path, f"[webapp]\napi_key =\napi_key_file = {path}\n")
    key = webapp_settings.load_api_key(config)
    assert len(key) >= 24 and path.read_text().strip() == key
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert webapp_settings.load_api_key(config) == key
    given = _config(tmp_path, f"[webapp]\napi_key = fixed\napi_key_file = {path}\n")
    assert webapp_settings.load_api_key(given) == "fixed"


def test_inference_payload_shape_matches_the_exchange() -> None:
    # What the anomaly service publishes decodes into what rows_of_result reads.
    from htmengine.runtime.anomaly_service import deserialize_model_result, serialize_model_result

    body = serialize_model_result(INFERENCE)
    assert zlib.decompress(body)
    assert rows_of_result(deserialize_model_result(body))[0][3] == 7


def _request(method: str, headers: dict[str, str]):
    from starlette.requests import Request

    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "method": method, "path": "/", "headers": raw})


def test_check_request_needs_the_key_for_writes_even_with_open_reads() -> None:
    from htmengine.webapp.auth import check_request
    from htmengine.webapp.errors import ApiError

    key = "Basic " + base64.b64encode(b"K:").decode()
    check_request(_request("GET", {}), "K", open_reads=True)
    with pytest.raises(ApiError) as refused:
        check_request(_request("GET", {}), "K", open_reads=False)
    assert refused.value.status == 401
    with pytest.raises(ApiError) as refused:
        check_request(_request("POST", {}), "K", open_reads=True)
    assert refused.value.status == 401
    check_request(
        _request("POST", {"authorization": key, "host": "h:1", "origin": "http://h:1"}), "K", True
    )
    with pytest.raises(ApiError) as refused:
        check_request(
            _request("DELETE", {"authorization": key, "host": "h:1", "origin": "http://x"}),
            "K",
            True,
        )
    assert refused.value.status == 403
