"""Speed, checkpoint size and memory of one ScalarAnomalyModel over a NAB file.

Prints figures (no assertions): records/s of the whole model on one core (Numba compilation excluded
by a warm-up model), the spatial pooler's share, checkpoint size after the whole file, save/load
times, and the resident memory a process holding one model needs above an interpreter that has
imported NumPy and Numba. Targets: >= 2,000 records/s, <= 5 MB, <= 20 ms save/load, <= 30 MiB.

    python benchmarks/htm_model.py [--nab-dir DIR] [--file realKnownCause/...csv] [--rows N]
"""

from __future__ import annotations

import argparse
import compileall
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_FILE = "realKnownCause/machine_temperature_system_failure.csv"

# Run in a fresh interpreter. Baselines: after importing numpy+numba, then after the first call of any
# jitted function (Numba's LLVM runtime, paid once per process whatever the model); then one model
# loaded from the checkpoint and stepped once; then after 1,000 more rows (the file's first values
# again, five minutes apart: the model keeps learning, so its arrays grow). Prints bytes above both.
_MEMORY_PROBE = """
import gc, sys
from datetime import datetime, timedelta
import numba, numpy, psutil
process = psutil.Process()
def rss():
    gc.collect()
    return process.memory_info().rss
base = rss()
numba.njit(lambda x: x + 1)(1)
jit_base = rss()
from htmengine.htm.model import ScalarAnomalyModel
blob = open(sys.argv[1], "rb").read()
model = ScalarAnomalyModel.load(blob)
del blob
model.run(datetime(2014, 1, 1), 0.0)
used = rss()
values = [float(v) for v in sys.argv[2:]]
for i, value in enumerate(values):
    model.run(datetime(2014, 1, 1) + timedelta(minutes=5 * (i + 1)), value)
later = rss()
print(used - base, used - jit_base, later - jit_base)
"""


def load_rows(path: Path) -> list[tuple[datetime, float]]:
    with open(path, newline="") as handle:
        return [
            (datetime.fromisoformat(r["timestamp"]), float(r["value"]))
            for r in csv.DictReader(handle)
        ]


def nab_model_config(rows: list[tuple[datetime, float]]) -> dict:
    """NAB's numenta detector setup: whole-file range padded by 20 %, v0.5.6 params."""
    from htmengine.htm.params import get_scalar_metric_params

    values = [v for _, v in rows]
    pad = abs(max(values) - min(values)) * 0.2
    return get_scalar_metric_params(min(values) - pad, max(values) + pad)["modelConfig"]


def timed_ms(action, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--nab-dir",
        default=os.environ.get("HTMENGINE_NAB_DIR", str(REPO.parent / "shared" / "nab")),
    )
    parser.add_argument("--file", default=DEFAULT_FILE, help="data file relative to <nab-dir>/data")
    parser.add_argument("--rows", type=int, default=None, help="only the first N rows")
    args = parser.parse_args()
    path = Path(args.nab_dir) / "data" / args.file
    if not path.exists():
        sys.exit(f"data file not found: {path} (set --nab-dir or HTMENGINE_NAB_DIR)")

    from htmengine.htm.encoders import (
        MultiEncoder,
        RandomDistributedScalarEncoder,
        TimeOfDayEncoder,
    )
    from htmengine.htm.model import ScalarAnomalyModel
    from htmengine.htm.spatial_pooler import SpatialPooler

    rows = load_rows(path)[: args.rows]
    config = nab_model_config(rows)

    warm_up = ScalarAnomalyModel(config)  # compiles (or loads cached) Numba code
    for timestamp, value in rows[:300]:
        warm_up.run(timestamp, value)
    ScalarAnomalyModel.load(warm_up.save())

    model = ScalarAnomalyModel(config)
    start, start_cpu = time.perf_counter(), time.process_time()
    for timestamp, value in rows:
        model.run(timestamp, value)
    elapsed, elapsed_cpu = time.perf_counter() - start, time.process_time() - start_cpu

    encoder = MultiEncoder(
        TimeOfDayEncoder(radius=model.encoder.time_of_day.radius),
        RandomDistributedScalarEncoder(resolution=model.encoder.value.resolution),
    )
    encoded = [encoder.encode(timestamp, value) for timestamp, value in rows]
    sp = SpatialPooler()
    start = time.process_time()
    for on_bits in encoded:
        sp.compute_on_bits(on_bits)
    sp_elapsed = time.process_time() - start

    blob = model.save()
    compressed = model.save(compress=True)
    save_ms = timed_ms(model.save, 7)
    load_ms = timed_ms(lambda: ScalarAnomalyModel.load(blob), 7)
    save_z_ms = timed_ms(lambda: model.save(compress=True), 3)
    load_z_ms = timed_ms(lambda: ScalarAnomalyModel.load(compressed), 3)

    # An installed package imports from byte-code; compiling the 1,500-line kernel module from
    # source (as happens under PYTHONDONTWRITEBYTECODE with no .pyc) leaves ~3 MiB of compiler arenas.
    compileall.compile_dir(REPO / "htmengine" / "htm", quiet=1)
    with tempfile.NamedTemporaryFile(suffix=".bin") as handle:
        handle.write(blob)
        handle.flush()
        probe = subprocess.run(
            [sys.executable, "-c", _MEMORY_PROBE, handle.name]
            + [repr(value) for _, value in rows[:1000]],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            check=True,
        )
    above_imports, above_jit, after_more_rows = (int(n) / 2**20 for n in probe.stdout.split())

    n = len(rows)
    print(f"file                  {args.file} ({n} rows)")
    print(
        f"model speed           {n / elapsed_cpu:,.0f} records/s of CPU time "
        f"({elapsed_cpu / n * 1e3:.3f} ms/record; {n / elapsed:,.0f}/s wall clock, "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"
    )
    print(
        f"spatial pooler        {sp_elapsed / n * 1e3:.4f} ms/record of CPU time (encoded input, learning on)"
    )
    print(
        f"TM after the file     {model.tm.n_segments:,} segments, {model.tm.n_synapses:,} synapses"
    )
    print(
        f"checkpoint            {len(blob) / 1e6:.2f} MB raw, {len(compressed) / 1e6:.2f} MB zlib"
    )
    print(f"save / load (raw)     {save_ms:.1f} ms / {load_ms:.1f} ms (median)")
    print(f"save / load (zlib)    {save_z_ms:.1f} ms / {load_z_ms:.1f} ms (median)")
    print(
        f"resident memory       {above_jit:.1f} MiB above python + numpy + numba with its JIT "
        f"runtime started ({above_imports:.1f} MiB above the bare imports); "
        f"{after_more_rows:.1f} MiB after 1,000 more rows"
    )


if __name__ == "__main__":
    main()
