"""Shared by the benchmarks that run htmengine services under supervisord on a throw-away app:
starting the programs and reading their Prometheus counters."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterable, Mapping


def scrape_metrics(port: int) -> dict[str, float]:
    """Every sample of a service's /metrics page, keyed by name with its labels as printed."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            values[key] = float(value)
    return values


def histogram_quantile(
    after: Mapping[str, float], before: Mapping[str, float], name: str, quantile: float
) -> float:
    """Upper bound (seconds) of the bucket holding `quantile` of the observations of histogram
    `name` made between two scrapes; inf when it lies beyond the last finite bucket, nan when
    there were none."""
    prefix = f'{name}_bucket{{le="'
    buckets = sorted(
        (float(key[len(prefix) : -2]), after[key] - before.get(key, 0.0))
        for key in after
        if key.startswith(prefix)
    )
    if not buckets or buckets[-1][1] <= 0:
        return float("nan")
    wanted = quantile * buckets[-1][1]
    return next(bound for bound, cumulative in buckets if cumulative >= wanted)


def start_supervised(
    app, programs: Iterable[str], metrics_ports: Iterable[int], timeout: float = 60
):
    """supervisord running `programs` of `app` (a tests.support.app.TestApp), as the integration
    tests run them; returns its Supervisor once every given /metrics port answers."""
    from tests.support.app import Supervisor

    supervisor = Supervisor(app, list(programs))
    supervisor.start()
    deadline = time.monotonic() + timeout
    for port in metrics_ports:
        while True:
            try:
                scrape_metrics(port)
                break
            except OSError:
                if time.monotonic() > deadline:
                    supervisor.stop()
                    raise
                time.sleep(0.2)
    return supervisor
