"""One scalar-metric anomaly model: encoders -> spatial pooler -> backtracking TM -> raw score.

``ScalarAnomalyModel`` is what NuPIC's OPF ``CLAModel`` (TemporalAnomaly) did for htmengine and NAB,
built from the same ``modelConfig`` dict (see ``params.py``), with the record order of spec §9. It
returns the raw anomaly score only; likelihood is a separate, later step.

Checkpoints are ``save() -> bytes`` / ``ScalarAnomalyModel.load(blob)`` through ``serialization``:
the model config plus every component's ``get_state()`` under a key prefix. Loading a checkpoint and
continuing gives exactly the scores the original object would have given.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np

from htmengine.htm import _jit, serialization
from htmengine.htm.anomaly import compute_raw_score
from htmengine.htm.backtracking_tm import BacktrackingTM
from htmengine.htm.encoders import MultiEncoder, RandomDistributedScalarEncoder, TimeOfDayEncoder
from htmengine.htm.params import DEFAULT_VERSION, PARAM_VERSIONS
from htmengine.htm.serialization import CheckpointFormatError
from htmengine.htm.spatial_pooler import SpatialPooler

__all__ = ["CheckpointFormatError", "ScalarAnomalyModel"]

CHECKPOINT_KIND = "ScalarAnomalyModel"

# OPF tpParams name -> BacktrackingTM argument (absent keys keep NuPIC's class defaults).
_TM_ARGUMENTS = {
    "columnCount": "num_columns",
    "cellsPerColumn": "cells_per_column",
    "activationThreshold": "activation_threshold",
    "minThreshold": "min_threshold",
    "newSynapseCount": "new_synapse_count",
    "initialPerm": "initial_perm",
    "connectedPerm": "connected_perm",
    "permanenceInc": "permanence_inc",
    "permanenceDec": "permanence_dec",
    "permanenceMax": "permanence_max",
    "maxSegmentsPerCell": "max_segments_per_cell",
    "maxSynapsesPerSegment": "max_synapses_per_segment",
    "pamLength": "pam_length",
    "maxInfBacktrack": "max_inf_backtrack",
    "maxLrnBacktrack": "max_lrn_backtrack",
    "maxSeqLength": "max_seq_length",
    "seed": "seed",
}
# OPF spParams name -> SpatialPooler argument.
_SP_ARGUMENTS = {
    "columnCount": "num_columns",
    "numActiveColumnsPerInhArea": "num_active_columns",
    "potentialPct": "potential_pct",
    "synPermConnected": "syn_perm_connected",
    "synPermActiveInc": "syn_perm_active_inc",
    "synPermInactiveDec": "syn_perm_inactive_dec",
    "minPctOverlapDutyCycle": "min_pct_overlap_duty_cycle",
    "dutyCyclePeriod": "duty_cycle_period",
    "seed": "seed",
}


class ScalarAnomalyModel:
    """Raw anomaly scores for a stream of ``(timestamp, value)`` records."""

    def __init__(self, model_config: dict[str, Any]) -> None:
        self.model_config = model_config
        self.version = str(model_config.get("nupicVersion", DEFAULT_VERSION))
        if self.version not in PARAM_VERSIONS:
            raise ValueError(
                f"unknown nupicVersion {self.version!r}; expected one of {PARAM_VERSIONS}"
            )
        model_params = model_config["modelParams"]
        if model_params.get("inferenceType", "TemporalAnomaly") != "TemporalAnomaly":
            raise ValueError("only TemporalAnomaly models are supported")
        time_of_day, value_encoder = _build_encoders(model_params["sensorParams"]["encoders"])
        self.encoder = MultiEncoder(time_of_day, value_encoder)
        self.sp = SpatialPooler(
            num_inputs=self.encoder.width,
            version=self.version,
            **_sp_arguments(model_params["spParams"]),
        )
        self.tm = BacktrackingTM(version=self.version, **_tm_arguments(model_params["tpParams"]))
        if self.tm.num_columns != self.sp.num_columns:
            raise ValueError("spParams and tpParams disagree on columnCount")
        self.prev_predicted = np.empty(0, dtype=np.int32)
        self.records_seen = 0

    def run(self, timestamp: datetime, value: float | None) -> float:
        """Learn from one record and return its raw anomaly score in [0, 1].

        A missing value (None or NaN) still runs the model with the time-of-day bits only, as NuPIC
        did. For the 0.5.6 parameter set the score is rounded through f32 like NuPIC's region output.
        """
        active = self.sp.compute_on_bits(self.encoder.encode(timestamp, value))
        predicted = self.tm.compute(active)
        raw = compute_raw_score(active, self.prev_predicted)
        self.prev_predicted = predicted
        self.records_seen += 1
        _jit.release_compiler_memory()
        if self.version == "0.3.4":
            return float(raw)
        return float(np.float32(raw))

    def save(self, compress: bool = False) -> bytes:
        """The whole model state as one versioned binary blob."""
        state: dict[str, Any] = {
            "model_config": self.model_config,
            "records_seen": self.records_seen,
            "prev_predicted": self.prev_predicted.astype(np.uint16),
            "time_of_day.w": self.encoder.time_of_day.w,
            "time_of_day.radius": self.encoder.time_of_day.radius,
        }
        for prefix, component in (
            ("rdse", self.encoder.value),
            ("sp", self.sp),
            ("tm", self.tm),
        ):
            for key, value in component.get_state().items():
                state[f"{prefix}.{key}"] = value
        blob = serialization.pack(state, CHECKPOINT_KIND, compress=compress)
        _jit.release_compiler_memory()  # the first save loads the packing kernels
        return blob

    @classmethod
    def load(cls, blob: bytes) -> ScalarAnomalyModel:
        """Rebuild a model from :meth:`save`'s blob; ``CheckpointFormatError`` if it is not one."""
        state = serialization.unpack(blob, CHECKPOINT_KIND)
        parts: dict[str, dict[str, Any]] = {"rdse": {}, "sp": {}, "tm": {}}
        try:
            for key, value in state.items():
                prefix, _, name = key.partition(".")
                if prefix in parts:
                    parts[prefix][name] = value
            obj = cls.__new__(cls)
            obj.model_config = state["model_config"]
            obj.version = str(obj.model_config.get("nupicVersion", DEFAULT_VERSION))
            obj.encoder = MultiEncoder(
                TimeOfDayEncoder(
                    w=int(state["time_of_day.w"]), radius=float(state["time_of_day.radius"])
                ),
                RandomDistributedScalarEncoder.from_state(parts["rdse"]),
            )
            obj.sp = SpatialPooler.from_state(parts["sp"])
            obj.tm = BacktrackingTM.from_state(parts["tm"])
            obj.prev_predicted = np.asarray(state["prev_predicted"], dtype=np.int32)
            obj.records_seen = int(state["records_seen"])
        except (KeyError, ValueError, TypeError) as exc:
            raise CheckpointFormatError(f"checkpoint content is inconsistent: {exc}") from exc
        return obj


def _build_encoders(
    encoders: dict[str, Any],
) -> tuple[TimeOfDayEncoder, RandomDistributedScalarEncoder]:
    """The time-of-day and value encoders of an OPF encoder dict (sorted by key, as NuPIC did)."""
    active = [(name, spec) for name, spec in sorted(encoders.items()) if spec is not None]
    types = [spec.get("type") for _, spec in active]
    if types != ["DateEncoder", "RandomDistributedScalarEncoder"]:
        raise ValueError(
            "supported encoders: one DateEncoder (timeOfDay only) sorted before one "
            f"RandomDistributedScalarEncoder; got {[name for name, _ in active]} of types {types}"
        )
    date_spec, value_spec = active[0][1], active[1][1]
    for unsupported in ("season", "dayOfWeek", "weekend", "holiday", "customDays"):
        if date_spec.get(unsupported):
            raise ValueError(f"DateEncoder option {unsupported!r} is not supported")
    w, radius = date_spec["timeOfDay"]
    time_of_day = TimeOfDayEncoder(w=int(w), radius=float(radius))
    value = RandomDistributedScalarEncoder(
        resolution=float(value_spec["resolution"]),
        w=int(value_spec.get("w", 21)),
        n=int(value_spec.get("n", 400)),
        seed=int(value_spec.get("seed", 42)),
        offset=value_spec.get("offset"),
    )
    return time_of_day, value


def _sp_arguments(sp_params: dict[str, Any]) -> dict[str, Any]:
    if not sp_params.get("globalInhibition", 1):
        raise ValueError("only global inhibition is supported")
    if sp_params.get("maxBoost", 1.0) != 1.0 or sp_params.get("boostStrength", 0.0) != 0.0:
        raise ValueError("boosting is not supported (maxBoost must be 1.0, boostStrength 0.0)")
    if sp_params.get("stimulusThreshold", 0) != 0:
        raise ValueError("only stimulusThreshold 0 is supported")
    return {arg: sp_params[key] for key, arg in _SP_ARGUMENTS.items() if key in sp_params}


def _tm_arguments(tp_params: dict[str, Any]) -> dict[str, Any]:
    if tp_params.get("globalDecay", 0.0) != 0.0 or tp_params.get("maxAge", 0) != 0:
        raise ValueError("global decay is not supported (globalDecay must be 0.0, maxAge 0)")
    return {arg: tp_params[key] for key, arg in _TM_ARGUMENTS.items() if key in tp_params}
