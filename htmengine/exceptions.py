"""Errors shared by services, adapters and the CLI, and the status codes carried in command results."""

from __future__ import annotations

# Status codes of model command/inference results (the original's htmengineerrno, plus 5). This is
# the swapper wire's one contract of what a failed result means:
#
#   SUCCESS                   the command took effect / the row has a raw score
#   ERR                       this row or command failed for a reason of its own (a value the model
#                             rejects, an unexpected error); the model itself is fine: not permanent
#   ERR_MODEL_ALREADY_EXISTS  defineModel with another definition than the existing model's
#   ERR_NO_SUCH_MODEL         the model has no checkpoint entry (never defined, or deleted)
#   ERR_INVALID_ARG           a command with invalid args (an invalid model definition)
#   ERR_MODEL_UNUSABLE        the model exists but can never be restored or built: a corrupt
#                             checkpoint (CRC or format error, a missing store file) or a
#                             definition the model rejects; errorMessage says which
#
# Transient faults (disk full, I/O and memory errors while loading, saving or defining a model)
# never produce a result: the runner backs off and retries, and the request stays queued. A result
# whose status is in PERMANENT_FAILURES proves the model unusable: its metric goes into ERROR with
# the errorMessage as its reason (`htmengine monitor --force` recreates the model).
SUCCESS = 0
ERR = 1
ERR_MODEL_ALREADY_EXISTS = 2
ERR_NO_SUCH_MODEL = 3
ERR_INVALID_ARG = 4
ERR_MODEL_UNUSABLE = 5

PERMANENT_FAILURES = frozenset(
    {ERR_MODEL_ALREADY_EXISTS, ERR_NO_SUCH_MODEL, ERR_INVALID_ARG, ERR_MODEL_UNUSABLE}
)


def is_permanent_failure(status: int) -> bool:
    """True if a model result with this status proves the model unusable (see above)."""
    return status in PERMANENT_FAILURES


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
