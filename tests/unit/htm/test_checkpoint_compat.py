"""TM checkpoints written by an earlier version of the HTM library load and continue identically.

The earlier library is taken from git at ``WRITER_COMMIT`` (the last commit before the TM's arrays
were declared by one table) and run in a subprocess: it writes a checkpoint of a temporal memory
mid-stream, then the predictions and the checkpoint of the rest of the stream. Today's code must
write the same bytes, and continue from the old checkpoint with the same predictions to the same
final checkpoint. Move the commit forward only with a deliberate format change (and a loader for
the old format).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from htmengine.htm import serialization
from htmengine.htm.backtracking_tm import BacktrackingTM

REPO = Path(__file__).resolve().parents[3]
WRITER_COMMIT = "226e918ae088ac055bc8e3ed84498330277ef52e"
STEPS = 400
SAVE_AT = 250

# Run with the earlier library: argv = its root, the output directory, the version, the step to
# save at; stdin = the active columns of every step.
_WRITE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from htmengine.htm import backtracking_tm, serialization
assert backtracking_tm.__file__.startswith(sys.argv[1]), backtracking_tm.__file__
out, version, save_at = sys.argv[2], sys.argv[3], int(sys.argv[4])
steps = json.load(sys.stdin)
tm = backtracking_tm.BacktrackingTM(version=version)
for columns in steps[:save_at]:
    tm.compute(columns)
open(out + "/middle.ckpt", "wb").write(serialization.pack(tm.get_state(), "tm"))
predicted = [tm.compute(columns).tolist() for columns in steps[save_at:]]
open(out + "/end.ckpt", "wb").write(serialization.pack(tm.get_state(), "tm"))
json.dump(predicted, open(out + "/predicted.json", "w"))
"""


def column_stream(n: int) -> list[list[int]]:
    """Five patterns in a mostly repeating order, every ninth step a random one: sequences to
    learn, backtracks, and segments that fill up and free synapses."""
    rng = np.random.default_rng(29)
    patterns = [np.sort(rng.choice(2048, 40, replace=False)) for _ in range(5)]
    steps = []
    for i in range(n):
        if i % 9 == 8:
            columns = np.sort(rng.choice(2048, 40, replace=False))
        else:
            columns = patterns[i % 5] if i % 7 else patterns[(i * 3) % 5]
        steps.append(columns.tolist())
    return steps


@pytest.fixture(scope="session")
def writer_library(request: pytest.FixtureRequest) -> Path:
    """htmengine/htm as of WRITER_COMMIT, extracted once into pytest's cache (Numba caches the
    compiled kernels next to it, so later runs do not compile them again)."""
    name = f"htm-{WRITER_COMMIT[:12]}"
    cache = getattr(request.config, "cache", None)  # None with -p no:cacheprovider
    if cache is None:
        root = request.getfixturevalue("tmp_path_factory").mktemp(name)
    else:
        root = cache.mkdir(name)
    complete = root / ".extracted"
    if not complete.is_file():
        archive = subprocess.run(
            [
                "git",
                "-C",
                str(REPO),
                "archive",
                WRITER_COMMIT,
                "htmengine/__init__.py",
                "htmengine/htm",
            ],
            capture_output=True,
        )
        if archive.returncode != 0:
            pytest.skip(f"commit {WRITER_COMMIT[:12]} is not in this clone: {archive.stderr!r}")
        shutil.rmtree(root / "htmengine", ignore_errors=True)
        subprocess.run(["tar", "-x", "-C", str(root)], input=archive.stdout, check=True)
        complete.touch()
    return root


@pytest.mark.parametrize("version", ["0.5.6", "0.3.4"])
def test_a_checkpoint_of_the_earlier_library_loads_and_continues(
    writer_library: Path, tmp_path: Path, version: str
) -> None:
    steps = column_stream(STEPS)
    written = subprocess.run(
        [sys.executable, "-c", _WRITE, str(writer_library), str(tmp_path), version, str(SAVE_AT)],
        input=json.dumps(steps),
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": ""},
        capture_output=True,
    )
    assert written.returncode == 0, written.stderr
    old_middle = (tmp_path / "middle.ckpt").read_bytes()
    old_predicted = json.loads((tmp_path / "predicted.json").read_text())
    old_end = (tmp_path / "end.ckpt").read_bytes()

    tm = BacktrackingTM(version=version)
    for columns in steps[:SAVE_AT]:
        tm.compute(np.asarray(columns))
    assert serialization.pack(tm.get_state(), "tm") == old_middle, "the checkpoint changed"

    loaded = BacktrackingTM.from_state(serialization.unpack(old_middle, "tm"))
    assert loaded.n_synapses > 0
    predicted = [loaded.compute(np.asarray(columns)).tolist() for columns in steps[SAVE_AT:]]
    assert predicted == old_predicted
    assert serialization.pack(loaded.get_state(), "tm") == old_end
