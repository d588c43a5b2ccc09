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
torn tail (crash mid-append: a bad record with no intact record after it) ends the journal; its run
was never acked, so the broker delivers it again, and the next append truncates the tail before
writing. A bad record *followed by* an intact one is corruption of acknowledged rows, not a torn
write: the load fails with CheckpointError (the model is unusable), it is never skipped silently.
``attributes.json`` carries ``"crc32"``, the CRC of its other keys in canonical JSON, and
``"definitionCrc32"``, the CRC of the entry's definition (entries written before them have none and
are read as they are); ``model.bin`` has its own CRC (htm.serialization).

Crash consistency: every step of a save leaves an entry that loads, either as before the save or
as after it. What an interrupted save leaves behind is garbage that `repair` deletes (the runner
calls it when it takes the model's lock): stores that ``current`` does not name (a store renamed
into the entry whose ``current`` switch never happened, an old store not yet deleted), temporary
links, and this model's items in ``.scratch`` (named ``<modelID>.<kind>.<uuid>``). A full save
also deletes a stray store that holds the name it is about to use.

Fault injection (tests only): `fault_point(name, model_id)` marks each step of the save path (see
FAULT_POINTS). It costs one ``None`` check unless a hook is installed, with `set_fault_hook` or by
the environment variable ``HTMENGINE_FAULT_DIR`` (see `TokenFaults`), read when this module is
imported, so spawned slot workers inherit it.

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
import signal
import struct
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from htmengine.config import Config, ConfigError, get_checkpoint_config
from htmengine.exceptions import ModelAlreadyExists, ModelNotFound
from htmengine.protocol.timestamps import epoch_parts, to_datetime

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
_TEMP_LINK_PREFIX = f".{_CURRENT_LINK}."

_RECORD_MAGIC = b"HJ"
_RECORD_HEADER = struct.Struct(">2sII")

# How many recent batch ids a full save keeps for de-duplication. Only the batches of the last
# unacknowledged run can come back, so a few hundred is ample.
MAX_REMEMBERED_BATCH_IDS = 1000

InputRow = tuple[datetime.datetime, float]


class CheckpointError(Exception):
    """An archive entry that cannot be read (bad version, unreadable definition, a CRC mismatch,
    a missing store file): the model is unusable, retrying cannot help."""


# --- fault injection --------------------------------------------------------------------------------

FAULT_DIR_ENV = "HTMENGINE_FAULT_DIR"

# Every named point of the save path, in the order a run reaches them.
FAULT_POINTS = (
    "load",  # a checkpoint is about to be read
    "define.built",  # a new entry is complete in .scratch, not yet renamed into place
    "append.written",  # a journal record is written, not yet fsynced
    "append.synced",  # a journal record is fsynced (the run is not acked yet)
    "full.built",  # a new store is complete in .scratch
    "full.renamed",  # store_<n+1> is in the entry, `current` still names store_<n>
    "full.linked",  # the temporary link to store_<n+1> exists, `current` not yet replaced
    "full.switched",  # `current` names store_<n+1>, store_<n> not yet deleted
    # model_runner's points
    "run.published",  # a batch's results are published, the run is not checkpointed
    "run.checkpointed",  # the run is checkpointed, its batches are not acked
    "model.build",  # a model is about to be built from its checkpoint
)

FaultHook = Callable[[str, str], None]
_fault_hook: FaultHook | None = None


def fault_point(point: str, model_id: str) -> None:
    """A named step of the save path; the installed hook (tests only) may kill or raise here."""
    if _fault_hook is not None:
        _fault_hook(point, model_id)


def set_fault_hook(hook: FaultHook | None) -> FaultHook | None:
    """Install `hook(point, model_id)` (None: none); returns the previous one. Tests only."""
    global _fault_hook
    previous, _fault_hook = _fault_hook, hook
    return previous


class TokenFaults:
    """A fault hook armed by files, so that a test can arm a point in another process.

    A file ``<dir>/<point>@<modelID>`` holding ``<action> [times]`` arms the point for that model;
    the process that reaches it first claims the file (an atomic rename), appends
    ``<point>@<modelID> <action> <pid>`` to ``<dir>/fired`` and acts: ``kill`` (SIGKILL itself),
    ``enospc`` / ``eio`` (raise that OSError), ``nomem`` (raise MemoryError). With ``times`` > 1 the
    file is put back with one time less, so the point fails that many times in a row.
    """

    _ERRNOS = {"enospc": errno.ENOSPC, "eio": errno.EIO}

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def __call__(self, point: str, model_id: str) -> None:
        token = os.path.join(self.directory, f"{point}@{model_id}")
        claimed = f"{token}.{os.getpid()}.{uuid.uuid4().hex}"
        try:
            os.rename(token, claimed)
        except FileNotFoundError:
            return
        with open(claimed) as fh:
            words = fh.read().split()
        action, times = words[0], int(words[1]) if len(words) > 1 else 1
        if times > 1:
            with open(claimed, "w") as fh:
                fh.write(f"{action} {times - 1}")
            os.rename(claimed, token)
        else:
            os.unlink(claimed)
        fd = os.open(os.path.join(self.directory, "fired"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, f"{point}@{model_id} {action} {os.getpid()}\n".encode())
        finally:
            os.close(fd)
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if action == "nomem":
            raise MemoryError(f"injected at {point}")
        code = self._ERRNOS[action]
        raise OSError(code, os.strerror(code), f"injected at {point}")


if os.environ.get(FAULT_DIR_ENV):
    _fault_hook = TokenFaults(os.environ[FAULT_DIR_ENV])


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
    seconds, microseconds = epoch_parts(when)
    return [seconds, microseconds, value]


def _row_from_state(state: Sequence) -> InputRow:
    seconds, microseconds, value = state
    return to_datetime(seconds, microseconds), value


def encode_journal_record(
    batch_ids: Sequence[str], rows: Sequence[InputRow], last_rowid: int | None = None
) -> bytes:
    """One framed journal record (`last_rowid`: the model's input rowid mark after it)."""
    state: dict = {"b": list(batch_ids), "r": [_row_state(row) for row in rows]}
    if last_rowid is not None:
        state["w"] = last_rowid
    payload = json.dumps(state, separators=(",", ":")).encode("utf-8")
    return _RECORD_HEADER.pack(_RECORD_MAGIC, len(payload), zlib.crc32(payload)) + payload


def _decode_record(
    data: bytes, offset: int
) -> tuple[list[str], list[InputRow], int | None, int] | None:
    """The record at `offset` as (batch ids, rows, rowid mark, end offset); None if not intact."""
    if offset + _RECORD_HEADER.size > len(data):
        return None
    magic, length, crc = _RECORD_HEADER.unpack_from(data, offset)
    start = offset + _RECORD_HEADER.size
    payload = data[start : start + length]
    if magic != _RECORD_MAGIC or len(payload) != length or zlib.crc32(payload) != crc:
        return None
    try:
        state = json.loads(payload)
        rows = [_row_from_state(row) for row in state["r"]]
        batch_ids = [str(b) for b in state["b"]]
        mark = state.get("w")
        last_rowid = int(mark) if mark is not None else None
    except (ValueError, KeyError, TypeError):
        return None
    return batch_ids, rows, last_rowid, start + length


def decode_journal(
    data: bytes,
) -> tuple[list[tuple[list[str], list[InputRow], int | None]], int]:
    """The intact records of a journal, as (batch ids, rows, rowid mark), and the byte length
    they cover. A torn tail is dropped; a bad record followed by an intact one raises
    CheckpointError (a torn write is always the last thing in the file)."""
    records = []
    offset = 0
    while offset < len(data):
        record = _decode_record(data, offset)
        if record is None:
            later = data.find(_RECORD_MAGIC, offset + 1)
            while later != -1:
                if _decode_record(data, later) is not None:
                    raise CheckpointError(
                        f"journal record at byte {offset} is corrupt (CRC or format) and intact "
                        f"records follow it at byte {later}"
                    )
                later = data.find(_RECORD_MAGIC, later + 1)
            break
        batch_ids, rows, last_rowid, offset = record
        records.append((batch_ids, rows, last_rowid))
    return records, offset


def _definition_crc(definition: dict) -> int:
    """CRC of a definition's canonical JSON (kept in each store's attributes)."""
    return zlib.crc32(json.dumps(definition, sort_keys=True, separators=(",", ":")).encode())


def _encode_attributes(state: dict) -> bytes:
    """attributes.json: `state` plus the CRC of its canonical JSON."""
    body = json.dumps(state, sort_keys=True, separators=(",", ":"))
    return json.dumps({**state, "crc32": zlib.crc32(body.encode("utf-8"))}).encode("utf-8")


def _decode_attributes(data: bytes, where: str) -> dict:
    try:
        state = json.loads(data)
        if not isinstance(state, dict):
            raise ValueError(f"a JSON object was expected, got {type(state).__name__}")
    except ValueError as exc:
        raise CheckpointError(f"{where} is unreadable: {exc}") from exc
    crc = state.pop("crc32", None)
    if crc is not None:
        body = json.dumps(state, sort_keys=True, separators=(",", ":"))
        if zlib.crc32(body.encode("utf-8")) != crc:
            raise CheckpointError(f"{where} is corrupt (CRC mismatch)")
    return state


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
        os.makedirs(self.root, mode=0o700, exist_ok=True)  # a new archive: its owner's only
        os.makedirs(self.scratch, exist_ok=True)
        os.makedirs(self.locks, exist_ok=True)

    # --- paths ------------------------------------------------------------------------------------

    def entry_dir(self, model_id: str) -> str:
        if not model_id or "/" in model_id or model_id.startswith(".") or "\0" in model_id:
            raise ValueError(f"invalid model id {model_id!r}")
        return os.path.join(self.root, model_id)

    def _scratch_path(self, model_id: str, kind: str) -> str:
        """A fresh path in .scratch for a write by the holder of `model_id`'s lock (`repair`
        parses the model id back out of the name)."""
        return os.path.join(self.scratch, f"{model_id}.{kind}.{uuid.uuid4().hex}")

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
        build = self._scratch_path(model_id, "define")
        try:
            os.makedirs(build)
            _write_file(os.path.join(build, _VERSION_FILE), ENTRY_FORMAT.encode())
            _write_file(os.path.join(build, _DEFINITION_FILE), text.encode("utf-8"))
            store_name = f"{_STORE_PREFIX}0"
            self._build_store(
                os.path.join(build, store_name), None, [], None, _definition_crc(definition)
            )
            os.symlink(store_name, os.path.join(build, _CURRENT_LINK))
            _fsync_dir(build)
            fault_point("define.built", model_id)
            os.rename(build, entry)
        except Exception as exc:
            shutil.rmtree(build, ignore_errors=True)
            if isinstance(exc, OSError) and exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
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
        """Read the active store: model blob (None = fresh model), batch ids, journal rows.

        Raises ModelNotFound (no entry), CheckpointError (the entry is unusable: a missing store
        file, a CRC or format error) or OSError (the disk failed: worth retrying)."""
        fault_point("load", model_id)
        definition = self.get_definition(model_id)
        entry = self.entry_dir(model_id)
        try:
            store_dir = os.path.join(entry, os.readlink(os.path.join(entry, _CURRENT_LINK)))
            bytes_read = 0
            try:
                with open(os.path.join(store_dir, _MODEL_FILE), "rb") as fh:
                    blob: bytes | None = fh.read()
                bytes_read += len(blob)
            except FileNotFoundError:
                blob = None
            with open(os.path.join(store_dir, _ATTRIBUTES_FILE), "rb") as fh:
                attributes_data = fh.read()
            with open(os.path.join(store_dir, _JOURNAL_FILE), "rb") as fh:
                journal = fh.read()
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise CheckpointError(f"checkpoint of model {model_id} is incomplete: {exc}") from exc
        bytes_read += len(journal)
        attributes = _decode_attributes(attributes_data, f"attributes of model {model_id}")
        expected = attributes.get("definitionCrc32")
        if expected is not None and _definition_crc(definition) != expected:
            raise CheckpointError(f"definition of model {model_id} is corrupt (CRC mismatch)")
        try:
            records, length = decode_journal(journal)
        except CheckpointError as exc:
            raise CheckpointError(f"journal of model {model_id}: {exc}") from exc
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
            # Truncate before writing: a crash mid-write then leaves only a prefix of this record
            # after the intact ones (a torn tail), never stale bytes of an older torn tail.
            fh.truncate(checkpoint.journal_length)
            fh.seek(checkpoint.journal_length)
            try:
                fh.write(record)
                fh.flush()
                fault_point("append.written", checkpoint.model_id)
                os.fsync(fh.fileno())
            except Exception:
                # Not durable (a failed fsync may have dropped the pages): take the record back,
                # so that no later load counts its rows as checkpointed.
                with contextlib.suppress(OSError):
                    fh.truncate(checkpoint.journal_length)
                raise
        fault_point("append.synced", checkpoint.model_id)
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
        model_id = checkpoint.model_id
        entry = self.entry_dir(model_id)
        if not os.path.isdir(entry):
            raise ModelNotFound(f"model {model_id} was deleted")
        old_store = os.readlink(os.path.join(entry, _CURRENT_LINK))
        sequence = int(old_store[len(_STORE_PREFIX) :]) + 1
        store_name = f"{_STORE_PREFIX}{sequence}"
        store_dir = os.path.join(entry, store_name)
        build = self._scratch_path(model_id, store_name)
        try:
            written = self._build_store(
                build, model_blob, history, last_rowid, _definition_crc(checkpoint.definition)
            )
            fault_point("full.built", model_id)
            # A store of that name is a stray: renamed into the entry by a save killed before it
            # switched `current` (the rename would fail with ENOTEMPTY on every later save).
            if os.path.lexists(store_dir):
                shutil.rmtree(store_dir)
            os.rename(build, store_dir)
        except Exception:  # a disk or memory error; what a crash leaves, `repair` deletes
            shutil.rmtree(build, ignore_errors=True)
            raise
        fault_point("full.renamed", model_id)
        self._point_current(entry, store_name, model_id)
        fault_point("full.switched", model_id)
        self._remove_stray_stores(entry, store_name)
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
        path: str,
        model_blob: bytes | None,
        batch_ids: list[str],
        last_rowid: int | None,
        definition_crc: int,
    ) -> int:
        os.makedirs(path)
        written = 0
        if model_blob is not None:
            _write_file(os.path.join(path, _MODEL_FILE), model_blob)
            written += len(model_blob)
        state: dict = {"batchIDs": batch_ids, "definitionCrc32": definition_crc}
        if last_rowid is not None:
            state["lastRowid"] = last_rowid
        attributes = _encode_attributes(state)
        _write_file(os.path.join(path, _ATTRIBUTES_FILE), attributes)
        open(os.path.join(path, _JOURNAL_FILE), "wb").close()  # empty: the dir fsync persists it
        _fsync_dir(path)
        return written + len(attributes)

    def _point_current(self, entry: str, store_name: str, model_id: str) -> None:
        _fsync_dir(entry)
        temp_link = os.path.join(entry, f"{_TEMP_LINK_PREFIX}{uuid.uuid4().hex}")
        os.symlink(store_name, temp_link)
        fault_point("full.linked", model_id)
        os.replace(temp_link, os.path.join(entry, _CURRENT_LINK))
        _fsync_dir(entry)

    @staticmethod
    def _remove_stray_stores(entry: str, current: str) -> int:
        """Delete the entry's stores other than `current`, and temporary links. No fsync: if the
        deletion is lost in a crash, the next `repair` or full save deletes them again."""
        removed = 0
        for name in os.listdir(entry):
            path = os.path.join(entry, name)
            if name.startswith(_STORE_PREFIX) and name != current:
                shutil.rmtree(path, ignore_errors=True)
                removed += 1
            elif name.startswith(_TEMP_LINK_PREFIX):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                removed += 1
        return removed

    def repair(self, model_id: str) -> int:
        """Delete what interrupted writes of this model left: stray stores and temporary links in
        its entry, its items in .scratch. Only while holding the model's lock (another writer's
        store may be in flight otherwise). Returns how many were removed."""
        entry = self.entry_dir(model_id)
        removed = 0
        for name in os.listdir(self.scratch):
            parts = name.rsplit(".", 2)
            if len(parts) == 3 and parts[0] == model_id:
                path = os.path.join(self.scratch, name)
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                removed += 1
        try:
            current = os.readlink(os.path.join(entry, _CURRENT_LINK))
        except (FileNotFoundError, NotADirectoryError):
            return removed  # no entry (or a broken one: load reports it)
        if not os.path.isdir(os.path.join(entry, current)):
            return removed  # a broken entry: load reports it; its other stores are evidence
        return removed + self._remove_stray_stores(entry, current)

    # --- remove / clone ---------------------------------------------------------------------------

    def remove(self, model_id: str) -> bool:
        """Delete the entry (rename into scratch, then delete). False if it did not exist."""
        entry = self.entry_dir(model_id)
        doomed = self._scratch_path(model_id, "removed")
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
        # Named after the source: the clone is written by the holder of the source's lock.
        build = self._scratch_path(model_id, "clone")
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
