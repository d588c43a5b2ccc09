"""Raw score and anomaly likelihood against NuPIC's semantics (spec §5, §6)."""

import json
import math
from datetime import datetime, timedelta

import numpy as np
import pytest

from htmengine.htm.anomaly import (
    MEAN_FLOOR,
    Q_TABLE,
    VARIANCE_FLOOR,
    YELLOW_THRESHOLD,
    AnomalyLikelihood,
    compute_raw_score,
    estimate_anomaly_likelihoods,
    estimate_normal,
    filter_likelihoods,
    log_likelihood,
    null_distribution,
    tail_probability,
    update_anomaly_likelihoods,
)

START = datetime(2015, 1, 1)


def make_records(values, raws):
    return [
        (START + timedelta(minutes=5 * i), float(v), float(r))
        for i, (v, r) in enumerate(zip(values, raws, strict=True))
    ]


def noisy_records(n, seed=3):
    rng = np.random.default_rng(seed)
    raws = np.round(rng.uniform(0, 0.4, n) * 40) / 40
    values = rng.normal(10, 2, n)
    return make_records(values, raws)


# --- raw score ---


def test_raw_score_counts_unpredicted_active_columns():
    active = np.arange(40)
    predicted = np.arange(10, 100)
    assert compute_raw_score(active, predicted) == 10 / 40


def test_raw_score_is_one_with_nothing_predicted_and_zero_with_nothing_active():
    assert compute_raw_score(np.arange(40), np.array([], dtype=np.int32)) == 1.0
    assert compute_raw_score(np.array([], dtype=np.int32), np.arange(5)) == 0.0


# --- building blocks ---


def test_log_likelihood_values_from_the_spec():
    assert log_likelihood(0.5) == pytest.approx(0.0301029996658834, abs=1e-15)
    assert log_likelihood(1.0) == pytest.approx(1.0, abs=1e-9)
    assert log_likelihood(0.99999) == pytest.approx(0.5, abs=1e-6)


def test_estimate_normal_floors_mean_and_variance():
    params = estimate_normal(np.zeros(50))
    assert params == {
        "name": "normal",
        "mean": MEAN_FLOOR,
        "variance": VARIANCE_FLOOR,
        "stdev": math.sqrt(VARIANCE_FLOOR),
    }
    raw = estimate_normal(np.zeros(50), lower_bound=False)
    assert (raw["mean"], raw["variance"], raw["stdev"]) == (0.0, 0.0, 0.0)


def test_estimate_normal_keeps_values_above_the_floors():
    samples = np.array([0.1, 0.3, 0.5, 0.7])
    params = estimate_normal(samples)
    assert params["mean"] == np.mean(samples)
    assert params["variance"] == np.var(samples)


def test_tail_probability_per_version():
    dist = {"name": "normal", "mean": 0.2, "variance": 0.01, "stdev": 0.1}
    # v0.5.6: erfc with NuPIC's 1.4142, mirrored below the mean.
    assert tail_probability(0.45, dist) == 0.5 * math.erfc(((0.45 - 0.2) / 0.1) / 1.4142)
    below = tail_probability(0.1, dist)
    assert below == 1.0 - 0.5 * math.erfc(((2 * 0.2 - 0.1 - 0.2) / 0.1) / 1.4142)
    # v0.3.4: z quantised to tenths (2.5 -> 25, rounded half away from zero), table lookup.
    assert tail_probability(0.45, dist, "0.3.4") == 0.006209665
    assert tail_probability(0.2 + 0.1 * 7.2, dist, "0.3.4") == 0.0
    # v1.0.5: values below the mean are as unlikely as the mirrored value above it.
    assert tail_probability(0.1, dist, "1.0.5") == pytest.approx(1.0 - below, abs=1e-15)
    with pytest.raises(ValueError, match="version"):
        tail_probability(0.1, dist, "0.9")


def test_filter_keeps_only_the_first_of_a_red_run():
    raw = [1e-6, 1e-7, 0.5, 1e-6, 1e-8, 1e-9, 0.2]
    assert filter_likelihoods(raw).tolist() == [
        1e-6,
        YELLOW_THRESHOLD,
        0.5,
        1e-6,
        YELLOW_THRESHOLD,
        YELLOW_THRESHOLD,
        0.2,
    ]


# --- functional API ---


def test_flat_metric_gets_the_null_distribution():
    raws = np.tile([0.0, 0.5, 1.0, 0.25], 100)
    records = make_records(np.full(400, 7.0), raws)
    likelihoods, averaged, params = estimate_anomaly_likelihoods(records)
    assert params["distribution"] == null_distribution()
    assert np.all(np.abs(likelihoods - 0.5) < 1e-3)
    assert len(averaged) == 400


def test_varying_metric_is_fitted_on_the_averages():
    records = noisy_records(400)
    _, averaged, params = estimate_anomaly_likelihoods(records)
    averages = np.array([a[2] for a in averaged])
    assert params["distribution"] == estimate_normal(averages)


def test_skip_records_leaves_the_start_out_of_the_fit_but_scores_it():
    records = noisy_records(400)
    likelihoods, averaged, params = estimate_anomaly_likelihoods(records, skip_records=288)
    averages = np.array([a[2] for a in averaged])
    assert params["distribution"] == estimate_normal(averages[288:])
    assert len(likelihoods) == 400


def test_too_few_records_for_skip_give_the_null_distribution():
    records = noisy_records(288)
    likelihoods, _, params = estimate_anomaly_likelihoods(records, skip_records=288)
    assert params["distribution"] == null_distribution()
    assert np.all(np.abs(likelihoods - 0.5) < 1e-3)


def test_estimate_returns_window_state_and_unfiltered_history():
    records = noisy_records(50)
    likelihoods, averaged, params = estimate_anomaly_likelihoods(records)
    raws = [r[2] for r in records]
    moving = params["movingAverage"]
    assert moving["windowSize"] == 10
    assert moving["historicalValues"] == raws[-10:]
    assert moving["total"] == pytest.approx(sum(raws[-10:]), abs=1e-12)
    assert averaged[-1][2] == pytest.approx(np.mean(raws[-10:]), abs=1e-12)
    assert len(params["historicalLikelihoods"]) == 10
    json.dumps(params)  # stored as JSON in MySQL


def test_malformed_records_are_skipped():
    records = noisy_records(30)
    with_junk = records[:10] + [(1, 2)] + records[10:] + ["bad"]
    a = estimate_anomaly_likelihoods(records)
    b = estimate_anomaly_likelihoods(with_junk)
    assert np.array_equal(a[0], b[0])
    assert a[2] == b[2]


def test_update_continues_an_estimate():
    records = noisy_records(600)
    _, _, params = estimate_anomaly_likelihoods(records[:400], skip_records=100)
    batch, batch_averages, batch_params = update_anomaly_likelihoods(records[400:], params)

    one_by_one = []
    step_params = params
    for record in records[400:]:
        out, _, step_params = update_anomaly_likelihoods([record], step_params)
        one_by_one.append(out[0])
    assert np.array_equal(batch, np.array(one_by_one))
    assert batch_params == step_params
    assert batch_params["distribution"] == params["distribution"]

    # The moving average carries over: same averages as one pass over everything.
    _, averaged_all, _ = estimate_anomaly_likelihoods(records)
    assert np.allclose(batch_averages, [a[2] for a in averaged_all[400:]], atol=1e-12)
    # params is not modified in place.
    assert len(params["movingAverage"]["historicalValues"]) == 10
    assert params["movingAverage"]["historicalValues"] == [r[2] for r in records[390:400]]


def test_update_filters_red_runs_across_calls():
    params = {
        "distribution": {"name": "normal", "mean": 0.05, "variance": 1e-4, "stdev": 0.01},
        "movingAverage": {"windowSize": 10, "historicalValues": [0.05] * 10, "total": 0.5},
        "historicalLikelihoods": [0.5],
    }
    spike = (START, 1.0, 1.0)
    first, _, params = update_anomaly_likelihoods([spike], params)
    second, _, params = update_anomaly_likelihoods([spike], params)
    assert first[0] < 1e-5
    assert second[0] == YELLOW_THRESHOLD
    assert params["historicalLikelihoods"][-1] < 1e-5  # unfiltered values are kept


def test_update_defaults_missing_history_and_rejects_bad_params():
    params = {
        "distribution": null_distribution(),
        "movingAverage": {"windowSize": 10, "historicalValues": [], "total": 0.0},
    }
    _, _, new_params = update_anomaly_likelihoods([(START, 1.0, 0.5)], params)
    assert len(new_params["historicalLikelihoods"]) == 2
    with pytest.raises(ValueError, match="distribution"):
        update_anomaly_likelihoods([(START, 1.0, 0.5)], {"movingAverage": {}})
    with pytest.raises(ValueError, match="at least one"):
        update_anomaly_likelihoods([], params)
    with pytest.raises(ValueError, match="at least one"):
        estimate_anomaly_likelihoods([])


def test_v034_likelihoods_come_from_the_table():
    records = noisy_records(300)
    likelihoods, _, _ = estimate_anomaly_likelihoods(records, version="0.3.4")
    table = set(Q_TABLE.tolist()) | {1.0 - q for q in Q_TABLE.tolist()} | {0.0, 1.0}
    assert set(likelihoods.tolist()) <= table | {YELLOW_THRESHOLD}


# --- AnomalyLikelihood class ---


def test_class_returns_half_during_probation():
    detector = AnomalyLikelihood(learning_period=20, estimation_samples=10)
    records = noisy_records(60)
    out = [detector.anomaly_probability(v, r) for _, v, r in records]
    assert out[:30] == [0.5] * 30
    assert all(p != 0.5 for p in out[30:])


def test_class_matches_functional_api_on_first_estimate():
    detector = AnomalyLikelihood(learning_period=20, estimation_samples=10)
    records = noisy_records(31)
    out = [detector.anomaly_probability(v, r) for _, v, r in records]
    _, _, params = estimate_anomaly_likelihoods(records[:30], skip_records=20)
    expected, _, _ = update_anomaly_likelihoods(records[30:], params)
    assert out[30] == 1.0 - expected[0]


def test_class_rejects_window_smaller_than_estimation_samples():
    with pytest.raises(ValueError, match="historic_window_size"):
        AnomalyLikelihood(estimation_samples=100, historic_window_size=50)


@pytest.mark.parametrize("split", [5, 31, 77, 150])
def test_class_state_round_trip_continues_identically(split):
    kwargs = {
        "learning_period": 20,
        "estimation_samples": 10,
        "historic_window_size": 50,
        "reestimation_period": 7,
    }
    records = noisy_records(200)
    reference = AnomalyLikelihood(**kwargs)
    expected = [reference.anomaly_probability(v, r) for _, v, r in records]

    first = AnomalyLikelihood(**kwargs)
    out = [first.anomaly_probability(v, r) for _, v, r in records[:split]]
    restored = AnomalyLikelihood.from_state(first.get_state())
    out += [restored.anomaly_probability(v, r) for _, v, r in records[split:]]
    assert out == expected
