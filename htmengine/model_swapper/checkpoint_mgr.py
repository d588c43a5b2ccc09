"""The on-disk archive of model definitions and checkpoints (no pickle anywhere).

Layout under the root of model-checkpoint.conf ``[storage] root``::

    <root>/.scratch/                    temp area on the same filesystem (atomic renames)
    <root>/.locks/<modelID>             flock()ed by the one runner that has the model loaded;
                                        unlinked (by its holder) when the model is deleted
    <root>/<modelID>/version.txt        archive entry format, "htmengine-1"
    <root>/<modelID>/definition.json    {"modelParams": {"modelConfig", "inferenceArgs"},
                                         "inputSchema": [[name, type, special], ...]}
    <root>/<modelID>/current            symlink to the active store directory
    <root>/<modelID>/store_<n>/model.bin        ScalarAnomalyModel.save() blob (absent: a model
                                                freshly built from the definition)
    <root>/<modelID>/store_<n>/attributes.json  {"batchIDs": [...], "lastRowid": n} folded
                                                into model.bin
    <root>/<modelID>/store_<n>/journal.bin      input rows since model.bin, appended per run

A *full* save writes a new store in ``.scratch`` (fsync each file and the directory), renames it
into the entry, fsyncs the entry, swaps the ``current`` symlink atomically (temp link + rename),
fsyncs again and only then deletes the old store. An *incremental* save appends one framed record
(batch ids + rows) to the active store's journal and fsyncs it: a few hundred bytes instead of the
whole model. A load replays the journal's rows through the model, so the two are equivalent.

Journal record: ``b"HJ" | u32 payload length | u32 crc32(payload) | payload`` (big-endian), payload
= UTF-8 JSON ``{"b": [batch ids], "r": [[epoch seconds, microseconds, value], ...], "w": n}``. A
torn or corrupt tail (crash mid-append) ends the journal; its run was never acked, so the broker
delivers it again, and the next append overwrites the tail.

``lastRowid`` / ``"w"`` is the highest input rowid folded into the model so far (absent: none). The
runner skips input rows at or below it: rows reach a model in rowid order, so a row at or below
the mark was already run (a re-forward after a storer crash, a repeated activation hand-off).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import shutil
import struct
import time
import uuid
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from htmengine.config import Config, ConfigError, get_checkpoint_config
from htmengine.exceptions import ModelAlreadyExists, ModelNotFound

ENTRY_FORMAT = "htmengine-1"

_SCRATCH = ".scratch"
_LOCKS = ".locks"
_VERSION_FILE = "version.txt"
_DEFINITION_FILE = "definition.json"
_CURRENT_LINK = "current"
_STORE_PREFIX = "store_"
_MODEL_FILE = "model.bin"
_ATTRIBUTES_FILE = "attributes.json"
_JOURNAL_FILE = "journal.bin"

_RECORD_MAGIC = b"HJ"
_RECORD_HEADER = struct.Struct(">2sII")

# How many recent batch ids a full save keeps for de-duplication. Only the batches of the last
# unacknowledged run can come back, so a few hundred is ample.
MAX_REMEMBERED_BATCH_IDS = 1000

_EPOCH = datetime.datetime(1970, 1, 1)

InputRow = tuple[datetime.datetime, float]


class CheckpointError(Exception):
    """An archive entry that cannot be read (bad version, unreadable definition)."""


@dataclass
class Checkpoint:
    """What a runner needs to restore a model: the base blob plus the journal to replay."""

    model_id: str
    definition: dict
    model_blob: bytes | None
    batch_ids: set[str]
    journal_rows: list[InputRow]
    store_dir: str
    journal_length: int
    journal_records: int = 0
    bytes_read: int = 0
    batch_id_history: list[str] = field(default_factory=list)
    last_rowid: int | None = None


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: str, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _row_state(row: InputRow) -> list:
    when, value = row
    delta = when - _EPOCH
    seconds = delta.days * 86400 + delta.seconds
    return [seconds, delta.microseconds, value]


def _row_from_state(state: Sequence) -> InputRow:
    seconds, microseconds, value = state
    return _EPOCH + datetime.timedelta(seconds=seconds, microseconds=microseconds), value


def encode_journal_record(
    batch_ids: Sequence[str], rows: Sequence[InputRow], last_rowid: int | None = None
) -> bytes:
    """One framed journal record (`last_rowid`: the model's input rowid mark after it)."""
    state: dict = {"b": list(batch_ids), "r": [_row_state(row) for row in rows]}
    if last_rowid is not None:
        state["w"] = last_rowid
    payload = json.dumps(state, separators=(",", ":")).encode("utf-8")
    return _RECORD_HEADER.pack(_RECORD_MAGIC, len(payload), zlib.crc32(payload)) + payload


def decode_journal(
    data: bytes,
) -> tuple[list[tuple[list[str], list[InputRow], int | None]], int]:
    """The intact records of a journal, as (batch ids, rows, rowid mark), and the byte length
    they cover (a torn tail is dropped)."""
    records = []
    offset = 0
    while offset + _RECORD_HEADER.size <= len(data):
        magic, length, crc = _RECORD_HEADER.unpack_from(data, offset)
        start = offset + _RECORD_HEADER.size
        payload = data[start : start + length]
        if magic != _RECORD_MAGIC or len(payload) != length or zlib.crc32(payload) != crc:
            break
        try:
            state = json.loads(payload)
            rows = [_row_from_state(row) for row in state["r"]]
            batch_ids = [str(b) for b in state["b"]]
            mark = state.get("w")
            last_rowid = int(mark) if mark is not None else None
        except (ValueError, KeyError, TypeError):
            break
        records.append((batch_ids, rows, last_rowid))
        offset = start + length
    return records, offset


def checkpoint_root(config: Config | None = None) -> str:
    """The archive root of model-checkpoint.conf, with env vars and ~ expanded; must be absolute."""
    config = config if config is not None else get_checkpoint_config()
    raw = config.get("storage", "root")
    root = os.path.expandvars(os.path.expanduser(raw))
    if not os.path.isabs(root):
        raise ConfigError(
            f"{config.path}: [storage] root = {raw!r} expands to {root!r}, which is not absolute"
        )
    return os.path.normpath(root)


class CheckpointManager:
    """Atomic operations on the archive; safe across processes (one writer per model at a time,
    which the runner's model lock guarantees)."""

    def __init__(self, root: str | None = None) -> None:
        self.root = root if root is not None else checkpoint_root()
        self.scratch = os.path.join(self.root, _SCRATCH)
        self.locks = os.path.join(self.root, _LOCKS)
        os.makedirs(self.scratch, exist_ok=True)
        os.makedirs(self.locks, exist_ok=True)

    # --- paths ------------------------------------------------------------------------------------

    def entry_dir(self, model_id: str) -> str:
        if not model_id or "/" in model_id or model_id.startswith(".") or "\0" in model_id:
            raise ValueError(f"invalid model id {model_id!r}")
        return os.path.join(self.root, model_id)

    def _scratch_path(self, hint: str) -> str:
        return os.path.join(self.scratch, f"{hint}.{uuid.uuid4().hex}")

    def exists(self, model_id: str) -> bool:
        return os.path.isfile(os.path.join(self.entry_dir(model_id), _DEFINITION_FILE))

    def model_ids(self) -> list[str]:
        """Ids of every archived model."""
        return sorted(
            name for name in os.listdir(self.root) if not name.startswith(".") and self.exists(name)
        )

    # --- locking ----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def model_lock(self, model_id: str, blocking: bool = True) -> Iterator[bool]:
        """Hold the model's exclusive lock: one runner per model across processes (an orphaned
        worker of a killed scheduler finishes its run before a new one may load the model).
        Yields False when `blocking` is False and another process holds it.

        The holder may unlink the lock file (`discard_lock`, after deleting the model). A process
        that was waiting then holds the lock of an unlinked file, which no longer excludes anyone:
        so after every acquisition the file at the path must still be the one locked, else the
        lock is dropped and taken again on the path's current file.
        """
        self.entry_dir(model_id)  # validates the id
        path = self._lock_path(model_id)
        flags = fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                try:
                    fcntl.flock(fd, flags)
                except OSError as exc:
                    if exc.errno in (errno.EAGAIN, errno.EACCES):
                        yield False
                        return
                    raise
                try:
                    if not self._is_current_lock_file(fd, path):
                        continue  # unlinked by its previous holder: lock the new file
                    yield True
                    return
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def _lock_path(self, model_id: str) -> str:
        return os.path.join(self.locks, model_id)

    @staticmethod
    def _is_current_lock_file(fd: int, path: str) -> bool:
        try:
            on_path = os.stat(path)
        except FileNotFoundError:
            return False
        held = os.fstat(fd)
        return (held.st_dev, held.st_ino) == (on_path.st_dev, on_path.st_ino)

    def discard_lock(self, model_id: str) -> None:
        """Unlink a deleted model's lock file. Only while holding the model's lock (`model_lock`
        re-checks the file after acquiring it, so waiters move on to a new file)."""
        self.entry_dir(model_id)  # validates the id
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._lock_path(model_id))

    # --- definition -------------------------------------------------------------------------------

    def define(self, model_id: str, definition: dict) -> bool:
        """Create the entry with an empty store (a model built fresh from the definition).

        Idempotent: returns False if the entry exists with an equal definition; raises
        ModelAlreadyExists if it exists with a different one.
        """
        entry = self.entry_dir(model_id)
        text = json.dumps(definition, sort_keys=True)
        if os.path.isdir(entry):
            existing = self.get_definition(model_id)
            if json.dumps(existing, sort_keys=True) == text:
                return False
            raise ModelAlreadyExists(f"model {model_id} already exists with another definition")
        build = self._scratch_path(model_id)
        os.makedirs(build)
        _write_file(os.path.join(build, _VERSION_FILE), ENTRY_FORMAT.encode())
        _write_file(os.path.join(build, _DEFINITION_FILE), text.encode("utf-8"))
        store_name = f"{_STORE_PREFIX}0"
        self._build_store(os.path.join(build, store_name), None, [])
        os.symlink(store_name, os.path.join(build, _CURRENT_LINK))
        _fsync_dir(build)
        try:
            os.rename(build, entry)
        except OSError as exc:
            shutil.rmtree(build, ignore_errors=True)
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                # Another process defined it first: the same comparison decides.
                return self.define(model_id, definition)
            raise
        _fsync_dir(self.root)
        return True

    def get_definition(self, model_id: str) -> dict:
        entry = self.entry_dir(model_id)
        try:
            with open(os.path.join(entry, _VERSION_FILE), "rb") as fh:
                version = fh.read().decode().strip()
            with open(os.path.join(entry, _DEFINITION_FILE), "rb") as fh:
                definition = json.loads(fh.read())
        except FileNotFoundError as exc:
            raise ModelNotFound(f"model {model_id} has no checkpoint entry") from exc
        except ValueError as exc:
            raise CheckpointError(f"definition of model {model_id} is unreadable: {exc}") from exc
        if version != ENTRY_FORMAT:
            raise CheckpointError(
                f"checkpoint entry of model {model_id} has format {version!r}, "
                f"expected {ENTRY_FORMAT!r}"
            )
        return definition

    # --- load / save ------------------------------------------------------------------------------

    def load(self, model_id: str) -> Checkpoint:
        """Read the active store: model blob (None = fresh model), batch ids, journal rows."""
        definition = self.get_definition(model_id)
        entry = self.entry_dir(model_id)
        store_dir = os.path.join(entry, os.readlink(os.path.join(entry, _CURRENT_LINK)))
        bytes_read = 0
        try:
            with open(os.path.join(store_dir, _MODEL_FILE), "rb") as fh:
                blob: bytes | None = fh.read()
            bytes_read += len(blob)
        except FileNotFoundError:
            blob = None
        with open(os.path.join(store_dir, _ATTRIBUTES_FILE), "rb") as fh:
            attributes = json.loads(fh.read())
        with open(os.path.join(store_dir, _JOURNAL_FILE), "rb") as fh:
            journal = fh.read()
        bytes_read += len(journal)
        records, length = decode_journal(journal)
        history = [str(b) for b in attributes.get("batchIDs", [])]
        last_rowid = attributes.get("lastRowid")
        rows: list[InputRow] = []
        for batch_ids, record_rows, record_mark in records:
            history.extend(batch_ids)
            rows.extend(record_rows)
            if record_mark is not None:
                last_rowid = record_mark
        return Checkpoint(
            model_id=model_id,
            definition=definition,
            model_blob=blob,
            batch_ids=set(history),
            journal_rows=rows,
            store_dir=store_dir,
            journal_length=length,
            journal_records=len(records),
            bytes_read=bytes_read,
            batch_id_history=history,
            last_rowid=last_rowid,
        )

    def append(
        self,
        checkpoint: Checkpoint,
        batch_ids: Sequence[str],
        rows: Sequence[InputRow],
        last_rowid: int | None = None,
    ) -> int:
        """Incremental save: append one record to the active journal; returns bytes written.

        `last_rowid` is the model's input rowid mark after these rows (None: unchanged). Updates
        `checkpoint` in place so that further appends and saves continue from it.
        """
        if last_rowid is None:
            last_rowid = checkpoint.last_rowid
        record = encode_journal_record(batch_ids, rows, last_rowid)
        path = os.path.join(checkpoint.store_dir, _JOURNAL_FILE)
        with open(path, "r+b") as fh:
            fh.seek(checkpoint.journal_length)
            fh.write(record)
            fh.truncate()
            fh.flush()
            os.fsync(fh.fileno())
        checkpoint.journal_length += len(record)
        checkpoint.journal_records += 1
        checkpoint.journal_rows.extend(rows)
        checkpoint.batch_ids.update(batch_ids)
        checkpoint.batch_id_history.extend(batch_ids)
        checkpoint.last_rowid = last_rowid
        return len(record)

    def save_full(
        self,
        checkpoint: Checkpoint,
        model_blob: bytes,
        batch_ids: Iterable[str],
        last_rowid: int | None = None,
    ) -> int:
        """Full save: a new store holding `model_blob`; the journal starts empty. Returns bytes
        written. `last_rowid` as for `append`. Updates `checkpoint` in place."""
        if last_rowid is None:
            last_rowid = checkpoint.last_rowid
        history = (checkpoint.batch_id_history + list(batch_ids))[-MAX_REMEMBERED_BATCH_IDS:]
        entry = self.entry_dir(checkpoint.model_id)
        if not os.path.isdir(entry):
            raise ModelNotFound(f"model {checkpoint.model_id} was deleted")
        old_store = os.readlink(os.path.join(entry, _CURRENT_LINK))
        sequence = int(old_store[len(_STORE_PREFIX) :]) + 1
        store_name = f"{_STORE_PREFIX}{sequence}"
        build = self._scratch_path(store_name)
        written = self._build_store(build, model_blob, history, last_rowid)
        store_dir = os.path.join(entry, store_name)
        os.rename(build, store_dir)
        self._point_current(entry, store_name)
        shutil.rmtree(os.path.join(entry, old_store), ignore_errors=True)
        checkpoint.model_blob = model_blob
        checkpoint.store_dir = store_dir
        checkpoint.journal_length = 0
        checkpoint.journal_records = 0
        checkpoint.journal_rows = []
        checkpoint.batch_id_history = history
        checkpoint.batch_ids = set(history)
        checkpoint.last_rowid = last_rowid
        return written

    @staticmethod
    def _build_store(
        path: str, model_blob: bytes | None, batch_ids: list[str], last_rowid: int | None = None
    ) -> int:
        os.makedirs(path)
        written = 0
        if model_blob is not None:
            _write_file(os.path.join(path, _MODEL_FILE), model_blob)
            written += len(model_blob)
        state: dict = {"batchIDs": batch_ids}
        if last_rowid is not None:
            state["lastRowid"] = last_rowid
        attributes = json.dumps(state).encode("utf-8")
        _write_file(os.path.join(path, _ATTRIBUTES_FILE), attributes)
        open(os.path.join(path, _JOURNAL_FILE), "wb").close()  # empty: the dir fsync persists it
        _fsync_dir(path)
        return written + len(attributes)

    def _point_current(self, entry: str, store_name: str) -> None:
        _fsync_dir(entry)
        temp_link = os.path.join(entry, f".{_CURRENT_LINK}.{uuid.uuid4().hex}")
        os.symlink(store_name, temp_link)
        os.replace(temp_link, os.path.join(entry, _CURRENT_LINK))
        _fsync_dir(entry)

    # --- remove / clone ---------------------------------------------------------------------------

    def remove(self, model_id: str) -> bool:
        """Delete the entry (rename into scratch, then delete). False if it did not exist."""
        entry = self.entry_dir(model_id)
        doomed = self._scratch_path(model_id)
        try:
            os.rename(entry, doomed)
        except FileNotFoundError:
            return False
        _fsync_dir(self.root)
        shutil.rmtree(doomed, ignore_errors=True)
        return True

    def clone(self, model_id: str, new_model_id: str) -> None:
        """Copy the entry's definition and active store to a new id.

        Raises ModelNotFound if the source is missing, ModelAlreadyExists if the target exists.
        """
        source = self.entry_dir(model_id)
        target = self.entry_dir(new_model_id)
        if not os.path.isdir(source):
            raise ModelNotFound(f"model {model_id} has no checkpoint entry to clone")
        if os.path.exists(target):
            raise ModelAlreadyExists(f"model {new_model_id} already exists")
        store_name = os.readlink(os.path.join(source, _CURRENT_LINK))
        build = self._scratch_path(new_model_id)
        os.makedirs(build)
        for name in (_VERSION_FILE, _DEFINITION_FILE):
            with open(os.path.join(source, name), "rb") as fh:
                _write_file(os.path.join(build, name), fh.read())
        os.makedirs(os.path.join(build, store_name))
        for name in os.listdir(os.path.join(source, store_name)):
            with open(os.path.join(source, store_name, name), "rb") as fh:
                _write_file(os.path.join(build, store_name, name), fh.read())
        _fsync_dir(os.path.join(build, store_name))
        os.symlink(store_name, os.path.join(build, _CURRENT_LINK))
        _fsync_dir(build)
        try:
            os.rename(build, target)
        except OSError as exc:
            shutil.rmtree(build, ignore_errors=True)
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise ModelAlreadyExists(f"model {new_model_id} already exists") from exc
            raise
        _fsync_dir(self.root)

    def clean_scratch(self, min_age_sec: float = 600.0) -> None:
        """Delete leftovers of interrupted writes older than `min_age_sec` (younger ones may be
        in progress in a worker orphaned by a killed scheduler)."""
        now = time.time()
        for name in os.listdir(self.scratch):
            path = os.path.join(self.scratch, name)
            try:
                if now - os.lstat(path).st_mtime < min_age_sec:
                    continue
            except FileNotFoundError:
                continue
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
