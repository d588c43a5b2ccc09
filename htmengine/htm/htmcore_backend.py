"""Optional backend: the ``ScalarAnomalyModel`` API on top of htm.core (htm-community's C++ HTM).

htm.core is not a dependency of htmengine (it has no wheel on PyPI and must be built from source), so
it is imported only when an ``HtmCoreAnomalyModel`` is made or loaded; importing ``htmengine.htm``
never needs it. Without it, those calls raise :class:`HtmCoreNotInstalledError` (an ``ImportError``).

The same OPF ``modelConfig`` dict (see ``params.py``) is mapped onto htm.core's RDSE and DateEncoder
(time of day only), SpatialPooler (global inhibition over the whole input) and TemporalMemory, whose
``anomaly`` is the raw score. This is not NuPIC parity: htm.core's TM does not backtrack, its encoders
hash and round differently, and its random streams differ, so scores differ from
``ScalarAnomalyModel``'s; a model is only deterministic against itself, before and after save/load.

Checkpoints: each component's own binary (cereal) state, taken through its pybind11 state methods
(no ``pickle`` module involved), stored as byte arrays in our container (kind ``HtmCoreAnomalyModel``).
cereal's binary archive is not portable across machines of different byte order.
"""

from __future__ import annotations

import math
from datetime import datetime
from types import SimpleNamespace
from typing import Any

import numpy as np

from htmengine.htm import serialization
from htmengine.htm.serialization import CheckpointFormatError

__all__ = ["CHECKPOINT_KIND", "HtmCoreAnomalyModel", "HtmCoreNotInstalledError"]

CHECKPOINT_KIND = "HtmCoreAnomalyModel"

# the components whose binary state a checkpoint holds, in the order they are built
_COMPONENTS = ("date_encoder", "value_encoder", "sp", "tm")

# OPF spParams name -> htm.core SpatialPooler argument (absent keys keep htm.core's defaults)
_SP_ARGUMENTS = {
    "potentialPct": "potentialPct",
    "numActiveColumnsPerInhArea": "numActiveColumnsPerInhArea",
    "stimulusThreshold": "stimulusThreshold",
    "synPermInactiveDec": "synPermInactiveDec",
    "synPermActiveInc": "synPermActiveInc",
    "synPermConnected": "synPermConnected",
    "minPctOverlapDutyCycle": "minPctOverlapDutyCycle",
    "dutyCyclePeriod": "dutyCyclePeriod",
    "seed": "seed",
}
# OPF tpParams name -> htm.core TemporalMemory argument
_TM_ARGUMENTS = {
    "cellsPerColumn": "cellsPerColumn",
    "activationThreshold": "activationThreshold",
    "initialPerm": "initialPermanence",
    "minThreshold": "minThreshold",
    "newSynapseCount": "maxNewSynapseCount",
    "permanenceInc": "permanenceIncrement",
    "permanenceDec": "permanenceDecrement",
    "maxSegmentsPerCell": "maxSegmentsPerCell",
    "maxSynapsesPerSegment": "maxSynapsesPerSegment",
    "seed": "seed",
}
# NuPIC's TP default, which the OPF tpParams of htmengine leave in force
_OPF_TM_CONNECTED_PERM = 0.5
# htm.core's RDSE constructor runs a random self-check that NuPIC's RDSE shape fails now and then
_RDSE_CHECK_MESSAGE = "hash collision resistance check"
_RDSE_CHECK_ATTEMPTS = 10


class HtmCoreNotInstalledError(ImportError):
    """htm.core is needed for this backend but cannot be imported."""


def _import_htm_core() -> SimpleNamespace:
    """The htm.core classes this backend uses; a clear error when htm.core is absent."""
    try:
        from htm.bindings.algorithms import SpatialPooler, TemporalMemory
        from htm.bindings.encoders import (
            RDSE,
            DateEncoder,
            DateEncoderParameters,
            RDSE_Parameters,
        )
        from htm.bindings.sdr import SDR
    except ImportError as exc:
        raise HtmCoreNotInstalledError(
            "htm.core is not installed (import of htm.bindings failed: "
            f"{exc}); the HtmCoreAnomalyModel backend needs htm.core built from source "
            "(github.com/htm-community/htm.core). ScalarAnomalyModel needs no extra package."
        ) from exc
    return SimpleNamespace(
        SpatialPooler=SpatialPooler,
        TemporalMemory=TemporalMemory,
        RDSE=RDSE,
        RDSE_Parameters=RDSE_Parameters,
        DateEncoder=DateEncoder,
        DateEncoderParameters=DateEncoderParameters,
        SDR=SDR,
    )


class HtmCoreAnomalyModel:
    """Raw anomaly scores for a stream of ``(timestamp, value)`` records, computed by htm.core."""

    def __init__(self, model_config: dict[str, Any]) -> None:
        htm = _import_htm_core()
        self.model_config = model_config
        model_params = model_config["modelParams"]
        if model_params.get("inferenceType", "TemporalAnomaly") != "TemporalAnomaly":
            raise ValueError("only TemporalAnomaly models are supported")
        date_spec, value_spec = _encoder_specs(model_params["sensorParams"]["encoders"])
        self.date_encoder = _make_date_encoder(htm, date_spec)
        self.value_encoder = _make_value_encoder(htm, value_spec)
        width = self.date_encoder.size + self.value_encoder.size
        sp_params, tp_params = model_params["spParams"], model_params["tpParams"]
        if sp_params["columnCount"] != tp_params["columnCount"]:
            raise ValueError("spParams and tpParams disagree on columnCount")
        self.sp = htm.SpatialPooler(
            inputDimensions=[width],
            columnDimensions=[int(sp_params["columnCount"])],
            potentialRadius=width,  # the whole input, as NuPIC's global-inhibition SP
            globalInhibition=True,
            localAreaDensity=0.0,  # htm.core takes either this or numActiveColumnsPerInhArea
            boostStrength=0.0,
            wrapAround=True,
            **_sp_arguments(sp_params),
        )
        self.tm = htm.TemporalMemory(
            columnDimensions=[int(tp_params["columnCount"])],
            connectedPermanence=float(tp_params.get("connectedPerm", _OPF_TM_CONNECTED_PERM)),
            predictedSegmentDecrement=0.0,
            **_tm_arguments(tp_params),
        )
        self.records_seen = 0
        self._bind(htm)

    def _bind(self, htm: SimpleNamespace) -> None:
        """Working SDRs reused by every record (not state: rebuilt on load)."""
        self._date_bits = htm.SDR(self.date_encoder.size)
        self._value_bits = htm.SDR(self.value_encoder.size)
        self._input_bits = htm.SDR(self.date_encoder.size + self.value_encoder.size)
        self._active_columns = htm.SDR(self.sp.getColumnDimensions())

    def run(self, timestamp: datetime, value: float | None) -> float:
        """Learn from one record and return its raw anomaly score in [0, 1].

        A missing value (None or NaN) runs the model with the time-of-day bits only. The time of day
        is the timestamp's wall-clock time: htm.core ignores ``tzinfo`` and goes through the process's
        local time zone both ways, which is exact except for wall-clock times a DST switch skips.
        """
        self.date_encoder.encode(timestamp, self._date_bits)
        if value is None or math.isnan(value):
            self._value_bits.zero()
        else:
            self.value_encoder.encode(float(value), self._value_bits)
        self._input_bits.concatenate([self._date_bits, self._value_bits])
        self.sp.compute(self._input_bits, True, self._active_columns)
        self.tm.compute(self._active_columns, learn=True)
        self.records_seen += 1
        return float(self.tm.anomaly)

    def save(self, compress: bool = False) -> bytes:
        """The whole model state as one versioned binary blob."""
        state: dict[str, Any] = {
            "model_config": self.model_config,
            "records_seen": self.records_seen,
        }
        for name in _COMPONENTS:
            component_state = getattr(self, name).__getstate__()
            state[name] = np.frombuffer(component_state, dtype=np.uint8)
        return serialization.pack(state, CHECKPOINT_KIND, compress=compress)

    @classmethod
    def load(cls, blob: bytes) -> HtmCoreAnomalyModel:
        """Rebuild a model from :meth:`save`'s blob; ``CheckpointFormatError`` if it is not one."""
        htm = _import_htm_core()
        state = serialization.unpack(blob, CHECKPOINT_KIND)
        classes = {
            "date_encoder": htm.DateEncoder,
            "value_encoder": htm.RDSE,
            "sp": htm.SpatialPooler,
            "tm": htm.TemporalMemory,
        }
        obj = cls.__new__(cls)
        try:
            obj.model_config = state["model_config"]
            obj.records_seen = int(state["records_seen"])
            for name in _COMPONENTS:
                component = classes[name].__new__(classes[name])
                component.__setstate__(np.asarray(state[name], dtype=np.uint8).tobytes())
                setattr(obj, name, component)
        except (KeyError, ValueError, TypeError) as exc:
            raise CheckpointFormatError(f"checkpoint content is inconsistent: {exc}") from exc
        except RuntimeError as exc:  # htm.core's own loader rejecting a component's bytes
            raise CheckpointFormatError(f"htm.core could not load the checkpoint: {exc}") from exc
        obj._bind(htm)
        return obj


def _encoder_specs(encoders: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The DateEncoder and RandomDistributedScalarEncoder specs of an OPF encoder dict."""
    active = [spec for _, spec in sorted(encoders.items()) if spec is not None]
    types = [spec.get("type") for spec in active]
    if types != ["DateEncoder", "RandomDistributedScalarEncoder"]:
        raise ValueError(
            "supported encoders: one DateEncoder (timeOfDay only) sorted before one "
            f"RandomDistributedScalarEncoder; got types {types}"
        )
    date_spec, value_spec = active
    for unsupported in ("season", "dayOfWeek", "weekend", "holiday", "customDays"):
        if date_spec.get(unsupported):
            raise ValueError(f"DateEncoder option {unsupported!r} is not supported")
    return date_spec, value_spec


def _make_date_encoder(htm: SimpleNamespace, date_spec: dict[str, Any]) -> Any:
    width, radius = date_spec["timeOfDay"]
    params = htm.DateEncoderParameters()
    params.timeOfDay_width = int(width)
    params.timeOfDay_radius = float(radius)
    return htm.DateEncoder(params)


def _make_value_encoder(htm: SimpleNamespace, value_spec: dict[str, Any]) -> Any:
    """htm.core's RDSE for the spec, past its random self-check.

    For sizes under 1000 the RDSE constructor checks hash-collision resistance on SDRs drawn from a
    hardware-seeded generator, and refuses NuPIC's 400/21 shape in about 2 % of constructions (seen
    here: 7 of 300). The check does not change the encoder, which is a function of size, active
    bits, resolution and seed, so a refusal is retried; loading a checkpoint never runs the check.
    """
    if value_spec.get("offset") is not None:
        raise ValueError("RDSE offset is not supported by the htm.core backend")
    params = htm.RDSE_Parameters()
    params.size = int(value_spec.get("n", 400))
    params.activeBits = int(value_spec.get("w", 21))
    params.resolution = float(value_spec["resolution"])
    params.seed = int(value_spec.get("seed", 42))
    for _ in range(_RDSE_CHECK_ATTEMPTS - 1):
        try:
            return htm.RDSE(params)
        except RuntimeError as exc:
            if _RDSE_CHECK_MESSAGE not in str(exc):
                raise
    return htm.RDSE(params)  # a refusal on the last attempt propagates


def _sp_arguments(sp_params: dict[str, Any]) -> dict[str, Any]:
    if not sp_params.get("globalInhibition", 1):
        raise ValueError("only global inhibition is supported")
    if sp_params.get("maxBoost", 1.0) != 1.0 or sp_params.get("boostStrength", 0.0) != 0.0:
        raise ValueError("boosting is not supported (maxBoost must be 1.0, boostStrength 0.0)")
    return {arg: sp_params[key] for key, arg in _SP_ARGUMENTS.items() if key in sp_params}


def _tm_arguments(tp_params: dict[str, Any]) -> dict[str, Any]:
    if tp_params.get("globalDecay", 0.0) != 0.0 or tp_params.get("maxAge", 0) != 0:
        raise ValueError("global decay is not supported (globalDecay must be 0.0, maxAge 0)")
    return {arg: tp_params[key] for key, arg in _TM_ARGUMENTS.items() if key in tp_params}
