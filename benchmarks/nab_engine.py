"""NAB through the engine's live path: what a user of htmengine gets, without look-ahead.

    python benchmarks/nab_engine.py [--nab-dir ../shared/nab] [--profiles htmengine ...]
                                    [--workers N] [--only SUBSTRING ...] [--out DIR]
    python benchmarks/nab_engine.py --live [--only SUBSTRING ...]    # check against the suite

In-process mode runs every NAB file through exactly the code the suite runs for a metric monitored
without min/max: the storer's scrubbing rule (a row not newer than the previous one is dropped and
never scored), the activation's range rule and model params (``engine.swarm_params``), the slot
runner's model (built from the stored definition as ``model_runner`` does), the anomaly service's
likelihood helper (``AnomalyLikelihoodHelper.for_profile``, state carried between result batches
as JSON, exactly as in ``metric.model_params``) and its display value. Result batches have the
suite's sizes: the backlog in ``[metric_streamer] chunk_size`` chunks, then the listener's
``batch_max_lines`` per storer commit. Results go to ``<out>/engine_<profile>/...`` in NAB's
layout and are scored by ``htmengine.evaluation.nab``; a row the storer dropped scores 0 there
(the engine gave it none).

The no-look-ahead rule: a row's score depends only on that row and the rows before it. The model's
range comes from the metric's first rows (the rows stored when the ``htmengine`` profile's
activation ran: modelled as the listener's first batch; exactly the first 288 rows in every other
profile), never from the file's min/max or length, and one parameter set serves every file.

``--live`` feeds a few files through the running suite (a throw-away app on the shared MariaDB and
RabbitMQ: ``tests/support/app.py``): ``htmengine monitor NAME`` without min/max, ``htmengine send
FILE``, scores read back from MySQL, and asserts that the in-process scores equal them row for row.
"""

from __future__ import annotations

import argparse
import calendar
import copy
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing import Pool
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from htmengine.engine.swarm_params import (  # noqa: E402
    MODEL_CREATION_RECORD_THRESHOLD,
    generate_swarm_params,
    model_range,
)
from htmengine.evaluation.nab import (  # noqa: E402
    PROFILE_NAMES,
    DataFile,
    NabCorpus,
    load_corpus,
    published_scores,
    result_path,
    score_profile,
)
from htmengine.model_swapper.model_runner import (  # noqa: E402
    default_model_class,
    definition_from_args,
)
from htmengine.runtime.anomaly_likelihood_helper import (  # noqa: E402
    PROFILES,
    AnomalyLikelihoodHelper,
    ScoredRow,
    rescale_for_display,
)
from htmengine.runtime.metric_streamer import scrub, to_datetime  # noqa: E402

# The suite's sizes (conf/application.conf): model request chunks and listener batches.
CHUNK_SIZE = 1440
LISTENER_BATCH_LINES = 1000
PUBLISHED = ("numenta", "ARTime", "windowedGaussian")


@dataclass
class FileRun:
    """One file through the live path: per file row, the engine's outputs (0 where dropped)."""

    key: str
    profile: str
    anomaly_scores: np.ndarray
    raw_scores: np.ndarray
    display_values: np.ndarray
    stored: np.ndarray  # bool per file row: kept by the storer's scrubbing rule
    encoder_range: tuple[float, float]
    model_seconds: float = 0.0
    scoring_seconds: float = 0.0
    batches: list[int] = field(default_factory=list)


def stored_rows(data_file: DataFile) -> tuple[list[int], list[tuple[int, float]]]:
    """The file rows the storer keeps (indices) and their samples, as the suite would store them."""
    samples = [
        (calendar.timegm(datetime.strptime(ts, "%Y-%m-%d %H:%M:%S").timetuple()), float(v))
        for ts, v in zip(data_file.timestamps, data_file.values.tolist(), strict=True)
    ]
    kept, _, _ = scrub(samples, None)
    indices = []
    position = 0
    for i, sample in enumerate(samples):
        if position < len(kept) and sample is kept[position]:
            indices.append(i)
            position += 1
    return indices, kept


def activation_rows(profile: str, n_rows: int, listener_batch: int = LISTENER_BATCH_LINES) -> int:
    """Rows stored when the metric's activation reads them.

    The ``htmengine`` profile takes every stored row, which depends on timing; here it is the
    listener's first batch (what a replay with ``htmengine send`` commits first). The other
    profiles read exactly the first 288 rows whatever is stored.
    """
    if PROFILES[profile].range_rows is None:
        return min(n_rows, max(listener_batch, MODEL_CREATION_RECORD_THRESHOLD))
    return min(n_rows, MODEL_CREATION_RECORD_THRESHOLD)


def result_batches(n_rows: int, backlog: int, chunk_size: int, listener_batch: int) -> list[int]:
    """Sizes of the model's result batches: the backlog in chunks, then one per storer commit."""
    sizes = []
    for start in range(0, backlog, chunk_size):
        sizes.append(min(chunk_size, backlog - start))
    for start in range(backlog, n_rows, listener_batch):
        end = min(n_rows, start + listener_batch)
        sizes.extend(min(chunk_size, end - s) for s in range(start, end, chunk_size))
    return sizes


def run_file(
    data_file: DataFile,
    profile: str,
    model_config: dict | None = None,
    raw_scores: np.ndarray | None = None,
    listener_batch: int = LISTENER_BATCH_LINES,
    chunk_size: int = CHUNK_SIZE,
) -> FileRun:
    """One file through the live path of `profile`.

    `model_config` overrides the model the activation defines (``--live`` checks profile
    ``htmengine`` with the model its timing-dependent activation chose); `raw_scores` (per stored
    row) skips the HTM model, for scoring studies on raw scores already computed.
    """
    indices, samples = stored_rows(data_file)
    n = len(samples)
    values = [value for _, value in samples]
    backlog = activation_rows(profile, n, listener_batch)
    encoder_range = model_range(values[:backlog])
    if model_config is None:
        swarm_params = generate_swarm_params(*encoder_range)
        definition = definition_from_args(json.loads(json.dumps(swarm_params)))
        model_config = definition["modelParams"]["modelConfig"]
    else:
        encoder_range = (float("nan"), float("nan"))
    version = model_config["nupicVersion"]
    helper = AnomalyLikelihoodHelper.for_profile(profile)

    raws = np.empty(n)
    model_seconds = 0.0
    if raw_scores is None:
        model = default_model_class()(model_config)
        started = time.process_time()
        for i, (seconds, value) in enumerate(samples):
            raws[i] = float(model.run(to_datetime(seconds), value))
        model_seconds = time.process_time() - started
    else:
        raws[:] = raw_scores

    scores = np.zeros(n)
    history: list[ScoredRow] = []
    state_json: str | None = None
    batches = result_batches(n, backlog, chunk_size, listener_batch)
    started = time.process_time()
    start = 0
    for size in batches:
        rows = [
            ScoredRow(
                rowid=i + 1,
                timestamp=to_datetime(samples[i][0]),
                value=samples[i][1],
                raw_anomaly_score=float(raws[i]),
            )
            for i in range(start, start + size)
        ]
        state = helper.update_scores(
            rows,
            None if state_json is None else json.loads(state_json),
            lambda limit: history[-limit:],
            version=version,
        )
        state_json = None if state is None else json.dumps(state)
        for row in rows:
            scores[row.rowid - 1] = row.anomaly_score
        history.extend(rows)
        start += size
    scoring_seconds = time.process_time() - started

    full_scores = np.zeros(data_file.n_rows)
    full_raws = np.zeros(data_file.n_rows)
    full_display = np.zeros(data_file.n_rows, dtype=np.int64)
    stored = np.zeros(data_file.n_rows, dtype=bool)
    full_scores[indices] = scores
    full_raws[indices] = raws
    full_display[indices] = [rescale_for_display(float(s)) for s in scores]
    stored[indices] = True
    return FileRun(
        key=data_file.key,
        profile=profile,
        anomaly_scores=full_scores,
        raw_scores=full_raws,
        display_values=full_display,
        stored=stored,
        encoder_range=(float(encoder_range[0]), float(encoder_range[1])),
        model_seconds=model_seconds,
        scoring_seconds=scoring_seconds,
        batches=batches,
    )


def _run_job(job: tuple[DataFile, str, np.ndarray | None]) -> FileRun:
    data_file, profile, raws = job
    return run_file(data_file, profile, raw_scores=raws)


def model_config_of(swarm_params: dict) -> dict:
    """The modelConfig a slot runner builds its model from (via the stored definition)."""
    return definition_from_args(json.loads(json.dumps(swarm_params)))["modelParams"]["modelConfig"]


def write_results(run: FileRun, data_file: DataFile, out_dir: Path) -> Path:
    """One NAB result file (timestamp, value, anomaly_score, raw_score, display_value, stored,
    label); ``label`` is 1 inside an anomaly window, as in NAB's own outputs."""
    labels = np.zeros(data_file.n_rows, dtype=int)
    for left, right in data_file.windows:
        labels[left : right + 1] = 1
    path = result_path(out_dir, detector_name(run.profile), data_file.key)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["timestamp", "value", "anomaly_score", "raw_score", "display_value", "stored", "label"]
        )
        writer.writerows(
            zip(
                data_file.timestamps,
                data_file.values.tolist(),
                run.anomaly_scores.tolist(),
                run.raw_scores.tolist(),
                run.display_values.tolist(),
                run.stored.astype(int).tolist(),
                labels.tolist(),
                strict=True,
            )
        )
    return path


def detector_name(profile: str) -> str:
    return f"engine_{profile}"


def read_raw_scores(out_dir: Path, profile: str, data_file: DataFile) -> np.ndarray | None:
    """The raw scores (stored rows only) of an earlier run of a profile, if its file exists."""
    path = result_path(out_dir, detector_name(profile), data_file.key)
    if not path.exists():
        return None
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if len(rows) != data_file.n_rows:
        return None
    return np.array([float(r["raw_score"]) for r in rows if r["stored"] == "1"])


# --- scoring and report ----------------------------------------------------------------------------

SHORT = {"standard": "standard", "reward_low_FP_rate": "low_FP", "reward_low_FN_rate": "low_FN"}


def sub_corpus(corpus: NabCorpus, keys: Sequence[str]) -> NabCorpus:
    part = copy.copy(corpus)
    part.files = {key: corpus.files[key] for key in sorted(keys)}
    return part


def split_halves(corpus: NabCorpus, seed: int) -> tuple[list[str], list[str]]:
    """Two halves of the files, each category split as evenly as possible (as
    benchmarks/nab_postprocess.py splits them)."""
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


def nab_scores(
    corpus: NabCorpus, scores: dict[str, np.ndarray], threshold: dict[str, float] | None = None
) -> dict[str, tuple[float, float]]:
    """profile -> (normalised score, threshold) on the corpus' files (threshold optimised on
    them unless given)."""
    part = {key: scores[key] for key in corpus.files}
    out = {}
    for name in PROFILE_NAMES:
        result = score_profile(
            corpus,
            part,
            corpus.profiles[name],
            threshold=None if threshold is None else threshold[name],
        )
        out[name] = (result.normalised_score, result.threshold)
    return out


def read_published(corpus: NabCorpus, detector: str) -> dict[str, np.ndarray] | None:
    """A published detector's per-row scores (results/<detector>), if the corpus has them."""
    scores = {}
    for key, data_file in corpus.files.items():
        path = result_path(corpus.root / "results", detector, key)
        if not path.exists():
            return None
        with path.open(newline="") as handle:
            column = [float(r["anomaly_score"]) for r in csv.DictReader(handle)]
        if len(column) != data_file.n_rows:
            return None
        scores[key] = np.array(column)
    return scores


def report(
    corpus: NabCorpus,
    results: dict[str, dict[str, np.ndarray]],
    costs: dict[str, tuple[float, float, int]],
    seeds: int,
) -> list[str]:
    """The printed comparison; returns the final ``live NAB`` lines."""
    complete = all(len(scores) == len(corpus.files) for scores in results.values())
    print("\nno look-ahead: each row's score depends on that row and the rows before it only; the")
    print("model's range comes from the metric's first rows, one parameter set serves every file")
    print("(published detectors below had NAB's look-ahead: the file's min/max and length)")
    print("\ncost per row (CPU time of this process; model = HTM, scoring = likelihood helper)")
    print(f"{'profile':12} {'model us':>9} {'scoring us':>11} {'total us':>9} {'rows':>8}")
    for profile, (model_s, scoring_s, rows) in costs.items():
        model = f"{1e6 * model_s / rows:9.1f}" if model_s else f"{'reused':>9}"
        print(
            f"{profile:12} {model} {1e6 * scoring_s / rows:11.1f} "
            f"{1e6 * (model_s + scoring_s) / rows:9.1f} {rows:8d}"
        )
    if not complete:
        print("\nNAB scores need all 58 files; run without --only to get them.")
        return []

    published = published_scores(corpus)
    whole = {profile: nab_scores(corpus, scores) for profile, scores in results.items()}
    print("\nNAB v1.1 scores, whole corpus (threshold optimised per profile, as NAB does)")
    header = "".join(f" {SHORT[name]:>9}" for name in PROFILE_NAMES)
    print(f"{'detector':26}{header}")
    for profile, figures in whole.items():
        cells = "".join(f" {figures[name][0]:9.2f}" for name in PROFILE_NAMES)
        print(f"{'live ' + profile:26}{cells}")
    for detector in PUBLISHED:
        cells = "".join(f" {published[detector][name]:9.2f}" for name in PROFILE_NAMES)
        print(f"{detector + ' (published)':26}{cells}")

    print(
        "\nper-category sub-scores, standard profile, at the whole corpus' threshold"
        " (a category without windows: its raw score, the cost of its false alarms)"
    )
    categories = sorted({key.split("/")[0] for key in corpus.files})
    columns = {f"live {profile}": scores for profile, scores in results.items()}
    whole_by_column = {f"live {profile}": figures for profile, figures in whole.items()}
    for detector in PUBLISHED:
        scores = read_published(corpus, detector)
        if scores is not None:
            columns[detector] = scores
    print(f"{'category':24}" + "".join(f" {name[:16]:>16}" for name in columns))
    thresholds = {
        name: (whole_by_column[name]["standard"][1] if name in whole_by_column else None)
        for name in columns
    }
    for category in categories:
        part = sub_corpus(corpus, [k for k in corpus.files if k.startswith(category + "/")])
        cells = []
        for name, scores in columns.items():
            threshold = thresholds[name]
            if threshold is None:
                threshold = nab_scores(corpus, scores)["standard"][1]
                thresholds[name] = threshold
            if part.n_windows:
                value = nab_scores(part, scores, {p: threshold for p in PROFILE_NAMES})
                cells.append(f" {value['standard'][0]:16.2f}")
            else:
                raw = score_profile(
                    part,
                    {k: scores[k] for k in part.files},
                    corpus.profiles["standard"],
                    threshold=threshold,
                ).raw_score
                cells.append(f" {f'({raw:.2f})':>16}")
        print(f"{category:24}" + "".join(cells))

    if seeds:
        print(
            f"\nheld-out halves ({seeds} seeds x 2, files split by category): mean [min, max] of"
            " each half's score, threshold from the same half (NAB) / from the other half (strict)"
        )
        print(f"{'profile':12} {'mode':7}" + "".join(f" {SHORT[n]:>22}" for n in PROFILE_NAMES))
        for profile, scores in results.items():
            same: dict[str, list[float]] = {n: [] for n in PROFILE_NAMES}
            strict: dict[str, list[float]] = {n: [] for n in PROFILE_NAMES}
            for seed in range(seeds):
                halves = split_halves(corpus, seed)
                for train_keys, test_keys in (halves, halves[::-1]):
                    train, test = sub_corpus(corpus, train_keys), sub_corpus(corpus, test_keys)
                    on_train = nab_scores(train, scores)
                    on_test = nab_scores(test, scores)
                    held = nab_scores(test, scores, {n: on_train[n][1] for n in PROFILE_NAMES})
                    for n in PROFILE_NAMES:
                        same[n].append(on_test[n][0])
                        strict[n].append(held[n][0])
            for mode, values in (("NAB", same), ("strict", strict)):
                cells = "".join(
                    f" {np.mean(values[n]):6.2f} [{min(values[n]):6.2f},{max(values[n]):6.2f}]"
                    for n in PROFILE_NAMES
                )
                print(f"{profile:12} {mode:7}{cells}")
        first, second = split_halves(corpus, 0)
        for label, keys in (("half A", first), ("half B", second)):
            part = sub_corpus(corpus, keys)
            cells = "  ".join(
                f"{profile} " + " / ".join(f"{v[0]:.2f}" for v in nab_scores(part, scores).values())
                for profile, scores in results.items()
            )
            print(f"seed 0 {label} ({len(keys)} files): {cells}")

    lines = [
        f"live NAB {profile}: standard {f['standard'][0]:.2f} "
        f"low_FP {f['reward_low_FP_rate'][0]:.2f} low_FN {f['reward_low_FN_rate'][0]:.2f}"
        for profile, f in whole.items()
    ]
    print()
    for line in lines:
        print(line)
    return lines


def cost_side_by_side(
    data_file: DataFile, raws: np.ndarray, profiles: Sequence[str], repeats: int = 3
) -> dict[str, float]:
    """CPU microseconds per row of each profile's scoring path (likelihood helper, state through
    JSON, display value) on the same raw scores, runs interleaved so load hits all alike."""
    best = {profile: float("inf") for profile in profiles}
    for _ in range(repeats):
        for profile in profiles:
            run = run_file(data_file, profile, raw_scores=raws)
            best[profile] = min(best[profile], 1e6 * run.scoring_seconds / int(run.stored.sum()))
    return best


def run_in_process(
    corpus: NabCorpus,
    profiles: Sequence[str],
    keys: Sequence[str],
    out_dir: Path,
    workers: int,
    reuse_raw: bool,
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, tuple[float, float, int]]]:
    """Every (file, profile) through the live path; results written under `out_dir`."""
    jobs = []
    for profile in profiles:
        for key in sorted(keys, key=lambda k: -corpus.files[k].n_rows):
            raws = read_raw_scores(out_dir, profile, corpus.files[key]) if reuse_raw else None
            jobs.append((corpus.files[key], profile, raws))
    results: dict[str, dict[str, np.ndarray]] = {p: {} for p in profiles}
    costs = {p: [0.0, 0.0, 0] for p in profiles}
    started = time.perf_counter()
    with Pool(processes=workers) as pool:
        for run in pool.imap_unordered(_run_job, jobs):
            results[run.profile][run.key] = run.anomaly_scores
            cost = costs[run.profile]
            cost[0] += run.model_seconds
            cost[1] += run.scoring_seconds
            cost[2] += int(run.stored.sum())
            write_results(run, corpus.files[run.key], out_dir)
            print(
                f"{run.profile:10} {run.key:60} range [{run.encoder_range[0]:.6g}, "
                f"{run.encoder_range[1]:.6g}] model {run.model_seconds:6.1f} s "
                f"scoring {run.scoring_seconds:5.1f} s",
                flush=True,
            )
    print(f"wall {time.perf_counter() - started:.0f} s for {len(jobs)} file runs")
    return results, {p: (c[0], c[1], c[2]) for p, c in costs.items()}


# --- live: the running suite -----------------------------------------------------------------------

SUITE_PROGRAMS = ["model_scheduler", "metric_listener", "metric_storer", "anomaly_service"]


@dataclass
class LiveRows:
    """What the suite stored and scored for one metric, in rowid order."""

    timestamps: list[datetime]
    values: list[float]
    raw_scores: list[float]
    anomaly_scores: list[float]
    display_values: list[int]
    model_config: dict


def _cli(*args: str) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    subprocess.run([sys.executable, "-m", "htmengine.cli", *args], check=True, env=env)


def feed_and_read(csv_path: Path, name: str, expected_rows: int, timeout: float) -> LiveRows:
    """``htmengine monitor NAME`` (no min/max), ``htmengine send``, then wait for every stored
    row to be scored and read the rows and the model's definition back from MySQL."""
    from htmengine.repository import get_engine, queries
    from htmengine.repository.schema import metric_data

    _cli("monitor", name)
    _cli("send", str(csv_path), "--metric", name, "--wait", "120")
    engine = get_engine()
    deadline = time.monotonic() + timeout
    while True:
        with engine.connect() as conn:
            uid = queries.get_custom_metric_by_name(conn, name).uid
            stored = queries.get_metric_data_count(conn, uid)
            scored = len(
                queries.get_metric_data(
                    conn, uid, (metric_data.c.rowid,), score=0.0, processed=True
                )
            )
        if stored == expected_rows and scored == expected_rows:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name}: {scored} of {stored} rows scored after {timeout:.0f} s")
        time.sleep(2.0)
    with engine.connect() as conn:
        rows = queries.get_metric_data(
            conn,
            uid,
            (
                metric_data.c.timestamp,
                metric_data.c.metric_value,
                metric_data.c.raw_anomaly_score,
                metric_data.c.anomaly_score,
                metric_data.c.display_value,
            ),
        )
        model_params = json.loads(queries.get_metric(conn, uid, ("model_params",)).model_params)
    return LiveRows(
        timestamps=[r.timestamp for r in rows],
        values=[r.metric_value for r in rows],
        raw_scores=[r.raw_anomaly_score for r in rows],
        anomaly_scores=[r.anomaly_score for r in rows],
        display_values=[r.display_value for r in rows],
        model_config=model_params["modelConfig"],
    )


def compare_live(data_file: DataFile, profile: str, live: LiveRows) -> list[str]:
    """Differences between the suite's rows and the in-process run (empty: equal row for row).

    Outside profile htmengine the model itself must be the one the in-process run defines; in
    profile htmengine its range depends on timing, so the in-process run takes the live model.
    """
    problems = []
    indices, samples = stored_rows(data_file)
    if [(to_datetime(s), v) for s, v in samples] != list(
        zip(live.timestamps, live.values, strict=True)
    ):
        problems.append("stored rows differ from the scrubbed file")
        return problems
    override = None
    if PROFILES[profile].range_rows is None:
        override = live.model_config
    run = run_file(data_file, profile, model_config=override)
    if override is None:
        values = [v for _, v in samples]
        expected = model_config_of(
            generate_swarm_params(*model_range(values[: activation_rows(profile, len(values))]))
        )
        if expected != live.model_config:
            problems.append("the suite defined another model than the in-process run")
    for label, ours, theirs in (
        ("raw_anomaly_score", run.raw_scores[indices], live.raw_scores),
        ("anomaly_score", run.anomaly_scores[indices], live.anomaly_scores),
        ("display_value", run.display_values[indices], live.display_values),
    ):
        differs = np.flatnonzero(np.asarray(ours, dtype=float) != np.asarray(theirs, dtype=float))
        if differs.size:
            problems.append(f"{label}: {differs.size} rows differ, first rowid {differs[0] + 1}")
    return problems


def run_live(
    corpus: NabCorpus, profiles: Sequence[str], keys: Sequence[str], timeout: float
) -> bool:
    """Each profile in its own throw-away app on the shared servers; True if all rows agree."""
    from htmengine.repository import migrate
    from tests.support.app import Supervisor, create_test_app, drop_database, start_servers

    start_servers()
    agree = True
    for profile in profiles:
        with tempfile.TemporaryDirectory(prefix="nab_engine_") as tmp:
            app = create_test_app(Path(tmp))
            app.override("application.conf", {"anomaly_likelihood": {"profile": profile}})
            migrate.upgrade()
            supervisor = Supervisor(app, SUITE_PROGRAMS)
            try:
                supervisor.start()
                for key in keys:
                    data_file = corpus.files[key]
                    name = "nab." + key.removesuffix(".csv").replace("/", ".")
                    started = time.perf_counter()
                    live = feed_and_read(
                        corpus.root / "data" / key, name, len(stored_rows(data_file)[1]), timeout
                    )
                    problems = compare_live(data_file, profile, live)
                    agree = agree and not problems
                    verdict = "; ".join(problems) if problems else "equal row for row"
                    print(
                        f"live {profile:10} {key:55} {len(live.values):6d} rows in "
                        f"{time.perf_counter() - started:5.0f} s: {verdict}",
                        flush=True,
                    )
            finally:
                supervisor.stop()
                drop_database(app)
    return agree


# --- command line ----------------------------------------------------------------------------------

LIVE_DEFAULT_FILES = (
    "artificialWithAnomaly/art_daily_jumpsup.csv",
    "realAWSCloudwatch/ec2_cpu_utilization_fe7f93.csv",
    "realTraffic/speed_7578.csv",
)


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
    parser.add_argument("--profiles", nargs="+", default=sorted(PROFILES), choices=sorted(PROFILES))
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--only", nargs="*", default=None, help="run only files whose key contains one of these"
    )
    parser.add_argument(
        "--reuse-raw",
        action="store_true",
        help="take raw scores from the profile's results of an earlier run in --out (scoring only)",
    )
    parser.add_argument("--seeds", type=int, default=20, help="held-out half splits (0: none)")
    parser.add_argument(
        "--live",
        action="store_true",
        help=f"feed files (default {', '.join(LIVE_DEFAULT_FILES)}) through the running suite",
    )
    parser.add_argument("--live-timeout", type=float, default=1800.0)
    args = parser.parse_args(argv)
    if not (args.nab_dir / "data").is_dir():
        parser.error(f"NAB corpus not found at {args.nab_dir} (use --nab-dir or HTMENGINE_NAB_DIR)")
    corpus = load_corpus(args.nab_dir)
    default = LIVE_DEFAULT_FILES if args.live else tuple(corpus.files)
    keys = [
        key
        for key in corpus.files
        if (key in default if args.only is None else any(part in key for part in args.only))
    ]
    if not keys:
        parser.error("no data file matches --only")
    if args.live:
        return 0 if run_live(corpus, args.profiles, keys, args.live_timeout) else 1
    print(f"{len(keys)} files, profiles {', '.join(args.profiles)}, {args.workers} workers")
    results, costs = run_in_process(
        corpus, args.profiles, keys, args.out, args.workers, args.reuse_raw
    )
    largest = max(keys, key=lambda k: corpus.files[k].n_rows)
    raws = read_raw_scores(args.out, args.profiles[0], corpus.files[largest])
    if raws is not None:
        side = cost_side_by_side(corpus.files[largest], raws, args.profiles)
        print(f"\nscoring path side by side on {largest} (same raw scores, best of 3, us/row):")
        base = side.get("htmengine")
        for profile, micros in side.items():
            ratio = f" ({micros / base:.2f} x htmengine)" if base else ""
            print(f"  {profile:10} {micros:8.1f}{ratio}")
    report(corpus, results, costs, args.seeds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
