"""Compare final-score rules on NuPIC's published raw scores, without running the HTM.

    python benchmarks/nab_postprocess.py [--nab-dir ../shared/nab] [--seeds 20]
                                         [--debounce-rows 9 ...]

Our HTM reproduces NuPIC 0.5.6's raw scores bit for bit, so everything after the raw score can be
studied on the ``raw_score`` column of NAB's ``results/numenta`` files. This script feeds those raw
scores (f32, as NuPIC handed them on) to the numenta ``FinalScorer`` and to ``DebouncedFinalScorer``
and prints, for the three NAB profiles:

* the full-corpus scores of both (the baseline must equal NAB's published numenta figures);
* held-out halves: for each seed the 58 files are split in two, category by category; each half is
  scored on its own, once with NAB's protocol (threshold optimised on that half) and once strictly
  (threshold optimised on the other half); printed are the mean, worst and best change and the
  share of halves where the variant wins. With ``--debounce-rows`` giving several values, the
  value that scores best on one half is also chosen there and scored on the other.
"""

from __future__ import annotations

import argparse
import copy
import csv
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from htmengine.evaluation.nab import (  # noqa: E402
    PROFILE_NAMES,
    NabCorpus,
    load_corpus,
    result_path,
    score_profile,
)
from htmengine.htm.nab_detector import (  # noqa: E402
    DEBOUNCE_ROWS,
    DebouncedFinalScorer,
    FinalScorer,
    nab_probationary_period,
)

ORACLE_DETECTOR = "numenta"
Scores = dict[str, np.ndarray]


def read_oracle(nab_dir: Path, key: str) -> tuple[np.ndarray, np.ndarray]:
    """NuPIC 0.5.6's published (anomaly_score, raw_score) columns for one data file."""
    with result_path(nab_dir / "results", ORACLE_DETECTOR, key).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return (
        np.array([float(r["anomaly_score"]) for r in rows]),
        np.array([float(r["raw_score"]) for r in rows]),
    )


def final_scores(
    corpus: NabCorpus, raws: Scores, make_scorer: Callable[[float], FinalScorer]
) -> Scores:
    """Each file's final scores from its raw scores, with a fresh scorer per file."""
    out = {}
    for key, data_file in corpus.files.items():
        scorer = make_scorer(nab_probationary_period(data_file.n_rows))
        out[key] = np.array(
            [
                scorer.score(value, float(np.float32(raw)))
                for value, raw in zip(data_file.values.tolist(), raws[key].tolist(), strict=True)
            ]
        )
    return out


def sub_corpus(corpus: NabCorpus, keys: list[str]) -> NabCorpus:
    part = copy.copy(corpus)
    part.files = {key: corpus.files[key] for key in sorted(keys)}
    return part


def split_halves(corpus: NabCorpus, seed: int) -> tuple[list[str], list[str]]:
    """Two halves of the files, each category split as evenly as possible (odd one at random)."""
    rng = np.random.default_rng(seed)
    first: list[str] = []
    second: list[str] = []
    for category in sorted({key.split("/")[0] for key in corpus.files}):
        keys = sorted(key for key in corpus.files if key.startswith(category + "/"))
        rng.shuffle(keys)
        half = len(keys) // 2 + (int(rng.integers(2)) if len(keys) % 2 else 0)
        first += keys[:half]
        second += keys[half:]
    return first, second


def normalised(corpus: NabCorpus, scores: Scores, profile: str, threshold: float | None) -> float:
    part = {key: scores[key] for key in corpus.files}
    return score_profile(
        corpus, part, corpus.profiles[profile], threshold=threshold
    ).normalised_score


def best_threshold(corpus: NabCorpus, scores: Scores, profile: str) -> float:
    part = {key: scores[key] for key in corpus.files}
    return score_profile(corpus, part, corpus.profiles[profile]).threshold


def _summary(deltas: list[float]) -> str:
    d = np.array(deltas)
    return (
        f"{d.mean():+7.3f} {d.min():+7.3f} {d.max():+7.3f} "
        f"{100 * np.mean(d > 1e-9):5.0f}% {100 * np.mean(d < -1e-9):5.0f}%"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--nab-dir",
        type=Path,
        default=Path(os.environ.get("HTMENGINE_NAB_DIR", REPO.parent / "shared" / "nab")),
        help="NAB corpus with results/numenta; default $HTMENGINE_NAB_DIR or ../shared/nab",
    )
    parser.add_argument("--seeds", type=int, default=20, help="number of random file splits")
    parser.add_argument(
        "--debounce-rows",
        type=int,
        nargs="+",
        default=[DEBOUNCE_ROWS],
        help=f"debounce windows to score (default {DEBOUNCE_ROWS}, the detector's)",
    )
    args = parser.parse_args(argv)
    if not (args.nab_dir / "results" / ORACLE_DETECTOR).is_dir():
        parser.error(f"NAB results/{ORACLE_DETECTOR} not found under {args.nab_dir}")

    corpus = load_corpus(args.nab_dir)
    oracle = {key: read_oracle(args.nab_dir, key) for key in corpus.files}
    raws = {key: raw for key, (_, raw) in oracle.items()}
    baseline = final_scores(corpus, raws, FinalScorer)
    gap = max(float(np.max(np.abs(baseline[k] - oracle[k][0]))) for k in corpus.files)
    print(f"baseline FinalScorer vs published numenta anomaly_score: max |diff| {gap:.1e}")
    variants = {
        rows: final_scores(
            corpus, raws, lambda p, rows=rows: DebouncedFinalScorer(p, debounce_rows=rows)
        )
        for rows in args.debounce_rows
    }

    print("\nfull corpus (58 files), sweep optimiser")
    header = "".join(f" {'debounce ' + str(rows):>14}" for rows in variants)
    print(f"{'profile':20} {'baseline':>10}{header}")
    for profile in PROFILE_NAMES:
        cells = "".join(f" {normalised(corpus, v, profile, None):14.4f}" for v in variants.values())
        print(f"{profile:20} {normalised(corpus, baseline, profile, None):10.4f}{cells}")

    default_rows = args.debounce_rows[0]
    print(
        f"\nheld-out halves ({args.seeds} seeds x 2 halves), variant debounce {default_rows}"
        " minus baseline; threshold from the same half (NAB) or from the other half (strict)"
    )
    print(
        f"{'profile':20} {'mode':7} {'mean':>7} {'worst':>7} {'best':>7} {'wins':>6} {'loses':>6}"
    )
    tuned_lines = []
    for profile in PROFILE_NAMES:
        same_half: list[float] = []
        strict: list[float] = []
        tuned: list[float] = []
        for seed in range(args.seeds):
            first, second = split_halves(corpus, seed)
            for train_keys, test_keys in ((first, second), (second, first)):
                train, test = sub_corpus(corpus, train_keys), sub_corpus(corpus, test_keys)
                variant = variants[default_rows]
                base_test = normalised(test, baseline, profile, None)
                same_half.append(normalised(test, variant, profile, None) - base_test)
                strict.append(
                    normalised(test, variant, profile, best_threshold(train, variant, profile))
                    - normalised(test, baseline, profile, best_threshold(train, baseline, profile))
                )
                if len(variants) > 1:
                    chosen = max(
                        variants, key=lambda r: normalised(train, variants[r], profile, None)
                    )
                    tuned.append(normalised(test, variants[chosen], profile, None) - base_test)
        print(f"{profile:20} {'NAB':7} {_summary(same_half)}")
        print(f"{profile:20} {'strict':7} {_summary(strict)}")
        if tuned:
            tuned_lines.append(f"{profile:20} {'chosen':7} {_summary(tuned)}")
    if tuned_lines:
        print(
            "\ndebounce window chosen on one half among", args.debounce_rows, "scored on the other"
        )
        print("\n".join(tuned_lines))

    first, second = split_halves(corpus, 0)
    print("\nseed 0 halves, NAB protocol: baseline -> variant")
    for name, keys in (("half A", first), ("half B", second)):
        part = sub_corpus(corpus, keys)
        cells = "  ".join(
            f"{profile} {normalised(part, baseline, profile, None):.3f} -> "
            f"{normalised(part, variants[default_rows], profile, None):.3f}"
            for profile in PROFILE_NAMES
        )
        print(f"{name} ({len(keys)} files): {cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
