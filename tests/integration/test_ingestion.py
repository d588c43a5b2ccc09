"""Graphite lines -> metric_listener -> data queue -> metric_storer -> MySQL, under supervisord.

Real MariaDB, RabbitMQ and supervisord (the project's config); counters are read from the running
services' Prometheus endpoints.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa

from htmengine.bus import MessageBus, rejected_queue_name
from htmengine.repository import MetricStatus, get_engine
from htmengine.repository.schema import metric, metric_data
from htmengine.runtime import plaintext_protocol as grammar
from tests.support.app import REPO, Supervisor, TestApp, restart_rabbitmq
from tests.support.tcp_proxy import TcpProxy

BASE_TS = 1_370_000_000  # June 2013: historic replays are normal


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def read_counters(port: int) -> dict[str, float]:
    """Prometheus text exposition of a service -> {'name{labels}': value}."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    counters = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            counters[key] = float(value)
    return counters


def counter_sum(counters: dict[str, float], name: str) -> float:
    """Sum of a counter over all its label values."""
    return sum(v for k, v in counters.items() if k == name or k.startswith(name + "{"))


def stored_rows() -> dict[str, list[tuple[int, int, float]]]:
    """{metric name: [(rowid, epoch seconds, value), ...] in rowid order}."""
    query = (
        sa.select(
            metric.c.name,
            metric_data.c.rowid,
            sa.func.unix_timestamp(metric_data.c.timestamp),
            metric_data.c.metric_value,
        )
        .select_from(metric_data.join(metric, metric.c.uid == metric_data.c.uid))
        .order_by(metric.c.name, metric_data.c.rowid)
    )
    rows: dict[str, list[tuple[int, int, float]]] = {}
    with get_engine().connect() as conn:
        for name, rowid, ts, value in conn.execute(query):
            rows.setdefault(name, []).append((rowid, int(ts), value))
    return rows


def row_count() -> int:
    with get_engine().connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(metric_data)).scalar_one()


def send_tcp(port: int, payload: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1)  # wait for the listener to close: everything was read


@pytest.fixture
def ingestion(clean_db: TestApp, supervisor_factory) -> Iterator[tuple[TestApp, Supervisor]]:
    """Listener and storer under supervisord, on empty tables and an empty data queue."""
    app = clean_db
    with MessageBus() as bus:
        bus.declare_queue(app.data_queue)
        bus.purge_queue(app.data_queue)
        bus.declare_queue(rejected_queue_name(app.data_queue))
        bus.purge_queue(rejected_queue_name(app.data_queue))
    supervisor = supervisor_factory(["metric_listener", "metric_storer"])
    wait_until(lambda: _metrics_up(app), 30, "the services' /metrics endpoints")
    yield app, supervisor


def _metrics_up(app: TestApp) -> bool:
    try:
        read_counters(app.ports["listener_metrics"])
        read_counters(app.ports["storer_metrics"])
    except OSError:
        return False
    return True


def test_tcp_lines_with_malformed_ones_are_stored_exactly(ingestion) -> None:
    app, supervisor = ingestion
    rng = random.Random(4)
    malformed = [
        b"no.value.or.timestamp",
        b"too many fields 1 2",
        b"bad.value abc 1370000000",
        b"nan.value nan 1370000000",
        b"bad.ts 1.0 yesterday",
        b"future.ts 1.0 4102444800",
        b"negative.ts 1.0 -5",
        b"x" * 256 + b" 1.0 1370000000",
        b"ctl\x01name 1.0 1370000000",
        b"bad.utf8.\xff 1.0 1370000000",
    ]
    expected: dict[str, list[tuple[int, float]]] = {f"ingest.m{i}": [] for i in range(10)}
    lines: list[bytes] = []
    bad = 0
    for i in range(10_000):
        if i % 100 == 50:
            lines.append(malformed[bad % len(malformed)])
            bad += 1
            continue
        name = f"ingest.m{i % 10}"
        ts = BASE_TS + i
        value = round(rng.uniform(-1e6, 1e6), 3)
        expected[name].append((ts, value))
        # Fractional timestamps are stored as whole seconds.
        ts_text = f"{ts}.25" if i % 7 == 0 else str(ts)
        lines.append(f"{name} {value} {ts_text}".encode())
    send_tcp(app.ports["plaintext"], b"\n".join(lines) + b"\n")
    good = 10_000 - bad

    wait_until(lambda: row_count() == good, 60, f"{good} rows")
    rows = stored_rows()
    assert sorted(rows) == sorted(expected)
    for name, samples in expected.items():
        assert [(rowid, ts, value) for rowid, ts, value in rows[name]] == [
            (rowid, ts, value) for rowid, (ts, value) in enumerate(samples, 1)
        ]
    with get_engine().connect() as conn:
        metrics = conn.execute(sa.select(metric.c.name, metric.c.status, metric.c.last_rowid))
        for name, status, last_rowid in metrics:
            assert status == MetricStatus.UNMONITORED
            assert last_rowid == len(expected[name])
    listener = read_counters(app.ports["listener_metrics"])
    assert counter_sum(listener, "htmengine_listener_lines_rejected_total") == bad
    assert listener["htmengine_listener_lines_published_total"] == good
    storer = read_counters(app.ports["storer_metrics"])
    assert storer["htmengine_storer_samples_stored_total"] == good
    assert counter_sum(storer, "htmengine_storer_samples_dropped_total") == 0


def test_direct_messages_are_stored_and_non_json_is_dead_lettered(ingestion) -> None:
    app, _ = ingestion
    bodies = [
        json.dumps({"protocol": "plain", "data": ["cpu_percent 12.5 1434174392"]}).encode(),
        json.dumps({"protocol": "plain", "data": ["cpu_percent 13.5 1434174692"]}).encode(),
        b"this is not json",
        json.dumps({"protocol": "pickle", "data": ["cpu_percent 1 1434174992"]}).encode(),
        json.dumps({"data": ["cpu_percent 1 1434174992"]}).encode(),
        json.dumps(
            {"protocol": "plain", "data": ["cpu_percent 14.5 1434174992", "garbage", "mem 1 2"]}
        ).encode(),
    ]
    with MessageBus() as bus:
        for body in bodies:
            bus.publish(app.data_queue, body)
        wait_until(lambda: row_count() == 4, 30, "4 rows")
        dead: list[tuple[bytes, str]] = []

        def collect_dead_letters() -> bool:
            while (message := bus.get(rejected_queue_name(app.data_queue))) is not None:
                dead.append((message.body, message.headers.get("x-rejected-reason")))
                message.ack()
            return len(dead) >= 3

        wait_until(collect_dead_letters, 30, "3 dead letters")
    assert stored_rows() == {
        "cpu_percent": [(1, 1434174392, 12.5), (2, 1434174692, 13.5), (3, 1434174992, 14.5)],
        "mem": [(1, 2, 1.0)],
    }
    assert dead == [
        (bodies[2], "not JSON"),
        (bodies[3], "unknown protocol 'pickle'"),
        (bodies[4], "no protocol"),
    ]
    storer = read_counters(app.ports["storer_metrics"])
    assert counter_sum(storer, "htmengine_storer_lines_bad_total") == 1
    assert counter_sum(storer, "htmengine_storer_messages_rejected_total") == 3


def test_out_of_order_and_duplicate_timestamps_are_dropped_and_counted(ingestion) -> None:
    app, _ = ingestion
    first = [f"order.m 1 {BASE_TS + t}" for t in (10, 20, 30)]
    # 25 is older than 30, 30 repeats, 30.9 is the same second, 40 is new, 35 is older again.
    second = [
        f"order.m 2 {BASE_TS + t}{fraction}"
        for t, fraction in ((25, ""), (30, ""), (30, ".9"), (40, ""), (35, ""), (50, ""))
    ]
    send_tcp(app.ports["plaintext"], "\n".join(first).encode() + b"\n")
    wait_until(lambda: row_count() == 3, 30, "3 rows")
    send_tcp(app.ports["plaintext"], "\n".join(second).encode() + b"\n")
    wait_until(lambda: row_count() == 5, 30, "5 rows")

    def dropped() -> dict[str, float]:
        counters = read_counters(app.ports["storer_metrics"])
        return {
            reason: counters.get(f'htmengine_storer_samples_dropped_total{{reason="{reason}"}}', 0)
            for reason in ("out_of_order", "duplicate")
        }

    wait_until(lambda: sum(dropped().values()) == 4, 10, "4 drops counted")
    assert dropped() == {"out_of_order": 2, "duplicate": 2}
    assert [(rowid, ts - BASE_TS) for rowid, ts, _ in stored_rows()["order.m"]] == [
        (1, 10),
        (2, 20),
        (3, 30),
        (4, 40),
        (5, 50),
    ]


def _stream(port: int, lines: list[bytes], chunk: int, pause: float) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        for start in range(0, len(lines), chunk):
            sock.sendall(b"".join(lines[start : start + chunk]))
            time.sleep(pause)
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1)


def test_sigkill_of_the_storer_mid_stream_stores_every_line_once(ingestion) -> None:
    app, supervisor = ingestion
    lines = [b"kill.m%d %d %d\n" % (i % 20, i, BASE_TS + i) for i in range(50_000)]
    sender = threading.Thread(target=_stream, args=(app.ports["plaintext"], lines, 1000, 0.02))
    sender.start()
    wait_until(lambda: row_count() >= 5_000, 60, "the first rows")
    old_pid = supervisor.kill("metric_storer")
    assert row_count() < 50_000, "the storer was killed only after the stream"
    supervisor.wait_restarted("metric_storer", old_pid)
    sender.join()
    wait_until(lambda: row_count() >= 50_000, 120, "50,000 rows")
    time.sleep(1.0)  # a duplicate would arrive now, if redelivery stored anything twice
    rows = stored_rows()
    assert sum(len(r) for r in rows.values()) == 50_000
    for i in range(20):
        expected = [(n + 1, BASE_TS + ts) for n, ts in enumerate(range(i, 50_000, 20))]
        assert [(rowid, ts) for rowid, ts, _ in rows[f"kill.m{i}"]] == expected


def test_listener_and_storer_survive_a_rabbitmq_restart(ingestion) -> None:
    app, supervisor = ingestion
    port = app.ports["plaintext"]
    before = [b"restart.m %d %d\n" % (i, BASE_TS + i) for i in range(5_000)]
    send_tcp(port, b"".join(before))
    wait_until(lambda: row_count() == 5_000, 60, "rows sent before the restart")
    pids = {name: supervisor.pid(name) for name in ("metric_listener", "metric_storer")}

    lines = [b"restart.m %d %d\n" % (i, BASE_TS + i) for i in range(5_000, 20_000)]
    sender = threading.Thread(target=_stream, args=(port, lines, 500, 0.05))
    sender.start()
    time.sleep(0.5)
    restart_rabbitmq()
    sender.join()
    after = [b"restart.m %d %d\n" % (i, BASE_TS + i) for i in range(20_000, 21_000)]
    send_tcp(port, b"".join(after))

    wait_until(lambda: row_count() == 21_000, 180, "every accepted line stored")
    assert {name: supervisor.pid(name) for name in pids} == pids, "a service restarted"
    for program in pids:
        assert "reconnect" in app.log_tail(program, 500), f"{program} saw no outage"
    rows = stored_rows()["restart.m"]
    assert [(rowid, ts - BASE_TS) for rowid, ts, _ in rows] == [(i + 1, i) for i in range(21_000)]


def test_udp_datagrams_are_validated_and_stored(ingestion) -> None:
    app, _ = ingestion
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(
            b"udp.m 1.5 1370000000\nudp.m oops 1370000001\n", ("127.0.0.1", app.ports["udp"])
        )
        sock.sendto(b"udp.m 2.5 1370000002", ("127.0.0.1", app.ports["udp"]))
    wait_until(lambda: row_count() == 2, 30, "2 rows")
    assert stored_rows() == {"udp.m": [(1, 1370000000, 1.5), (2, 1370000002, 2.5)]}
    listener = read_counters(app.ports["listener_metrics"])
    assert counter_sum(listener, "htmengine_listener_lines_rejected_total") == 1


def test_two_storers_create_each_metric_once_and_keep_rowids_contiguous(ingestion) -> None:
    """A second storer process (as with supervisord numprocs) races the first on every metric.

    Messages of one metric handled by different storers can commit out of order, so some
    samples may be dropped as out of order (and counted); what must hold is that each name gets
    one metric, rowids stay 1..N, timestamps strictly increase and nothing is stored twice.
    """
    app, _ = ingestion
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    second = subprocess.Popen(
        [sys.executable, "-m", "htmengine.runtime.metric_storer"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        time.sleep(2.0)  # let it start consuming
        assert second.poll() is None, "the second storer exited"
        with MessageBus() as bus:
            bodies = [
                json.dumps(
                    {
                        "protocol": "plain",
                        "data": [f"par.m{k} {j} {BASE_TS + j}" for k in range(50)],
                    }
                ).encode()
                for j in range(200)
            ]
            bus.publish_many(app.data_queue, bodies)

            def drained() -> bool:
                return bus.declare_queue(app.data_queue, passive=True) == 0

            wait_until(drained, 60, "the data queue to drain")
        time.sleep(1.0)  # the last batches commit
    finally:
        second.terminate()
        second.wait(timeout=60)
    with get_engine().connect() as conn:
        names = [row.name for row in conn.execute(sa.select(metric.c.name))]
    assert sorted(names) == sorted(f"par.m{k}" for k in range(50))
    rows = stored_rows()
    for name, samples in rows.items():
        assert [rowid for rowid, _, _ in samples] == list(range(1, len(samples) + 1))
        stamps = [ts for _, ts, _ in samples]
        assert stamps == sorted(set(stamps)), name
        assert all(value == ts - BASE_TS for _, ts, value in samples)
    assert sum(len(samples) for samples in rows.values()) > 0


def rejected_by_reason(port: int, name: str) -> dict[str, float]:
    """{reason label: count} of a service's counter `name` (non-zero ones)."""
    prefix = name + '{reason="'
    return {
        key[len(prefix) : -2]: value
        for key, value in read_counters(port).items()
        if key.startswith(prefix) and value
    }


def test_a_line_from_the_future_is_rejected_and_later_real_samples_are_stored(ingestion) -> None:
    """`probe 1 4000000000` (2096) used to be stored and silence the metric until 2096."""
    app, _ = ingestion
    now = int(time.time())
    send_tcp(app.ports["plaintext"], b"probe 1 4000000000\n")
    wait_until(
        lambda: (
            rejected_by_reason(app.ports["listener_metrics"], LISTENER_REJECTED)
            == {grammar.FUTURE_TIMESTAMP: 1}
        ),
        30,
        "the future line counted",
    )
    later = [f"probe {i} {now - 60 + i * 10}" for i in range(5)]
    send_tcp(app.ports["plaintext"], ("\n".join(later) + "\n").encode())
    wait_until(lambda: row_count() == 5, 30, "5 rows")
    assert [(ts, value) for _, ts, value in stored_rows()["probe"]] == [
        (now - 60 + i * 10, float(i)) for i in range(5)
    ]
    storer = read_counters(app.ports["storer_metrics"])
    assert counter_sum(storer, "htmengine_storer_samples_dropped_total") == 0


def test_a_message_from_the_future_published_straight_to_the_queue_is_rejected(ingestion) -> None:
    app, _ = ingestion
    now = int(time.time())
    bodies = [
        {"protocol": "plain", "data": ["probe 1 4000000000"]},
        {"protocol": "plain", "data": [f"probe 2 {now}", f"probe 3 {now + 86400 + 3600}"]},
        {"protocol": "plain", "data": [f"probe 4 {now + 60}"]},  # a minute of clock skew is fine
    ]
    with MessageBus() as bus:
        for body in bodies:
            bus.publish(app.data_queue, json.dumps(body).encode())
    wait_until(lambda: row_count() == 2, 30, "2 rows")
    wait_until(
        lambda: (
            rejected_by_reason(app.ports["storer_metrics"], "htmengine_storer_lines_bad_total")
            == {grammar.FUTURE_TIMESTAMP: 2}
        ),
        30,
        "2 future lines counted",
    )
    assert [(ts, value) for _, ts, value in stored_rows()["probe"]] == [
        (now, 2.0),
        (now + 60, 4.0),
    ]


LISTENER_REJECTED = "htmengine_listener_lines_rejected_total"

# Lines that have broken parsers, each with the reason it must be counted under.
ABSURD_LINES = [
    (b"absurd.ts 1 " + b"9" * 5000, grammar.BAD_TIMESTAMP),
    (b"absurd.neg.ts 1 -" + b"9" * 5000, grammar.BAD_TIMESTAMP),
    (b"absurd.value " + b"9" * 5000 + b" 1370000000", grammar.BAD_VALUE),
    (b"absurd.nan nan 1370000000", grammar.BAD_VALUE),
    (b"absurd.inf -inf 1370000000", grammar.BAD_VALUE),
    (b"absurd.ts.inf 1 inf", grammar.BAD_TIMESTAMP),
    (b"absurd.utf8.\xff\xfe 1 1370000000", grammar.NAME_NOT_UTF8),
    (b"absurd.value.utf8 \xd9\xa1 1370000000", grammar.BAD_VALUE),
    (b"absurd\x00nul 1 1370000000", grammar.NAME_NOT_PRINTABLE),
    (b"absurd.ctl 1\x07 1370000000", grammar.BAD_VALUE),
    (b"absurd.future 1 4000000000", grammar.FUTURE_TIMESTAMP),
    (b"\x00\x01\x02 \xff \x7f", grammar.NAME_NOT_PRINTABLE),
    (b"just-garbage", grammar.WRONG_FIELD_COUNT),
    (b"x" * 20_000 + b" 1 1370000000", grammar.LINE_TOO_LONG),
]


def _mixed(prefix: str, rounds: int) -> tuple[list[bytes], dict[str, list[tuple[int, float]]]]:
    """Good lines of two metrics with every absurd line between them, `rounds` times over."""
    lines: list[bytes] = []
    expected: dict[str, list[tuple[int, float]]] = {f"{prefix}.a": [], f"{prefix}.b": []}
    ts = BASE_TS
    for _ in range(rounds):
        for absurd, _reason in ABSURD_LINES:
            for name in expected:
                ts += 1
                expected[name].append((ts, float(ts % 1000)))
                lines.append(b"%s %d %d" % (name.encode(), ts % 1000, ts))
            lines.append(absurd)
    return lines, expected


def _expected_reasons(rounds: int) -> dict[str, float]:
    reasons: dict[str, float] = {}
    for _, reason in ABSURD_LINES:
        reasons[reason] = reasons.get(reason, 0) + rounds
    return reasons


def test_absurd_lines_are_rejected_alone_over_tcp_and_udp(ingestion) -> None:
    """Good lines mixed with absurd ones in one TCP write and in UDP datagrams: every good
    line is stored, every bad one counted under its reason, and the listener keeps running."""
    app, supervisor = ingestion
    pid = supervisor.pid("metric_listener")
    tcp_lines, tcp_expected = _mixed("tcp", rounds=3)
    send_tcp(app.ports["plaintext"], b"\n".join(tcp_lines) + b"\n")
    udp_lines, udp_expected = _mixed("udp", rounds=1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        # Every absurd line with its neighbours in one datagram, and the overlong one alone.
        for start in range(0, len(udp_lines), 3):
            sock.sendto(b"\n".join(udp_lines[start : start + 3]), ("127.0.0.1", app.ports["udp"]))
    expected = {**tcp_expected, **udp_expected}
    total = sum(len(samples) for samples in expected.values())
    wait_until(lambda: row_count() == total, 60, f"{total} rows")
    rows = stored_rows()
    assert {name: [(ts, v) for _, ts, v in samples] for name, samples in rows.items()} == expected
    reasons = _expected_reasons(rounds=4)
    wait_until(
        lambda: rejected_by_reason(app.ports["listener_metrics"], LISTENER_REJECTED) == reasons,
        30,
        f"rejections {reasons}",
    )
    assert set(reasons) <= set(grammar.REJECTION_REASONS)
    assert supervisor.pid("metric_listener") == pid, "the listener restarted"


BUFFER_BOUND = 8 * 1024 * 1024


class _Sender(threading.Thread):
    """Streams long lines over one TCP connection until told to stop; counts what it sent."""

    def __init__(self, port: int, metrics: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.names = [b"backpressure.%03d." % k + b"x" * 200 for k in range(metrics)]
        self.sent_lines = 0
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
                sock.connect(("127.0.0.1", self.port))
                while not self.stop.is_set():
                    chunk = b"".join(self.line(self.sent_lines + i) for i in range(250))
                    sock.sendall(chunk)  # blocks while the listener does not read
                    self.sent_lines += 250
                sock.shutdown(socket.SHUT_WR)
                sock.recv(1)
        except BaseException as exc:  # reported by the test
            self.error = exc

    def line(self, i: int) -> bytes:
        return b"%s %d %d\n" % (self.names[i % len(self.names)], i, BASE_TS + i // len(self.names))


def test_with_the_broker_away_the_listener_holds_at_most_its_bound_and_blocks_senders(
    clean_db: TestApp,
) -> None:
    """The broker is taken away from the listener only (a proxy between them is stopped): the
    listener buffers up to max_buffered_bytes, then stops reading, so the TCP sender blocks
    (nothing is dropped) and UDP lines are dropped and counted; with the broker back,
    everything the sender sent is stored, in order."""
    app = clean_db
    from htmengine.config import get_rabbitmq_config

    with MessageBus() as bus:
        for queue in (app.data_queue, rejected_queue_name(app.data_queue)):
            bus.declare_queue(queue)
            bus.purge_queue(queue)
    proxy = TcpProxy(get_rabbitmq_config().getint("connection", "port"))
    proxy.start()
    supervisor = Supervisor(
        app,
        ["metric_listener", "metric_storer"],
        environment={
            "metric_listener": {
                "_NTA_UTILS_CONFIG__RABBITMQ__CONNECTION__PORT": str(proxy.port),
                "_NTA_UTILS_CONFIG__APPLICATION__METRIC_LISTENER__MAX_BUFFERED_BYTES": str(
                    BUFFER_BOUND
                ),
            }
        },
    )
    sender = _Sender(app.ports["plaintext"], metrics=20)
    port = app.ports["listener_metrics"]
    try:
        supervisor.start()
        wait_until(lambda: _metrics_up(app), 30, "the services' /metrics endpoints")
        send_tcp(app.ports["plaintext"], b"through.proxy 1 1370000000\n")
        wait_until(lambda: row_count() == 1, 30, "a row through the proxy")

        proxy.stop()
        sender.start()
        stalled_since, last_sent, highest = time.monotonic(), -1, 0.0
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            listener = read_counters(port)
            highest = max(highest, listener["htmengine_listener_buffered_bytes"])
            assert highest <= BUFFER_BOUND, f"buffer at {highest} bytes"
            if sender.sent_lines != last_sent:
                stalled_since, last_sent = time.monotonic(), sender.sent_lines
            elif (
                time.monotonic() - stalled_since > 3
                and listener["htmengine_listener_reading_paused"]
            ):
                break
            assert sender.error is None and sender.is_alive()
            time.sleep(0.3)
        else:
            raise AssertionError(f"the sender never blocked ({sender.sent_lines} lines sent)")
        assert listener["htmengine_listener_buffer_limit_bytes"] == BUFFER_BOUND
        assert highest > BUFFER_BOUND / 2, "the buffer never filled"
        assert listener["htmengine_listener_lines_dropped_total"] == 0
        assert counter_sum(listener, LISTENER_REJECTED) == 0

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            for d in range(10):
                lines = [b"udp.dropped %d %d" % (i, BASE_TS + d * 10 + i) for i in range(10)]
                udp.sendto(b"\n".join(lines), ("127.0.0.1", app.ports["udp"]))
        wait_until(
            lambda: read_counters(port)["htmengine_listener_lines_dropped_total"] == 100,
            30,
            "100 UDP lines dropped and counted",
        )
        assert read_counters(port)["htmengine_listener_buffered_bytes"] <= BUFFER_BOUND

        sender.stop.set()
        proxy.start()
        sender.join(timeout=120)
        assert not sender.is_alive() and sender.error is None
        total = sender.sent_lines
        wait_until(lambda: row_count() == total + 1, 300, f"{total + 1} rows")
        rows = stored_rows()
        assert "udp.dropped" not in rows
        metrics = len(sender.names)
        for k, name in enumerate(sender.names):
            expected = [BASE_TS + i // metrics for i in range(k, total, metrics)]
            assert [ts for _, ts, _ in rows[name.decode()]] == expected
        listener = read_counters(port)
        assert listener["htmengine_listener_lines_published_total"] == total + 1
        assert listener["htmengine_listener_reading_paused"] == 0
    finally:
        sender.stop.set()
        supervisor.stop()
        proxy.stop()
