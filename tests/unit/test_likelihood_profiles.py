"""Scoring profiles: the config key, profile htmengine's scores bit for bit, and the contract of the
other profiles (scores in [0, 1], 0 while learning, one per row, identical under any batching)."""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import random

import numpy as np
import pytest

from htmengine.config import Config, ConfigError
from htmengine.engine.swarm_params import model_range, padded_range
from htmengine.runtime.anomaly_likelihood_helper import (
    REPEAT_PROBABILITY,
    AnomalyLikelihoodHelper,
    NumentaLikelihoodHelper,
    ScoredRow,
    rescale_for_display,
)
from htmengine.runtime.likelihood_profiles import (
    DEFAULT_PROFILE,
    PROFILES,
    RANGE_ROWS,
    profile_from_config,
)

T0 = datetime.datetime(2015, 6, 1)

# sha256 of the float64 scores of `synthetic_rows()` scored in 700-row batches by the likelihood
# helper as it was before profiles existed (main at 226e918): profile htmengine must not move a bit.
HTMENGINE_DIGEST = "33d2be876c4a9a339ec56f16ae365e1b3c9ac1055286301124336e3a68ffb266"


def synthetic_rows(n: int = 3000, seed: int = 13) -> list[ScoredRow]:
    """A daily wave with noise; raw scores mostly low with a burst every 997 rows (f32, as a
    model hands them on)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        value = 50 + 30 * math.sin(2 * math.pi * i / 288) + rng.gauss(0, 2)
        raw = min(1.0, max(0.0, rng.betavariate(0.6, 4.0) + (0.9 if i % 997 == 500 else 0.0)))
        rows.append(
            ScoredRow(i + 1, T0 + datetime.timedelta(minutes=5 * i), value, float(np.float32(raw)))
        )
    return rows


def score_in_batches(helper, rows: list[ScoredRow], sizes) -> tuple[np.ndarray, object]:
    """Score `rows` batch after batch, the state through JSON between batches as the service
    keeps it; `sizes` cycles."""
    fresh = [ScoredRow(r.rowid, r.timestamp, r.value, r.raw_anomaly_score) for r in rows]
    done: list[ScoredRow] = []
    state = None
    start = 0
    index = 0
    while start < len(fresh):
        size = sizes[index % len(sizes)]
        batch = fresh[start : start + size]
        state = helper.update_scores(batch, state, lambda limit: done[-limit:])
        state = None if state is None else json.loads(json.dumps(state))
        done.extend(batch)
        start += size
        index += 1
    return np.array([r.anomaly_score for r in fresh]), state


def config_with(tmp_path, text: str) -> Config:
    (tmp_path / "application.conf").write_text(text)
    return Config("application.conf", base_dir=str(tmp_path))


SETTINGS = """[anomaly_likelihood]
statistics_min_sample_size = 100
statistics_refresh_rate = 24
statistics_sample_size = 8640
"""


def test_no_profile_key_means_htmengine_with_the_configured_settings(tmp_path):
    config = config_with(tmp_path, SETTINGS.replace("= 24", "= 12"))
    assert profile_from_config(config).name == DEFAULT_PROFILE == "htmengine"
    helper = AnomalyLikelihoodHelper.from_config(config)
    assert type(helper) is AnomalyLikelihoodHelper
    assert helper.refresh_rate == 12


def test_profile_key_selects_the_helper(tmp_path):
    config = config_with(tmp_path, SETTINGS + "profile = numenta\n")
    assert profile_from_config(config).range_rows == RANGE_ROWS
    assert isinstance(AnomalyLikelihoodHelper.from_config(config), NumentaLikelihoodHelper)


def test_unknown_profile_is_a_config_error_naming_the_choices(tmp_path):
    config = config_with(tmp_path, SETTINGS + "profile = nupic\n")
    with pytest.raises(ConfigError, match="profile = 'nupic' is unknown.*htmengine"):
        profile_from_config(config)


def test_repository_conf_names_a_known_profile():
    from pathlib import Path

    conf = Path(__file__).resolve().parents[2] / "conf"
    assert profile_from_config(Config("application.conf", base_dir=str(conf))).name in PROFILES


def test_htmengine_profile_reproduces_the_original_scores_bit_for_bit(tmp_path):
    helper = AnomalyLikelihoodHelper.from_config(config_with(tmp_path, SETTINGS))
    scores, _ = score_in_batches(helper, synthetic_rows(), [700])
    assert hashlib.sha256(scores.tobytes()).hexdigest() == HTMENGINE_DIGEST


def test_model_range_is_the_padded_range_of_the_given_rows():
    assert model_range([3.0, 1.0, 2.0]) == padded_range(1.0, 3.0)
    assert model_range([5.0]) == padded_range(5.0, 6.0)
    with pytest.raises(ValueError):
        model_range([])


@pytest.mark.parametrize("profile", sorted(set(PROFILES) - {"htmengine"}))
@pytest.mark.parametrize("sizes", [[1], [7, 300], [1440, 1000], [5000]])
def test_profile_scores_do_not_depend_on_batching(profile, sizes):
    rows = synthetic_rows()
    helper = AnomalyLikelihoodHelper.for_profile(profile)
    reference, reference_state = score_in_batches(helper, rows, [len(rows)])
    scores, state = score_in_batches(helper, rows, sizes)
    assert scores.tobytes() == reference.tobytes()
    assert state == reference_state


@pytest.mark.parametrize("profile", sorted(set(PROFILES) - {"htmengine"}))
def test_profile_contract_zero_while_learning_then_scores_in_unit_interval(profile):
    rows = synthetic_rows()
    rows[2000].value = 400.0  # far beyond the range seen so far: the spatial rule fires
    helper = AnomalyLikelihoodHelper.for_profile(profile)
    scores, _ = score_in_batches(helper, rows, [500])
    learning = helper.learning_rows
    assert np.all(scores[:learning] == 0.0)
    assert np.all((scores >= 0.0) & (scores <= 1.0))
    assert np.any(scores[learning:] > 0.0)
    assert scores[2000] == 1.0
    assert rescale_for_display(1.0) == 1_000_000_001


def test_numenta_debounce_lowers_an_alarm_close_behind_another():
    rows = synthetic_rows()
    rows[2400].value = 500.0  # two far-off values 4 rows apart: both spatial alarms
    rows[2404].value = -500.0
    scores, _ = score_in_batches(NumentaLikelihoodHelper(), rows, [1000])
    assert scores[2400] == 1.0
    assert scores[2404] == REPEAT_PROBABILITY


def test_numenta_state_is_small():
    _, state = score_in_batches(NumentaLikelihoodHelper(), synthetic_rows(), [1000])
    assert len(json.dumps(state)) < 2000
