"""NAB scorer: the weight rules on small made-up files, and the published scoreboard on the real corpus."""

from pathlib import Path

import numpy as np
import pytest

from htmengine.evaluation.nab import (
    NO_DETECTION_THRESHOLD,
    DataFile,
    NabCorpus,
    Profile,
    load_corpus,
    probationary_period,
    published_scores,
    read_detector_scores,
    row_weights,
    score_detector,
    score_profile,
)

STANDARD = Profile("standard", tp_weight=1.0, fp_weight=0.11, fn_weight=1.0)
MAX_TP = 0.9866142981514305


def make_corpus(files: dict[str, tuple[int, list[tuple[int, int]]]]) -> NabCorpus:
    data = {
        key: DataFile(
            key=key,
            timestamps=[f"t{i}" for i in range(n)],
            values=np.zeros(n),
            windows=windows,
        )
        for key, (n, windows) in files.items()
    }
    return NabCorpus(root=Path("."), files=data, profiles={"standard": STANDARD})


# --- rules ---


def test_probationary_period_is_15_percent_capped_at_750():
    assert probationary_period(1127) == 169
    assert probationary_period(4999) == 749
    assert probationary_period(22695) == 750


def test_row_weights_inside_before_and_after_windows():
    weights, window = row_weights(200, [(50, 59), (120, 129)], STANDARD)
    assert np.all(weights[:50] == -0.11)  # before the first window: full FP penalty
    assert weights[50] == pytest.approx(1.0, abs=1e-15)  # first row of a window earns tp
    assert weights[59] == pytest.approx((2 / (1 + np.exp(5 * -0.1)) - 1) / MAX_TP, abs=1e-15)
    assert np.all(np.diff(weights[50:60]) < 0)
    assert weights[60] == pytest.approx(0.11 * (2 / (1 + np.exp(5 / 9)) - 1), abs=1e-15)
    assert np.all(weights[60:120] < 0)
    assert weights[59 + 3 * 9] > -0.11  # position exactly 3: still on the curve
    assert weights[59 + 3 * 9 + 1] == -0.11  # beyond 3 window lengths: exactly -fp
    assert window[49] == -1 and window[50] == 0 and window[129] == 1 and window[130] == -1


def test_window_scores_its_earliest_detection_and_all_false_positives_count():
    corpus = make_corpus({"a/f.csv": (100, [(40, 49)])})
    scores = np.zeros(100)
    scores[[45, 47]] = 0.9  # two detections in the window: only the earlier one counts
    scores[[20, 21]] = 0.9  # two false positives before the window: both count
    result = score_profile(corpus, {"a/f.csv": scores}, STANDARD, threshold=0.5)
    weights, _ = row_weights(100, [(40, 49)], STANDARD)
    assert result.raw_score == pytest.approx(weights[45] - 2 * 0.11, abs=1e-12)
    assert weights[45] > weights[47]


def test_probationary_detections_and_missed_windows():
    corpus = make_corpus({"a/f.csv": (100, [(40, 49)]), "a/g.csv": (100, [])})
    f_scores = np.zeros(100)
    f_scores[5] = 1.0  # inside the probationary period (15 rows): ignored
    result = score_profile(
        corpus, {"a/f.csv": f_scores, "a/g.csv": np.zeros(100)}, STANDARD, threshold=0.5
    )
    assert result.file_scores == {"a/f.csv": -1.0, "a/g.csv": 0.0}
    assert result.normalised_score == 0.0


def test_never_alarming_wins_when_every_alarm_costs():
    corpus = make_corpus({"a/f.csv": (100, [(40, 49)])})
    scores = np.full(100, 0.5)
    result = score_profile(corpus, {"a/f.csv": scores}, STANDARD)
    assert result.threshold == NO_DETECTION_THRESHOLD
    assert result.normalised_score == 0.0


def test_perfect_detector_scores_100():
    corpus = make_corpus({"a/f.csv": (300, [(100, 119), (200, 219)])})
    scores = np.zeros(300)
    scores[[100, 200]] = 1.0
    result = score_profile(corpus, {"a/f.csv": scores}, STANDARD)
    assert result.threshold == 1.0
    assert result.normalised_score == pytest.approx(100.0, abs=1e-12)


def test_sweep_finds_the_best_threshold_and_breaks_ties_upwards():
    rng = np.random.default_rng(7)
    corpus = make_corpus(
        {
            "a/f.csv": (400, [(100, 139), (250, 289)]),
            "a/g.csv": (300, [(200, 229)]),
            "b/h.csv": (200, []),
        }
    )
    scores = {key: np.round(rng.uniform(0, 1, f.n_rows), 2) for key, f in corpus.files.items()}
    best = score_profile(corpus, scores, STANDARD)
    candidates = sorted({NO_DETECTION_THRESHOLD, *np.concatenate(list(scores.values())).tolist()})
    brute = {t: score_profile(corpus, scores, STANDARD, threshold=t).raw_score for t in candidates}
    top = max(brute.values())
    assert best.raw_score == pytest.approx(top, abs=1e-9)
    assert best.threshold == max(t for t, s in brute.items() if s >= top - 1e-9)


def test_unknown_optimiser_is_an_error():
    corpus = make_corpus({"a/f.csv": (100, [])})
    with pytest.raises(ValueError, match="optimiser"):
        score_profile(corpus, {"a/f.csv": np.zeros(100)}, STANDARD, optimiser="grid")


# --- the real corpus ---


@pytest.fixture(scope="module")
def corpus(nab_dir):
    return load_corpus(nab_dir)


@pytest.fixture(scope="module")
def published(corpus):
    return published_scores(corpus)


@pytest.mark.nab
def test_corpus_shape(corpus):
    assert len(corpus.files) == 58
    assert corpus.n_windows == 116
    assert sum(f.n_rows for f in corpus.files.values()) == 365558
    assert sum(f.n_rows - f.probationary_period for f in corpus.files.values()) == 332842


@pytest.mark.nab
@pytest.mark.parametrize("detector", ["windowedGaussian", "ARTime"])
def test_sweep_reproduces_final_results(corpus, published, detector):
    scores = read_detector_scores(corpus.root / "results", detector, corpus)
    for profile, result in score_detector(corpus, scores).items():
        assert result.normalised_score == pytest.approx(published[detector][profile], abs=1e-8)


@pytest.mark.nab
def test_numenta_sweep_matches_final_results_and_nab_rescore(corpus, published):
    scores = read_detector_scores(corpus.root / "results", "numenta", corpus)
    results = score_detector(corpus, scores)
    for profile in ("standard", "reward_low_FN_rate"):
        assert results[profile].normalised_score == pytest.approx(
            published["numenta"][profile], abs=1e-8
        )
        assert results[profile].threshold == 0.543099145074
    # The exhaustive sweep beats NAB v1.0's hill-climb here (SCORING.md §9: re-scored 63.2092).
    low_fp = results["reward_low_FP_rate"]
    assert low_fp.normalised_score == pytest.approx(63.20918500250, abs=1e-8)
    assert low_fp.raw_score == pytest.approx(30.645309205798327, abs=1e-8)
    # Per-file values at the best threshold (SCORING.md §8).
    standard = results["standard"].file_scores
    assert standard["realKnownCause/nyc_taxi.csv"] == pytest.approx(2.4357277, abs=1e-7)
    assert standard["realKnownCause/machine_temperature_system_failure.csv"] == pytest.approx(
        1.3601327, abs=1e-7
    )
    assert standard["artificialWithAnomaly/art_daily_jumpsup.csv"] == pytest.approx(
        0.8606718, abs=1e-7
    )
    assert standard["artificialNoAnomaly/art_noisy.csv"] == 0.0
    low_fn = results["reward_low_FN_rate"].file_scores
    assert low_fn["realKnownCause/nyc_taxi.csv"] == pytest.approx(1.4357277, abs=1e-7)


@pytest.mark.nab
def test_legacy_hill_climb_reproduces_numenta_published_scores(corpus, published):
    scores = read_detector_scores(corpus.root / "results", "numenta", corpus)
    for profile, result in score_detector(corpus, scores, optimiser="legacy").items():
        assert result.normalised_score == pytest.approx(published["numenta"][profile], abs=1e-8)
