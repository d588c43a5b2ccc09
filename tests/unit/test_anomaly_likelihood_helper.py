"""The likelihood orchestration: when estimates happen, on which samples, and that batching never
changes a score."""

from __future__ import annotations

import datetime
import json
import math
import random

import pytest

from htmengine.runtime import anomaly_likelihood_helper as helper_module
from htmengine.runtime.anomaly_likelihood_helper import (
    AnomalyLikelihoodHelper,
    ScoredRow,
    rescale_for_display,
)

T0 = datetime.datetime(2015, 6, 1)


class RecordingLikelihood:
    """A stand-in for htm.anomaly's functional API that records the estimates it is asked for.

    An estimate's params remember the rowid range it saw; an update returns likelihood 1 - raw (so
    anomaly_score == raw) and counts the records it continued with.
    """

    def __init__(self) -> None:
        self.estimates: list[list[float]] = []

    def estimate_anomaly_likelihoods(
        self, records, averaging_window=10, skip_records=0, version=""
    ):
        assert skip_records == 288
        values = [record[1] for record in records]
        self.estimates.append(values)
        return [0.5] * len(records), records, {"first": values[0], "last": values[-1], "seen": 0}

    def update_anomaly_likelihoods(self, records, params, version=""):
        params = dict(params, seen=params["seen"] + len(records))
        return [1.0 - record[2] for record in records], [record[2] for record in records], params


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> RecordingLikelihood:
    api = RecordingLikelihood()
    monkeypatch.setattr(
        helper_module.anomaly, "estimate_anomaly_likelihoods", api.estimate_anomaly_likelihoods
    )
    monkeypatch.setattr(
        helper_module.anomaly, "update_anomaly_likelihoods", api.update_anomaly_likelihoods
    )
    return api


def make_rows(raws: list[float], first_rowid: int = 1) -> list[ScoredRow]:
    """Rows whose value is their rowid (so estimates can be checked by value)."""
    return [
        ScoredRow(
            rowid=first_rowid + i,
            timestamp=T0 + datetime.timedelta(minutes=5 * (first_rowid + i)),
            value=float(first_rowid + i),
            raw_anomaly_score=raw,
        )
        for i, raw in enumerate(raws)
    ]


class Store:
    """The metric's scored rows and likelihood state, as the anomaly service keeps them in MySQL."""

    def __init__(self) -> None:
        self.rows: list[ScoredRow] = []
        self.state: dict | None = None
        self.history_loads = 0

    def load_history(self, limit: int) -> list[ScoredRow]:
        self.history_loads += 1
        return [
            ScoredRow(r.rowid, r.timestamp, r.value, r.raw_anomaly_score, r.anomaly_score)
            for r in self.rows[-limit:]
        ]

    def process(self, helper: AnomalyLikelihoodHelper, batch: list[ScoredRow]) -> None:
        state = self.state
        self.state = helper.update_scores(batch, state, self.load_history)
        # The service stores the state as JSON text: it must survive the round trip unchanged.
        if self.state is not None:
            assert json.loads(json.dumps(self.state)) == self.state
        self.rows.extend(batch)


def split(rows: list[ScoredRow], cuts: list[int]) -> list[list[ScoredRow]]:
    bounds = [0, *sorted(set(cuts)), len(rows)]
    return [rows[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


def test_first_min_sample_rows_score_zero_then_first_estimate_uses_them(fake):
    helper = AnomalyLikelihoodHelper()
    store = Store()
    rows = make_rows([0.3] * 120)
    store.process(helper, rows[:60])
    assert store.state is None
    assert fake.estimates == []
    store.process(helper, rows[60:])
    assert [r.anomaly_score for r in rows[:100]] == [0.0] * 100
    assert [r.anomaly_score for r in rows[100:]] == pytest.approx([0.3] * 20)
    assert fake.estimates[0] == [float(i) for i in range(1, 101)]
    assert store.state["last_rowid_for_stats"] == 100


def test_refresh_every_refresh_rate_rows(fake):
    helper = AnomalyLikelihoodHelper()
    store = Store()
    store.process(helper, make_rows([0.1] * 200))
    # estimates after rows 100, 124, 148, 172, 196
    assert [e[-1] for e in fake.estimates] == [100.0, 124.0, 148.0, 172.0, 196.0]
    assert store.state["last_rowid_for_stats"] == 196
    assert store.state["params"]["seen"] == 4  # rows 197..200 continued the last estimate


def test_greedy_refresh_after_a_very_anomalous_row(fake):
    helper = AnomalyLikelihoodHelper()
    store = Store()
    raws = [0.1] * 140
    raws[102] = 0.995  # rowid 103: only 3 past the estimate at 100 -> not greedy
    raws[109] = 0.995  # rowid 110 -> greedy refresh after it
    store.process(helper, make_rows(raws))
    assert [e[-1] for e in fake.estimates] == [100.0, 110.0, 134.0]


def test_greedy_refresh_on_the_last_row_of_a_batch_still_happens(fake):
    helper = AnomalyLikelihoodHelper()
    store = Store()
    raws = [0.1] * 130
    raws[109] = 0.995
    rows = make_rows(raws)
    store.process(helper, rows[:110])
    assert store.state["last_rowid_for_stats"] == 110


def test_estimates_use_the_newest_sample_size_rows(fake):
    helper = AnomalyLikelihoodHelper(min_sample_size=10, refresh_rate=5, sample_size=20)
    store = Store()
    for batch in split(make_rows([0.2] * 60), [7, 33, 34, 50]):
        store.process(helper, batch)
    last = fake.estimates[-1]
    assert len(last) == 20
    assert last == [float(i) for i in range(int(last[-1]) - 19, int(last[-1]) + 1)]


def test_history_is_loaded_at_most_once_per_batch(fake):
    helper = AnomalyLikelihoodHelper()
    store = Store()
    store.process(helper, make_rows([0.1] * 1000))
    assert store.history_loads == 1
    loads = store.history_loads
    store.process(helper, make_rows([0.1] * 10, first_rowid=1001))  # no refresh due: no load
    assert store.history_loads == loads


@pytest.mark.parametrize("seed", range(5))
def test_batching_never_changes_scores_or_state(fake, seed):
    rng = random.Random(seed)
    raws = [rng.choice([0.0, 0.025, 0.1, 0.5, 0.995, 1.0]) for _ in range(700)]
    helper = AnomalyLikelihoodHelper()

    whole = Store()
    whole.process(helper, make_rows(raws))
    reference = [r.anomaly_score for r in whole.rows]
    reference_estimates = list(fake.estimates)

    fake.estimates.clear()
    pieces = Store()
    cuts = rng.sample(range(1, 700), 60)
    for batch in split(make_rows(raws), cuts):
        pieces.process(helper, batch)
    assert [r.anomaly_score for r in pieces.rows] == reference
    assert pieces.state == whole.state
    assert fake.estimates == reference_estimates


def test_state_argument_is_not_modified(fake):
    helper = AnomalyLikelihoodHelper()
    store = Store()
    store.process(helper, make_rows([0.1] * 110))
    before = json.dumps(store.state, sort_keys=True)
    kept = store.state
    helper.update_scores(make_rows([0.1] * 5, first_rowid=111), kept, store.load_history)
    assert json.dumps(kept, sort_keys=True) == before


def test_rejects_inconsistent_settings():
    with pytest.raises(ValueError, match="statistics_min_sample_size"):
        AnomalyLikelihoodHelper(min_sample_size=200, sample_size=100)
    with pytest.raises(ValueError, match="statistics_refresh_rate"):
        AnomalyLikelihoodHelper(refresh_rate=0)


def test_real_likelihood_batching_invariance_and_null_phase():
    """With htm.anomaly itself: rows 1-100 score 0, then 0.5 until the estimate window holds more
    than 288 rows, then real scores; any batching gives the same floats."""
    rng = random.Random(7)
    raws = [float(rng.choice([0.0, 0.025, 0.05, 0.1, 0.3, 1.0])) for _ in range(1000)]
    helper = AnomalyLikelihoodHelper()
    whole = Store()
    whole.process(helper, make_rows(raws))
    scores = [r.anomaly_score for r in whole.rows]
    assert scores[:100] == [0.0] * 100
    # null distribution until the estimate after row 292 (the first with more than 288 samples)
    assert scores[100:292] == pytest.approx([0.5] * 192, abs=1e-3)
    assert len(set(scores[300:])) > 10
    assert all(0.0 <= s <= 1.0 for s in scores)

    pieces = Store()
    for batch in split(make_rows(raws), rng.sample(range(1, 1000), 80)):
        pieces.process(helper, batch)
    assert [r.anomaly_score for r in pieces.rows] == scores
    assert pieces.state == whole.state


@pytest.mark.parametrize(
    ("score", "expected"),
    [
        (0.0, 0),
        (0.5, 1000),
        (0.9998, 1000),
        (0.99995, 1_000_000),
        (0.999999, 1_000_000_001),
        (1.0, 1_000_000_001),
        (-0.5, 1000),
    ],
)
def test_rescale_for_display(score, expected):
    assert rescale_for_display(score) == expected


def test_rescale_for_display_band_edges_follow_the_log_scale():
    # s = ln(1.0000000001 - v) / ln(1e-10); the 1e6 band starts at s = 0.4, i.e. v ~ 1 - 1e-4.
    edge = 1.0000000001 - math.exp(0.4 * math.log(1e-10))
    assert rescale_for_display(edge - 1e-9) == 1000
    assert rescale_for_display(edge + 1e-9) == 1_000_000
