"""The retry policy of a unit of database work when the connection to MySQL fails."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import sqlalchemy as sa
import tenacity

T = TypeVar("T")


def retry_on_transient_db_errors(func: Callable[..., T]) -> Callable[..., T]:
    """Retry a whole unit of work (its own transaction) when the database connection fails."""
    return functools.wraps(func)(
        tenacity.retry(
            retry=tenacity.retry_if_exception_type(
                (sa.exc.OperationalError, sa.exc.InterfaceError)
            ),
            wait=tenacity.wait_exponential(multiplier=0.05, max=2.0),
            stop=tenacity.stop_after_delay(60),
            reraise=True,
        )(func)
    )
