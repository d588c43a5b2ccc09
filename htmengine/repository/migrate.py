"""Create the database if needed and bring its schema to a revision with Alembic.

Alembic runs programmatically from the installed package (no alembic.ini, no working-directory
assumptions): ``upgrade()`` from Python, ``htmengine db upgrade`` or
``python -m htmengine.repository.migrate [--revision head] [--offline]`` from a shell.
Downgrades are not supported.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy.pool import NullPool

from htmengine.config import Config, get_app_config
from htmengine.repository import build_url, create_engine

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# Revisions of the original htmengine's own migration chain (oldest first); a database at its
# last one has the schema of our first revision, apart from charset and three column widths.
ORIGINAL_REVISIONS = ("57ab75d58038", "1d2eddc43366", "872a895b8e8", "315d6ad6c19f")
ORIGINAL_HEAD_REVISION = ORIGINAL_REVISIONS[-1]
ADOPTED_ORIGINAL_REVISION = "0001"

# Database names we are willing to put into DDL (identifiers cannot be bound parameters).
_DATABASE_NAME = re.compile(r"^[A-Za-z0-9_$-]{1,64}$")


def _alembic_config(url: sa.URL) -> AlembicConfig:
    alembic_config = AlembicConfig()
    alembic_config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Only offline mode reads the URL; "%" must be doubled for the ini-style interpolation.
    alembic_config.set_main_option(
        "sqlalchemy.url", url.render_as_string(hide_password=False).replace("%", "%%")
    )
    return alembic_config


def _database_name(config: Config) -> str:
    name = config.get("repository", "db")
    if not _DATABASE_NAME.match(name):
        raise ValueError(
            f"application.conf [repository] db = {name!r}: use letters, digits, '_', '$' or '-'"
        )
    return name


def create_database(config: Config | None = None) -> None:
    """CREATE DATABASE IF NOT EXISTS, utf8mb4 with binary collation (metric names are case-sensitive)."""
    config = config if config is not None else get_app_config()
    name = _database_name(config)
    engine = create_engine(build_url(config, with_database=False), poolclass=NullPool)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(
                f"CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
            )
    finally:
        engine.dispose()


def drop_database(config: Config | None = None) -> None:
    """DROP DATABASE IF EXISTS (tests and reset)."""
    config = config if config is not None else get_app_config()
    name = _database_name(config)
    engine = create_engine(build_url(config, with_database=False), poolclass=NullPool)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        engine.dispose()


def _stored_revision(conn: sa.Connection) -> str | None:
    if not sa.inspect(conn).has_table("alembic_version"):
        return None
    return conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()


def _adopt_original_schema(conn: sa.Connection, stored: str) -> None:
    """Bring a database migrated by the original htmengine to our revision 0001 in place.

    Converts the four tables to utf8mb4 with binary collation, widens metric.server,
    metric.description and instance_status_history.server as in our schema, and re-stamps the
    Alembic version. Data is kept. Only the original's last revision is accepted.
    """
    if stored != ORIGINAL_HEAD_REVISION:
        raise RuntimeError(
            f"the database is at revision {stored} of the original htmengine migrations; "
            f"run those up to {ORIGINAL_HEAD_REVISION} first, then run this upgrade again"
        )
    # The foreign key joins two columns whose charset changes: drop it, convert, re-create it.
    conn.exec_driver_sql("ALTER TABLE metric_data DROP FOREIGN KEY metric_data_to_metric_fk")
    for table in ("metric", "metric_data", "`lock`", "instance_status_history"):
        conn.exec_driver_sql(
            f"ALTER TABLE {table} ROW_FORMAT=DYNAMIC, "
            "CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
        )
    conn.exec_driver_sql(
        "ALTER TABLE metric_data ADD CONSTRAINT metric_data_to_metric_fk FOREIGN KEY (uid) "
        "REFERENCES metric (uid) ON DELETE CASCADE ON UPDATE CASCADE"
    )
    # CONVERT turned TEXT into MEDIUMTEXT (to keep the byte capacity); ours are TEXT.
    conn.exec_driver_sql(
        "ALTER TABLE metric MODIFY description VARCHAR(300) NULL, MODIFY server VARCHAR(255) NULL, "
        "MODIFY parameters TEXT NULL, MODIFY message TEXT NULL, "
        "MODIFY collector_error TEXT NULL, MODIFY model_params TEXT NULL"
    )
    conn.exec_driver_sql("ALTER TABLE metric_data MODIFY multi_step_best_predictions TEXT NULL")
    conn.exec_driver_sql(
        "ALTER TABLE instance_status_history MODIFY server VARCHAR(255) NOT NULL DEFAULT ''"
    )
    conn.exec_driver_sql(
        "UPDATE alembic_version SET version_num = %s", (ADOPTED_ORIGINAL_REVISION,)
    )


def upgrade(config: Config | None = None, revision: str = "head") -> None:
    """Create the configured database if it is missing, then run the migrations up to `revision`.

    A database created by the original htmengine (Alembic revisions of its own chain) is first
    converted in place to our first revision; see _adopt_original_schema.
    """
    config = config if config is not None else get_app_config()
    create_database(config)
    url = build_url(config)
    alembic_config = _alembic_config(url)
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            stored = _stored_revision(conn)
            if stored in ORIGINAL_REVISIONS:
                _adopt_original_schema(conn, stored)
        with engine.begin() as conn:
            alembic_config.attributes["connection"] = conn
            command.upgrade(alembic_config, revision)
    finally:
        engine.dispose()


def print_sql(config: Config | None = None, revision: str = "head") -> None:
    """Print the DDL of the migrations up to `revision` without touching a database."""
    config = config if config is not None else get_app_config()
    command.upgrade(_alembic_config(build_url(config)), revision, sql=True)


def current_revision(config: Config | None = None) -> str | None:
    """The revision the configured database is at (None before the first migration)."""
    engine = create_engine(build_url(config), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return _stored_revision(conn)
    finally:
        engine.dispose()


def reset(config: Config | None = None) -> None:
    """Drop the configured database and recreate it at the newest revision."""
    drop_database(config)
    upgrade(config)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--revision", default="head", help="target revision (default: head)")
    parser.add_argument(
        "--offline", action="store_true", help="print the SQL instead of running it"
    )
    parser.add_argument(
        "--reset", action="store_true", help="drop the database first (destroys all data)"
    )
    args = parser.parse_args(argv)
    if args.offline:
        print_sql(revision=args.revision)
        return
    if args.reset:
        drop_database()
    upgrade(revision=args.revision)


if __name__ == "__main__":
    main()
