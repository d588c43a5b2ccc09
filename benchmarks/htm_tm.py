"""Temporal memory throughput and state size on NAB data.

Two sources of active columns:

* ``--source model`` (default): the real pipeline (encoders + spatial pooler + TM, NuPIC 0.5.6
  parameters) over a whole NAB file; prints whole-model records/s, the TM's share and TM-only
  records/s, then the TM state size and the model checkpoint size;
* ``--source trace``: the spatial-pooler columns recorded from NuPIC 0.5.6 in
  ``traces/<name>.first2000.jsonl``; TM only.

Numba compilation is excluded (a throw-away model runs a few records first).

    python benchmarks/htm_tm.py [--nab-dir DIR] [--file realKnownCause/nyc_taxi.csv]
    python benchmarks/htm_tm.py --source trace --trace nyc_taxi
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from datetime import datetime
from pathlib import Path

import numpy as np

from htmengine.htm.backtracking_tm import BacktrackingTM

DEFAULT_NAB_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "nab"


def state_bytes(state: dict) -> int:
    """Bytes of the arrays in a get_state() dict (scalars and the config are negligible)."""
    return sum(v.nbytes for v in state.values() if isinstance(v, np.ndarray))


def run_trace(nab_dir: Path, name: str) -> None:
    lines = (nab_dir / "traces" / f"{name}.first2000.jsonl").read_text().splitlines()
    columns = [np.asarray(json.loads(line)[2], dtype=np.int32) for line in lines[1:]]
    warm = BacktrackingTM()
    for cols in columns[:20]:
        warm.compute(cols)
    tm = BacktrackingTM()
    start = time.perf_counter()
    cpu_start = time.process_time()
    for cols in columns:
        tm.compute(cols)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    print(
        f"trace {name}: {len(columns)} records in {elapsed:.2f} s = "
        f"{len(columns) / elapsed:,.0f} records/s (TM only; {len(columns) / cpu:,.0f} records/s "
        f"of CPU time, load {os.getloadavg()[0]:.1f})"
    )
    print(
        f"segments {tm.n_segments:,}  synapses {tm.n_synapses:,}  "
        f"TM state {state_bytes(tm.get_state()):,} bytes"
    )
    per_record = {name: f"{n / len(columns):,.1f}" for name, n in tm.work_counters.items()}
    print(f"work per record: {per_record}")


def run_model(nab_dir: Path, relative: str) -> None:
    from htmengine.htm.model import ScalarAnomalyModel
    from htmengine.htm.params import get_scalar_metric_params

    with open(nab_dir / "data" / relative, newline="") as handle:
        rows = [
            (datetime.fromisoformat(r["timestamp"]), float(r["value"]))
            for r in csv.DictReader(handle)
        ]
    values = [v for _, v in rows]
    config = get_scalar_metric_params(min(values), max(values))["modelConfig"]
    warm = ScalarAnomalyModel(config)
    for timestamp, value in rows[:20]:
        warm.run(timestamp, value)
    ScalarAnomalyModel.load(warm.save())  # compiles (or loads) the checkpoint kernels

    model = ScalarAnomalyModel(config)
    tm_seconds = 0.0
    tm_compute = model.tm.compute

    def timed_compute(active: np.ndarray, learn: bool = True) -> np.ndarray:
        nonlocal tm_seconds
        t0 = time.perf_counter()
        out = tm_compute(active, learn)
        tm_seconds += time.perf_counter() - t0
        return out

    model.tm.compute = timed_compute  # type: ignore[method-assign]
    start = time.perf_counter()
    cpu_start = time.process_time()
    for timestamp, value in rows:
        model.run(timestamp, value)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    n = len(rows)
    print(
        f"{relative}: {n} records in {elapsed:.2f} s = {n / elapsed:,.0f} records/s (whole model; "
        f"{n / cpu:,.0f} records/s of CPU time, load {os.getloadavg()[0]:.1f})"
    )
    print(
        f"TM: {tm_seconds:.2f} s ({100 * tm_seconds / elapsed:.0f}%) = "
        f"{n / tm_seconds:,.0f} records/s (TM only)"
    )
    t0 = time.perf_counter()
    tm_state = model.tm.get_state()
    tm_save_ms = 1000 * (time.perf_counter() - t0)
    t0 = time.perf_counter()
    BacktrackingTM.from_state(tm_state)
    tm_load_ms = 1000 * (time.perf_counter() - t0)
    t0 = time.perf_counter()
    blob = model.save()
    save_ms = 1000 * (time.perf_counter() - t0)
    t0 = time.perf_counter()
    ScalarAnomalyModel.load(blob)
    load_ms = 1000 * (time.perf_counter() - t0)
    print(
        f"segments {model.tm.n_segments:,}  synapses {model.tm.n_synapses:,}  "
        f"TM state {state_bytes(tm_state):,} bytes (get_state {tm_save_ms:.0f} ms, "
        f"from_state {tm_load_ms:.0f} ms)"
    )
    print(f"model checkpoint {len(blob):,} bytes (save {save_ms:.0f} ms, load {load_ms:.0f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--nab-dir", type=Path, default=Path(os.environ.get("HTMENGINE_NAB_DIR", DEFAULT_NAB_DIR))
    )
    parser.add_argument("--source", choices=("model", "trace"), default="model")
    parser.add_argument(
        "--file",
        default="realKnownCause/machine_temperature_system_failure.csv",
        help="NAB data file for --source model (22,695 rows by default)",
    )
    parser.add_argument("--trace", default="nyc_taxi", help="trace name for --source trace")
    args = parser.parse_args()
    if not args.nab_dir.is_dir():
        raise SystemExit(f"NAB corpus not found at {args.nab_dir} (use --nab-dir)")
    if args.source == "trace":
        run_trace(args.nab_dir, args.trace)
    else:
        run_model(args.nab_dir, args.file)


if __name__ == "__main__":
    main()
