"""benchmarks/nab_engine.py's in-process path equals the running suite row for row, in every
profile: a synthetic series (no corpus needed, as in CI) and, with the corpus, a NAB file.

Each test starts the whole suite with the profile under test (the anomaly service reads it at
start), monitors a metric without min/max, sends the CSV with ``htmengine send`` and compares
what MySQL holds with ``nab_engine.run_file``."""

from __future__ import annotations

import csv
import datetime

import numpy as np
import pytest

from benchmarks import nab_engine
from htmengine.evaluation.nab import DataFile, load_corpus
from htmengine.runtime.likelihood_profiles import PROFILES
from tests.support.engine import series

TIMEOUT = 900


@pytest.fixture
def suite_with_profile(clean_db, app, supervisor_factory):
    def start(profile: str):
        app.override("application.conf", {"anomaly_likelihood": {"profile": profile}})
        return supervisor_factory(nab_engine.SUITE_PROGRAMS)

    yield start
    app.override("application.conf", {"anomaly_likelihood": {"profile": "htmengine"}})


def synthetic_file(tmp_path, rows: int = 1300) -> tuple[DataFile, object]:
    """A daily wave with spikes, a level shift, and a repeated and a backward timestamp (the
    storer drops both, as it drops NAB's clock changes)."""
    samples = series(rows, seed=31, end=datetime.datetime(2024, 1, 1))
    samples = [(ts, v + (60.0 if i > 1000 else 0.0)) for i, (ts, v) in enumerate(samples)]
    samples.insert(500, samples[499])
    samples.insert(700, (samples[698][0], 1.0))
    stamps = [ts.strftime("%Y-%m-%d %H:%M:%S") for ts, _ in samples]
    path = tmp_path / "synthetic.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["timestamp", "value"])
        writer.writerows(zip(stamps, [repr(v) for _, v in samples], strict=True))
    values = np.array([v for _, v in samples])
    return DataFile("synthetic/synthetic.csv", stamps, values, []), path


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_synthetic_series_scores_as_in_process(suite_with_profile, tmp_path, profile):
    suite_with_profile(profile)
    data_file, path = synthetic_file(tmp_path)
    expected_rows = len(nab_engine.stored_rows(data_file)[1])
    assert expected_rows == data_file.n_rows - 2
    live = nab_engine.feed_and_read(path, f"synthetic.{profile}", expected_rows, TIMEOUT)
    assert nab_engine.compare_live(data_file, profile, live) == []
    assert live.anomaly_scores[:100] == [0.0] * 100
    assert max(live.anomaly_scores) > 0.9


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_a_nab_file_scores_as_in_process(suite_with_profile, nab_dir, profile):
    corpus = load_corpus(nab_dir)
    key = "realTraffic/speed_7578.csv"
    suite_with_profile(profile)
    data_file = corpus.files[key]
    expected_rows = len(nab_engine.stored_rows(data_file)[1])
    live = nab_engine.feed_and_read(
        nab_dir / "data" / key, f"nab.{profile}", expected_rows, TIMEOUT
    )
    assert nab_engine.compare_live(data_file, profile, live) == []
