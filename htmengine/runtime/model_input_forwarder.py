"""The metric storer's after-commit hook: new rows go to their metric's model.

* ACTIVE metric: the rows are submitted to the model in request batches of
  ``application.conf [metric_streamer] chunk_size`` rows. A model whose input queue is gone (being
  deleted) is skipped silently.
* PENDING_DATA metric whose newest row is the 288th or later: `lifecycle.activate_from_data`
  creates its model from the data's range (the backlog goes with the definition).
* Rows stored earlier, handed over again by the storer (`forward_rows`) because a redelivered
  message's samples were already stored and their forwarding may have been lost in a crash: they
  go to the model like new rows; the model skips those it already ran (its rowid mark).
* CREATE_PENDING metric: nothing; the anomaly service forwards the rows stored during creation when
  the model confirms its definition (see `htmengine.engine.lifecycle`), which keeps every model's
  input in rowid order with no row twice.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable, Sequence

from htmengine.config import get_app_config
from htmengine.engine import lifecycle
from htmengine.engine.model_input import (
    configured_chunk_size,
    input_rows,
    send_input_rows_to_model,
)
from htmengine.exceptions import HTMEngineError, ModelNotFound
from htmengine.model_swapper.model_swapper_interface import ModelSwapperInterface
from htmengine.repository import MetricStatus, get_engine
from htmengine.runtime.likelihood_profiles import profile_from_config
from htmengine.runtime.metric_streamer import StoredRows

LOGGER = logging.getLogger("htmengine.model_input_forwarder")


class ModelInputForwarder:
    """Callable hook for ``MetricStreamer(on_rows_stored=...)``."""

    def __init__(
        self,
        chunk_size: int,
        activate_model: Callable[[str], object] | None = None,
        swapper: ModelSwapperInterface | None = None,
        range_rows: int | None = None,
    ) -> None:
        self.chunk_size = chunk_size
        self.range_rows = range_rows
        self.activate_model = activate_model if activate_model is not None else self._activate
        self._swapper = swapper

    @classmethod
    def from_config(cls) -> ModelInputForwarder:
        """Chunk size and the scoring profile's range rows from application.conf; activation by
        the lifecycle."""
        config = get_app_config()
        return cls(
            configured_chunk_size(config),
            range_rows=profile_from_config(config).range_rows,
        )

    def _activate(self, uid: str) -> bool:
        return lifecycle.activate_from_data(
            get_engine(), uid, self.swapper, self.chunk_size, range_rows=self.range_rows
        )

    @property
    def swapper(self) -> ModelSwapperInterface:
        if self._swapper is None:
            self._swapper = ModelSwapperInterface()
        return self._swapper

    def __call__(self, stored: Sequence[StoredRows]) -> None:
        for item in stored:
            if not item.samples:
                continue
            if item.status == MetricStatus.ACTIVE:
                self.forward_rows(item.uid, item.rows)
            elif lifecycle.ready_for_activation(item.status, item.last_rowid):
                try:
                    self.activate_model(item.uid)
                except (HTMEngineError, ValueError, TypeError) as exc:
                    LOGGER.warning("could not activate the model of metric %s: %r", item.uid, exc)

    def forward_rows(self, uid: str, rows: Sequence[tuple[int, datetime.datetime, float]]) -> None:
        """Submit (rowid, timestamp, value) rows of an ACTIVE metric to its model, in order."""
        try:
            send_input_rows_to_model(uid, input_rows(rows), self.chunk_size, self.swapper)
        except ModelNotFound:
            LOGGER.info("model %s has no input queue (being deleted); rows kept", uid)
