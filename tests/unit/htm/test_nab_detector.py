"""NAB "numenta" detector: the post-HTM rules, and parity with NuPIC 0.5.6's published NAB results."""

import csv
from datetime import datetime

import numpy as np
import pytest

from htmengine.htm.nab_detector import (
    ALARM_LEVEL,
    DEBOUNCE_ROWS,
    REPEAT_LEVEL,
    DebouncedFinalScorer,
    DebouncedNumentaDetector,
    FinalScorer,
    NumentaDetector,
    nab_probationary_period,
)

PROBATION_SCORE = 0.0301029996658834  # log_likelihood(0.5)


def read_oracle(nab_dir, key):
    """Data rows of a file and the published numenta results for it (NuPIC 0.5.6)."""
    category, name = key.split("/")
    with (nab_dir / "data" / key).open(newline="") as handle:
        data = list(csv.DictReader(handle))
    path = nab_dir / "results" / "numenta" / category / f"numenta_{name}"
    with path.open(newline="") as handle:
        oracle = list(csv.DictReader(handle))
    assert len(data) == len(oracle)
    timestamps = [datetime.strptime(r["timestamp"], "%Y-%m-%d %H:%M:%S") for r in data]
    values = [float(r["value"]) for r in data]
    finals = np.array([float(r["anomaly_score"]) for r in oracle])
    raws = np.array([float(r["raw_score"]) for r in oracle])
    return timestamps, values, finals, raws


def test_probationary_period_is_nab_s_float():
    assert nab_probationary_period(4032) == 604.0
    assert nab_probationary_period(22695) == 750.0


def test_final_scorer_spatial_rule_and_probation():
    scorer = FinalScorer(probationary_period=600.0)
    # The first two records can never be spatial anomalies, whatever their values.
    assert scorer.score(10.0, 1.0) == PROBATION_SCORE
    assert scorer.score(1000.0, 1.0) == PROBATION_SCORE
    # Range seen is 10..1000, tolerance 49.5: 1049 is inside (and widens the range to 1049).
    assert scorer.score(1049.0, 0.0) == PROBATION_SCORE
    # Now 10..1049, tolerance 51.95: 1100 is inside; then 10..1100, tolerance 54.5: 1160 is beyond.
    assert scorer.score(1100.0, 0.0) == PROBATION_SCORE
    assert scorer.score(1160.0, 0.0) == 1.0
    # Now 10..1160, tolerance 57.5: -47.5 is the lower limit.
    assert scorer.score(-47.0, 0.0) == PROBATION_SCORE
    assert scorer.score(-120.0, 0.0) == 1.0
    assert scorer.score(500.0, 0.0) == PROBATION_SCORE


def test_final_scorer_splits_probation_into_learning_and_estimation():
    scorer = FinalScorer(probationary_period=604.0)
    assert scorer.likelihood.learning_period == 302
    assert scorer.likelihood.probationary_period == 604.0


ORACLE_FILES = [
    "artificialWithAnomaly/art_daily_jumpsup.csv",
    "artificialNoAnomaly/art_flatline.csv",  # flat metric: null distribution
    "realKnownCause/nyc_taxi.csv",
    "realKnownCause/machine_temperature_system_failure.csv",  # longer than the 8640-row history
    "realTraffic/speed_7578.csv",
]


@pytest.mark.nab
@pytest.mark.parametrize("key", ORACLE_FILES)
def test_final_scores_from_oracle_raw_scores(nab_dir, key):
    """Likelihood, log and spatial rule alone reproduce NAB's scores from NuPIC's raw scores."""
    _, values, finals, raws = read_oracle(nab_dir, key)
    scorer = FinalScorer(nab_probationary_period(len(values)))
    # NuPIC handed the likelihood f32 raw scores; the file prints 12 digits of them.
    ours = np.array(
        [scorer.score(v, float(np.float32(r))) for v, r in zip(values, raws, strict=True)]
    )
    assert np.max(np.abs(ours - finals)) < 1e-9


@pytest.mark.nab
def test_detector_matches_nupic_on_art_daily_jumpsup(nab_dir):
    timestamps, values, finals, raws = read_oracle(
        nab_dir, "artificialWithAnomaly/art_daily_jumpsup.csv"
    )
    detector = NumentaDetector.for_values(values)
    out = np.array([detector.handle_record(t, v) for t, v in zip(timestamps, values, strict=True)])
    raw_mismatch = np.flatnonzero(np.abs(out[:, 1] - raws) > 1e-6)
    assert raw_mismatch.size == 0, f"raw score diverges first at row {raw_mismatch[:1]}"
    assert np.max(np.abs(out[:, 0] - finals)) < 1e-6


# --- debounced variant ---


class ScriptedFinalScorer(DebouncedFinalScorer):
    """Debouncing on top of a scripted base score (the value is the score), so tests need no HTM."""

    def __init__(self, debounce_rows: int = DEBOUNCE_ROWS) -> None:
        super().__init__(probationary_period=600.0, debounce_rows=debounce_rows)

    def debounce_all(self, base_scores: list[float]) -> list[float]:
        return [self.score(s, s) for s in base_scores]


@pytest.fixture
def scripted(monkeypatch):
    """Make ``FinalScorer.score`` return the value it is given, for ``DebouncedFinalScorer`` tests."""
    monkeypatch.setattr(FinalScorer, "score", lambda self, value, raw_score: value)
    return ScriptedFinalScorer


def test_debounce_levels_are_nupic_red_and_yellow():
    assert ALARM_LEVEL == pytest.approx(0.5, abs=1e-6)
    assert REPEAT_LEVEL == pytest.approx(0.3, abs=1e-8)
    assert DEBOUNCE_ROWS == 9


def test_debounce_lowers_alarms_within_the_window_of_a_previous_one(scripted):
    quiet = 0.03
    scores = [1.0] + [quiet] * 8 + [0.7] + [quiet] * 9 + [0.9]
    # Row 9 is 9 rows after the spatial alarm at row 0: lowered to yellow. Row 19 is 10 rows after
    # row 9 (itself an alarm-level score, though lowered): reported.
    expected = list(scores)
    expected[9] = REPEAT_LEVEL
    assert scripted().debounce_all(scores) == expected


def test_debounce_chains_through_lowered_alarms(scripted):
    # Alarms 5 rows apart: only the first of the burst stays an alarm.
    scores = [0.8 if i % 5 == 0 else 0.03 for i in range(31)]
    out = scripted().debounce_all(scores)
    assert out[0] == 0.8
    assert all(out[i] == REPEAT_LEVEL for i in range(5, 31, 5))


def test_debounce_ignores_scores_below_the_alarm_level(scripted):
    # They neither start a burst nor are lowered; a score exactly at the alarm level is an alarm.
    scores = [0.49, 0.45, ALARM_LEVEL, 0.2, ALARM_LEVEL]
    out = scripted().debounce_all(scores)
    assert out == [0.49, 0.45, ALARM_LEVEL, 0.2, REPEAT_LEVEL]


def test_debounce_window_is_configurable(scripted):
    scores = [1.0, 0.03, 0.03, 1.0]
    assert scripted(debounce_rows=2).debounce_all(scores) == scores
    assert scripted(debounce_rows=3).debounce_all(scores)[3] == REPEAT_LEVEL


def test_debounced_scorer_keeps_the_numenta_score_of_a_first_alarm():
    """Through the real likelihood: the spatial alarm is kept, the one 5 rows later is lowered."""
    plain = FinalScorer(probationary_period=600.0)
    debounced = DebouncedFinalScorer(probationary_period=600.0)
    values = [10.0, 20.0, 15.0, 100.0, 12.0, 14.0, 13.0, 11.0, 250.0]
    expected = [plain.score(v, 0.0) for v in values]
    out = [debounced.score(v, 0.0) for v in values]
    assert expected[3] == expected[8] == 1.0  # both spatial anomalies for the 0.5.6 rule
    assert out[3] == 1.0
    assert out[8] == REPEAT_LEVEL
    assert out[:8] == expected[:8]


def test_debounced_detector_uses_the_debounced_scorer():
    detector = DebouncedNumentaDetector.for_values([1.0, 2.0, 3.0])
    assert isinstance(detector, NumentaDetector)
    assert isinstance(detector.final_scorer, DebouncedFinalScorer)
    assert type(NumentaDetector.for_values([1.0, 2.0, 3.0]).final_scorer) is FinalScorer


@pytest.mark.nab
def test_debounced_scorer_on_nupic_raw_scores_lowers_exactly_the_repeats(nab_dir):
    """A file with alarm bursts: the rows that differ from numenta are the repeated alarms."""
    _, values, finals, raws = read_oracle(nab_dir, "realKnownCause/rogue_agent_key_updown.csv")
    scorer = DebouncedFinalScorer(nab_probationary_period(len(values)))
    ours = np.array(
        [scorer.score(v, float(np.float32(r))) for v, r in zip(values, raws, strict=True)]
    )
    alarms = np.flatnonzero(finals >= ALARM_LEVEL)
    repeats = [row for row in alarms if np.any((alarms < row) & (alarms >= row - DEBOUNCE_ROWS))]
    assert len(repeats) > 0
    changed = np.flatnonzero(np.abs(ours - finals) > 1e-9)  # the file prints 12 digits
    assert changed.tolist() == repeats
    assert np.all(ours[changed] == REPEAT_LEVEL)
