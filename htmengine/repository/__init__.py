"""The MySQL repository: engine factory, metric status values, tables (schema) and statements (queries).

Callers own transactions: ``with get_engine().begin() as conn: queries.some_statement(conn, ...)``.
"""

from __future__ import annotations

import enum
import os
import threading

import sqlalchemy as sa

from htmengine.config import Config, get_app_config


class MetricStatus(enum.IntEnum):
    """Values of ``metric.status`` (bit flags in the original, stored as integers)."""

    UNMONITORED = 0
    ACTIVE = 1
    CREATE_PENDING = 2
    ERROR = 4
    PENDING_DATA = 8


# Seconds after which a pooled connection is replaced (MySQL closes idle ones after wait_timeout).
POOL_RECYCLE_SEC = 3600

_engines: dict[str, sa.Engine] = {}
_engines_pid = os.getpid()
_engines_lock = threading.Lock()


def build_url(config: Config | None = None, *, with_database: bool = True) -> sa.URL:
    """The PyMySQL URL of application.conf [repository] (without the database for server-level DDL)."""
    config = config if config is not None else get_app_config()
    return sa.URL.create(
        "mysql+pymysql",
        username=config.get("repository", "user"),
        password=config.get("repository", "passwd") or None,
        host=config.get("repository", "host"),
        port=config.getint("repository", "port"),
        database=config.get("repository", "db") if with_database else None,
        query={"charset": "utf8mb4"},
    )


def create_engine(url: sa.URL, **kwargs) -> sa.Engine:
    """A new engine with the session settings every htmengine connection relies on.

    Sessions run in UTC (``UNIX_TIMESTAMP``/``NOW`` agree with the naive-UTC DATETIME columns) and
    in strict mode (an overlong name is an error, never silently truncated). Transactions are
    READ COMMITTED rather than InnoDB's REPEATABLE READ: every plain read sees what was committed
    before it, so a re-check after taking a lock (metric creation, row allocation) cannot miss a
    concurrent commit because of an older snapshot, and no gap locks are taken.
    """
    connect_args = {
        "init_command": "SET time_zone = '+00:00', "
        "sql_mode = 'STRICT_TRANS_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION'",
    }
    connect_args.update(kwargs.pop("connect_args", {}))
    return sa.create_engine(
        url,
        pool_pre_ping=True,
        pool_recycle=POOL_RECYCLE_SEC,
        isolation_level="READ COMMITTED",
        connect_args=connect_args,
        **kwargs,
    )


def get_engine(config: Config | None = None) -> sa.Engine:
    """The process-wide engine for the configured database (re-created after fork or a DSN change).

    A forked child must not share its parent's pooled sockets, so the cache is per process id.
    """
    global _engines_pid
    url = build_url(config)
    key = url.render_as_string(hide_password=False)
    with _engines_lock:
        if _engines_pid != os.getpid():
            for engine in _engines.values():
                engine.dispose(close=False)
            _engines.clear()
            _engines_pid = os.getpid()
        engine = _engines.get(key)
        if engine is None:
            engine = create_engine(url, pool_size=5, max_overflow=20)
            _engines[key] = engine
        return engine


def dispose_engines() -> None:
    """Close every pooled connection of this process (tests, shutdown)."""
    with _engines_lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
