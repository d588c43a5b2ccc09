"""In-memory stand-ins for unit tests: the MessageBus contract and a tiny deterministic model."""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass, field

from htmengine.exceptions import MessageQueueNotFound


@dataclass
class FakeMessage:
    body: bytes
    acked: bool = False
    nacked: list = field(default_factory=list)
    redelivered: bool = False
    headers: dict = field(default_factory=dict)

    def ack(self, *, multiple: bool = False) -> bool:
        self.acked = True
        return True

    def nack(self, requeue: bool = True) -> None:
        self.nacked.append(requeue)


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
        self.queues[queue].append(FakeMessage(body))

    def get(self, queue: str) -> FakeMessage | None:
        if queue not in self.queues:
            raise MessageQueueNotFound(queue)
        if not self.queues[queue]:
            return None
        message = self.queues[queue].pop(0)
        self.taken.append((queue, message))
        return message

    def requeue_unacked(self) -> None:
        """What the broker does when a consumer's connection dies."""
        for queue, message in reversed(self.taken):
            if not message.acked and queue in self.queues:
                message.redelivered = True
                self.queues[queue].insert(0, message)
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
