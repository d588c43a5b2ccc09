"""Alembic environment: run migrations on the connection handed over by htmengine.repository.migrate.

Offline mode (``--sql``) renders the DDL for the URL in the Alembic config instead.
"""

from __future__ import annotations

from alembic import context

from htmengine.repository.schema import metadata

config = context.config


def run_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError(
            "run migrations with htmengine.repository.migrate.upgrade() "
            "(or `python -m htmengine.repository.migrate`), which supplies the connection"
        )
    context.configure(connection=connection, target_metadata=metadata)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
