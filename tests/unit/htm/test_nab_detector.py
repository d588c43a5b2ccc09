"""NAB "numenta" detector: the post-HTM rules, and parity with NuPIC 0.5.6's published NAB results."""

import csv
from datetime import datetime

import numpy as np
import pytest

from htmengine.htm.nab_detector import FinalScorer, NumentaDetector, nab_probationary_period

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
