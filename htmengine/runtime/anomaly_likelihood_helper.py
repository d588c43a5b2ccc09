"""Anomaly likelihood for a model's inference results: raw scores in, anomaly scores out.

One helper per scoring profile (``[anomaly_likelihood] profile``, see `likelihood_profiles`):
``AnomalyLikelihoodHelper`` is profile ``htmengine`` (the original's orchestration, described
below, bit for bit); ``NumentaLikelihoodHelper`` is profile ``numenta``. ``from_config`` builds
the configured one; all share ``update_scores``'s contract.

The anomaly service calls `AnomalyLikelihoodHelper.update_scores` once per result batch. The state
that carries over between batches is the JSON-able dict kept in ``metric.model_params`` under
``anomalyLikelihoodParams``::

    {"last_rowid_for_stats": <rowid of the newest sample of the last estimate>,
     "params": <htm.anomaly estimator state: distribution, movingAverage, historicalLikelihoods>}

Orchestration (htmengine's, on top of the functional API of `htmengine.htm.anomaly`):

* No state yet: the first ``min_sample_size`` (100) scored rows of the metric keep anomaly_score 0;
  the row that completes them triggers the first estimate.
* Every later row is run through ``update_anomaly_likelihoods`` with the current state;
  anomaly_score = 1 - likelihood.
* The distribution is re-estimated (``estimate_anomaly_likelihoods`` over the newest
  ``sample_size`` (8640) scored rows, skipping the first 288 as the model's learning day) after the
  first row whose rowid reaches ``last_rowid_for_stats + refresh_rate`` (24), or early ("greedy")
  after a row scoring above 0.99 that is more than 3 rows past the last estimate.

Unlike the original, every refresh decision depends on the rows alone, never on how they were split
into result batches: the original widened the refresh interval to 10 % of the batch size and skipped
a greedy refresh that fell on a batch's last row, so the scores of a metric depended on the timing of
its input. Here a replay after a crash, or any other batching, yields bit-identical scores.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from htmengine.config import Config
from htmengine.htm import anomaly
from htmengine.htm.params import DEFAULT_VERSION
from htmengine.runtime.likelihood_profiles import PROFILES, profile_from_config

# Rows of the model's first day (5-minute samples) left out of estimates: it is still learning.
SKIP_RECORDS = 288
# A row scoring above this re-estimates the distribution at once ...
GREEDY_REFRESH_THRESHOLD = 0.99
# ... if it is more than this many rows past the last estimate.
GREEDY_REFRESH_MIN_GAP = 3


@dataclass
class ScoredRow:
    """One metric_data row of a result batch: the model's raw score in, the anomaly score out."""

    rowid: int
    timestamp: datetime
    value: float
    raw_anomaly_score: float
    anomaly_score: float = 0.0

    def record(self) -> tuple[datetime, float, float]:
        """The (timestamp, value, raw score) triple the likelihood functions take."""
        return (self.timestamp, self.value, self.raw_anomaly_score)


# load_history(limit) -> the newest `limit` already-scored rows of the metric, oldest first.
HistoryLoader = Callable[[int], Sequence[ScoredRow]]


class LikelihoodHelper(Protocol):
    """What the anomaly service calls once per result batch (every profile's helper)."""

    def update_scores(
        self,
        rows: Sequence[ScoredRow],
        state: dict[str, Any] | None,
        load_history: HistoryLoader,
        version: str = DEFAULT_VERSION,
    ) -> dict[str, Any] | None: ...


class AnomalyLikelihoodHelper:
    """Turns raw anomaly scores into likelihood-based anomaly scores, batch after batch."""

    def __init__(
        self,
        *,
        min_sample_size: int = 100,
        refresh_rate: int = 24,
        sample_size: int = 8640,
    ) -> None:
        if not 0 < min_sample_size <= sample_size:
            raise ValueError(
                f"need 0 < statistics_min_sample_size ({min_sample_size}) <= "
                f"statistics_sample_size ({sample_size})"
            )
        if refresh_rate < 1:
            raise ValueError(f"statistics_refresh_rate must be >= 1, got {refresh_rate}")
        self.min_sample_size = min_sample_size
        self.refresh_rate = refresh_rate
        self.sample_size = sample_size

    @staticmethod
    def for_profile(profile: str) -> LikelihoodHelper:
        """The helper of a profile, with the default settings of conf/application.conf."""
        if profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r}; expected one of {sorted(PROFILES)}")
        if profile == NumentaLikelihoodHelper.profile:
            return NumentaLikelihoodHelper()
        return AnomalyLikelihoodHelper()

    @classmethod
    def from_config(cls, config: Config) -> LikelihoodHelper:
        """The helper of application.conf ``[anomaly_likelihood] profile`` and its settings (the
        ``statistics_*`` keys are the ``htmengine`` profile's)."""
        profile = profile_from_config(config).name
        if profile != "htmengine":
            return cls.for_profile(profile)
        return cls(
            min_sample_size=config.getint("anomaly_likelihood", "statistics_min_sample_size"),
            refresh_rate=config.getint("anomaly_likelihood", "statistics_refresh_rate"),
            sample_size=config.getint("anomaly_likelihood", "statistics_sample_size"),
        )

    def update_scores(
        self,
        rows: Sequence[ScoredRow],
        state: dict[str, Any] | None,
        load_history: HistoryLoader,
        version: str = DEFAULT_VERSION,
    ) -> dict[str, Any] | None:
        """Set ``anomaly_score`` on `rows` (ascending rowid, the next rows after `state`).

        `version` is the model's parameter generation (``modelConfig["nupicVersion"]``): the
        likelihood's tail function differs between them.

        Returns the new state (None while the metric has fewer than min_sample_size scored rows).
        `state` is not modified. `load_history` is called at most once, and only when the batch
        needs an estimate.
        """
        if not rows:
            return state
        window = _SampleWindow(load_history, self.sample_size)
        start = 0

        if state is None:
            history_size = window.load()
            needed = max(0, self.min_sample_size - history_size)
            if needed > len(rows):
                for row in rows:
                    row.anomaly_score = 0.0
                return None
            for row in rows[:needed]:
                row.anomaly_score = 0.0
                window.append(row)
            state = self._estimate(window, version)
            start = needed
        else:
            state = {
                "last_rowid_for_stats": state["last_rowid_for_stats"],
                "params": copy.deepcopy(state["params"]),
            }

        for row in rows[start:]:
            (likelihood,), _, state["params"] = anomaly.update_anomaly_likelihoods(
                [row.record()], state["params"], version=version
            )
            row.anomaly_score = 1.0 - float(likelihood)
            window.append(row)
            last = state["last_rowid_for_stats"]
            due = row.rowid >= last + self.refresh_rate
            greedy = (
                row.anomaly_score > GREEDY_REFRESH_THRESHOLD
                and row.rowid > last + GREEDY_REFRESH_MIN_GAP
            )
            if due or greedy:
                state = self._estimate(window, version, fallback=state)
        return state

    def _estimate(
        self, window: _SampleWindow, version: str, fallback: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """A fresh estimate from the newest sample_size samples.

        With too few samples (rows lost to errors or garbage collection) the current params are
        kept, but the refresh point still advances so the next rows are not each re-estimated.
        """
        records = window.records()
        if len(records) < self.min_sample_size and fallback is not None:
            return {"last_rowid_for_stats": window.last_rowid, "params": fallback["params"]}
        _, _, params = anomaly.estimate_anomaly_likelihoods(
            records, skip_records=SKIP_RECORDS, version=version
        )
        return {"last_rowid_for_stats": window.last_rowid, "params": params}


class _SampleWindow:
    """The newest `size` scored samples of a metric: its stored history (loaded on first use, at
    most once per batch) followed by the rows of the current batch scored so far."""

    def __init__(self, load_history: HistoryLoader, size: int) -> None:
        self._load_history = load_history
        self._size = size
        self._records: list[tuple[datetime, float, float]] | None = None
        self._pending: list[ScoredRow] = []
        self.last_rowid: int | None = None

    def load(self) -> int:
        """Load the stored history; returns how many samples it has."""
        history = self._load_history(self._size)
        self._records = [row.record() for row in history]
        if history:
            self.last_rowid = history[-1].rowid
        return len(history)

    def append(self, row: ScoredRow) -> None:
        self._pending.append(row)
        self.last_rowid = row.rowid

    def records(self) -> list[tuple[datetime, float, float]]:
        """The window as (timestamp, value, raw score) records, oldest first."""
        if self._records is None:
            last_rowid = self.last_rowid
            self.load()
            self.last_rowid = last_rowid if last_rowid is not None else self.last_rowid
        assert self._records is not None
        self._records.extend(row.record() for row in self._pending)
        self._pending.clear()
        if len(self._records) > self._size:
            del self._records[: len(self._records) - self._size]
        return self._records


def rescale_for_display(anomaly_score: float) -> int:
    """The metric_data.display_value of an anomaly score (the original's rescaleForDisplay).

    0 for a score of 0; otherwise a band marker plus the log-scaled score s in [0, 1], rounded to
    the INTEGER column the way MySQL rounds (half away from zero): 1000 for ordinary scores,
    1000000 from about 0.9999, 1000000001 from about 0.99999.
    """
    if anomaly_score == 0:
        return 0
    magnitude = abs(anomaly_score)
    if magnitude > 0.99999:
        scaled = 1.0
    else:
        scaled = math.log(1.0000000001 - magnitude) / math.log(1e-10)
    if scaled >= 0.5:
        base = 1_000_000_000
    elif scaled >= 0.4:
        base = 1_000_000
    else:
        base = 1000
    return int(math.floor(base + scaled + 0.5))


# --- profile "numenta": NAB's numenta detector, live -----------------------------------------------

# The likelihood of NAB's numenta detector (NuPIC's AnomalyLikelihood class), with fixed windows
# instead of NAB's per-file ones (those come from the file's length: look-ahead). The learning
# period is half a day of 5-minute rows, chosen among 72, 144 and NuPIC's default 288 on held-out
# halves of NAB (benchmarks/nab_engine.py; 144 won on 18 of 20 halves).
NUMENTA_LEARNING_PERIOD = 144
NUMENTA_ESTIMATION_SAMPLES = 100
NUMENTA_REESTIMATION_PERIOD = 100
NUMENTA_HISTORIC_WINDOW = 8640
# NAB's spatial rule: a value beyond the running min/max by more than this share of their range ...
SPATIAL_TOLERANCE = 0.05
# ... scores 1.0 from this row on (the first rows score 0, as in profile htmengine).
SPATIAL_AFTER = 100
# An anomaly probability at NuPIC's "red" level (likelihood <= 1e-5) is an alarm ...
ALARM_PROBABILITY = 1.0 - anomaly.RED_THRESHOLD
# ... and an alarm within this many rows of an earlier one (the 10-row average of raw scores still
# holds the earlier row: the same evidence restated) is reported at NuPIC's "yellow" level.
DEBOUNCE_ROWS = anomaly.AVERAGING_WINDOW - 1
REPEAT_PROBABILITY = 1.0 - anomaly.YELLOW_THRESHOLD


class NumentaLikelihoodHelper:
    """Profile ``numenta``: the scoring of NAB's numenta detector (70.1 with look-ahead), live.

    Per row, in rowid order, with `k` the number of rows scored before it:

    * ``k < 244`` (learning 144 + estimation 100): anomaly_score 0 (but see the spatial rule).
    * Otherwise the anomaly probability of NuPIC's ``AnomalyLikelihood``: re-fit on the newest
      8640 scored rows before this one when there is no fit yet or ``k`` is a multiple of 100
      (the first 144 rows of the metric skipped while they are in the window), then one update.
    * NAB's spatial rule (a value more than 5 % of the range beyond the min/max of the rows
      before it) scores 1.0 from ``k = 100`` on, while the likelihood still learns (NAB applies
      it from the start; the first 100 rows score 0 as in profile htmengine).
    * The debounce of ``DebouncedNumentaDetector``: an alarm (probability >= 0.99999) within 9
      rows of an earlier alarm scores 0.999.

    State (JSON, in ``metric.model_params``): the row count, the likelihood params, the running
    min/max and the last alarm's row count. Every decision depends on the row count alone, so
    any batching or replay gives the same scores.
    """

    profile = "numenta"

    def __init__(
        self,
        *,
        learning_period: int = NUMENTA_LEARNING_PERIOD,
        estimation_samples: int = NUMENTA_ESTIMATION_SAMPLES,
        reestimation_period: int = NUMENTA_REESTIMATION_PERIOD,
        sample_size: int = NUMENTA_HISTORIC_WINDOW,
        spatial_after: int | None = None,
        debounce_rows: int = DEBOUNCE_ROWS,
    ) -> None:
        self.learning_period = learning_period
        self.min_sample_size = learning_period + estimation_samples
        self.reestimation_period = reestimation_period
        self.sample_size = sample_size
        self.spatial_after = SPATIAL_AFTER if spatial_after is None else spatial_after
        self.debounce_rows = debounce_rows
        # The first rows of a metric, which always score 0.
        self.learning_rows = min(self.spatial_after, self.min_sample_size)

    def update_scores(
        self,
        rows: Sequence[ScoredRow],
        state: dict[str, Any] | None,
        load_history: HistoryLoader,
        version: str = DEFAULT_VERSION,
    ) -> dict[str, Any] | None:
        """Set ``anomaly_score`` on `rows` (the next rows after `state`); returns the new state.

        `state` is not modified; `load_history` is called at most once per batch, when a re-fit
        is due.
        """
        if not rows:
            return state
        if state is None:
            state = {"rows": 0, "params": None, "min": None, "max": None, "lastAlarm": None}
        else:
            state = copy.deepcopy(state)
        window = _SampleWindow(load_history, self.sample_size)
        count = state["rows"]
        for row in rows:
            low, high = state["min"], state["max"]
            spatial = (
                low is not None
                and high > low
                and (
                    row.value > high + (high - low) * SPATIAL_TOLERANCE
                    or row.value < low - (high - low) * SPATIAL_TOLERANCE
                )
            )
            if low is None or row.value < low:
                state["min"] = row.value
            if high is None or row.value > high:
                state["max"] = row.value
            score = 0.0
            if count >= self.min_sample_size:
                if state["params"] is None or count % self.reestimation_period == 0:
                    shifted_out = max(0, count - self.sample_size)
                    skip = min(count, max(0, self.learning_period - shifted_out))
                    _, _, state["params"] = anomaly.estimate_anomaly_likelihoods(
                        window.records(), skip_records=skip, version=version
                    )
                (likelihood,), _, state["params"] = anomaly.update_anomaly_likelihoods(
                    [row.record()], state["params"], version=version
                )
                score = 1.0 - float(likelihood)
            if spatial and count >= self.spatial_after:
                score = 1.0
            if score >= ALARM_PROBABILITY:
                last = state["lastAlarm"]
                if last is not None and count - last <= self.debounce_rows:
                    score = min(score, REPEAT_PROBABILITY)
                state["lastAlarm"] = count
            row.anomaly_score = score
            window.append(row)
            count += 1
        state["rows"] = count
        return state
