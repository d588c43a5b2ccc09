"""Run our "numenta" detector over the NAB corpus, write NAB-layout results, report parity and scores.

    python benchmarks/nab.py [--nab-dir ../shared/nab] [--out benchmarks/out] [--workers N]
                             [--only SUBSTRING ...] [--variant numenta|debounced]

Results go to ``<out>/<detector>/<category>/<detector>_<name>.csv`` (timestamp, value, anomaly_score,
raw_score, label), the layout NAB's own scorer reads. Printed: per-file parity with NuPIC 0.5.6's
published ``results/numenta`` (fraction of rows equal within 1e-6 and the first diverging row, for the
raw and the final score), and, when all 58 files ran, the NAB scores of the three profiles from
``htmengine.evaluation.nab`` next to the published numenta figures. ``--variant debounced`` runs
``DebouncedNumentaDetector`` instead (same HTM, so raw parity still holds; final scores differ where
it lowers repeated alarms), by default into the results name ``htmengine_debounced``.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from htmengine.evaluation.nab import (  # noqa: E402
    DataFile,
    load_corpus,
    published_scores,
    read_detector_scores,
    result_path,
    score_detector,
)
from htmengine.htm.nab_detector import DebouncedNumentaDetector, NumentaDetector  # noqa: E402

PARITY_TOLERANCE = 1e-6
ORACLE_DETECTOR = "numenta"
VARIANTS: dict[str, type[NumentaDetector]] = {
    "numenta": NumentaDetector,
    "debounced": DebouncedNumentaDetector,
}


@dataclass(frozen=True)
class FileRun:
    key: str
    final_scores: np.ndarray
    raw_scores: np.ndarray
    seconds: float


@dataclass(frozen=True)
class Parity:
    equal_fraction: float
    first_divergence: int | None  # row index, None if every row agrees


def run_file(data_file: DataFile, version: str, variant: str = "numenta") -> FileRun:
    """Score every row of one file with a fresh detector, as NAB does."""
    detector = VARIANTS[variant].for_values(data_file.values.tolist(), version=version)
    final = np.empty(data_file.n_rows)
    raw = np.empty(data_file.n_rows)
    start = time.perf_counter()
    for i, (stamp, value) in enumerate(zip(data_file.timestamps, data_file.values, strict=True)):
        when = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S")
        final[i], raw[i] = detector.handle_record(when, float(value))
    return FileRun(data_file.key, final, raw, time.perf_counter() - start)


def _run_file_job(job: tuple[DataFile, str, str]) -> FileRun:
    return run_file(*job)


def write_results(run: FileRun, data_file: DataFile, out_dir: Path, detector: str) -> Path:
    """One NAB result file; ``label`` is 1 inside an anomaly window, as in NAB's own outputs."""
    labels = np.zeros(data_file.n_rows, dtype=int)
    for left, right in data_file.windows:
        labels[left : right + 1] = 1
    path = result_path(out_dir, detector, data_file.key)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["timestamp", "value", "anomaly_score", "raw_score", "label"])
        for row in zip(
            data_file.timestamps,
            data_file.values.tolist(),
            run.final_scores.tolist(),
            run.raw_scores.tolist(),
            labels.tolist(),
            strict=True,
        ):
            writer.writerow(row)
    return path


def read_oracle(nab_dir: Path, key: str) -> tuple[np.ndarray, np.ndarray] | None:
    """NuPIC 0.5.6's published (anomaly_score, raw_score) for a file, if present."""
    path = result_path(nab_dir / "results", ORACLE_DETECTOR, key)
    if not path.exists():
        return None
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    final = np.array([float(r["anomaly_score"]) for r in rows])
    raw = np.array([float(r["raw_score"]) for r in rows])
    return final, raw


def parity(ours: np.ndarray, oracle: np.ndarray) -> Parity:
    differs = np.abs(ours - oracle) > PARITY_TOLERANCE
    diverging = np.flatnonzero(differs)
    return Parity(
        equal_fraction=float(1.0 - differs.mean()),
        first_divergence=int(diverging[0]) if diverging.size else None,
    )


def _format_parity(p: Parity) -> str:
    first = "-" if p.first_divergence is None else str(p.first_divergence)
    return f"{100 * p.equal_fraction:7.3f}% {first:>6}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--nab-dir",
        type=Path,
        default=Path(os.environ.get("HTMENGINE_NAB_DIR", REPO.parent / "shared" / "nab")),
        help="NAB corpus (data/, labels/, config/, results/); default $HTMENGINE_NAB_DIR or ../shared/nab",
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out")
    parser.add_argument(
        "--detector",
        default=None,
        help="name used in the results layout; default htmengine, or htmengine_<variant>",
    )
    parser.add_argument(
        "--variant",
        default="numenta",
        choices=tuple(VARIANTS),
        help="numenta: NuPIC 0.5.6's detector; debounced: same, repeated alarms lowered",
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--version", default="0.5.6", choices=("0.5.6", "0.3.4"))
    parser.add_argument(
        "--only", nargs="*", default=None, help="run only files whose key contains one of these"
    )
    args = parser.parse_args(argv)
    if args.detector is None:
        args.detector = "htmengine" if args.variant == "numenta" else f"htmengine_{args.variant}"

    if not (args.nab_dir / "data").is_dir():
        parser.error(f"NAB corpus not found at {args.nab_dir} (use --nab-dir or HTMENGINE_NAB_DIR)")
    corpus = load_corpus(args.nab_dir)
    selected = [
        f
        for key, f in corpus.files.items()
        if args.only is None or any(part in key for part in args.only)
    ]
    if not selected:
        parser.error("no data file matches --only")
    selected.sort(key=lambda f: f.n_rows, reverse=True)  # longest first: better load balance
    total_rows = sum(f.n_rows for f in selected)
    print(
        f"{len(selected)} files, {total_rows} rows, {args.workers} workers, params {args.version}, "
        f"detector {args.variant}",
        flush=True,
    )

    runs: dict[str, FileRun] = {}
    wall_start = time.perf_counter()
    jobs = [(f, args.version, args.variant) for f in selected]
    with Pool(processes=args.workers) as pool, tqdm(total=total_rows, unit="row") as bar:
        for run in pool.imap_unordered(_run_file_job, jobs):
            runs[run.key] = run
            write_results(run, corpus.files[run.key], args.out, args.detector)
            bar.update(len(run.raw_scores))
    wall = time.perf_counter() - wall_start
    cpu = sum(r.seconds for r in runs.values())
    print(
        f"\nwall {wall:.0f} s; detector time {cpu:.0f} s = {total_rows / cpu:.0f} rows/s per process"
    )

    print(f"\nparity with NuPIC 0.5.6 (results/{ORACLE_DETECTOR}), tolerance {PARITY_TOLERANCE:g}")
    print(f"{'file':60} {'raw equal':>8} {'first':>6}  {'final equal':>8} {'first':>6}")
    raw_equal_rows = final_equal_rows = compared_rows = 0
    for key in sorted(runs):
        oracle = read_oracle(args.nab_dir, key)
        if oracle is None:
            print(f"{key:60} (no oracle file)")
            continue
        run = runs[key]
        raw_parity = parity(run.raw_scores, oracle[1])
        final_parity = parity(run.final_scores, oracle[0])
        n = len(run.raw_scores)
        compared_rows += n
        raw_equal_rows += round(raw_parity.equal_fraction * n)
        final_equal_rows += round(final_parity.equal_fraction * n)
        print(f"{key:60} {_format_parity(raw_parity)}  {_format_parity(final_parity)}")
    if compared_rows:
        print(
            f"{'all compared rows':60} {100 * raw_equal_rows / compared_rows:7.3f}%"
            f"         {100 * final_equal_rows / compared_rows:7.3f}%"
        )

    if len(runs) < len(corpus.files):
        print("\nNAB scores need all 58 files; run without --only to get them.")
        return 0
    ours = score_detector(corpus, read_detector_scores(args.out, args.detector, corpus))
    ours_legacy = score_detector(
        corpus, read_detector_scores(args.out, args.detector, corpus), optimiser="legacy"
    )
    published = published_scores(corpus).get(ORACLE_DETECTOR, {})
    print("\nNAB scores (sweep optimiser = NAB v1.1; legacy = NAB v1.0 hill-climb)")
    print(f"{'profile':22} {'sweep':>9} {'threshold':>10} {'legacy':>9} {'numenta published':>18}")
    for name, result in ours.items():
        print(
            f"{name:22} {result.normalised_score:9.4f} {result.threshold:10.6f} "
            f"{ours_legacy[name].normalised_score:9.4f} {published.get(name, float('nan')):18.4f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
