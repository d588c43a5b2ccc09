"""One logging set-up for every service: stderr (supervisord captures it), UTC timestamps."""

from __future__ import annotations

import logging
import os
import sys
import time

_FORMAT = "%(asctime)s - %(name)s(%(process)d) - %(levelname)s - %(message)s"


def service_logger(service_name: str) -> logging.Logger:
    """The logger of a service (its supervisord program name): ``htmengine.<name>``."""
    return logging.getLogger(f"htmengine.{service_name}")


def setup_logging(service_name: str, level: str | None = None) -> logging.Logger:
    """Configure the root logger once and return the service's logger.

    The level comes from `level`, else env HTMENGINE_LOG_LEVEL, else INFO.
    """
    formatter = logging.Formatter(_FORMAT)
    formatter.converter = time.gmtime
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel((level or os.environ.get("HTMENGINE_LOG_LEVEL") or "INFO").upper())
    logging.getLogger("pika").setLevel(logging.WARNING)
    return service_logger(service_name)


class RateLimitedLogger:
    """Logs at most one message per `interval` seconds per key; counts what it suppressed."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self._logger = logger
        self._interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        suppressed = self._suppressed.pop(key, 0)
        self._last[key] = now
        if suppressed:
            msg = f"{msg} ({suppressed} similar messages suppressed)"
        self._logger.warning(msg, *args)
