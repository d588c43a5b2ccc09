"""CheckpointManager: define/load/append/save/clone/remove on a real temp directory."""

from __future__ import annotations

import contextlib
import datetime
import os
import threading
import time

import pytest

from htmengine.config import Config, ConfigError
from htmengine.exceptions import ModelAlreadyExists, ModelNotFound
from htmengine.model_swapper.checkpoint_mgr import (
    CheckpointManager,
    checkpoint_root,
    decode_journal,
    encode_journal_record,
)

T0 = datetime.datetime(2015, 6, 1, 12, 0, 0, 250)
DEFINITION = {"modelParams": {"modelConfig": {"a": 1}, "inferenceArgs": {}}, "inputSchema": []}


def rows(n: int, start: int = 0) -> list[tuple[datetime.datetime, float]]:
    return [
        (T0 + datetime.timedelta(minutes=5 * (start + i)), float(start + i) / 3) for i in range(n)
    ]


@pytest.fixture
def mgr(tmp_path) -> CheckpointManager:
    return CheckpointManager(str(tmp_path / "archive"))


def test_define_is_idempotent_and_rejects_a_different_definition(mgr) -> None:
    assert mgr.define("m1", DEFINITION) is True
    assert mgr.define("m1", dict(DEFINITION)) is False
    with pytest.raises(ModelAlreadyExists):
        mgr.define("m1", {**DEFINITION, "inputSchema": [["c0", "datetime", "T"]]})
    assert mgr.get_definition("m1") == DEFINITION
    assert mgr.model_ids() == ["m1"]


def test_fresh_entry_loads_without_a_blob(mgr) -> None:
    mgr.define("m1", DEFINITION)
    checkpoint = mgr.load("m1")
    assert checkpoint.model_blob is None
    assert checkpoint.journal_rows == [] and checkpoint.batch_ids == set()


def test_missing_model_raises_model_not_found(mgr) -> None:
    with pytest.raises(ModelNotFound):
        mgr.load("nope")
    with pytest.raises(ModelNotFound):
        mgr.clone("nope", "other")
    assert mgr.remove("nope") is False


def test_appends_are_replayed_in_order_with_their_batch_ids(mgr) -> None:
    mgr.define("m1", DEFINITION)
    checkpoint = mgr.load("m1")
    mgr.append(checkpoint, ["b1"], rows(2))
    mgr.append(checkpoint, ["b2", "b3"], rows(1, start=2))
    loaded = mgr.load("m1")
    assert loaded.journal_rows == rows(3)
    assert loaded.batch_ids == {"b1", "b2", "b3"}
    assert loaded.journal_records == 2


def test_full_save_starts_an_empty_journal_and_keeps_batch_ids(mgr) -> None:
    mgr.define("m1", DEFINITION)
    checkpoint = mgr.load("m1")
    mgr.append(checkpoint, ["b1"], rows(2))
    written = mgr.save_full(checkpoint, b"\x00blob" * 10, ["b2"])
    assert written > 50
    loaded = mgr.load("m1")
    assert loaded.model_blob == b"\x00blob" * 10
    assert loaded.journal_rows == []
    assert loaded.batch_ids == {"b1", "b2"}
    entry = mgr.entry_dir("m1")
    assert sorted(n for n in os.listdir(entry) if n.startswith("store_")) == ["store_1"]
    mgr.append(loaded, ["b3"], rows(1))
    assert mgr.load("m1").journal_rows == rows(1)


def test_torn_journal_tail_is_ignored_and_overwritten(mgr) -> None:
    mgr.define("m1", DEFINITION)
    checkpoint = mgr.load("m1")
    mgr.append(checkpoint, ["b1"], rows(1))
    journal = os.path.join(checkpoint.store_dir, "journal.bin")
    with open(journal, "ab") as fh:
        fh.write(encode_journal_record(["b2"], rows(1, 1))[:-3])  # crash mid-append
    loaded = mgr.load("m1")
    assert loaded.batch_ids == {"b1"} and loaded.journal_rows == rows(1)
    mgr.append(loaded, ["b2"], rows(1, 1))
    assert mgr.load("m1").journal_rows == rows(2)


def test_journal_decoder_stops_at_a_corrupt_record() -> None:
    good = encode_journal_record(["a"], rows(1))
    bad = bytearray(encode_journal_record(["b"], rows(1)))
    bad[-2] ^= 0xFF
    records, length = decode_journal(good + bytes(bad) + good)
    assert [r[0] for r in records] == [["a"]] and length == len(good)


def test_clone_copies_and_refuses_an_existing_target(mgr) -> None:
    mgr.define("m1", DEFINITION)
    checkpoint = mgr.load("m1")
    mgr.save_full(checkpoint, b"blob", ["b1"])
    mgr.append(checkpoint, ["b2"], rows(1))
    mgr.clone("m1", "m2")
    copy = mgr.load("m2")
    assert copy.model_blob == b"blob" and copy.journal_rows == rows(1)
    assert copy.definition == DEFINITION
    with pytest.raises(ModelAlreadyExists):
        mgr.clone("m1", "m2")


def test_remove_deletes_the_entry(mgr) -> None:
    mgr.define("m1", DEFINITION)
    assert mgr.remove("m1") is True
    assert not mgr.exists("m1") and mgr.model_ids() == []
    assert os.listdir(mgr.scratch) == []


def test_model_lock_is_exclusive_across_file_descriptors(mgr) -> None:
    with mgr.model_lock("m1") as held:
        assert held
        with mgr.model_lock("m1", blocking=False) as second:
            assert second is False
    with mgr.model_lock("m1", blocking=False) as again:
        assert again


def test_invalid_model_ids_are_refused(mgr) -> None:
    for bad in ("", "../x", ".scratch", "a/b"):
        with pytest.raises(ValueError):
            mgr.entry_dir(bad)


def test_root_must_be_absolute_after_expansion(tmp_path, monkeypatch) -> None:
    conf = tmp_path / "model-checkpoint.conf"
    conf.write_text("[storage]\nroot = ${CKPT_TEST_DIR}/models\n")
    monkeypatch.setenv("CKPT_TEST_DIR", "/data")
    assert checkpoint_root(Config("model-checkpoint.conf", str(tmp_path))) == "/data/models"
    monkeypatch.setenv("CKPT_TEST_DIR", "relative")
    with pytest.raises(ConfigError):
        checkpoint_root(Config("model-checkpoint.conf", str(tmp_path)))


def test_the_rowid_mark_survives_appends_full_saves_and_clones(mgr) -> None:
    mgr.define("m1", DEFINITION)
    checkpoint = mgr.load("m1")
    assert checkpoint.last_rowid is None
    mgr.append(checkpoint, ["b1"], rows(2), last_rowid=2)
    assert mgr.load("m1").last_rowid == 2
    mgr.append(checkpoint, ["b2"], [])  # no rows: the mark stays
    assert mgr.load("m1").last_rowid == 2
    mgr.save_full(checkpoint, b"blob", ["b3"], last_rowid=7)
    assert mgr.load("m1").last_rowid == 7
    mgr.append(checkpoint, ["b4"], rows(1), last_rowid=8)
    mgr.clone("m1", "m2")
    assert mgr.load("m1").last_rowid == 8 and mgr.load("m2").last_rowid == 8


def open_count(path: str) -> int:
    """File descriptors of this process open on `path`."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{fd}") == path
    return count


def test_a_discarded_lock_file_still_excludes_the_waiter_and_the_newcomer(mgr) -> None:
    """The holder unlinks the lock file (model deleted) while another process waits on it: the
    waiter must end up holding the path's new file, so a third one cannot take the lock too."""
    acquired, release = threading.Event(), threading.Event()

    def waiter() -> None:
        with mgr.model_lock("m1"):
            acquired.set()
            release.wait(10)

    thread = threading.Thread(target=waiter)
    with mgr.model_lock("m1") as held:
        assert held
        thread.start()
        while open_count(os.path.join(mgr.locks, "m1")) < 2:  # until the waiter has it open
            time.sleep(0.01)
        mgr.discard_lock("m1")
        assert not os.path.exists(os.path.join(mgr.locks, "m1"))
    assert acquired.wait(10)
    try:
        with mgr.model_lock("m1", blocking=False) as got:
            assert got is False
    finally:
        release.set()
        thread.join()
