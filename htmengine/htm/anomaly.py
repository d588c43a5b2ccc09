"""Raw anomaly score and anomaly likelihood, with NuPIC's exact semantics (spec §5, §6).

The raw score says how much of the current input the temporal memory failed to predict. The likelihood
turns a stream of raw scores into "how unusual is the recent average raw score", using a normal
distribution fitted to a window of past averages. Three NuPIC generations differ only in the tail
probability (see ``tail_probability``); ``version`` selects one, "0.5.6" (what NAB scored) by default.

Two interfaces exist, as in NuPIC:

* the functional API (``estimate_anomaly_likelihoods`` / ``update_anomaly_likelihoods``) whose state is
  a JSON-able ``params`` dict in NuPIC's key layout; htmengine stores it in MySQL;
* the ``AnomalyLikelihood`` class (NAB's detector), which keeps its own history and re-estimates
  periodically.

Likelihoods here are NuPIC's *tail probabilities*: small means unusual. Callers report
``1 - likelihood`` as the anomaly probability.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numba import njit

VERSIONS = ("0.3.4", "0.5.6", "1.0.5")
DEFAULT_VERSION = "0.5.6"

AVERAGING_WINDOW = 10
MEAN_FLOOR = 0.03
VARIANCE_FLOOR = 0.0003
FLAT_METRIC_VARIANCE = 1.5e-5
RED_THRESHOLD = 1.0 - 0.99999
YELLOW_THRESHOLD = 1.0 - 0.999
_ERFC_SQRT2 = 1.4142  # NuPIC's truncated sqrt(2); kept for bit parity
_LOG_EPSILON = 1.0000000001
_LOG_1E_MINUS_10 = -23.02585084720009

# Upper-tail probabilities Q(z) of the standard normal at z = 0.0, 0.1, ..., 7.0 (v0.3.4's table).
Q_TABLE = np.array(
    [
        0.500000000, 0.460172163, 0.420740291, 0.382088578, 0.344578258, 0.308537539,
        0.274253118, 0.241963652, 0.211855399, 0.184060125, 0.158655254, 0.135666061,
        0.115069670, 0.096800485, 0.080756659, 0.066807201, 0.054799292, 0.044565463,
        0.035930319, 0.028716560, 0.022750132, 0.017864421, 0.013903448, 0.010724110,
        0.008197536, 0.006209665, 0.004661188, 0.003466974, 0.002555130, 0.001865813,
        0.001349898, 0.000967603, 0.000687138, 0.000483424, 0.000336929, 0.000232629,
        0.000159109, 0.000107800, 0.000072348, 0.000048096, 0.000031671,
        2.1771135897e-5, 1.4034063752e-5, 8.961673661e-6, 5.668743475e-6, 3.551942468e-6,
        2.204533058e-6, 1.355281953e-6, 8.25270644e-7, 4.97747091e-7, 2.97343903e-7,
        1.75930101e-7, 1.03096834e-7, 5.9836778e-8, 3.439559e-8, 1.9581382e-8,
        1.1040394e-8, 6.164833e-9, 3.409172e-9, 1.867079e-9, 1.012647e-9,
        5.43915e-10, 2.8932e-10, 1.52404e-10, 7.9502e-11, 4.107e-11,
        2.101e-11, 1.0644e-11, 5.34e-12, 2.653e-12, 1.305e-12,
    ]
)  # fmt: skip

_TAIL_TABLE = 0  # v0.3.4: Q table in tenths of sigma, 1 - T below the mean
_TAIL_ERFC_MIRRORED = 1  # v0.5.6: erfc, 1 - T below the mean
_TAIL_ERFC_SYMMETRIC = 2  # v1.0.5: erfc, T below the mean


def _tail_mode(version: str) -> int:
    if version == "0.3.4":
        return _TAIL_TABLE
    if version == "0.5.6":
        return _TAIL_ERFC_MIRRORED
    if version == "1.0.5":
        return _TAIL_ERFC_SYMMETRIC
    raise ValueError(f"unknown NuPIC version {version!r}; expected one of {VERSIONS}")


# --- raw score -------------------------------------------------------------------------------------


def compute_raw_score(active_columns: np.ndarray, prev_predicted_columns: np.ndarray) -> float:
    """Fraction of active columns that were not predicted at the previous step (0 if none active).

    Double precision, as v0.3.4 computed it; for v0.5.6 parity the caller rounds to f32. Both
    arguments are sets of column indices (no repeats), so the intersection can skip its
    de-duplication pass (~4x faster than np.isin on the model's hot path).
    """
    n_active = len(active_columns)
    if n_active == 0:
        return 0.0
    n_predicted = len(np.intersect1d(active_columns, prev_predicted_columns, assume_unique=True))
    return (n_active - n_predicted) / float(n_active)


# --- building blocks -------------------------------------------------------------------------------


@njit(cache=True)
def _moving_averages(
    raws: np.ndarray, window: np.ndarray, total: float, window_size: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """Continue NuPIC's moving average: (averages, final window oldest-first, final total).

    The running total is updated subtract-then-add in record order, exactly as NuPIC did, so the
    floating-point rounding matches.
    """
    ring = np.empty(window_size, dtype=np.float64)
    count = window.shape[0]
    ring[:count] = window
    head = 0
    averages = np.empty(raws.shape[0], dtype=np.float64)
    for i in range(raws.shape[0]):
        if count == window_size:
            total -= ring[head]
            head = (head + 1) % window_size
            count -= 1
        ring[(head + count) % window_size] = raws[i]
        count += 1
        total += raws[i]
        averages[i] = total / count
    final = np.empty(count, dtype=np.float64)
    for k in range(count):
        final[k] = ring[(head + k) % window_size]
    return averages, final, total


@njit(cache=True)
def _python2_round(x: float) -> float:
    """Round half away from zero on the exact double (Python 2's ``round``), for x >= 0."""
    whole = math.floor(x)
    return whole + 1.0 if x - whole >= 0.5 else whole


@njit(cache=True)
def _upper_tail(x: float, mean: float, stdev: float, mode: int, q_table: np.ndarray) -> float:
    if mode == _TAIL_TABLE:
        tenths = _python2_round(10.0 * (x - mean) / stdev)
        if tenths > 70.0:
            return 0.0
        return q_table[int(tenths)]
    z = (x - mean) / stdev
    return 0.5 * math.erfc(z / _ERFC_SQRT2)


@njit(cache=True)
def _tail_probabilities(
    xs: np.ndarray, mean: float, stdev: float, mode: int, q_table: np.ndarray
) -> np.ndarray:
    out = np.empty(xs.shape[0], dtype=np.float64)
    for i in range(xs.shape[0]):
        x = xs[i]
        if x < mean:
            mirrored = _upper_tail(2.0 * mean - x, mean, stdev, mode, q_table)
            out[i] = mirrored if mode == _TAIL_ERFC_SYMMETRIC else 1.0 - mirrored
        else:
            out[i] = _upper_tail(x, mean, stdev, mode, q_table)
    return out


def tail_probability(
    x: float, distribution: dict[str, Any], version: str = DEFAULT_VERSION
) -> float:
    """Probability of a sample beyond ``x`` under ``distribution`` (NuPIC's per-version rule).

    v0.3.4 quantises z to tenths of sigma and reads a table; v0.5.6 uses erfc with the constant
    1.4142. Both mirror values below the mean as ``1 - T(2*mean - x)``; v1.0.5 returns
    ``T(2*mean - x)`` there, so unusually *low* averages also count as unlikely.
    """
    xs = np.array([float(x)])
    mode = _tail_mode(version)
    return float(
        _tail_probabilities(
            xs, float(distribution["mean"]), float(distribution["stdev"]), mode, Q_TABLE
        )[0]
    )


def estimate_normal(samples: np.ndarray, lower_bound: bool = True) -> dict[str, Any]:
    """Normal fit (mean, population variance); with ``lower_bound`` both are floored.

    The floors stop a near-constant raw score from turning the slightest blip into a red alert.
    """
    mean = float(np.mean(samples))
    variance = float(np.var(samples))
    if lower_bound:
        if mean < MEAN_FLOOR:
            mean = MEAN_FLOOR
        if variance < VARIANCE_FLOOR:
            variance = VARIANCE_FLOOR
    stdev = math.sqrt(variance) if variance > 0 else 0.0
    return {"name": "normal", "mean": mean, "variance": variance, "stdev": stdev}


def null_distribution() -> dict[str, Any]:
    """So broad that every average raw score gets likelihood ~0.5: used until data suffices."""
    return {"name": "normal", "mean": 0.5, "variance": 1e6, "stdev": 1e3}


def filter_likelihoods(likelihoods: Sequence[float] | np.ndarray) -> np.ndarray:
    """Keep only the first of a run of red (<= 1e-5) likelihoods; later ones become yellow (1e-3).

    The test looks at the *unfiltered* previous value, as NuPIC does.
    """
    values = np.asarray(likelihoods, dtype=np.float64)
    out = values.copy()
    if len(values) > 1:
        red = values <= RED_THRESHOLD
        repeated = red[1:] & red[:-1]
        out[1:][repeated] = YELLOW_THRESHOLD
    return out


def log_likelihood(probability: float) -> float:
    """NuPIC's ``computeLogLikelihood``: spreads probabilities near 1 over [0, 1] (0.99999 -> ~0.5)."""
    return math.log(_LOG_EPSILON - probability) / _LOG_1E_MINUS_10


# --- functional API (htmengine) --------------------------------------------------------------------


def _is_record(record: Any) -> bool:
    return isinstance(record, (list, tuple)) and len(record) == 3


def _estimate(
    values: np.ndarray,
    raws: np.ndarray,
    averaging_window: int,
    skip_records: int,
    version: str,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Core of the estimator on arrays: (unfiltered likelihoods, averages, params)."""
    mode = _tail_mode(version)
    averages, window, total = _moving_averages(
        raws, np.empty(0, dtype=np.float64), 0.0, averaging_window
    )
    if len(averages) <= skip_records:
        distribution = null_distribution()
    else:
        distribution = estimate_normal(averages[skip_records:])
        metric = estimate_normal(values[skip_records:], lower_bound=False)
        if metric["variance"] < FLAT_METRIC_VARIANCE:
            # A flat metric: the model's time-of-day noise must not read as anomalies.
            distribution = null_distribution()
    likelihoods = _tail_probabilities(
        averages, distribution["mean"], distribution["stdev"], mode, Q_TABLE
    )
    params = {
        "distribution": distribution,
        "movingAverage": {
            "windowSize": averaging_window,
            "historicalValues": window.tolist(),
            "total": float(total),
        },
        "historicalLikelihoods": likelihoods[-averaging_window:].tolist(),
    }
    return likelihoods, averages, params


def estimate_anomaly_likelihoods(
    records: Sequence[Sequence[Any]],
    averaging_window: int = AVERAGING_WINDOW,
    skip_records: int = 0,
    version: str = DEFAULT_VERSION,
) -> tuple[np.ndarray, list[list[Any]], dict[str, Any]]:
    """Fit the likelihood model to ``records`` ``(timestamp, value, raw_score)``, oldest first.

    Returns ``(filtered likelihoods, averaged records [timestamp, value, average raw], params)``.
    Malformed records (not a 3-item list or tuple) are skipped. The first ``skip_records`` averages
    are left out of the fit (the model was still learning then) but still get a likelihood; with no
    more than ``skip_records`` records, or a flat metric, the null distribution is used.
    """
    if len(records) == 0:
        raise ValueError("estimate_anomaly_likelihoods needs at least one record")
    good = [r for r in records if _is_record(r)]
    values = np.array([float(r[1]) for r in good], dtype=np.float64)
    raws = np.array([float(r[2]) for r in good], dtype=np.float64)
    likelihoods, averages, params = _estimate(values, raws, averaging_window, skip_records, version)
    averaged_records = [[r[0], r[1], float(a)] for r, a in zip(good, averages, strict=True)]
    return filter_likelihoods(likelihoods), averaged_records, params


def _validate_params(params: Any) -> None:
    if not isinstance(params, dict):
        raise ValueError("likelihood params must be a dict")
    distribution = params.get("distribution")
    if not isinstance(distribution, dict) or not {"mean", "name", "variance", "stdev"} <= set(
        distribution
    ):
        raise ValueError("likelihood params need distribution{name, mean, variance, stdev}")
    moving = params.get("movingAverage")
    if not isinstance(moving, dict) or not {"windowSize", "historicalValues", "total"} <= set(
        moving
    ):
        raise ValueError(
            "likelihood params need movingAverage{windowSize, historicalValues, total}"
        )
    if len(moving["historicalValues"]) > moving["windowSize"]:
        raise ValueError("movingAverage.historicalValues is longer than its windowSize")


def update_anomaly_likelihoods(
    records: Sequence[Sequence[Any]],
    params: dict[str, Any],
    version: str = DEFAULT_VERSION,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Score new records with an existing fit, continuing its moving average and red-run filter.

    Returns ``(filtered likelihoods, average raw scores, new params)``; ``params`` is not modified.
    The distribution is carried over unchanged; re-fit with ``estimate_anomaly_likelihoods``.
    """
    if len(records) == 0:
        raise ValueError("update_anomaly_likelihoods needs at least one record")
    _validate_params(params)
    mode = _tail_mode(version)
    distribution = params["distribution"]
    moving = params["movingAverage"]
    window_size = int(moving["windowSize"])
    history = [float(v) for v in params.get("historicalLikelihoods", [1.0])]

    raws = np.array([float(r[2]) for r in records], dtype=np.float64)
    averages, window, total = _moving_averages(
        raws,
        np.array(moving["historicalValues"], dtype=np.float64),
        float(moving["total"]),
        window_size,
    )
    likelihoods = _tail_probabilities(
        averages, float(distribution["mean"]), float(distribution["stdev"]), mode, Q_TABLE
    )
    combined = np.concatenate([np.array(history, dtype=np.float64), likelihoods])
    filtered = filter_likelihoods(combined)[-len(likelihoods) :]
    new_params = {
        "distribution": dict(distribution),
        "movingAverage": {
            "windowSize": window_size,
            "historicalValues": window.tolist(),
            "total": float(total),
        },
        "historicalLikelihoods": combined[-window_size:].tolist(),
    }
    return filtered, averages, new_params


# --- AnomalyLikelihood class (NAB) -----------------------------------------------------------------


class AnomalyLikelihood:
    """NuPIC's ``AnomalyLikelihood``: anomaly probability per record with periodic re-estimation.

    Returns 0.5 during the probation period (``learning_period + estimation_samples`` records); then
    re-fits the distribution on the history before the current record whenever there is none yet or
    the iteration is a multiple of ``reestimation_period``, and scores each record with the update
    function. Only values and raw scores are kept: timestamps never enter the computation.
    """

    def __init__(
        self,
        learning_period: int = 288,
        estimation_samples: float = 100,
        historic_window_size: int = 8640,
        reestimation_period: int = 100,
        version: str = DEFAULT_VERSION,
    ) -> None:
        if historic_window_size < estimation_samples:
            raise ValueError("historic_window_size must be at least estimation_samples")
        _tail_mode(version)
        self.learning_period = int(learning_period)
        self.estimation_samples = estimation_samples
        self.historic_window_size = int(historic_window_size)
        self.reestimation_period = int(reestimation_period)
        self.version = version
        self.probationary_period = self.learning_period + estimation_samples
        self.iteration = 0
        self._values = np.zeros(self.historic_window_size, dtype=np.float64)
        self._raws = np.zeros(self.historic_window_size, dtype=np.float64)
        self._params: dict[str, Any] | None = None

    def _history(self) -> tuple[np.ndarray, np.ndarray]:
        """Values and raw scores of the last ``historic_window_size`` records, oldest first."""
        size = self.historic_window_size
        if self.iteration <= size:
            return self._values[: self.iteration], self._raws[: self.iteration]
        start = self.iteration % size
        order = np.r_[start:size, 0:start]
        return self._values[order], self._raws[order]

    def _skip_records(self) -> int:
        shifted_out = max(0, self.iteration - self.historic_window_size)
        return min(self.iteration, max(0, self.learning_period - shifted_out))

    def anomaly_probability(self, value: float, raw_score: float) -> float:
        """Probability that this record is anomalous (high = unusual); 0.5 while on probation."""
        if self.iteration < self.probationary_period:
            probability = 0.5
        else:
            if self._params is None or self.iteration % self.reestimation_period == 0:
                values, raws = self._history()
                _, _, self._params = _estimate(
                    values, raws, AVERAGING_WINDOW, self._skip_records(), self.version
                )
            likelihoods, _, self._params = update_anomaly_likelihoods(
                [(None, value, raw_score)], self._params, self.version
            )
            probability = 1.0 - float(likelihoods[0])
        slot = self.iteration % self.historic_window_size
        self._values[slot] = value
        self._raws[slot] = raw_score
        self.iteration += 1
        return probability

    def get_state(self) -> dict[str, Any]:
        """Flat state: configuration, counters, history (oldest first) and the current fit."""
        values, raws = self._history()
        state: dict[str, Any] = {
            "learning_period": self.learning_period,
            "estimation_samples": self.estimation_samples,
            "historic_window_size": self.historic_window_size,
            "reestimation_period": self.reestimation_period,
            "version": self.version,
            "iteration": self.iteration,
            "history_values": values.copy(),
            "history_raws": raws.copy(),
            "has_params": self._params is not None,
        }
        if self._params is not None:
            distribution = self._params["distribution"]
            moving = self._params["movingAverage"]
            state.update(
                {
                    "distribution_mean": distribution["mean"],
                    "distribution_variance": distribution["variance"],
                    "distribution_stdev": distribution["stdev"],
                    "moving_window_size": moving["windowSize"],
                    "moving_values": np.array(moving["historicalValues"], dtype=np.float64),
                    "moving_total": moving["total"],
                    "historical_likelihoods": np.array(
                        self._params["historicalLikelihoods"], dtype=np.float64
                    ),
                }
            )
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> AnomalyLikelihood:
        """Rebuild an object that continues exactly where ``get_state`` left off."""
        obj = cls(
            learning_period=int(state["learning_period"]),
            estimation_samples=state["estimation_samples"],
            historic_window_size=int(state["historic_window_size"]),
            reestimation_period=int(state["reestimation_period"]),
            version=str(state["version"]),
        )
        obj.iteration = int(state["iteration"])
        values = np.asarray(state["history_values"], dtype=np.float64)
        raws = np.asarray(state["history_raws"], dtype=np.float64)
        if len(values) != min(obj.iteration, obj.historic_window_size) or len(raws) != len(values):
            raise ValueError("AnomalyLikelihood state: history length does not match iteration")
        # Place the history so that slot (iteration - k) % size holds the k-th newest record.
        slots = (obj.iteration - len(values) + np.arange(len(values))) % obj.historic_window_size
        obj._values[slots] = values
        obj._raws[slots] = raws
        if state["has_params"]:
            obj._params = {
                "distribution": {
                    "name": "normal",
                    "mean": float(state["distribution_mean"]),
                    "variance": float(state["distribution_variance"]),
                    "stdev": float(state["distribution_stdev"]),
                },
                "movingAverage": {
                    "windowSize": int(state["moving_window_size"]),
                    "historicalValues": np.asarray(
                        state["moving_values"], dtype=np.float64
                    ).tolist(),
                    "total": float(state["moving_total"]),
                },
                "historicalLikelihoods": np.asarray(
                    state["historical_likelihoods"], dtype=np.float64
                ).tolist(),
            }
        return obj
