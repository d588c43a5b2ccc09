"""The storer's prefetch holds at most max_prefetch_bytes of the listener's largest messages."""

from __future__ import annotations

import configparser

from htmengine.protocol.data_queue import encode_data_message
from htmengine.runtime.metric_storer import bounded_prefetch
from htmengine.runtime.plaintext_protocol import max_body_bytes
from tests.support.app import REPO


def test_the_byte_budget_lowers_the_prefetch_count_but_never_below_one() -> None:
    assert bounded_prefetch(50, max_prefetch_bytes=64 << 20, largest_body=800_000) == 50
    assert bounded_prefetch(50, max_prefetch_bytes=8 << 20, largest_body=800_000) == 10
    assert bounded_prefetch(50, max_prefetch_bytes=1000, largest_body=800_000) == 1


def test_the_default_configuration_keeps_its_prefetch_within_the_budget() -> None:
    conf = configparser.ConfigParser()
    conf.read(REPO / "conf" / "application.conf")
    listener, storer = conf["metric_listener"], conf["metric_storer"]
    largest = max_body_bytes(int(listener["batch_max_bytes"]), int(listener["batch_max_lines"]))
    budget = int(storer["max_prefetch_bytes"])
    prefetch = bounded_prefetch(int(storer["prefetch"]), budget, largest)
    assert prefetch == int(storer["prefetch"]), "the defaults should not slow the storer down"
    assert prefetch * largest <= budget


def test_a_full_batch_of_the_worst_lines_fits_the_largest_body() -> None:
    # 4-byte characters cost 12 bytes of escapes in the body, the most per byte of text.
    line = ("\U0001f600" * 60 + " 1 1370000000").encode()
    batch_max_bytes = 16 * len(line)
    body = encode_data_message([line] * 16)
    assert len(body) <= max_body_bytes(batch_max_bytes, 16)
    assert len(body) > max_body_bytes(batch_max_bytes, 16) * 0.9  # the bound is tight
