"""The Numenta Anomaly Benchmark: corpus loading and NAB v1.1's scorer, vectorised.

A detector's output (one anomaly score per row of each of the 58 data files) is turned into alarms by
one threshold per profile for the whole corpus; each alarm earns a weight that depends on where it
falls relative to the hand-labelled anomaly windows; the corpus sum is normalised so that "never
alarm" scores 0 and "alarm on the first row of every window, nowhere else" scores 100. The rules are
in ``shared/nab/SCORING.md``; this module reproduces NAB's published ``final_results.json``.

Two threshold optimisers exist because NAB had two: ``"sweep"`` (NAB v1.1, exhaustive over every
distinct score, ties to the higher threshold) and ``"legacy"`` (NAB v1.0's hill-climb from 0.5, which
produced the thresholds behind most published numbers, e.g. numenta's 63.12 on reward_low_FP_rate
where the sweep finds 63.21).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PROBATIONARY_FRACTION = 0.15
PROBATIONARY_CAP_ROWS = 5000
NO_DETECTION_THRESHOLD = 1.1
_LEGACY_START = 0.5
_LEGACY_STEP = 0.1
_LEGACY_TOLERANCE = 1e-7
OPTIMISERS = ("sweep", "legacy")
PROFILE_NAMES = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")


@dataclass(frozen=True)
class Profile:
    """Cost weights of one scoring profile (NAB's ``tnWeight`` is never used, so it is not kept)."""

    name: str
    tp_weight: float
    fp_weight: float
    fn_weight: float


@dataclass(frozen=True)
class DataFile:
    """One corpus file: its rows and its anomaly windows as inclusive row ranges."""

    key: str  # path relative to data/, forward slashes, e.g. "realKnownCause/nyc_taxi.csv"
    timestamps: list[str]
    values: np.ndarray
    windows: list[tuple[int, int]]

    @property
    def n_rows(self) -> int:
        return len(self.timestamps)

    @property
    def probationary_period(self) -> int:
        return probationary_period(self.n_rows)


@dataclass
class NabCorpus:
    """The data files (in sorted key order), their windows and the scoring profiles."""

    root: Path
    files: dict[str, DataFile]
    profiles: dict[str, Profile]

    @property
    def n_windows(self) -> int:
        return sum(len(f.windows) for f in self.files.values())


@dataclass(frozen=True)
class ProfileScore:
    """The outcome of scoring one detector under one profile."""

    profile: str
    threshold: float
    raw_score: float
    normalised_score: float
    file_scores: dict[str, float] = field(repr=False)


def probationary_period(n_rows: int) -> int:
    """Rows at the start of a file that are neither rewarded nor penalised: 15 %, at most 750."""
    return int(
        min(
            math.floor(PROBATIONARY_FRACTION * n_rows),
            PROBATIONARY_FRACTION * PROBATIONARY_CAP_ROWS,
        )
    )


def _read_csv_columns(path: Path, columns: tuple[str, ...]) -> list[list[str]]:
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        try:
            indices = [header.index(name) for name in columns]
        except ValueError as exc:
            raise ValueError(f"{path}: missing column ({exc}); header is {header}") from exc
        rows = list(reader)
    return [[row[i] for row in rows] for i in indices]


def _normalise_timestamp(text: str) -> str:
    """Window ends carry microseconds ('.000000'); data files do not."""
    return text[:-7] if text.endswith(".000000") else text


def load_corpus(nab_dir: Path | str) -> NabCorpus:
    """Read the data files, ``labels/combined_windows.json`` and ``config/profiles.json``."""
    root = Path(nab_dir)
    windows_by_key = json.loads((root / "labels" / "combined_windows.json").read_text())
    profiles_json = json.loads((root / "config" / "profiles.json").read_text())
    profiles = {
        name: Profile(
            name=name,
            tp_weight=float(spec["CostMatrix"]["tpWeight"]),
            fp_weight=float(spec["CostMatrix"]["fpWeight"]),
            fn_weight=float(spec["CostMatrix"]["fnWeight"]),
        )
        for name, spec in profiles_json.items()
    }
    files: dict[str, DataFile] = {}
    for key in sorted(windows_by_key):
        timestamps, values = _read_csv_columns(root / "data" / key, ("timestamp", "value"))
        first_row: dict[str, int] = {}
        for i, ts in enumerate(timestamps):
            first_row.setdefault(ts, i)
        windows = []
        for start, end in windows_by_key[key]:
            try:
                windows.append(
                    (first_row[_normalise_timestamp(start)], first_row[_normalise_timestamp(end)])
                )
            except KeyError as exc:
                raise ValueError(f"{key}: window end {exc} is not a timestamp of the file") from exc
        files[key] = DataFile(
            key=key,
            timestamps=timestamps,
            values=np.array(values, dtype=np.float64),
            windows=windows,
        )
    return NabCorpus(root=root, files=files, profiles=profiles)


def result_path(results_dir: Path | str, detector: str, key: str) -> Path:
    """NAB's layout: ``<results>/<detector>/<category>/<detector>_<name>.csv``."""
    category, name = key.split("/")
    return Path(results_dir) / detector / category / f"{detector}_{name}"


def read_detector_scores(
    results_dir: Path | str, detector: str, corpus: NabCorpus
) -> dict[str, np.ndarray]:
    """The ``anomaly_score`` column of each result file, matched to the data file by row position."""
    scores = {}
    for key, data_file in corpus.files.items():
        path = result_path(results_dir, detector, key)
        (column,) = _read_csv_columns(path, ("anomaly_score",))
        if len(column) != data_file.n_rows:
            raise ValueError(f"{path}: {len(column)} rows, the data file has {data_file.n_rows}")
        scores[key] = np.array(column, dtype=np.float64)
    return scores


def _scaled_sigmoid(position: np.ndarray) -> np.ndarray:
    """NAB's reward curve: +0.987 at a window's left edge, 0 at its right edge, -1 far beyond."""
    with np.errstate(over="ignore"):
        curve = 2.0 * (1.0 / (1.0 + np.exp(5.0 * position))) - 1.0
    return np.where(position > 3.0, -1.0, curve)


_MAX_TP = float(_scaled_sigmoid(np.array([-1.0]))[0])


def row_weights(
    n_rows: int, windows: list[tuple[int, int]], profile: Profile
) -> tuple[np.ndarray, np.ndarray]:
    """What a detection at each row would earn, and the row's window index in the file (-1 outside).

    Inside a window the reward falls from ``tp_weight`` at its first row towards 0 at its last;
    outside, the penalty is ``fp_weight`` times a curve that is mild just after the preceding window
    and full (-1) before the file's first window or far past the preceding one.
    """
    rows = np.arange(n_rows)
    weights = np.full(n_rows, -1.0 * profile.fp_weight)
    window_of_row = np.full(n_rows, -1, dtype=np.int64)
    for index, (left, right) in enumerate(windows):
        width = right - left + 1
        inside = rows[left : right + 1]
        position = -(right - inside + 1) / float(width)
        weights[left : right + 1] = _scaled_sigmoid(position) * profile.tp_weight / _MAX_TP
        window_of_row[left : right + 1] = index
        next_left = windows[index + 1][0] if index + 1 < len(windows) else n_rows
        after = rows[right + 1 : next_left]
        position = np.abs(right - after) / float(width - 1)
        weights[right + 1 : next_left] = _scaled_sigmoid(position) * profile.fp_weight
    return weights, window_of_row


@dataclass(frozen=True)
class _ScorableRows:
    """All non-probationary rows of the corpus, in file then row order."""

    scores: np.ndarray
    weights: np.ndarray
    window: np.ndarray  # corpus-wide window id, -1 outside every window
    file_index: np.ndarray
    keys: list[str]
    n_windows: int


def _scorable_rows(
    corpus: NabCorpus, scores: Mapping[str, np.ndarray], profile: Profile
) -> _ScorableRows:
    parts: dict[str, list[np.ndarray]] = {"s": [], "w": [], "g": [], "f": []}
    window_offset = 0
    keys = list(corpus.files)
    for file_index, key in enumerate(keys):
        data_file = corpus.files[key]
        file_scores = np.asarray(scores[key], dtype=np.float64)
        if len(file_scores) != data_file.n_rows:
            raise ValueError(f"{key}: {len(file_scores)} scores for {data_file.n_rows} rows")
        weights, window_of_row = row_weights(data_file.n_rows, data_file.windows, profile)
        start = data_file.probationary_period
        if any(left < start for left, _ in data_file.windows):
            raise ValueError(f"{key}: a window starts inside the probationary period")
        window_ids = np.where(window_of_row >= 0, window_of_row + window_offset, -1)
        parts["s"].append(file_scores[start:])
        parts["w"].append(weights[start:])
        parts["g"].append(window_ids[start:])
        parts["f"].append(np.full(data_file.n_rows - start, file_index, dtype=np.int64))
        window_offset += len(data_file.windows)
    return _ScorableRows(
        scores=np.concatenate(parts["s"]),
        weights=np.concatenate(parts["w"]),
        window=np.concatenate(parts["g"]),
        file_index=np.concatenate(parts["f"]),
        keys=keys,
        n_windows=window_offset,
    )


def _file_scores_at(rows: _ScorableRows, profile: Profile, threshold: float) -> np.ndarray:
    """Score of every file when rows with score >= threshold are detections."""
    detected = rows.scores >= threshold
    n_files = len(rows.keys)
    false_positive = detected & (rows.window < 0)
    totals = np.zeros(n_files, dtype=np.float64)
    totals += np.bincount(
        rows.file_index[false_positive], weights=rows.weights[false_positive], minlength=n_files
    )
    # Each window earns the weight of its earliest detection (rows are in row order), else -fn.
    in_window = np.flatnonzero(detected & (rows.window >= 0))
    _, first = np.unique(rows.window[in_window], return_index=True)
    earliest = in_window[first]
    totals += np.bincount(
        rows.file_index[earliest], weights=rows.weights[earliest], minlength=n_files
    )
    window_file = np.zeros(rows.n_windows, dtype=np.int64)
    has_window = rows.window >= 0
    window_file[rows.window[has_window]] = rows.file_index[has_window]
    missed = np.ones(rows.n_windows, dtype=bool)
    missed[rows.window[earliest]] = False
    totals -= profile.fn_weight * np.bincount(window_file[missed], minlength=n_files)
    return totals


def _sweep(rows: _ScorableRows, profile: Profile) -> tuple[float, float]:
    """Best (threshold, corpus score) over every distinct score value, in one sorted pass."""
    order = np.argsort(-rows.scores, kind="stable")
    sorted_scores = rows.scores[order]
    weights = rows.weights[order]
    window = rows.window[order]
    increments = np.where(window < 0, weights, 0.0)
    # A window's term is the best weight detected so far (its earliest row), starting from -fn.
    window_positions = np.flatnonzero(window >= 0)
    by_window = window_positions[np.argsort(window[window_positions], kind="stable")]
    ids = window[by_window]
    boundaries = np.flatnonzero(np.diff(ids)) + 1
    for group in np.split(by_window, boundaries):
        best = np.maximum.accumulate(weights[group])
        previous = np.concatenate(([-profile.fn_weight], best[:-1]))
        increments[group] = best - previous
    totals = -profile.fn_weight * rows.n_windows + np.cumsum(increments)
    # A threshold t detects every row with score >= t: evaluate after each group of equal scores.
    group_ends = np.flatnonzero(np.diff(sorted_scores) != 0)
    group_ends = np.append(group_ends, len(sorted_scores) - 1)
    thresholds = np.concatenate(([NO_DETECTION_THRESHOLD], sorted_scores[group_ends]))
    candidates = np.concatenate(([-profile.fn_weight * rows.n_windows], totals[group_ends]))
    best_index = int(np.argmax(candidates))  # first maximum = highest threshold on a tie
    return float(thresholds[best_index]), float(candidates[best_index])


def _legacy_hill_climb(rows: _ScorableRows, profile: Profile) -> float:
    """NAB v1.0's threshold search: a local hill-climb in [0, 1] starting at 0.5 with step 0.1."""
    evaluated: dict[float, float] = {}

    def objective(threshold: float) -> float:
        if threshold not in evaluated:
            evaluated[threshold] = (
                float(_file_scores_at(rows, profile, threshold).sum())
                if 0.0 <= threshold <= 1.0
                else -math.inf
            )
        return evaluated[threshold]

    x = _LEGACY_START
    step = _LEGACY_STEP
    best = objective(x)
    while step > _LEGACY_TOLERANCE:
        x += step
        if objective(x) > best:
            best = evaluated[x]
            step *= 2
            continue
        x -= 2 * step
        if objective(x) > best:
            best = evaluated[x]
            step *= 2
        else:
            x += step
            step *= 0.5
    return max(evaluated, key=lambda t: evaluated[t])


def normalise(raw_score: float, profile: Profile, n_windows: int) -> float:
    """Map a corpus score to 0 (never alarm: every window missed) .. 100 (perfect)."""
    null = -profile.fn_weight * n_windows
    perfect = profile.tp_weight * n_windows
    return 100.0 * (raw_score - null) / (perfect - null)


def score_profile(
    corpus: NabCorpus,
    scores: Mapping[str, np.ndarray],
    profile: Profile,
    optimiser: str = "sweep",
    threshold: float | None = None,
) -> ProfileScore:
    """Score one detector under one profile, at ``threshold`` or at the optimiser's best one."""
    rows = _scorable_rows(corpus, scores, profile)
    if threshold is None:
        if optimiser == "sweep":
            threshold, _ = _sweep(rows, profile)
        elif optimiser == "legacy":
            threshold = _legacy_hill_climb(rows, profile)
        else:
            raise ValueError(f"unknown optimiser {optimiser!r}; expected one of {OPTIMISERS}")
    file_scores = _file_scores_at(rows, profile, threshold)
    raw_score = float(file_scores.sum())
    return ProfileScore(
        profile=profile.name,
        threshold=float(threshold),
        raw_score=raw_score,
        normalised_score=normalise(raw_score, profile, rows.n_windows),
        file_scores=dict(zip(rows.keys, file_scores.tolist(), strict=True)),
    )


def score_detector(
    corpus: NabCorpus, scores: Mapping[str, np.ndarray], optimiser: str = "sweep"
) -> dict[str, ProfileScore]:
    """Score one detector under every profile of the corpus."""
    return {
        name: score_profile(corpus, scores, profile, optimiser)
        for name, profile in corpus.profiles.items()
    }


def published_scores(corpus: NabCorpus) -> dict[str, dict[str, float]]:
    """NAB's scoreboard, ``results/final_results.json``: detector -> profile -> normalised score."""
    return json.loads((corpus.root / "results" / "final_results.json").read_text())
