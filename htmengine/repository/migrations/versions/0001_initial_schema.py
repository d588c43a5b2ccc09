"""Initial schema: metric, metric_data, lock (seeded with 'metrics'), instance_status_history.

Equivalent to the original htmengine chain 57ab75d58038 -> 1d2eddc43366 -> 872a895b8e8 ->
315d6ad6c19f (DATETIME columns, no zero-date default, multi_step_best_predictions), with utf8mb4
binary collation and metric.server / metric.description / instance_status_history.server widened
so a 255-character metric name fits everywhere it is copied (see htmengine/repository/schema.py).

The DDL is spelled out here rather than taken from schema.py, so the revision stays what it was
when later revisions change the schema.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_OPTIONS = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def upgrade() -> None:
    op.create_table(
        "metric",
        sa.Column("uid", sa.VARCHAR(40), primary_key=True, nullable=False),
        sa.Column("datasource", sa.VARCHAR(100)),
        sa.Column("name", sa.VARCHAR(255)),
        sa.Column("description", sa.VARCHAR(300)),
        sa.Column("server", sa.VARCHAR(255)),
        sa.Column("location", sa.VARCHAR(200)),
        sa.Column("parameters", sa.Text),
        sa.Column("status", sa.Integer, server_default=sa.text("0")),
        sa.Column("message", sa.Text),
        sa.Column("collector_error", sa.Text),
        sa.Column("last_timestamp", sa.DateTime, server_default=sa.null()),
        sa.Column("poll_interval", sa.Integer, server_default=sa.text("60")),
        sa.Column("tag_name", sa.VARCHAR(200)),
        sa.Column("model_params", sa.Text),
        sa.Column("last_rowid", sa.Integer),
        **_OPTIONS,
    )
    op.create_index("datasource_idx", "metric", ["datasource"])
    op.create_index("location_idx", "metric", ["location"])
    op.create_index("server_idx", "metric", ["server"])

    op.create_table(
        "metric_data",
        sa.Column("uid", sa.VARCHAR(40), nullable=False, server_default=""),
        sa.Column(
            "rowid", sa.Integer, nullable=False, server_default=sa.text("0"), autoincrement=False
        ),
        sa.Column("timestamp", sa.DateTime, nullable=False),
        sa.Column("metric_value", sa.Double, nullable=False),
        sa.Column("raw_anomaly_score", sa.Double),
        sa.Column("anomaly_score", sa.Double),
        sa.Column("display_value", sa.Integer),
        sa.Column("multi_step_best_predictions", sa.Text),
        sa.PrimaryKeyConstraint("uid", "rowid"),
        sa.ForeignKeyConstraint(
            ["uid"],
            ["metric.uid"],
            name="metric_data_to_metric_fk",
            ondelete="CASCADE",
            onupdate="CASCADE",
        ),
        **_OPTIONS,
    )
    op.create_index("timestamp_idx", "metric_data", ["timestamp"])
    op.create_index("anomaly_score_idx", "metric_data", ["anomaly_score"])

    lock = op.create_table(
        "lock",
        sa.Column("name", sa.VARCHAR(40), primary_key=True, nullable=False),
        **_OPTIONS,
    )
    op.bulk_insert(lock, [{"name": "metrics"}])

    op.create_table(
        "instance_status_history",
        sa.Column("server", sa.VARCHAR(255), nullable=False, server_default=""),
        sa.Column("timestamp", sa.DateTime, nullable=False),
        sa.Column("status", sa.VARCHAR(32), server_default=""),
        sa.PrimaryKeyConstraint("server", "timestamp"),
        **_OPTIONS,
    )


def downgrade() -> None:
    raise NotImplementedError("downgrades are not supported")
