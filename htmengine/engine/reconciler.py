"""The reconciler: finds and repairs what a crash between a commit and its publish leaves behind.

Every lifecycle step commits to MySQL first and tells the broker after (`lifecycle`), and the
storer forwards rows after its commit; a process killed in between leaves the database right and
the broker short. One pass (`run_once`; the anomaly service runs one every ``[reconciler]
interval_sec``) looks for the four states that can result and repairs each:

* ``create_pending``: a metric CREATE_PENDING for longer than ``create_pending_timeout_sec``
  whose input queue holds nothing (the start was never published, or its defineModel result was
  lost): started again (`lifecycle.restart`: new commandId, whole backlog, deleteModel first).
* ``pending_data``: a PENDING_DATA metric with 288 rows or more (the storer died before
  activating it): activated from its data's range.
* ``orphan_checkpoint``: a checkpoint of a metric that is gone, UNMONITORED or PENDING_DATA (a
  lost deleteModel): deleteModel (`lifecycle.delete_orphan_model`), so the archive does not keep
  it and no start could reuse it (every start also begins with deleteModel).
* ``unscored_rows``: an ACTIVE metric whose newest rows have no score while its input queue is
  empty (rows stored but never forwarded): the rows after its last scored one are forwarded again.
  The model skips rows it already ran (its rowid mark) and the anomaly service rows that have a
  score, so a repair never scores a row twice.

States that may just be in progress (a storer between its commit and its forward, an activation
under way) are repaired only when a pass finds them unchanged since the previous pass; a stuck
start is recognised by its age instead. Each repair is logged and counted
(``htmengine_reconciler_repairs{repair=...}``); a repair that fails is logged and tried again
at the next pass.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import sqlalchemy as sa

from htmengine.config import Config, get_app_config
from htmengine.engine import lifecycle
from htmengine.engine.model_input import read_rows, send_input_rows_to_model
from htmengine.exceptions import ModelNotFound
from htmengine.model_swapper.model_swapper_interface import ModelSwapperInterface
from htmengine.repository import MetricStatus, queries
from htmengine.repository.schema import metric

LOGGER = logging.getLogger("htmengine.reconciler")

CONFIG_SECTION = "reconciler"

# The repairs, as counted (the label values of htmengine_reconciler_repairs).
REPAIRS = ("create_pending", "pending_data", "orphan_checkpoint", "unscored_rows")

# Metric statuses without a model: a checkpoint of such a metric is an orphan.
_UNMODELLED = (MetricStatus.UNMONITORED, MetricStatus.PENDING_DATA)


class Reconciler:
    """One `run_once` finds and repairs every inconsistency of the module doc; `maybe_run` runs
    it when `interval` seconds have passed since the last pass."""

    def __init__(
        self,
        engine: sa.Engine,
        swapper: ModelSwapperInterface,
        chunk_size: int,
        *,
        interval: float,
        create_pending_timeout: float,
        checkpoint_ids: Callable[[], Iterable[str]],
        count: Callable[[str], None] | None = None,
        range_rows: int | None = None,
    ) -> None:
        self.engine = engine
        self.swapper = swapper
        self.chunk_size = chunk_size
        self.interval = interval
        self.create_pending_timeout = create_pending_timeout
        self.checkpoint_ids = checkpoint_ids
        self.count = count
        self.range_rows = range_rows
        self._seen: set[tuple] = set()
        # The first pass waits one interval: results that queued up while the service was down
        # (a defineModel result, say) are applied before anything is judged stuck.
        self._next_run = time.monotonic() + interval

    @classmethod
    def from_config(
        cls,
        engine: sa.Engine,
        swapper: ModelSwapperInterface,
        chunk_size: int,
        *,
        count: Callable[[str], None] | None = None,
        range_rows: int | None = None,
        config: Config | None = None,
    ) -> Reconciler:
        """``application.conf [reconciler]``; checkpoints listed from model-checkpoint.conf's
        archive. `range_rows`: the scoring profile's rows an activated model's range comes from."""
        from htmengine.model_swapper.checkpoint_mgr import CheckpointManager

        config = config if config is not None else get_app_config()
        checkpoints: list[CheckpointManager] = []

        def checkpoint_ids() -> list[str]:
            if not checkpoints:  # the archive directory is created on first use
                checkpoints.append(CheckpointManager())
            return checkpoints[0].model_ids()

        return cls(
            engine,
            swapper,
            chunk_size,
            interval=config.getfloat(CONFIG_SECTION, "interval_sec"),
            create_pending_timeout=config.getfloat(CONFIG_SECTION, "create_pending_timeout_sec"),
            checkpoint_ids=checkpoint_ids,
            count=count,
            range_rows=range_rows,
        )

    def maybe_run(self) -> dict[str, int] | None:
        """A pass if one is due (None otherwise). Never raises: a failed pass is logged."""
        now = time.monotonic()
        if now < self._next_run:
            return None
        self._next_run = now + self.interval
        try:
            return self.run_once()
        except Exception:
            LOGGER.exception("reconciler pass failed; next pass in %.0f s", self.interval)
            return None

    def run_once(self) -> dict[str, int]:
        """Find and repair; returns the repairs made, by kind."""
        repairs = dict.fromkeys(REPAIRS, 0)
        with self.engine.connect() as conn:
            statuses = {
                row.uid: (MetricStatus(row.status or 0), row.last_rowid or 0, row.model_params)
                for row in queries.get_metrics_by_status(
                    conn,
                    (MetricStatus.CREATE_PENDING, MetricStatus.PENDING_DATA),
                    (metric.c.uid, metric.c.status, metric.c.last_rowid, metric.c.model_params),
                )
            }
            tails = {
                row.uid: (queries.get_last_scored_rowid(conn, row.uid), row.last_rowid)
                for row in queries.get_active_metrics_with_unscored_last_row(conn)
            }
            archived = sorted(set(self.checkpoint_ids()))
            known = {
                row.uid: MetricStatus(row.status or 0)
                for row in queries.get_metrics_by_uids(
                    conn, archived, (metric.c.uid, metric.c.status)
                )
            }
        seen: set[tuple] = set()

        for uid, (status, last_rowid, model_params) in sorted(statuses.items()):
            if status == MetricStatus.CREATE_PENDING and self._stuck(model_params):
                if not self.swapper.modelInputPending(uid):
                    self._repair(repairs, "create_pending", uid, self._restart)
            elif status == MetricStatus.PENDING_DATA and lifecycle.ready_for_activation(
                status, last_rowid
            ):
                self._when_seen_twice(repairs, seen, ("pending_data", uid), self._activate)

        for uid in archived:
            if uid not in known or known[uid] in _UNMODELLED:
                self._when_seen_twice(repairs, seen, ("orphan_checkpoint", uid), self._delete)

        for uid, (last_scored, last_rowid) in sorted(tails.items()):
            if not self.swapper.modelInputPending(uid):
                key = ("unscored_rows", uid, last_scored, last_rowid)
                self._when_seen_twice(repairs, seen, key, self._forward)

        self._seen = seen
        return repairs

    # -- detection -------------------------------------------------------------------------------

    def _stuck(self, model_params: str | None) -> bool:
        start = lifecycle.pending_start(model_params) or {}
        return time.time() - start.get("requestedAt", 0.0) >= self.create_pending_timeout

    def _when_seen_twice(
        self, repairs: dict[str, int], seen: set[tuple], key: tuple, repair: Callable[..., bool]
    ) -> None:
        if key in self._seen:
            self._repair(repairs, key[0], key[1], repair, *key[2:])
        else:
            seen.add(key)

    def _repair(
        self, repairs: dict[str, int], kind: str, uid: str, repair: Callable[..., bool], *args: Any
    ) -> None:
        try:
            done = repair(uid, *args)
        except Exception:
            LOGGER.exception("reconciler: %s repair of metric %s failed", kind, uid)
            return
        if done:
            repairs[kind] += 1
            if self.count is not None:
                self.count(kind)
            LOGGER.warning("reconciler repaired %s of metric %s", kind, uid)

    # -- repairs ---------------------------------------------------------------------------------

    def _restart(self, uid: str) -> bool:
        start = lifecycle.start_model(
            self.engine,
            lambda conn: lifecycle.restart(conn, uid, self.create_pending_timeout),
            self.swapper,
            self.chunk_size,
        )
        return start is not None

    def _activate(self, uid: str) -> bool:
        return lifecycle.activate_from_data(
            self.engine, uid, self.swapper, self.chunk_size, range_rows=self.range_rows
        )

    def _delete(self, uid: str) -> bool:
        with self.engine.begin() as conn:
            return lifecycle.delete_orphan_model(conn, uid, self.swapper)

    def _forward(self, uid: str, last_scored: int, last_rowid: int) -> bool:
        """Forward rows after `last_scored`, if the metric is still ACTIVE with `last_rowid` rows.

        Holds the metric row lock while publishing, so rows the storer commits meanwhile (it
        takes the same lock) are forwarded after these, keeping the model's input in rowid order.
        """
        with self.engine.begin() as conn:
            row = queries.get_metric(conn, uid, ("status", "last_rowid"), for_update=True)
            if row.status != MetricStatus.ACTIVE or (row.last_rowid or 0) != last_rowid:
                return False
            rows = read_rows(conn, uid, start_rowid=last_scored + 1, stop_rowid=last_rowid)
            try:
                send_input_rows_to_model(uid, rows, self.chunk_size, self.swapper)
            except ModelNotFound:
                LOGGER.warning("reconciler: model %s has no input queue; rows not forwarded", uid)
                return False
        return bool(rows)
