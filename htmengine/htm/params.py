"""Model parameters for one scalar metric, as NuPIC's ``getScalarMetricWithTimeOfDayAnomalyParams``.

The result keeps the original OPF layout (``modelConfig`` / ``inferenceArgs``) so stored model specs
and user-supplied ``completeModelParams`` read the same way. Two parameter generations exist (spec §8):
``"0.5.6"`` (default; the set NAB scored 70.1 with) and ``"0.3.4"`` (what htmengine pinned). The
generation is recorded as ``modelConfig["nupicVersion"]`` because the algorithms differ slightly
between them (SP pool order and tie-breaking, raw-score precision), not only the numbers.
"""

from __future__ import annotations

from typing import Any

PARAM_VERSIONS = ("0.5.6", "0.3.4")
DEFAULT_VERSION = "0.5.6"

# What differs between the two generations; everything else is shared.
_BY_VERSION: dict[str, dict[str, Any]] = {
    "0.5.6": {
        "time_of_day_radius": 9.49,
        "num_buckets": 130.0,
        "syn_perm_connected": 0.2,
        "syn_perm_active_inc": 0.003,
        "classifier_region": "SDRClassifierRegion",
    },
    "0.3.4": {
        "time_of_day_radius": 9.4912233474773693,
        "num_buckets": 114.0,
        "syn_perm_connected": 0.1,
        "syn_perm_active_inc": 0.0015,
        "classifier_region": "CLAClassifierRegion",
    },
}


def rdse_resolution(
    min_val: float, max_val: float, num_buckets: float, min_resolution: float = 0.001
) -> float:
    """NuPIC's RDSE resolution, evaluated in exactly its order of double operations.

    Callers that pad the range (NAB, htmengine) must pass the padded ``min_val``/``max_val``
    themselves: the shortcut ``range * 1.4 / 130`` differs in the last bit on some data.
    """
    if min_val == max_val:
        max_val = min_val + 1
    return max(min_resolution, (max_val - min_val) / num_buckets)


def get_scalar_metric_params(
    min_val: float,
    max_val: float,
    min_resolution: float = 0.001,
    version: str = DEFAULT_VERSION,
) -> dict[str, Any]:
    """Complete params (``{"modelConfig": ..., "inferenceArgs": ...}``) for a metric's value range."""
    if version not in _BY_VERSION:
        raise ValueError(f"unknown parameter version {version!r}; expected one of {PARAM_VERSIONS}")
    if min_val is None or max_val is None:
        raise ValueError("min_val and max_val are required")
    if min_resolution is None:
        min_resolution = 0.001
    v = _BY_VERSION[version]
    resolution = rdse_resolution(min_val, max_val, v["num_buckets"], min_resolution)
    return {
        "inferenceArgs": {
            "predictionSteps": [1],
            "predictedField": "c1",
            "inputPredictedField": "auto",
        },
        "modelConfig": {
            "model": "CLA",
            "version": 1,
            "nupicVersion": version,
            "predictAheadTime": None,
            "aggregationInfo": {
                "years": 0,
                "months": 0,
                "weeks": 0,
                "days": 0,
                "hours": 0,
                "minutes": 0,
                "seconds": 0,
                "milliseconds": 0,
                "microseconds": 0,
                "fields": [],
            },
            "modelParams": {
                "inferenceType": "TemporalAnomaly",
                "sensorParams": {
                    "verbosity": 0,
                    "sensorAutoReset": None,
                    "encoders": {
                        "c0_timeOfDay": {
                            "type": "DateEncoder",
                            "fieldname": "c0",
                            "name": "c0",
                            "timeOfDay": [21, v["time_of_day_radius"]],
                        },
                        "c0_dayOfWeek": None,
                        "c0_weekend": None,
                        "c1": {
                            "type": "RandomDistributedScalarEncoder",
                            "fieldname": "c1",
                            "name": "c1",
                            "seed": 42,
                            "resolution": resolution,
                        },
                    },
                },
                "spEnable": True,
                "spParams": {
                    "spatialImp": "cpp",
                    "spVerbosity": 0,
                    "columnCount": 2048,
                    "inputWidth": 0,
                    "globalInhibition": 1,
                    "numActiveColumnsPerInhArea": 40,
                    "potentialPct": 0.8,
                    "synPermConnected": v["syn_perm_connected"],
                    "synPermActiveInc": v["syn_perm_active_inc"],
                    "synPermInactiveDec": 0.0005,
                    "seed": 1956,
                    "maxBoost": 1.0,
                },
                "trainSPNetOnlyIfRequested": False,
                "tpEnable": True,
                "tpParams": {
                    "temporalImp": "cpp",
                    "verbosity": 0,
                    "columnCount": 2048,
                    "inputWidth": 2048,
                    "cellsPerColumn": 32,
                    "activationThreshold": 13,
                    "minThreshold": 10,
                    "newSynapseCount": 20,
                    "maxSynapsesPerSegment": 32,
                    "maxSegmentsPerCell": 128,
                    "initialPerm": 0.21,
                    "permanenceInc": 0.1,
                    "permanenceDec": 0.1,
                    "globalDecay": 0.0,
                    "maxAge": 0,
                    "pamLength": 3,
                    "outputType": "normal",
                    "seed": 1960,
                },
                "clEnable": False,
                "clParams": {
                    "regionName": v["classifier_region"],
                    "alpha": 0.035828933612157998,
                    "steps": "1",
                    "clVerbosity": 0,
                },
                "anomalyParams": {
                    "anomalyCacheRecords": None,
                    "autoDetectThreshold": None,
                    "autoDetectWaitRecords": 5030,
                },
            },
        },
    }
