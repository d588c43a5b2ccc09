"""Errors shared by services, adapters and the CLI, and the status codes carried in command results."""

from __future__ import annotations

# Status codes of model command/inference results (the original's htmengineerrno).
SUCCESS = 0
ERR = 1
ERR_MODEL_ALREADY_EXISTS = 2
ERR_NO_SUCH_MODEL = 3
ERR_INVALID_ARG = 4


class HTMEngineError(Exception):
    """Base class of htmengine's own errors."""


class ObjectNotFoundError(HTMEngineError):
    """A database object (metric, row) does not exist."""


class MetricNotFound(ObjectNotFoundError):
    """No metric with that name or uid."""


class MetricAlreadyExists(HTMEngineError):
    """createMetric for a name that already exists; `.uid` is the existing metric's uid."""

    def __init__(self, msg: str, uid: str) -> None:
        super().__init__(msg)
        self.uid = uid


class MetricAlreadyMonitored(HTMEngineError):
    """monitorMetric for a metric that already has a model; `.uid` names it."""

    def __init__(self, msg: str, uid: str) -> None:
        super().__init__(msg)
        self.uid = uid


class MetricStatusChangedError(HTMEngineError):
    """A conditional status update found another status than expected (a concurrent change)."""


class MetricNotActiveError(HTMEngineError):
    """An operation that needs an ACTIVE metric met another status."""


class MessageQueueNotFound(HTMEngineError):
    """An AMQP queue does not exist (passive declare or unroutable mandatory publish)."""


class ModelNotFound(HTMEngineError):
    """A model's input queue or checkpoint does not exist (model deleted or never defined)."""


class ModelAlreadyExists(HTMEngineError):
    """defineModel with a different definition for an existing model."""
