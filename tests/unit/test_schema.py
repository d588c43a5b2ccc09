"""Schema DDL and engine settings as MySQL would receive them (no server needed)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.schema import CreateTable

from htmengine.config import Config
from htmengine.repository import build_url
from htmengine.repository.schema import metadata, metric, metric_data


def _ddl(table: sa.Table) -> str:
    return " ".join(str(CreateTable(table).compile(dialect=mysql.dialect())).split())


def test_metric_data_uses_double_and_cascading_foreign_key() -> None:
    ddl = _ddl(metric_data)
    assert "metric_value DOUBLE NOT NULL" in ddl
    assert "raw_anomaly_score DOUBLE" in ddl
    assert (
        "CONSTRAINT metric_data_to_metric_fk FOREIGN KEY(uid) REFERENCES metric (uid) "
        "ON DELETE CASCADE ON UPDATE CASCADE"
    ) in ddl
    assert "PRIMARY KEY (uid, rowid)" in ddl


def test_every_table_is_utf8mb4_binary_innodb() -> None:
    for table in metadata.sorted_tables:
        ddl = _ddl(table)
        assert "ENGINE=InnoDB" in ddl and "CHARSET=utf8mb4" in ddl
        assert "COLLATE utf8mb4_bin" in ddl, table.name


def test_columns_that_receive_a_metric_name_hold_255_characters() -> None:
    assert metric.c.name.type.length == 255
    assert metric.c.server.type.length == 255
    assert metric.c.description.type.length >= len("Custom metric ") + 255


def test_url_from_config(tmp_path) -> None:
    (tmp_path / "application.conf").write_text(
        "[repository]\ndb = app_db\nhost = 127.0.0.1\nuser = root\npasswd =\nport = 3307\n"
    )
    url = build_url(Config("application.conf", str(tmp_path)))
    assert url.render_as_string(hide_password=False) == (
        "mysql+pymysql://root@127.0.0.1:3307/app_db?charset=utf8mb4"
    )
    server_url = build_url(Config("application.conf", str(tmp_path)), with_database=False)
    assert server_url.database is None
