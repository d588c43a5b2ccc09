"""The one retry policy for database work: which errors are transient, how long to back off.

A *unit of work* (a function that opens and commits its own transaction) is retried as a whole
when the database fails in a way that retrying can cure: a lost or refused connection, a server
restart, a deadlock or a lock wait timeout (SQLAlchemy's OperationalError and InterfaceError, and
any DBAPI error that invalidated its connection). Backoff is exponential, 0.05 s doubling up to
5 s, and the policy gives up after `DB_RETRY_TIMEOUT_SEC` (five minutes) by re-raising the last
error. Five minutes rides out a server restart or an outage of a minute or two without a service
ending (and supervisord then restarting it); beyond that an application's call (the adapter, the
CLI) fails with the database's own error instead of hanging, and a service exits, is restarted
and its unacked messages are redelivered.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TypeVar

import sqlalchemy.exc
import tenacity

__all__ = ["DB_RETRY_TIMEOUT_SEC", "is_transient_db_error", "retry_on_transient_db_errors"]

T = TypeVar("T")

LOGGER = logging.getLogger(__name__)

# Seconds one unit of work keeps retrying before the error is raised.
DB_RETRY_TIMEOUT_SEC = 300.0
_FIRST_WAIT_SEC = 0.05
_MAX_WAIT_SEC = 5.0


def is_transient_db_error(exc: BaseException) -> bool:
    """Deadlocks, lock wait timeouts and lost connections: retrying the unit of work may succeed."""
    return isinstance(exc, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError) or (
        isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated
    )


def _log_retry(state: tenacity.RetryCallState) -> None:
    LOGGER.warning(
        "%s failed (%r); retrying (attempt %d)",
        getattr(state.fn, "__qualname__", state.fn),
        state.outcome.exception() if state.outcome else None,
        state.attempt_number,
    )


def retry_on_transient_db_errors(func: Callable[..., T]) -> Callable[..., T]:
    """Decorate a unit of work (its own transaction) with the policy of the module docstring."""
    return functools.wraps(func)(
        tenacity.retry(
            retry=tenacity.retry_if_exception(is_transient_db_error),
            wait=tenacity.wait_exponential(multiplier=_FIRST_WAIT_SEC, max=_MAX_WAIT_SEC),
            stop=tenacity.stop_after_delay(DB_RETRY_TIMEOUT_SEC),
            before_sleep=_log_retry,
            reraise=True,
        )(func)
    )
