"""The custom metric data queue's message body (the original listener's envelope).

``{"protocol": "plain", "data": ["<name> <value> <epoch seconds>", ...]}`` as UTF-8 JSON: the
listener encodes one per batch, clients of the original may publish their own, and the storer
decodes them. The lines follow the graphite plaintext grammar, which lives with its parser in
`htmengine.runtime.plaintext_protocol` (pure too; not imported here, so that this package depends
on nothing above it).
"""

from __future__ import annotations

import json

from htmengine.protocol.errors import BAD_SHAPE, UndecodableMessage, loads_json

__all__ = ["PROTOCOL_PLAIN", "decode_data_message", "encode_data_message"]

PROTOCOL_PLAIN = "plain"


def encode_data_message(lines: list[bytes]) -> bytes:
    """The body of one batch of validated UTF-8 lines (compact separators)."""
    # One decode and split for the whole batch is much cheaper than one decode per line.
    data = b"\n".join(lines).decode("utf-8").split("\n")
    return json.dumps({"protocol": PROTOCOL_PLAIN, "data": data}, separators=(",", ":")).encode()


def decode_data_message(body: bytes) -> list[str]:
    """The data lines of a body, or UndecodableMessage saying what is wrong with it."""
    document = loads_json(body)
    if not isinstance(document, dict):
        raise UndecodableMessage("not a JSON object", BAD_SHAPE)
    protocol = document.get("protocol")
    if protocol is None:
        raise UndecodableMessage("no protocol", BAD_SHAPE)
    if protocol != PROTOCOL_PLAIN:
        raise UndecodableMessage(f"unknown protocol {str(protocol)[:50]!r}", BAD_SHAPE)
    data = document.get("data")
    if not isinstance(data, list) or not all(isinstance(line, str) for line in data):
        raise UndecodableMessage("data is not a list of strings", BAD_SHAPE)
    return data
