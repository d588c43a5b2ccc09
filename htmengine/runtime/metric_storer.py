"""Drains the custom metric data queue into MySQL.

Consumes ``[metric_listener] queue_name`` with prefetch and stores many messages per transaction:

1. each message is decoded inside the bus's poison guard: UTF-8 JSON object, ``protocol`` "plain",
   ``data`` a list of strings. One that is not (or whose decoding fails in any way) goes,
   unchanged, to the dead-letter queue ``<queue>.rejected`` (header ``x-rejected-reason``) and is
   acked at once; its neighbours are not affected;
2. lines that fail to parse inside a good message are counted and skipped;
3. samples are grouped by metric name (message order kept); unknown names become UNMONITORED custom
   metrics (race-safe across storer processes, under the ``metrics`` lock row);
4. one transaction locks the metrics, scrubs (drops samples not newer than the newest stored one),
   allocates contiguous rowids and inserts the rows;
5. only after the commit are the messages acked, so a crash before it leads to a redelivery that
   the scrubbing rule makes harmless;
6. after the commit, rows of ACTIVE metrics go to their models (the `on_rows_stored` hook), and
   before them, for samples of *redelivered* messages that were dropped because they were already
   stored, the stored rows with those timestamps are read back and handed over again
   (`on_rows_reforwarded`): the previous delivery may have committed them and died before
   forwarding them. The model skips the rows it already ran (its rowid mark), so a re-forward
   scores nothing twice.

Parallelism: one storer writes each batch over ``[metric_storer] connections`` DB connections at
once (its metrics split between them, so each metric's samples keep their order). Several storer
processes (supervisord numprocs) are safe too (creation, row locks, contiguous rowids), but the
broker hands consecutive messages to different processes, so samples of one metric may commit out
of order and the later-committed older ones are then dropped (and counted); prefer one process
with more connections unless each metric's data arrives in one message. With several processes,
two of them can also forward one metric's consecutive commits in the wrong order, and the model
then skips the older rows (below its rowid mark): only one storer process keeps the guarantee
that every stored row of an ACTIVE metric is scored.
"""

from __future__ import annotations

import datetime
import logging
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import sqlalchemy as sa

from htmengine.boot import ServiceBoot, run_service
from htmengine.bus import Message, MessageBus, PoisonGuard, rejected_queue_name
from htmengine.config import ConfigError, get_app_config, get_rabbitmq_config
from htmengine.instrumentation import StorerMetrics
from htmengine.logging_support import RateLimitedLogger, service_logger
from htmengine.protocol.data_queue import decode_data_message
from htmengine.repository import MetricStatus, get_engine
from htmengine.repository.retry import retry_on_transient_db_errors
from htmengine.runtime.metric_streamer import (
    DataPoint,
    MetricStreamer,
    MissingMetricsError,
    StoredRows,
    ensure_custom_metrics,
    stored_rows_at,
)
from htmengine.runtime.model_input_forwarder import ModelInputForwarder
from htmengine.runtime.plaintext_protocol import (
    DEFAULT_MAX_FUTURE_SECONDS,
    ParsedLines,
    max_body_bytes,
    parse_samples,
    timestamp_limit,
)

SERVICE_NAME = "metric_storer"
# Seconds without a new message after which the pending ones are stored.
IDLE_FLUSH_SEC = 0.05
# Pending messages are stored at the latest this many seconds after the first arrived.
MAX_BATCH_AGE_SEC = 0.5
# Retries of a batch whose metrics were deleted while it was being stored.
MISSING_METRIC_RETRIES = 3
# Metric name -> uid cache bound (trimmed to half when exceeded).
MAX_CACHED_METRICS = 100_000

# Hook that hands stored rows, (rowid, timestamp, value) in rowid order, of one metric to its model.
RowsForwarder = Callable[[str, list[tuple[int, datetime.datetime, float]]], None]


def _parse_message(body: bytes, limit: int) -> ParsedLines:
    """A data-queue message's lines, parsed (the poison guard's decoder; `limit`: the newest
    timestamp accepted)."""
    return parse_samples(decode_data_message(body), limit=limit)


def bounded_prefetch(prefetch: int, max_prefetch_bytes: int, largest_body: int) -> int:
    """The prefetch count that keeps what the broker has in flight to us within
    `max_prefetch_bytes`, each message counted as the largest body the listener sends.

    RabbitMQ does not implement basic.qos prefetch_size (it closes the connection with
    NOT_IMPLEMENTED), so the byte budget becomes a message count.
    """
    return max(1, min(prefetch, max_prefetch_bytes // largest_body))


def partition_by_size(
    samples_by_uid: dict[str, list[DataPoint]], parts: int
) -> list[dict[str, list[DataPoint]]]:
    """Split metrics into at most `parts` groups of about equal sample counts (largest first)."""
    groups: list[dict[str, list[DataPoint]]] = [{} for _ in range(max(1, parts))]
    sizes = [0] * len(groups)
    for uid in sorted(samples_by_uid, key=lambda u: len(samples_by_uid[u]), reverse=True):
        smallest = sizes.index(min(sizes))
        groups[smallest][uid] = samples_by_uid[uid]
        sizes[smallest] += len(samples_by_uid[uid])
    return [group for group in groups if group]


@dataclass
class BatchOutcome:
    """What one batch of messages became (for logs and tests)."""

    messages: int = 0
    rejected: int = 0
    bad_lines: int = 0
    stored: int = 0
    dropped: int = 0


@dataclass
class PreparedBatch:
    """Messages decoded and parsed, waiting to be stored."""

    messages: list[Message]
    samples_by_name: dict[str, list[DataPoint]]
    outcome: BatchOutcome
    # Timestamps of the samples of redelivered messages, by metric name.
    redelivered_seconds: dict[str, set[int]] = field(default_factory=dict)


class MetricStorer:
    """One storer: consume, decode, store in one transaction per batch, ack after commit."""

    def __init__(
        self,
        engine: sa.Engine,
        bus: MessageBus,
        queue_name: str,
        prefetch: int,
        connections: int,
        streamer: MetricStreamer,
        metrics: StorerMetrics,
        log: logging.Logger,
        on_rows_reforwarded: RowsForwarder | None = None,
        max_future_seconds: int = DEFAULT_MAX_FUTURE_SECONDS,
        max_prefetch_bytes: int | None = None,
    ) -> None:
        self.engine = engine
        # A batch is stored once its bodies reach half this (None: no byte bound).
        self.max_prefetch_bytes = max_prefetch_bytes
        # The listener's future-timestamp rule, for messages published straight to the queue.
        self.max_future_seconds = max_future_seconds
        self.on_rows_reforwarded = on_rows_reforwarded
        self.bus = bus
        self.queue_name = queue_name
        self.rejected_queue = rejected_queue_name(queue_name)
        self.prefetch = prefetch
        self.connections = connections
        self._pool = ThreadPoolExecutor(max_workers=connections, thread_name_prefix="store")
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="writer")
        self.streamer = streamer
        self.metrics = metrics
        self.log = log
        self.warn = RateLimitedLogger(log, interval=10.0)
        self.guard = PoisonGuard(log, lambda kind: metrics.messages_rejected.labels(kind).inc())
        self.uid_cache: dict[str, str] = {}
        self.stopping = threading.Event()
        # Stored rows handed to models again for redelivered messages (logs and tests).
        self.rows_reforwarded = 0

    def run(self) -> None:
        """Consume until `stopping` is set (checked between batches).

        Pipelined: while one batch is being written (writer thread), the next one is received
        and parsed. Batches are still written one after the other, so each metric's samples
        keep their order, and a batch's messages are acked only after its commit.
        """
        self.bus.declare_queue(self.queue_name)
        self.bus.declare_queue(self.rejected_queue)
        self.log.info("storing from queue %s (prefetch %d)", self.queue_name, self.prefetch)
        # Half the prefetch window: the broker delivers the next batch while this one is stored.
        batch_messages = max(1, self.prefetch // 2)
        # Messages published straight to the queue may be larger than the listener's: bound
        # the bytes of a batch too.
        batch_bytes = (self.max_prefetch_bytes or 0) // 2 or None
        pending: list[Message] = []
        pending_bytes = 0
        first_arrival = 0.0
        in_flight: tuple[PreparedBatch, Future[list[StoredRows]]] | None = None

        def settle() -> None:
            nonlocal in_flight
            if in_flight is not None:
                batch, future = in_flight
                in_flight = None
                self.finish(batch, future.result())

        deliveries = self.bus.consume(
            self.queue_name, prefetch=self.prefetch, inactivity_timeout=IDLE_FLUSH_SEC
        )
        for message in deliveries:
            if in_flight is not None and in_flight[1].done():
                settle()
            if message is not None:
                if not pending:
                    first_arrival = time.monotonic()
                pending.append(message)
                pending_bytes += len(message.body)
                if (
                    len(pending) < batch_messages
                    and (batch_bytes is None or pending_bytes < batch_bytes)
                    and time.monotonic() - first_arrival < MAX_BATCH_AGE_SEC
                ):
                    continue
            if pending:
                batch = self.prepare(pending)
                pending = []
                pending_bytes = 0
                settle()
                in_flight = (batch, self._writer.submit(self._store, batch.samples_by_name))
            if self.stopping.is_set():
                break
        settle()
        if pending:
            self.process(pending)

    def process(self, messages: list[Message]) -> BatchOutcome:
        """Store a batch of messages and ack them (dead-lettering the unusable ones)."""
        batch = self.prepare(messages)
        return self.finish(batch, self._store(batch.samples_by_name))

    def prepare(self, messages: list[Message]) -> PreparedBatch:
        """Decode and parse a batch; unusable messages go to the dead-letter queue."""
        batch = PreparedBatch([], {}, BatchOutcome(messages=len(messages)))
        outcome = batch.outcome
        samples_by_name = batch.samples_by_name
        self.metrics.messages_received.inc(len(messages))
        limit = timestamp_limit(time.time(), self.max_future_seconds)
        for message in messages:
            parsed = self.guard.decode(message, lambda body: _parse_message(body, limit))
            if parsed is None:  # dead-lettered and acked
                outcome.rejected += 1
                continue
            batch.messages.append(message)
            if parsed.bad_count:
                outcome.bad_lines += parsed.bad_count
                for reason, count in parsed.bad_by_reason.items():
                    self.metrics.lines_bad.labels(reason).inc(count)
                self.warn.warning(
                    "bad-line",
                    "skipped %d bad line(s) in a message; e.g. %s",
                    parsed.bad_count,
                    parsed.bad_example,
                )
            for name, value, seconds in parsed.good:
                samples = samples_by_name.get(name)
                if samples is None:
                    samples = samples_by_name[name] = []
                samples.append((seconds, value))
                if message.redelivered:
                    batch.redelivered_seconds.setdefault(name, set()).add(seconds)
        return batch

    def finish(self, batch: PreparedBatch, stored: list[StoredRows]) -> BatchOutcome:
        """After the commit: count, hand the rows to the hooks, ack the messages."""
        self._count(stored, batch.outcome)
        self._reforward(batch, stored)
        self.streamer.rows_committed(stored)
        for message in batch.messages:
            message.ack()
        return batch.outcome

    def _reforward(self, batch: PreparedBatch, stored: list[StoredRows]) -> None:
        """Hand ACTIVE metrics' already-stored rows that a redelivered message repeated to their
        models again (before this batch's new rows, keeping rowid order per model)."""
        if self.on_rows_reforwarded is None or not batch.redelivered_seconds:
            return
        uids = self._resolve(batch.redelivered_seconds)
        by_uid = {result.uid: result for result in stored}
        wanted: dict[str, set[int]] = {}
        for name, seconds in batch.redelivered_seconds.items():
            result = by_uid.get(uids[name])
            if (
                result is None
                or result.status != MetricStatus.ACTIVE
                or not (result.dropped_duplicate or result.dropped_out_of_order)
            ):
                continue
            dropped = seconds - {sample[0] for sample in result.samples}
            if dropped:
                wanted[result.uid] = dropped
        if not wanted:
            return
        with self.engine.connect() as conn:
            rows_by_uid = {
                uid: stored_rows_at(conn, uid, seconds) for uid, seconds in wanted.items()
            }
            conn.rollback()
        for uid, rows in rows_by_uid.items():
            if rows:
                self.rows_reforwarded += len(rows)
                self.log.info("re-forwarding %d stored row(s) of metric %s", len(rows), uid)
                self.on_rows_reforwarded(uid, rows)

    def _store(self, samples_by_name: dict[str, list[DataPoint]]) -> list[StoredRows]:
        """Store a batch: its metrics split over `connections` transactions run side by side.

        Each metric's samples stay in one transaction, so per-metric order holds. A group whose
        metrics were deleted meanwhile is re-resolved (re-created) and stored again.
        """
        results: list[StoredRows] = []
        if not samples_by_name:
            return results
        remaining = samples_by_name
        for _attempt in range(MISSING_METRIC_RETRIES):
            uids = self._resolve(remaining)
            groups = partition_by_size(
                {uids[name]: samples for name, samples in remaining.items()}, self.connections
            )
            if len(groups) == 1:
                outcomes = [self._try_store_group(groups[0])]
            else:
                outcomes = list(self._pool.map(self._try_store_group, groups))
            retry: dict[str, list[DataPoint]] = {}
            name_of = {uid: name for name, uid in uids.items()}
            for group, outcome in zip(groups, outcomes, strict=True):
                if isinstance(outcome, MissingMetricsError):
                    self.log.warning("metrics deleted while storing; re-resolving: %s", outcome)
                    gone = set(outcome.uids)
                    self.uid_cache = {n: u for n, u in self.uid_cache.items() if u not in gone}
                    retry.update({name_of[uid]: samples for uid, samples in group.items()})
                else:
                    results.extend(outcome)
            if not retry:
                return results
            remaining = retry
        raise MissingMetricsError(sorted(remaining))

    def _resolve(self, samples_by_name: dict[str, list[DataPoint]]) -> dict[str, str]:
        """uids of the batch's metric names, creating unknown metrics."""
        uids, created = ensure_custom_metrics(self.engine, samples_by_name, self.uid_cache)
        if created:
            self.metrics.metrics_created.inc(len(created))
            self.log.info("created %d metric(s), e.g. %r", len(created), created[0])
        self._remember(uids)
        return uids

    def _try_store_group(
        self, samples_by_uid: dict[str, list[DataPoint]]
    ) -> list[StoredRows] | MissingMetricsError:
        try:
            return self._store_group(samples_by_uid)
        except MissingMetricsError as exc:
            return exc

    @retry_on_transient_db_errors
    def _store_group(self, samples_by_uid: dict[str, list[DataPoint]]) -> list[StoredRows]:
        """One transaction; retried on deadlocks and lost connections."""
        started = time.perf_counter()
        with self.engine.begin() as conn:
            stored = self.streamer.store_samples(conn, samples_by_uid)
        self.metrics.transaction_seconds.observe(time.perf_counter() - started)
        return stored

    def _remember(self, uids: dict[str, str]) -> None:
        if len(self.uid_cache) + len(uids) > MAX_CACHED_METRICS:
            keep = list(self.uid_cache.items())[-(MAX_CACHED_METRICS // 2) :]
            self.uid_cache = dict(keep)
        self.uid_cache.update(uids)

    def _count(self, stored: list[StoredRows], outcome: BatchOutcome) -> None:
        out_of_order = duplicate = rows = 0
        for result in stored:
            rows += len(result.samples)
            out_of_order += result.dropped_out_of_order
            duplicate += result.dropped_duplicate
        self.metrics.samples_stored.inc(rows)
        outcome.stored = rows
        outcome.dropped = out_of_order + duplicate
        for reason, count in (("out_of_order", out_of_order), ("duplicate", duplicate)):
            if count:
                self.metrics.samples_dropped.labels(reason).inc(count)
                self.warn.warning(
                    f"dropped-{reason}", "dropped %d sample(s): %s", count, reason.replace("_", " ")
                )


def build_storer(
    on_rows_stored: Callable[[list[StoredRows]], None] | None = None,
    on_rows_reforwarded: RowsForwarder | None = None,
) -> MetricStorer:
    """A storer wired to the configured database, broker and queue."""
    config = get_app_config()
    queue_name = config.get("metric_listener", "queue_name")
    prefetch = config.getint("metric_storer", "prefetch")
    max_prefetch_bytes = config.getint("metric_storer", "max_prefetch_bytes")
    connections = config.getint("metric_storer", "connections")
    max_future_seconds = config.getint("metric_listener", "max_future_seconds")
    for key, value in (
        ("prefetch", prefetch),
        ("connections", connections),
        ("max_prefetch_bytes", max_prefetch_bytes),
    ):
        if value < 1:
            raise ConfigError(f"{config.path}: [metric_storer] {key} must be >= 1")
    largest_body = max_body_bytes(
        config.getint("metric_listener", "batch_max_bytes"),
        config.getint("metric_listener", "batch_max_lines"),
    )
    prefetch = bounded_prefetch(prefetch, max_prefetch_bytes, largest_body)
    return MetricStorer(
        get_engine(config),
        MessageBus(get_rabbitmq_config()),
        queue_name,
        prefetch,
        connections,
        MetricStreamer(on_rows_stored),
        StorerMetrics(),
        service_logger(SERVICE_NAME),
        on_rows_reforwarded,
        max_future_seconds,
        max_prefetch_bytes,
    )


def run_process(boot: ServiceBoot) -> None:
    """Store until SIGTERM/SIGINT (the current batch is finished first)."""
    forwarder = ModelInputForwarder.from_config()
    storer = build_storer(forwarder, forwarder.forward_rows)
    boot.serve_metrics(storer.metrics.registry)
    boot.on_stop(storer.stopping.set)
    try:
        storer.run()
    finally:
        storer.bus.close()


def main() -> int:
    return run_service(SERVICE_NAME, run_process)


if __name__ == "__main__":
    sys.exit(main())
