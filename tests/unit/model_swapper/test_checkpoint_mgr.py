"""CheckpointManager: define/load/append/save/clone/remove on a real temp directory."""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import threading
import time
from collections.abc import Iterator

import pytest

from htmengine.config import Config, ConfigError
from htmengine.exceptions import ModelAlreadyExists, ModelNotFound
from htmengine.model_swapper.checkpoint_mgr import (
    CheckpointError,
    CheckpointManager,
    TokenFaults,
    checkpoint_root,
    decode_journal,
    encode_journal_record,
    set_fault_hook,
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


def flip_digit(record: bytes) -> bytes:
    """The record with one digit of its payload changed: still valid JSON of the same shape, so
    only the CRC can tell."""
    payload_start = 10
    index = record.index(b"0.0", payload_start)
    flipped = bytearray(record)
    flipped[index] ^= 0x01  # "0" -> "1"
    json.loads(bytes(flipped[payload_start:]))  # the payload still parses
    return bytes(flipped)


def test_a_torn_journal_tail_is_dropped() -> None:
    good = encode_journal_record(["a"], rows(1))
    second = encode_journal_record(["b"], rows(1))
    for tail in (second[:-3], second[:5], flip_digit(second), b"\0" * len(second)):
        records, length = decode_journal(good + tail)
        assert [r[0] for r in records] == [["a"]] and length == len(good)


def test_a_corrupt_record_before_intact_ones_is_an_error_caught_by_the_crc() -> None:
    good = encode_journal_record(["a"], rows(1))
    with pytest.raises(CheckpointError, match="journal record at byte 0 is corrupt"):
        decode_journal(flip_digit(good) + good)


def test_one_flipped_byte_in_a_journal_makes_the_entry_unusable(mgr) -> None:
    mgr.define("m1", DEFINITION)
    checkpoint = mgr.load("m1")
    mgr.append(checkpoint, ["b1"], rows(1))
    mgr.append(checkpoint, ["b2"], rows(1, 1))
    journal = os.path.join(checkpoint.store_dir, "journal.bin")
    with open(journal, "rb") as fh:
        data = fh.read()
    first = len(encode_journal_record(["b1"], rows(1)))
    with open(journal, "wb") as fh:
        fh.write(flip_digit(data[:first]) + data[first:])
    with pytest.raises(CheckpointError, match="journal of model m1"):
        mgr.load("m1")


def test_one_flipped_digit_in_the_attributes_is_caught_by_their_crc(mgr) -> None:
    mgr.define("m1", DEFINITION)
    checkpoint = mgr.load("m1")
    mgr.save_full(checkpoint, b"blob", ["b1"], last_rowid=40)
    path = os.path.join(checkpoint.store_dir, "attributes.json")
    with open(path, "rb") as fh:
        data = fh.read()
    flipped = data.replace(b'"lastRowid": 40', b'"lastRowid": 41')
    assert flipped != data and json.loads(flipped)["lastRowid"] == 41
    with open(path, "wb") as fh:
        fh.write(flipped)
    with pytest.raises(CheckpointError, match="CRC mismatch"):
        mgr.load("m1")


def test_attributes_written_before_they_had_a_crc_still_load(mgr) -> None:
    mgr.define("m1", DEFINITION)
    checkpoint = mgr.load("m1")
    with open(os.path.join(checkpoint.store_dir, "attributes.json"), "w") as fh:
        json.dump({"batchIDs": ["old"], "lastRowid": 3}, fh)
    loaded = mgr.load("m1")
    assert loaded.batch_ids == {"old"} and loaded.last_rowid == 3


def test_a_missing_store_file_is_a_checkpoint_error(mgr) -> None:
    mgr.define("m1", DEFINITION)
    os.unlink(os.path.join(mgr.load("m1").store_dir, "attributes.json"))
    with pytest.raises(CheckpointError, match="incomplete"):
        mgr.load("m1")


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


# --- crash consistency: a crash at each step of a save (the disk as a SIGKILL there leaves it) -----


class Crash(BaseException):
    """Stands for the process dying at a fault point (not an Exception: no handler catches it)."""


@contextlib.contextmanager
def crash_at(point: str) -> Iterator[list[str]]:
    hits: list[str] = []

    def hook(name: str, model_id: str) -> None:
        if name == point and not hits:
            hits.append(model_id)
            raise Crash(point)

    previous = set_fault_hook(hook)
    try:
        yield hits
    finally:
        set_fault_hook(previous)


def entry_listing(mgr: CheckpointManager, model_id: str) -> list[str]:
    return sorted(os.listdir(mgr.entry_dir(model_id)))


def test_a_save_killed_between_rename_and_switch_does_not_block_later_saves(mgr) -> None:
    """The issue's window: store_<n+1> renamed into place, `current` not switched. Every later
    full save used to fail with ENOTEMPTY (the worker restarted forever)."""
    mgr.define("m1", DEFINITION)
    with crash_at("full.renamed"), pytest.raises(Crash):
        mgr.save_full(mgr.load("m1"), b"lost", ["b1"])
    assert "store_1" in entry_listing(mgr, "m1")  # the orphan
    checkpoint = mgr.load("m1")
    assert checkpoint.model_blob is None and checkpoint.batch_ids == set()  # as before the save
    mgr.save_full(checkpoint, b"blob", ["b1"])
    assert mgr.load("m1").model_blob == b"blob"
    assert entry_listing(mgr, "m1") == ["current", "definition.json", "store_1", "version.txt"]


SAVE_POINTS = ["full.built", "full.renamed", "full.linked", "full.switched"]
APPEND_POINTS = ["append.written", "append.synced"]


@pytest.mark.parametrize("point", SAVE_POINTS + APPEND_POINTS)
def test_a_crash_at_any_step_of_a_save_leaves_an_entry_that_loads_before_or_after(
    mgr, point
) -> None:
    mgr.define("m1", DEFINITION)
    checkpoint = mgr.load("m1")
    mgr.save_full(checkpoint, b"base", ["b0"], last_rowid=1)
    mgr.append(checkpoint, ["b1"], rows(1), last_rowid=2)
    before = (b"base", {"b0", "b1"}, rows(1), 2)
    with crash_at(point) as hits, pytest.raises(Crash):
        if point.startswith("full."):
            after = (b"next", {"b0", "b1", "b2"}, [], 3)
            mgr.save_full(checkpoint, b"next", ["b2"], last_rowid=3)
        else:
            after = (b"base", {"b0", "b1", "b2"}, rows(2), 3)
            mgr.append(checkpoint, ["b2"], rows(1, 1), last_rowid=3)
    assert hits == ["m1"]
    survivor = CheckpointManager(mgr.root)  # a new worker
    loaded = survivor.load("m1")
    state = (loaded.model_blob, loaded.batch_ids, loaded.journal_rows, loaded.last_rowid)
    # Before the switch of `current` the old state stands; from then on (and for a journal
    # record once written, fsynced or not: a process kill keeps the page cache) the new one.
    assert state == (before if point in ("full.built", "full.renamed", "full.linked") else after)
    survivor.repair("m1")
    assert os.listdir(survivor.scratch) == []
    stores = [n for n in entry_listing(survivor, "m1") if n.startswith("store_")]
    assert stores == [os.path.basename(loaded.store_dir)]
    assert not [n for n in entry_listing(survivor, "m1") if n.startswith(".")]
    # Saving goes on from what was loaded, both ways.
    survivor.append(loaded, ["b3"], rows(1, 5), last_rowid=9)
    survivor.save_full(loaded, b"later", ["b4"], last_rowid=10)
    final = survivor.load("m1")
    assert final.model_blob == b"later" and final.last_rowid == 10 and "b3" in final.batch_ids
    assert len([n for n in entry_listing(survivor, "m1") if n.startswith("store_")]) == 1


def test_a_crash_before_a_new_entry_is_in_place_leaves_only_scratch_that_repair_removes(
    mgr,
) -> None:
    with crash_at("define.built"), pytest.raises(Crash):
        mgr.define("m1", DEFINITION)
    assert not mgr.exists("m1") and len(os.listdir(mgr.scratch)) == 1
    mgr.define("m.other", DEFINITION)  # another model's leftovers are not this model's
    with crash_at("full.built"), pytest.raises(Crash):
        mgr.save_full(mgr.load("m.other"), b"x", [])
    assert mgr.repair("m1") == 1
    assert len(os.listdir(mgr.scratch)) == 1
    assert mgr.define("m1", DEFINITION) is True
    assert mgr.repair("m.other") == 1 and os.listdir(mgr.scratch) == []


def test_a_failed_write_cleans_its_own_scratch(mgr) -> None:
    mgr.define("m1", DEFINITION)

    def disk_full(name: str, model_id: str) -> None:
        if name in ("full.built", "define.built"):
            raise OSError(errno.ENOSPC, "No space left on device")

    previous = set_fault_hook(disk_full)
    try:
        with pytest.raises(OSError):
            mgr.save_full(mgr.load("m1"), b"x", [])
        with pytest.raises(OSError):
            mgr.define("m2", DEFINITION)
    finally:
        set_fault_hook(previous)
    assert os.listdir(mgr.scratch) == []
    assert mgr.load("m1").model_blob is None and not mgr.exists("m2")


def test_token_faults_fire_once_per_armed_time_and_log_it(tmp_path) -> None:
    faults = TokenFaults(str(tmp_path))
    (tmp_path / "load@m1").write_text("enospc 2")
    faults("load", "m2")  # another model: nothing
    for _ in range(2):
        with pytest.raises(OSError) as info:
            faults("load", "m1")
        assert info.value.errno == errno.ENOSPC
    faults("load", "m1")  # disarmed
    (tmp_path / "model.build@m1").write_text("nomem")
    with pytest.raises(MemoryError):
        faults("model.build", "m1")
    fired = (tmp_path / "fired").read_text().splitlines()
    assert [line.split()[:2] for line in fired] == [["load@m1", "enospc"]] * 2 + [
        ["model.build@m1", "nomem"]
    ]
    assert sorted(os.listdir(tmp_path)) == ["fired"]


def test_repair_leaves_the_stores_of_a_broken_entry_alone(mgr) -> None:
    mgr.define("m1", DEFINITION)
    checkpoint = mgr.load("m1")
    mgr.save_full(checkpoint, b"blob", ["b1"])
    entry = mgr.entry_dir("m1")
    os.rename(os.path.join(entry, "store_1"), os.path.join(entry, "store_7"))  # `current` dangles
    assert mgr.repair("m1") == 0
    assert "store_7" in os.listdir(entry)
    with pytest.raises(CheckpointError, match="incomplete"):
        mgr.load("m1")


def test_one_flipped_digit_in_the_definition_is_caught_by_the_stores_crc(mgr) -> None:
    definition = {**DEFINITION, "modelParams": {"modelConfig": {"a": 1}, "inferenceArgs": {}}}
    mgr.define("m1", definition)
    mgr.save_full(mgr.load("m1"), b"blob", ["b1"])  # a full save keeps the definition's CRC
    path = os.path.join(mgr.entry_dir("m1"), "definition.json")
    with open(path, "rb") as fh:
        data = fh.read()
    flipped = data.replace(b'"a": 1', b'"a": 3')
    assert flipped != data and json.loads(flipped)["modelParams"]["modelConfig"] == {"a": 3}
    with open(path, "wb") as fh:
        fh.write(flipped)
    with pytest.raises(CheckpointError, match="definition of model m1 is corrupt"):
        mgr.load("m1")
