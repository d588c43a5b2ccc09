"""Metrics sorted by how anomalous they are now: the original's getMetricIdsSortedByDisplayValue.

The sum over 24 time buckets of each bucket's highest display value reads every row of the
period, so it is computed once for all clients, kept, and recomputed in the background at most
every ``rank_refresh_sec`` seconds and only after new scores arrived (no query per page view).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from htmengine.repository import queries

LOGGER = logging.getLogger("htmengine.webapp.ranking")

# A period nobody asked for during this many seconds is no longer refreshed.
FORGET_AFTER_SEC = 600.0


class AnomalyRanking:
    """{uid: summed display value} per period (hours), cached and refreshed in the background."""

    def __init__(
        self,
        engine: sa.Engine,
        refresh_sec: float,
        on_refresh: Callable[[int, int], None] = lambda period, version: None,
    ) -> None:
        self.engine = engine
        self.refresh_sec = refresh_sec
        self.on_refresh = on_refresh
        self._values: dict[int, dict[str, int]] = {}
        self._computed_at: dict[int, float] = {}
        self._asked_at: dict[int, float] = {}
        self._dirty: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.version = 0
        self._thread = threading.Thread(target=self._refresh_loop, name="ranking", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def mark_dirty(self) -> None:
        """New scores arrived: every cached period is stale."""
        self._dirty.update(self._values)

    def values(self, period: int) -> dict[str, int]:
        """{uid: display value sum} of `period`; computed now only the first time it is asked."""
        self._asked_at[period] = time.monotonic()
        values = self._values.get(period)
        if values is not None:
            return values
        with self._lock:
            if period not in self._values:
                self._compute(period)
            return self._values[period]

    def _compute(self, period: int) -> None:
        started = time.monotonic()
        with self.engine.connect() as conn:
            rows = queries.get_metric_ids_sorted_by_display_value(conn, period)
        self._values[period] = {row.uid: int(row.display_value or 0) for row in rows}
        self._computed_at[period] = time.monotonic()
        self.version += 1
        LOGGER.debug(
            "ranked %d metrics over %d h in %.3fs", len(rows), period, time.monotonic() - started
        )

    def _refresh_loop(self) -> None:
        while not self._stop.wait(min(1.0, self.refresh_sec)):
            now = time.monotonic()
            for period in list(self._values):
                if now - self._asked_at.get(period, 0.0) > FORGET_AFTER_SEC:
                    self._values.pop(period, None)
                    self._dirty.discard(period)
                    continue
                if period not in self._dirty:
                    continue
                if now - self._computed_at.get(period, 0.0) < self.refresh_sec:
                    continue
                self._dirty.discard(period)
                try:
                    with self._lock:
                        self._compute(period)
                except Exception as exc:
                    self._dirty.add(period)
                    LOGGER.warning("could not refresh the anomaly ranking: %r", exc)
                    continue
                self.on_refresh(period, self.version)


def sort_by_anomaly(metrics: list[dict[str, Any]], values: dict[str, int]) -> list[dict[str, Any]]:
    """HTM-IT's order: by the highest value among each server's metrics (descending), then
    server, then name; each metric dict gets its own sum as ``anomaly_rank``."""
    by_server: dict[str, int] = {}
    for item in metrics:
        value = values.get(item["uid"], 0)
        item["anomaly_rank"] = value
        server = item.get("server") or ""
        by_server[server] = max(value, by_server.get(server, 0))
    return sorted(
        metrics,
        key=lambda m: (-by_server[m.get("server") or ""], m.get("server") or "", m["name"]),
    )
