"""API key authentication, as the original apps did it: the key is the HTTP basic-auth user name
(``curl -u KEY: ...``), so a browser asks for it once and sends it with every request.

Every request needs the key except, with ``open_reads = true``, reads (GET/HEAD). A write must
also come from the dashboard's own origin when the browser says where it comes from: a page on
another site could otherwise make the browser send its cached credentials along (CSRF).
"""

from __future__ import annotations

import base64
import binascii
import hmac
from urllib.parse import urlsplit

from fastapi import Request

from htmengine.webapp.errors import ApiError

READ_METHODS = frozenset({"GET", "HEAD"})
REALM_HEADER = {"WWW-Authenticate": 'Basic realm="htmengine", charset="UTF-8"'}


def presented_key(authorization: str | None) -> str | None:
    """The user name of a ``Basic`` Authorization header (the API key), or None."""
    if not authorization:
        return None
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, _, _password = decoded.partition(":")
    return user


def check_request(request: Request, api_key: str, open_reads: bool) -> None:
    """Raise ApiError 401 (no or wrong key) or 403 (cross-site write); return if allowed."""
    is_read = request.method in READ_METHODS
    if not (is_read and open_reads):
        key = presented_key(request.headers.get("authorization"))
        if key is None:
            raise ApiError(
                401,
                "an API key is required: send it as the basic-auth user name "
                "(curl -u KEY: ...); see [webapp] api_key in application.conf",
                REALM_HEADER,
            )
        if not hmac.compare_digest(key.encode(), api_key.encode()):
            raise ApiError(401, "invalid API key", REALM_HEADER)
    if not is_read:
        _check_same_origin(request)


def _check_same_origin(request: Request) -> None:
    if request.headers.get("sec-fetch-site") == "cross-site":
        raise ApiError(403, "cross-site requests may not change anything")
    origin = request.headers.get("origin")
    if origin and origin != "null":
        if urlsplit(origin).netloc != request.headers.get("host", ""):
            raise ApiError(403, f"requests from origin {origin} may not change anything")
