"""SQLAlchemy Core tables of the htmengine repository (MySQL / MariaDB).

Names, types, nullability, defaults and indexes follow the original htmengine schema (after its
last migration), so applications that read the tables directly keep working. Deliberate differences:

* Tables use utf8mb4 with the binary collation: metric names are byte strings chosen by clients
  (graphite is case-sensitive), so ``cpu`` and ``CPU`` are different metrics, and any UTF-8 name fits.
* ``metric.server`` is VARCHAR(255) instead of VARCHAR(100): a custom metric's server defaults to
  its name, which may be 255 characters long. ``metric.description`` is VARCHAR(300) instead of
  VARCHAR(200) because it holds ``"Custom metric " + name``. ``instance_status_history.server`` is
  widened to 255 to match ``metric.server``.
* Metric names are still not protected by a unique index: creation is serialised by the ``lock``
  row ``metrics`` (``SELECT ... FOR UPDATE``) exactly as in the original, so apps that relied on
  that behaviour (or inserted duplicate names in other datasources) are unaffected.

This module describes the schema; the migrations under ``migrations/`` are the only thing that
creates or changes it.
"""

from __future__ import annotations

import sqlalchemy as sa

# Table options shared by every table (MySQL dialect keywords; ignored by other dialects).
TABLE_OPTIONS = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
}

# Name of the single row of `lock` that serialises metric creation.
METRICS_LOCK_NAME = "metrics"

metadata = sa.MetaData()

metric = sa.Table(
    "metric",
    metadata,
    sa.Column("uid", sa.VARCHAR(40), primary_key=True, nullable=False),
    sa.Column("datasource", sa.VARCHAR(100)),
    sa.Column("name", sa.VARCHAR(255)),
    # Widened from 200: holds "Custom metric <name>" for names up to 255 characters.
    sa.Column("description", sa.VARCHAR(300)),
    # Widened from 100: defaults to the metric name (up to 255 characters).
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
    sa.Index("datasource_idx", "datasource"),
    # Lookups and creation by name (revision 0002); not unique: the lock row prevents duplicates.
    sa.Index("datasource_name_idx", "datasource", "name"),
    sa.Index("location_idx", "location"),
    sa.Index("server_idx", "server"),
    **TABLE_OPTIONS,
)

metric_data = sa.Table(
    "metric_data",
    metadata,
    sa.Column(
        "uid",
        sa.VARCHAR(40),
        sa.ForeignKey(
            "metric.uid",
            name="metric_data_to_metric_fk",
            ondelete="CASCADE",
            onupdate="CASCADE",
        ),
        primary_key=True,
        nullable=False,
        server_default="",
    ),
    sa.Column(
        "rowid",
        sa.Integer,
        primary_key=True,
        nullable=False,
        server_default=sa.text("0"),
        autoincrement=False,
    ),
    sa.Column("timestamp", sa.DateTime, nullable=False),
    sa.Column("metric_value", sa.Double, nullable=False),
    sa.Column("raw_anomaly_score", sa.Double),
    sa.Column("anomaly_score", sa.Double),
    sa.Column("display_value", sa.Integer),
    sa.Column("multi_step_best_predictions", sa.Text),
    sa.Index("timestamp_idx", "timestamp"),
    sa.Index("anomaly_score_idx", "anomaly_score"),
    **TABLE_OPTIONS,
)

lock = sa.Table(
    "lock",
    metadata,
    sa.Column("name", sa.VARCHAR(40), primary_key=True, nullable=False),
    **TABLE_OPTIONS,
)

instance_status_history = sa.Table(
    "instance_status_history",
    metadata,
    # Widened from 100 to match metric.server.
    sa.Column("server", sa.VARCHAR(255), primary_key=True, nullable=False, server_default=""),
    sa.Column("timestamp", sa.DateTime, primary_key=True, nullable=False),
    sa.Column("status", sa.VARCHAR(32), server_default=""),
    **TABLE_OPTIONS,
)
