"""In-memory stand-ins for unit tests: the MessageBus contract and a tiny deterministic model."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import time
from dataclasses import dataclass, field

from htmengine.exceptions import MessageQueueNotFound


@dataclass
class FakeMessage:
    body: bytes
    acked: bool = False
    nacked: list = field(default_factory=list)
    redelivered: bool = False
    headers: dict = field(default_factory=dict)
    seq: int = 0
    bus: FakeBus | None = field(default=None, repr=False)
    queue: str = ""
    dead_lettered: list = field(default_factory=list)

    def ack(self, *, multiple: bool = False) -> bool:
        self.acked = True
        return True

    def nack(self, requeue: bool = True) -> None:
        self.nacked.append(requeue)
        if requeue and self.bus is not None:
            self.bus.requeue(self.queue, self)

    def dead_letter(
        self, reason: str, kind: str | None = None, *, queue: str | None = None
    ) -> bool:
        """What MessageBus.dead_letter does, as far as the consumer can tell: recorded and acked."""
        self.dead_lettered.append((reason, kind, queue))
        self.acked = True
        return True


class FakeBus:
    def __init__(self) -> None:
        self.queues: dict[str, list[FakeMessage]] = {}
        self.published: list[tuple[str, bytes, bool]] = []
        self.taken: list[tuple[str, FakeMessage]] = []

    def declare_queue(self, name: str, durable: bool = True, passive: bool = False) -> int:
        if passive and name not in self.queues:
            raise MessageQueueNotFound(name)
        self.queues.setdefault(name, [])
        return len(self.queues[name])

    def purge_queue(self, name: str) -> int:
        if name not in self.queues:
            raise MessageQueueNotFound(name)
        count = len(self.queues[name])
        self.queues[name].clear()
        return count

    def delete_queue(self, name: str, *, if_empty: bool = False) -> int | None:
        if if_empty and self.queues.get(name):
            return None
        return len(self.queues.pop(name, []))

    def publish(self, queue: str, body: bytes, *, persistent: bool = True, headers=None) -> None:
        if queue not in self.queues:
            raise MessageQueueNotFound(queue)
        self.published.append((queue, body, persistent))
        self.queues[queue].append(FakeMessage(body, seq=len(self.published), bus=self, queue=queue))

    def get(self, queue: str) -> FakeMessage | None:
        if queue not in self.queues:
            raise MessageQueueNotFound(queue)
        if not self.queues[queue]:
            return None
        message = self.queues[queue].pop(0)
        self.taken.append((queue, message))
        return message

    def requeue(self, queue: str, message: FakeMessage) -> None:
        """Put a taken message back at its place in the queue (as RabbitMQ does on a nack)."""
        self.taken = [(q, m) for q, m in self.taken if m is not message]
        if queue in self.queues:
            message.redelivered = True
            self.queues[queue].append(message)
            self.queues[queue].sort(key=lambda m: m.seq)

    def requeue_unacked(self) -> None:
        """What the broker does when a consumer's connection dies."""
        for queue, message in list(self.taken):
            if not message.acked:
                self.requeue(queue, message)
        self.taken.clear()


class ToyModel:
    """A deterministic stateful model with save/load (ScalarAnomalyModel's API, not its maths)."""

    def __init__(self, model_config: dict) -> None:
        self.total = float(model_config.get("start", 0.0))
        self.count = 0
        self.fail_on = model_config.get("fail_on")

    def run(self, timestamp: datetime.datetime, value: float) -> float:
        if value == self.fail_on:
            raise ValueError(f"cannot learn {value}")
        self.count += 1
        self.total += value * self.count + timestamp.minute
        return (self.total % 97) / 97.0

    def save(self) -> bytes:
        return json.dumps([self.total, self.count, self.fail_on]).encode()

    @classmethod
    def load(cls, blob: bytes) -> ToyModel:
        model = cls({})
        model.total, model.count, model.fail_on = json.loads(blob)
        return model


class FileBus:
    """The MessageBus contract on a directory, so that several processes share one "broker" and
    a consumer killed with SIGKILL leaves what a broker would: its unacked messages taken.

    Queue ``q`` is the directory ``<root>/q`` (one file per message, named in publish order);
    `get` moves a message into ``<root>/q.taken``, its ack deletes it, and `requeue_unacked`
    (what the broker does when a consumer's connection dies) moves taken messages back.
    """

    def __init__(self, root: str) -> None:
        self.root = root
        os.makedirs(root, exist_ok=True)

    def _dir(self, name: str) -> str:
        return os.path.join(self.root, name)

    def _taken(self, name: str) -> str:
        return os.path.join(self.root, name + ".taken")

    def declare_queue(self, name: str, durable: bool = True, passive: bool = False) -> int:
        if passive and not os.path.isdir(self._dir(name)):
            raise MessageQueueNotFound(name)
        os.makedirs(self._dir(name), exist_ok=True)
        os.makedirs(self._taken(name), exist_ok=True)
        return len(os.listdir(self._dir(name)))

    def purge_queue(self, name: str) -> int:
        if not os.path.isdir(self._dir(name)):
            raise MessageQueueNotFound(name)
        names = os.listdir(self._dir(name))
        for message in names:
            os.unlink(os.path.join(self._dir(name), message))
        return len(names)

    def delete_queue(self, name: str, *, if_empty: bool = False) -> int | None:
        if not os.path.isdir(self._dir(name)):
            return 0
        count = len(os.listdir(self._dir(name)))
        if if_empty and count:
            return None
        shutil.rmtree(self._dir(name))
        shutil.rmtree(self._taken(name), ignore_errors=True)
        return count

    def publish(self, queue: str, body: bytes, *, persistent: bool = True, headers=None) -> None:
        if not os.path.isdir(self._dir(queue)):
            raise MessageQueueNotFound(queue)
        name = f"{time.time_ns():020d}.{os.getpid()}"
        temp = os.path.join(self.root, f".{name}")
        with open(temp, "wb") as fh:
            fh.write(body)
        os.rename(temp, os.path.join(self._dir(queue), name))

    def get(self, queue: str) -> FileMessage | None:
        if not os.path.isdir(self._dir(queue)):
            raise MessageQueueNotFound(queue)
        names = sorted(os.listdir(self._dir(queue)))
        if not names:
            return None
        taken = os.path.join(self._taken(queue), names[0])
        os.rename(os.path.join(self._dir(queue), names[0]), taken)
        with open(taken, "rb") as fh:
            return FileMessage(fh.read(), taken, os.path.join(self._dir(queue), names[0]))

    def messages(self, queue: str) -> list[bytes]:
        """The bodies waiting in `queue`, in order (a reader's view; nothing is taken)."""
        bodies = []
        for name in sorted(os.listdir(self._dir(queue))):
            with open(os.path.join(self._dir(queue), name), "rb") as fh:
                bodies.append(fh.read())
        return bodies

    def unacked(self, queue: str) -> int:
        return len(os.listdir(self._taken(queue)))

    def requeue_unacked(self, queue: str) -> None:
        for name in os.listdir(self._taken(queue)):
            os.rename(os.path.join(self._taken(queue), name), os.path.join(self._dir(queue), name))

    def close(self) -> None:
        pass


@dataclass
class FileMessage:
    body: bytes
    taken_path: str
    queue_path: str
    redelivered: bool = False
    headers: dict = field(default_factory=dict)

    def ack(self, *, multiple: bool = False) -> bool:
        os.unlink(self.taken_path)
        return True

    def nack(self, requeue: bool = True) -> None:
        if requeue:
            os.rename(self.taken_path, self.queue_path)
        else:
            os.unlink(self.taken_path)
