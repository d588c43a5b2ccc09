"""NAB's "numenta" detector (NuPIC 0.5.6, scored 70.1), on our HTM model (spec §7).

Per data file: a ``ScalarAnomalyModel`` whose value encoder covers the file's whole min..max padded by
20 % (NAB hands detectors that look-ahead by design), an ``AnomalyLikelihood`` whose learning period
and estimation samples split NAB's probationary period in two, the log transform of the likelihood,
and a "spatial" rule that flags a value far outside everything seen so far.

``DebouncedNumentaDetector`` is the same detector with one rule added after the score (the HTM model and
the likelihood are untouched): an alarm that follows another alarm-level score within the likelihood's
averaging window is reported at NuPIC's "yellow" level, since it restates the same evidence.
"""

from __future__ import annotations

import math
from datetime import datetime

from htmengine.htm.anomaly import (
    AVERAGING_WINDOW,
    DEFAULT_VERSION,
    RED_THRESHOLD,
    YELLOW_THRESHOLD,
    AnomalyLikelihood,
    log_likelihood,
)
from htmengine.htm.model import ScalarAnomalyModel
from htmengine.htm.params import get_scalar_metric_params

PROBATIONARY_FRACTION = 0.15
PROBATIONARY_CAP_ROWS = 5000
RANGE_PADDING = 0.2
SPATIAL_TOLERANCE = 0.05
MIN_RESOLUTION = 0.001


def nab_probationary_period(n_rows: int) -> float:
    """NAB's probationary length for a file, as the float NAB computed (750.0 for long files)."""
    return min(
        float(math.floor(PROBATIONARY_FRACTION * n_rows)),
        PROBATIONARY_FRACTION * PROBATIONARY_CAP_ROWS,
    )


class FinalScorer:
    """Everything after the raw score: likelihood, log transform and the spatial rule.

    Split from the HTM so that it can be checked on its own against the oracle's raw scores.
    """

    def __init__(self, probationary_period: float, version: str = DEFAULT_VERSION) -> None:
        learning_period = int(math.floor(probationary_period / 2.0))
        self.likelihood = AnomalyLikelihood(
            learning_period=learning_period,
            estimation_samples=probationary_period - learning_period,
            reestimation_period=100,
            version=version,
        )
        self.min_seen: float | None = None
        self.max_seen: float | None = None

    def _is_spatial_anomaly(self, value: float) -> bool:
        """A value beyond the range seen so far by more than 5 % of that range."""
        if self.min_seen is None or self.max_seen is None or self.min_seen == self.max_seen:
            return False
        tolerance = (self.max_seen - self.min_seen) * SPATIAL_TOLERANCE
        return value > self.max_seen + tolerance or value < self.min_seen - tolerance

    def score(self, value: float, raw_score: float) -> float:
        """The final anomaly score of one record in [0, 1], given the model's raw score."""
        spatial = self._is_spatial_anomaly(value)
        if self.max_seen is None or value > self.max_seen:
            self.max_seen = value
        if self.min_seen is None or value < self.min_seen:
            self.min_seen = value
        final = log_likelihood(self.likelihood.anomaly_probability(value, raw_score))
        return 1.0 if spatial else final


class NumentaDetector:
    """One data file's detector: ``handle_record`` per row, in file order."""

    def __init__(
        self,
        input_min: float,
        input_max: float,
        probationary_period: float,
        version: str = DEFAULT_VERSION,
    ) -> None:
        padding = abs(input_max - input_min) * RANGE_PADDING
        params = get_scalar_metric_params(
            input_min - padding, input_max + padding, MIN_RESOLUTION, version=version
        )
        self.model = ScalarAnomalyModel(params["modelConfig"])
        self.final_scorer = FinalScorer(probationary_period, version=version)

    @classmethod
    def for_values(cls, values: list[float], version: str = DEFAULT_VERSION) -> NumentaDetector:
        """The detector NAB would build for a file with these values (whole-file min/max, length)."""
        return cls(min(values), max(values), nab_probationary_period(len(values)), version)

    def handle_record(self, timestamp: datetime, value: float) -> tuple[float, float]:
        """``(anomaly_score, raw_score)`` for the next row of the file."""
        raw_score = self.model.run(timestamp, value)
        return self.final_scorer.score(value, raw_score), raw_score


# An alarm-level score is what NuPIC calls red: anomaly probability >= 1 - RED_THRESHOLD (~0.5 logged).
ALARM_LEVEL = log_likelihood(1.0 - RED_THRESHOLD)
# A repeated alarm is reported as NuPIC's red filter reports a repeated red: at the yellow level (~0.3).
REPEAT_LEVEL = log_likelihood(1.0 - YELLOW_THRESHOLD)
# Rows after an alarm whose moving average of raw scores still contains the alarm's row.
DEBOUNCE_ROWS = AVERAGING_WINDOW - 1


class DebouncedFinalScorer(FinalScorer):
    """``FinalScorer`` plus debouncing: one alarm per burst of alarm-level scores.

    NuPIC's likelihood filter already lowers a red that directly follows a red, but a burst whose reds
    are a few rows apart, or a spatial alarm followed by the red its jump causes, alarms again and
    again. NAB credits only the first detection in a window and charges every detection outside
    one, so those repeats can only cost. A score at alarm level is lowered to ``REPEAT_LEVEL`` when
    another alarm-level score (reported or not, as NuPIC's filter looks at the unfiltered value)
    came at most ``debounce_rows`` rows earlier. The default, ``DEBOUNCE_ROWS``, is where the current
    10-record average of raw scores still holds that earlier row, so both alarms rest on the same
    evidence; other values exist for benchmarks/nab_postprocess.py's sensitivity check.
    """

    def __init__(
        self,
        probationary_period: float,
        version: str = DEFAULT_VERSION,
        debounce_rows: int = DEBOUNCE_ROWS,
    ) -> None:
        super().__init__(probationary_period, version=version)
        self.debounce_rows = debounce_rows
        self.row = 0
        self.last_alarm_row: int | None = None

    def score(self, value: float, raw_score: float) -> float:
        """The debounced final anomaly score of one record in [0, 1]."""
        final = super().score(value, raw_score)
        if final >= ALARM_LEVEL:
            if (
                self.last_alarm_row is not None
                and self.row - self.last_alarm_row <= self.debounce_rows
            ):
                final = min(final, REPEAT_LEVEL)
            self.last_alarm_row = self.row
        self.row += 1
        return final


class DebouncedNumentaDetector(NumentaDetector):
    """The numenta detector (same HTM model, same likelihood) with ``DebouncedFinalScorer``."""

    def __init__(
        self,
        input_min: float,
        input_max: float,
        probationary_period: float,
        version: str = DEFAULT_VERSION,
    ) -> None:
        super().__init__(input_min, input_max, probationary_period, version=version)
        self.final_scorer = DebouncedFinalScorer(probationary_period, version=version)
