"""Naive-UTC datetimes and epoch seconds: the one conversion every format and table uses.

The database's DATETIME columns, the model input rows and the checkpoints hold *naive* datetimes
that mean UTC; messages and graphite lines carry epoch seconds. An aware datetime is converted to
UTC first.
"""

from __future__ import annotations

import datetime

EPOCH = datetime.datetime(1970, 1, 1)
_SECONDS_PER_DAY = 86400


def _naive_utc(moment: datetime.datetime) -> datetime.datetime:
    if moment.tzinfo is not None:
        return moment.astimezone(datetime.UTC).replace(tzinfo=None)
    return moment


def to_datetime(seconds: int, microseconds: int = 0) -> datetime.datetime:
    """The naive-UTC datetime of epoch `seconds` (plus `microseconds`)."""
    return EPOCH + datetime.timedelta(seconds=seconds, microseconds=microseconds)


def epoch_parts(moment: datetime.datetime) -> tuple[int, int]:
    """(whole epoch seconds, microseconds) of a datetime: lossless, the inverse of `to_datetime`."""
    delta = _naive_utc(moment) - EPOCH
    return delta.days * _SECONDS_PER_DAY + delta.seconds, delta.microseconds


def to_epoch_seconds(moment: datetime.datetime) -> int:
    """Whole epoch seconds of a datetime (microseconds are dropped, as rows keep whole seconds)."""
    delta = _naive_utc(moment) - EPOCH
    return delta.days * _SECONDS_PER_DAY + delta.seconds


def utc_now() -> datetime.datetime:
    """The current time as a naive-UTC datetime."""
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
