"""The webapp at scale: the list page with 10,000 metrics in a real browser, a 1-day window from the
API, and what 100 live clients cost the suite.

Creates a throw-away application (own database and queues on the local MariaDB/RabbitMQ), fills it
with METRICS custom metrics of ROWS 5-minute rows each (scores and display values included, a few
rows of each highly anomalous), starts every program under supervisord (the webapp included) and
measures:

1. list page: headless Chromium (Debian's) opens ``/`` and waits until the sorted list and the
   small charts in view are drawn; time from navigation start, cold (the first ranking query of
   the period) and warm (the ranking served from the webapp's cache), median and max of --loads;
2. data window: ``GET /_models/<uid>/data`` for one day (288 rows) of a metric, --requests times
   over one keep-alive connection; p50 / p99 / max latency;
3. live clients: results published on the results exchange at --rate messages/s (what the anomaly
   service publishes for the followed metrics); the CPU of every supervised process over --window
   seconds with 0 and then with --clients SSE clients (90 % following one metric each, the rest the
   list stream), and the difference as a share of one core and of the whole machine.

Usage: python benchmarks/webapp.py [--metrics 10000] [--rows 288] [--clients 100]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
import psutil  # noqa: E402
import sqlalchemy as sa  # noqa: E402

from benchmarks._suite import start_supervised  # noqa: E402
from htmengine.bus import MessageBus  # noqa: E402
from htmengine.repository import MetricStatus, get_engine, migrate, queries  # noqa: E402
from htmengine.repository.schema import metric  # noqa: E402
from htmengine.runtime.anomaly_service import serialize_model_result  # noqa: E402
from tests.support.app import create_test_app, drop_database, start_servers  # noqa: E402

PROGRAMS = ["model_scheduler", "metric_listener", "metric_storer", "anomaly_service", "webapp"]
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
STEP_SEC = 300
TIMINGS_JS = """() => performance.getEntriesByType('resource').map((e) =>
  `${e.name.split('?')[0].slice(-40)} start ${e.startTime.toFixed(0)} took ${e.duration.toFixed(0)} ms`)
  .concat([`domContentLoaded ${performance.timing.domContentLoadedEventEnd - performance.timing.navigationStart} ms`])"""

# Scores of the synthetic rows, from a hash of (uid, rowid): one row in 500 scores 0.99999
# (display 1000000001), one in 100 scores 0.9999x (1000000), the rest low (1000).
_SCORE_ROWS = """
UPDATE metric_data SET
  raw_anomaly_score = (CRC32(CONCAT(uid, rowid)) % 1000) / 1000,
  anomaly_score = CASE
    WHEN CRC32(CONCAT(uid, rowid)) % 500 = 0 THEN 0.99999
    WHEN CRC32(CONCAT(uid, rowid)) % 100 = 0 THEN 0.99995
    ELSE (CRC32(CONCAT(uid, rowid)) % 900) / 1000 END,
  display_value = CASE
    WHEN CRC32(CONCAT(uid, rowid)) % 500 = 0 THEN 1000000001
    WHEN CRC32(CONCAT(uid, rowid)) % 100 = 0 THEN 1000000
    ELSE 1000 END,
  multi_step_best_predictions = 'null'
WHERE uid IN :uids
"""


def populate(metrics: int, rows: int, window_rows: int, end: int) -> list[str]:
    """METRICS metrics named bench.<i> with ROWS rows ending at epoch `end` (the first one, whose
    day the API serves, `window_rows`), scored."""
    started = time.monotonic()
    uids = [uuid.uuid4().hex for _ in range(metrics)]
    engine = get_engine()
    with engine.begin() as conn:
        conn.execute(
            metric.insert(),
            [
                {
                    "uid": uid,
                    "datasource": "custom",
                    "name": f"bench.{i:05d}",
                    "description": f"Custom metric bench.{i:05d}",
                    "server": f"bench.{i:05d}",
                    "location": "",
                    "poll_interval": 300,
                    "status": int(MetricStatus.ACTIVE if i % 3 == 0 else MetricStatus.UNMONITORED),
                    "last_rowid": max(rows, window_rows) if i == 0 else rows,
                }
                for i, uid in enumerate(uids)
            ],
        )
    batch: list[tuple[str, int, int, float]] = []
    for index, uid in enumerate(uids):
        count = max(rows, window_rows) if index == 0 else rows
        first = end - STEP_SEC * (count - 1)
        batch.extend(
            (uid, r + 1, first + STEP_SEC * r, float(50 + (r * 7 + index) % 40))
            for r in range(count)
        )
        if len(batch) >= 200_000 or index == len(uids) - 1:
            with engine.begin() as conn:
                queries.insert_metric_data_rows(conn, batch)
            batch = []
    statement = sa.text(_SCORE_ROWS).bindparams(sa.bindparam("uids", expanding=True))
    for start in range(0, len(uids), 500):
        with engine.begin() as conn:
            conn.execute(statement, {"uids": uids[start : start + 500]})
    print(
        f"populated {metrics} metrics x {rows} rows in {time.monotonic() - started:.1f} s",
        flush=True,
    )
    return uids


# -- 1. list page ---------------------------------------------------------------------------------


def list_page_loads(base_url: str, api_key: str, loads: int) -> list[float]:
    """Seconds from navigation start to the list (and the small charts in view) being drawn."""
    from playwright.sync_api import sync_playwright

    times = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS
        )
        try:
            context = browser.new_context(
                base_url=base_url,
                http_credentials={"username": api_key, "password": ""},
                viewport={"width": 1280, "height": 900},
            )
            page = context.new_page()
            for _ in range(loads):
                page.goto("/")
                page.wait_for_selector("body[data-ready='1']", timeout=120_000)
                times.append(page.evaluate("() => performance.now()") / 1000)
                rows = page.locator(".metric-row").count()
                if os.environ.get("WEBAPP_BENCH_TIMINGS"):
                    print(page.evaluate(TIMINGS_JS), flush=True)
                count = page.locator("#count").inner_text()
            page.screenshot(path=str(Path(tempfile.gettempdir()) / "webapp-bench-list.png"))
            print(f"  list shows '{count}', {rows} rows in the DOM", flush=True)
        finally:
            browser.close()
    return times


# -- 2. data window -------------------------------------------------------------------------------


def data_window_latencies(
    base_url: str, api_key: str, uid: str, end: int, rows: int, requests: int
) -> list[float]:
    day_end = datetime.datetime.fromtimestamp(end, datetime.UTC).replace(tzinfo=None)
    params = {
        "from": (day_end - datetime.timedelta(seconds=STEP_SEC * 287)).isoformat(sep=" "),
        "to": day_end.isoformat(sep=" "),
        "limit": "1000",
    }
    latencies = []
    with httpx.Client(base_url=base_url, auth=(api_key, ""), timeout=30) as client:
        for _ in range(20):  # warm-up: connection, pool, statement caches
            client.get(f"/_models/{uid}/data", params=params)
        for _ in range(requests):
            started = time.perf_counter()
            response = client.get(f"/_models/{uid}/data", params=params)
            latencies.append(time.perf_counter() - started)
            assert response.status_code == 200 and len(response.json()["data"]) == min(288, rows)
    return sorted(latencies)


# -- 3. live clients ------------------------------------------------------------------------------


def suite_processes(supervisor) -> list[psutil.Process]:
    processes = []
    for info in supervisor.process_info().values():
        if info["pid"]:
            parent = psutil.Process(info["pid"])
            processes.append(parent)
            processes.extend(parent.children(recursive=True))
    return processes


def cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


class ResultPublisher(threading.Thread):
    """Publishes one-row inference messages for `uids` round robin at `rate` messages/s."""

    def __init__(self, exchange: str, uids: list[str], rate: float, start_rowid: int) -> None:
        super().__init__(daemon=True)
        self.exchange, self.uids, self.rate = exchange, uids, rate
        self.rowid = start_rowid
        self.stopping = threading.Event()
        self.sent = 0

    def run(self) -> None:
        with MessageBus() as bus:
            next_at = time.monotonic()
            while not self.stopping.is_set():
                uid = self.uids[self.sent % len(self.uids)]
                if self.sent % len(self.uids) == 0:
                    self.rowid += 1
                message = {
                    "metric": {"uid": uid, "name": uid, "datasource": "custom"},
                    "results": [
                        {
                            "rowid": self.rowid,
                            "ts": time.time(),
                            "value": 42.0,
                            "rawAnomaly": 0.1,
                            "anomaly": 0.5,
                            "multiStepBestPredictions": None,
                        }
                    ],
                }
                bus.publish_exchange(self.exchange, serialize_model_result(message))
                self.sent += 1
                next_at += 1.0 / self.rate
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)


async def _sse_client(base_url: str, api_key: str, path: str, counts: list[int], index: int, stop):
    async with httpx.AsyncClient(base_url=base_url, auth=(api_key, ""), timeout=None) as client:
        async with client.stream("GET", path) as response:
            async for chunk in response.aiter_bytes():
                counts[index] += chunk.count(b"\n\n")
                if stop.is_set():
                    return


def run_clients(base_url, api_key, paths, seconds_until_stop: threading.Event, counts):
    async def main() -> None:
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(_sse_client(base_url, api_key, path, counts, i, stop))
            for i, path in enumerate(paths)
        ]
        while not seconds_until_stop.is_set():
            await asyncio.sleep(0.2)
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())


def live_cpu(supervisor, app, base_url, api_key, uids, args) -> None:
    followed = uids[: max(1, int(args.clients * 0.9))]
    paths = [f"/_models/{uid}/stream" for uid in followed]
    paths += ["/_stream"] * (args.clients - len(followed))
    publisher = ResultPublisher(app.results_exchange, followed, args.rate, args.rows)
    publisher.start()
    time.sleep(3)
    processes = suite_processes(supervisor)
    webapp = [p for p in processes if p.pid == supervisor.pid("webapp")]

    def measure(label: str) -> tuple[float, float]:
        before, web_before = cpu_seconds(processes), cpu_seconds(webapp)
        started = time.monotonic()
        time.sleep(args.window)
        elapsed = time.monotonic() - started
        suite_share = (cpu_seconds(processes) - before) / elapsed
        web_share = (cpu_seconds(webapp) - web_before) / elapsed
        print(
            f"  {label}: suite CPU {100 * suite_share:.2f} % of a core "
            f"(webapp {100 * web_share:.2f} %)",
            flush=True,
        )
        return suite_share, web_share

    idle, _ = measure("0 live clients")
    stop = threading.Event()
    counts = [0] * len(paths)
    clients = threading.Thread(
        target=run_clients, args=(base_url, api_key, paths, stop, counts), daemon=True
    )
    clients.start()
    time.sleep(5)
    start_counts = sum(counts)
    busy, _ = measure(f"{len(paths)} live clients")
    events = sum(counts) - start_counts
    stop.set()
    clients.join(10)
    publisher.stopping.set()
    publisher.join(5)
    cores = psutil.cpu_count() or 1
    added = busy - idle
    print(
        f"  {args.clients} clients got {events} events in {args.window:.0f} s "
        f"({publisher.sent} results published at {args.rate:g}/s); added CPU "
        f"{100 * added:.2f} % of one core = {100 * added / cores:.2f} % of the machine "
        f"({cores} cores)",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics", type=int, default=10_000)
    parser.add_argument("--rows", type=int, default=288, help="rows of every metric")
    parser.add_argument(
        "--window-rows", type=int, default=2016, help="rows of the metric whose day is served"
    )
    parser.add_argument("--loads", type=int, default=5)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rate", type=float, default=30.0, help="live results per second")
    parser.add_argument("--window", type=float, default=30.0, help="seconds per CPU measurement")
    args = parser.parse_args()

    start_servers()
    root = Path(tempfile.mkdtemp(prefix="webapp-bench-"))
    app = create_test_app(root)
    migrate.upgrade()
    base_url = f"http://127.0.0.1:{app.ports['webapp']}"
    supervisor = None
    try:
        end = int(time.time()) // STEP_SEC * STEP_SEC
        uids = populate(args.metrics, args.rows, args.window_rows, end)
        supervisor = start_supervised(app, PROGRAMS, [])
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base_url}/_health", timeout=2).json()["results_followed"]:
                    break
            except (httpx.HTTPError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(app.log_tail("webapp"))
            time.sleep(0.3)

        print("1. list page (headless Chromium)", flush=True)
        started = time.monotonic()
        httpx.get(f"{base_url}/_anomalies/period/24", auth=(app.api_key, ""), timeout=300)
        print(
            f"  cold ranking (first request of the period, server side): "
            f"{time.monotonic() - started:.3f} s",
            flush=True,
        )
        times = list_page_loads(base_url, app.api_key, args.loads)
        print(
            f"  ready after: median {statistics.median(times):.3f} s, max {max(times):.3f} s "
            f"over {len(times)} loads (target <= 1 s)",
            flush=True,
        )

        print("2. one day of one metric from the API (288 rows)", flush=True)
        latencies = data_window_latencies(
            base_url, app.api_key, uids[0], end, max(args.rows, args.window_rows), args.requests
        )
        p = lambda q: 1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))]  # noqa: E731
        print(
            f"  {len(latencies)} requests: p50 {p(0.5):.2f} ms, p99 {p(0.99):.2f} ms, "
            f"max {1000 * latencies[-1]:.2f} ms (target p99 <= 20 ms)",
            flush=True,
        )

        print(f"3. {args.clients} live clients (SSE)", flush=True)
        live_cpu(supervisor, app, base_url, app.api_key, uids, args)
    finally:
        if supervisor is not None:
            supervisor.stop()
        drop_database(app)
        os.environ.pop("APPLICATION_CONFIG_PATH", None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
