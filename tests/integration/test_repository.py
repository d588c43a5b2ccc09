"""The repository against a real MariaDB: schema made by the migrations, and every query."""

from __future__ import annotations

import datetime
import threading

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from htmengine.exceptions import MetricNotFound, MetricStatusChangedError
from htmengine.repository import MetricStatus, get_engine, migrate, queries
from htmengine.repository.schema import metadata, metric_data

T0 = datetime.datetime(2024, 1, 1)


def _samples(count: int, start: int = 0) -> list[tuple[datetime.datetime, float]]:
    return [(T0 + datetime.timedelta(minutes=5 * i), float(i)) for i in range(start, start + count)]


@pytest.fixture
def engine(clean_db) -> sa.Engine:
    return get_engine()


@pytest.fixture
def uid(engine: sa.Engine) -> str:
    with engine.begin() as conn:
        metric_uid, _ = queries.create_custom_metric(conn, "test.metric")
    return metric_uid


# -- schema --------------------------------------------------------------------------------

# What the facts file (section 3) specifies, with our documented widenings of server/description.
EXPECTED_COLUMNS = {
    "metric": [
        ("uid", "VARCHAR(40)", False, None),
        ("datasource", "VARCHAR(100)", True, None),
        ("name", "VARCHAR(255)", True, None),
        ("description", "VARCHAR(300)", True, None),
        ("server", "VARCHAR(255)", True, None),
        ("location", "VARCHAR(200)", True, None),
        ("parameters", "TEXT", True, None),
        ("status", "INTEGER", True, "0"),
        ("message", "TEXT", True, None),
        ("collector_error", "TEXT", True, None),
        ("last_timestamp", "DATETIME", True, None),
        ("poll_interval", "INTEGER", True, "60"),
        ("tag_name", "VARCHAR(200)", True, None),
        ("model_params", "TEXT", True, None),
        ("last_rowid", "INTEGER", True, None),
    ],
    "metric_data": [
        ("uid", "VARCHAR(40)", False, "''"),
        ("rowid", "INTEGER", False, "0"),
        ("timestamp", "DATETIME", False, None),
        ("metric_value", "DOUBLE", False, None),
        ("raw_anomaly_score", "DOUBLE", True, None),
        ("anomaly_score", "DOUBLE", True, None),
        ("display_value", "INTEGER", True, None),
        ("multi_step_best_predictions", "TEXT", True, None),
    ],
    "lock": [("name", "VARCHAR(40)", False, None)],
    "instance_status_history": [
        ("server", "VARCHAR(255)", False, "''"),
        ("timestamp", "DATETIME", False, None),
        ("status", "VARCHAR(32)", True, "''"),
    ],
}


def _type_name(column_type: sa.types.TypeEngine) -> str:
    text = str(column_type).split(" ")[0]
    return {"INTEGER(11)": "INTEGER", "INT(11)": "INTEGER"}.get(text, text)


def _default(default: str | None) -> str | None:
    return None if default in (None, "NULL") else default


def test_migrated_schema_has_the_columns_of_the_original(engine: sa.Engine) -> None:
    inspector = sa.inspect(engine)
    for table, expected in EXPECTED_COLUMNS.items():
        columns = [
            (c["name"], _type_name(c["type"]), c["nullable"], _default(c["default"]))
            for c in inspector.get_columns(table)
        ]
        assert columns == expected, table


def test_migrated_schema_has_the_keys_and_indexes_of_the_original(engine: sa.Engine) -> None:
    inspector = sa.inspect(engine)
    assert inspector.get_pk_constraint("metric")["constrained_columns"] == ["uid"]
    assert inspector.get_pk_constraint("metric_data")["constrained_columns"] == ["uid", "rowid"]
    assert inspector.get_pk_constraint("lock")["constrained_columns"] == ["name"]
    assert inspector.get_pk_constraint("instance_status_history")["constrained_columns"] == [
        "server",
        "timestamp",
    ]
    (foreign_key,) = inspector.get_foreign_keys("metric_data")
    assert foreign_key["name"] == "metric_data_to_metric_fk"
    assert foreign_key["constrained_columns"] == ["uid"]
    assert foreign_key["referred_table"] == "metric"
    assert foreign_key["referred_columns"] == ["uid"]
    assert foreign_key["options"] == {"ondelete": "CASCADE", "onupdate": "CASCADE"}

    def indexes(table: str) -> dict[str, list[str]]:
        return {i["name"]: i["column_names"] for i in inspector.get_indexes(table)}

    assert indexes("metric") == {
        "datasource_idx": ["datasource"],
        "datasource_name_idx": ["datasource", "name"],
        "location_idx": ["location"],
        "server_idx": ["server"],
    }
    assert indexes("metric_data") == {
        "timestamp_idx": ["timestamp"],
        "anomaly_score_idx": ["anomaly_score"],
    }


def test_lock_table_is_seeded_and_tables_are_utf8mb4_binary(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT name FROM `lock`").scalars().all() == ["metrics"]
        collations = dict(
            conn.exec_driver_sql(
                "SELECT table_name, table_collation FROM information_schema.tables "
                "WHERE table_schema = DATABASE()"
            ).all()
        )
    for table in EXPECTED_COLUMNS:
        assert collations[table] == "utf8mb4_bin", table


def test_schema_module_matches_the_migrations(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), metadata)
    assert differences == []


def test_upgrade_is_idempotent_and_reaches_head(app) -> None:
    migrate.upgrade()
    assert migrate.current_revision() == "0002"


# -- metrics -------------------------------------------------------------------------------


def test_create_custom_metric_sets_the_original_defaults(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        uid, created = queries.create_custom_metric(conn, "cpu.percent")
        assert created
        assert queries.create_custom_metric(conn, "cpu.percent") == (uid, False)
        row = queries.get_metric(conn, uid)
    assert len(uid) == 32
    assert row.datasource == "custom"
    assert row.name == "cpu.percent"
    assert row.description == "Custom metric cpu.percent"
    assert row.server == "cpu.percent"
    assert row.location == ""
    assert row.poll_interval == 300
    assert row.status == MetricStatus.UNMONITORED
    assert row.last_rowid == 0


def test_create_custom_metrics_creates_only_the_missing_names_in_one_go(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        existing, _ = queries.create_custom_metric(conn, "b")
        names = [f"fleet.{i:04d}" for i in range(2500)] + ["b", "b"]
        uids, created = queries.create_custom_metrics(conn, names)
        assert created == sorted(set(names) - {"b"})
        assert uids["b"] == existing
        assert set(uids) == set(names)
        assert queries.get_custom_metric_uids(conn, names) == uids
        again, created_again = queries.create_custom_metrics(conn, names)
    assert (again, created_again) == (uids, [])
    with engine.connect() as conn:
        assert len(queries.get_custom_metrics(conn)) == 2501


def test_concurrent_bulk_creation_of_overlapping_names_makes_each_metric_once(
    engine: sa.Engine,
) -> None:
    barrier = threading.Barrier(4)
    results: list[tuple[dict[str, str], list[str]]] = []

    def create(offset: int) -> None:
        names = [f"overlap.{i:04d}" for i in range(offset, offset + 1500)]
        barrier.wait()
        with engine.begin() as conn:
            results.append(queries.create_custom_metrics(conn, names))

    threads = [threading.Thread(target=create, args=(k * 500,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    created = [name for _, names in results for name in names]
    assert len(created) == len(set(created)) == 3000
    merged: dict[str, str] = {}
    for uids, _ in results:
        for name, uid in uids.items():
            assert merged.setdefault(name, uid) == uid
    with engine.connect() as conn:
        assert len(queries.get_custom_metrics(conn)) == 3000


def test_lookup_by_name_uses_the_name_index(engine: sa.Engine) -> None:
    # Creation cost stays flat in the table's size only if this lookup does not scan `metric`.
    with engine.begin() as conn:
        queries.create_custom_metrics(conn, [f"plan.{i}" for i in range(50)])
        plan = conn.exec_driver_sql(
            "EXPLAIN SELECT name, min(uid) FROM metric "
            "WHERE datasource = 'custom' AND name IN ('plan.1', 'plan.2') GROUP BY name"
        ).mappings().all()
    assert [row["key"] for row in plan] == ["datasource_name_idx"]


def test_long_multibyte_names_fit_and_names_are_case_sensitive(engine: sa.Engine) -> None:
    long_name = "é" * 255
    with engine.begin() as conn:
        uid, _ = queries.create_custom_metric(conn, long_name)
        upper_uid, _ = queries.create_custom_metric(conn, "CPU")
        lower_uid, _ = queries.create_custom_metric(conn, "cpu")
        row = queries.get_custom_metric_by_name(conn, long_name)
        assert queries.get_custom_metric_by_name(conn, "cpu").uid == lower_uid
    assert row.uid == uid
    assert row.server == long_name
    assert row.description == "Custom metric " + long_name
    assert upper_uid != lower_uid


def test_concurrent_creation_of_one_name_makes_one_metric(engine: sa.Engine) -> None:
    barrier = threading.Barrier(4)
    results: list[tuple[str, bool]] = []

    def create() -> None:
        barrier.wait()
        with engine.begin() as conn:
            results.append(queries.create_custom_metric(conn, "raced"))

    threads = [threading.Thread(target=create) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({uid for uid, _ in results}) == 1
    assert sorted(created for _, created in results) == [False, False, False, True]
    with engine.connect() as conn:
        assert len(queries.get_custom_metrics(conn)) == 1


def test_missing_metric_raises_metric_not_found(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        with pytest.raises(MetricNotFound):
            queries.get_metric(conn, "nope")
        with pytest.raises(MetricNotFound):
            queries.get_custom_metric_by_name(conn, "nope")
        with pytest.raises(MetricNotFound):
            queries.set_metric_status(conn, "nope", MetricStatus.ACTIVE)
        with pytest.raises(MetricNotFound):
            queries.delete_metric(conn, "nope")
        with pytest.raises(MetricNotFound):
            queries.add_metric_data(conn, "nope", _samples(1))


def test_conditional_status_change(engine: sa.Engine, uid: str) -> None:
    with engine.begin() as conn:
        queries.set_metric_status(
            conn, uid, MetricStatus.CREATE_PENDING, expected_status=MetricStatus.UNMONITORED
        )
        with pytest.raises(MetricStatusChangedError):
            queries.set_metric_status(
                conn, uid, MetricStatus.ACTIVE, expected_status=MetricStatus.UNMONITORED
            )
        queries.set_metric_status(conn, uid, MetricStatus.ERROR, "boom")
        row = queries.get_metric(conn, uid, ["status", "message"], for_update=True)
    assert (row.status, row.message) == (MetricStatus.ERROR, "boom")


def test_update_metric_columns_conditionally(engine: sa.Engine, uid: str) -> None:
    with engine.begin() as conn:
        queries.update_metric_columns(
            conn,
            uid,
            {"model_params": "{}", "status": MetricStatus.CREATE_PENDING},
            expected_status=MetricStatus.UNMONITORED,
        )
        # Same values again: matched, not changed, still not an error.
        queries.update_metric_columns(conn, uid, {"model_params": "{}"})
        with pytest.raises(MetricStatusChangedError):
            queries.update_metric_columns(
                conn, uid, {"parameters": "x"}, expected_status=MetricStatus.UNMONITORED
            )
        row = queries.get_metric(conn, uid)
    assert (row.model_params, row.parameters, row.status) == ("{}", None, 2)


def test_model_listings(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        active, _ = queries.create_custom_metric(conn, "a")
        pending, _ = queries.create_custom_metric(conn, "b")
        queries.create_custom_metric(conn, "c")
        queries.update_metric_columns(conn, active, {"status": 1, "server": "host1"})
        queries.update_metric_columns(conn, pending, {"status": 2, "server": "host1"})
        models = queries.get_all_models(conn, ["uid"])
        by_status = queries.get_metrics_by_status(conn, [MetricStatus.ACTIVE], ["uid"])
        instances = queries.get_instances(conn)
    assert sorted(r.uid for r in models) == sorted([active, pending])
    assert [r.uid for r in by_status] == [active]
    assert [(i.server, i.status, i.metric_count) for i in instances] == [("host1", 3, 2)]


# -- metric_data ---------------------------------------------------------------------------


def test_add_metric_data_allocates_contiguous_rowids(engine: sa.Engine, uid: str) -> None:
    with engine.begin() as conn:
        assert queries.add_metric_data(conn, uid, _samples(3)) == range(1, 4)
    with engine.begin() as conn:
        locked = queries.lock_metric_for_update(conn, uid)
        assert locked.last_rowid == 3
        assert queries.add_metric_data(
            conn, uid, _samples(2, 3), last_rowid=locked.last_rowid
        ) == range(4, 6)
        assert queries.add_metric_data(conn, uid, []) == range(0)
    with engine.connect() as conn:
        rows = queries.get_metric_data(conn, uid)
        assert queries.get_metric(conn, uid).last_rowid == 5
    assert [(r.rowid, r.timestamp, r.metric_value) for r in rows] == [
        (i + 1, ts, value) for i, (ts, value) in enumerate(_samples(5))
    ]


def test_concurrent_writers_get_disjoint_contiguous_rowids(engine: sa.Engine, uid: str) -> None:
    batches_per_writer, batch_size = 20, 50
    allocated: dict[str, list[range]] = {"a": [], "b": []}
    barrier = threading.Barrier(2)

    def write(writer: str) -> None:
        barrier.wait()
        for batch in range(batches_per_writer):
            values = [(T0 + datetime.timedelta(seconds=i), float(batch)) for i in range(batch_size)]
            with engine.begin() as conn:
                allocated[writer].append(queries.add_metric_data(conn, uid, values))

    threads = [threading.Thread(target=write, args=(w,)) for w in allocated]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    total = 2 * batches_per_writer * batch_size
    ranges = sorted(allocated["a"] + allocated["b"], key=lambda r: r.start)
    assert all(len(r) == batch_size for r in ranges)
    assert [r.start for r in ranges] == list(range(1, total, batch_size))
    with engine.connect() as conn:
        rowids = [r.rowid for r in queries.get_metric_data(conn, uid, ["rowid"])]
        assert queries.get_metric(conn, uid).last_rowid == total
    assert rowids == list(range(1, total + 1))


def test_sub_second_timestamps_are_truncated(engine: sa.Engine, uid: str) -> None:
    with engine.begin() as conn:
        queries.add_metric_data(conn, uid, [(T0.replace(microsecond=999_999), 1.0)])
        assert queries.get_last_timestamp(conn, uid, 1) == T0
        assert queries.get_last_timestamp(conn, uid, 2) is None


def test_get_metric_data_filters_sorts_and_limits(engine: sa.Engine, uid: str) -> None:
    with engine.begin() as conn:
        queries.add_metric_data(conn, uid, _samples(10))
        queries.update_metric_data_scores(
            conn, uid, [queries.ScoreUpdate(i, 0.1, i / 10, 1000, "null") for i in (2, 5, 9)]
        )

        def rowids(**kwargs) -> list[int]:
            return [r.rowid for r in queries.get_metric_data(conn, uid, ["rowid"], **kwargs)]

        assert rowids(rowid=4) == [4]
        assert rowids(start_rowid=3, stop_rowid=6) == [3, 4, 5, 6]
        assert rowids(
            from_timestamp=T0 + datetime.timedelta(minutes=10),
            to_timestamp=T0 + datetime.timedelta(minutes=20),
        ) == [3, 4, 5]
        assert rowids(score=0.5) == [5, 9]
        assert rowids(processed=True) == [2, 5, 9]
        assert rowids(processed=False) == [1, 3, 4, 6, 7, 8, 10]
        assert rowids(sort=metric_data.c.rowid.desc(), limit=3) == [10, 9, 8]
        assert queries.get_metric_data_count(conn, uid) == 10
        assert queries.get_processed_metric_data_count(conn, uid) == 3
        assert queries.get_metric_stats(conn, uid) == {"min": 0.0, "max": 9.0}


def test_metric_stats_of_an_empty_metric(engine: sa.Engine, uid: str) -> None:
    with engine.connect() as conn:
        assert queries.get_metric_stats(conn, uid) == {"min": None, "max": None}


def test_update_metric_data_scores_writes_exact_values_for_many_rows(
    engine: sa.Engine, uid: str
) -> None:
    count = 2500  # more than one multi-row statement
    with engine.begin() as conn:
        other, _ = queries.create_custom_metric(conn, "other")
        queries.add_metric_data(conn, uid, _samples(count))
        queries.add_metric_data(conn, other, _samples(10))
    updates = [
        queries.ScoreUpdate(
            rowid=i,
            raw_anomaly_score=i / 3,
            anomaly_score=None if i % 7 == 0 else 1 - 1e-12 * i,
            display_value=1_000_000_001 if i % 2 else 0,
            multi_step_best_predictions=None if i % 5 == 0 else f'{{"1": {i}}}',
        )
        for i in range(1, count + 1)
    ]
    with engine.begin() as conn:
        # A rowid that does not exist is neither created nor counted.
        missing = queries.ScoreUpdate(count + 1, 0.5, 0.5, 0, None)
        assert queries.update_metric_data_scores(conn, uid, [*updates, missing]) == count
    with engine.connect() as conn:
        rows = queries.get_metric_data(conn, uid)
        others = queries.get_metric_data(conn, other)
    assert [
        (
            r.rowid,
            r.raw_anomaly_score,
            r.anomaly_score,
            r.display_value,
            r.multi_step_best_predictions,
        )
        for r in rows
    ] == [tuple(u) for u in updates]
    assert all(r.raw_anomaly_score is None for r in others)


def test_unmonitor_clears_model_state_but_keeps_data(engine: sa.Engine, uid: str) -> None:
    with engine.begin() as conn:
        queries.add_metric_data(conn, uid, _samples(3))
        queries.update_metric_columns(
            conn, uid, {"status": 1, "parameters": "{}", "model_params": "{}", "message": "m"}
        )
        queries.update_metric_data_scores(conn, uid, [queries.ScoreUpdate(1, 0.1, 0.2, 3, "n")])
        assert queries.get_unprocessed_model_data_count(conn) == 2
        assert queries.get_unprocessed_model_data_count(conn, uid) == 2
        queries.unmonitor_metric(conn, uid)
        row = queries.get_metric(conn, uid)
        data = queries.get_metric_data(conn, uid)
        assert queries.get_unprocessed_model_data_count(conn) == 0
    assert (row.status, row.parameters, row.model_params, row.message) == (0, None, None, None)
    assert [(r.metric_value, r.raw_anomaly_score, r.anomaly_score) for r in data] == [
        (0.0, None, None),
        (1.0, None, None),
        (2.0, None, None),
    ]
    assert all(r.display_value is None and r.multi_step_best_predictions is None for r in data)


def test_deleting_a_metric_cascades_to_its_data(engine: sa.Engine, uid: str) -> None:
    with engine.begin() as conn:
        kept, _ = queries.create_custom_metric(conn, "kept")
        queries.add_metric_data(conn, uid, _samples(5))
        queries.add_metric_data(conn, kept, _samples(2))
        queries.delete_metric(conn, uid)
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(metric_data)).scalar() == 2
        assert queries.get_metric_data_count(conn, uid) == 0
        assert queries.get_metric_data_count(conn, kept) == 2


def test_metric_ids_sorted_by_display_value(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        calm, _ = queries.create_custom_metric(conn, "calm")
        busy, _ = queries.create_custom_metric(conn, "busy")
        queries.add_metric_data(conn, calm, _samples(24))
        queries.add_metric_data(conn, busy, _samples(24))
        queries.update_metric_data_scores(conn, calm, [queries.ScoreUpdate(1, 0, 0, 1000, None)])
        queries.update_metric_data_scores(
            conn, busy, [queries.ScoreUpdate(i, 0, 0, 1_000_000, None) for i in (2, 20)]
        )
        # 24 samples 5 minutes apart span 2 hours: buckets of 5 minutes over the last 2 hours.
        ranked = queries.get_metric_ids_sorted_by_display_value(conn, 2)
    assert [(r.uid, r.display_value) for r in ranked] == [(busy, 2_000_000), (calm, 1000)]


def test_recheck_under_the_lock_sees_a_metric_committed_meanwhile(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        # A plain read first: under REPEATABLE READ it would fix the snapshot here.
        assert queries.get_custom_metrics(conn) == []
        with engine.begin() as other:
            other_uid, _ = queries.create_custom_metric(other, "late")
        assert queries.create_custom_metric(conn, "late") == (other_uid, False)


# The original htmengine's schema after its last migration (as MySQL 5.x created it: latin1).
ORIGINAL_DDL = [
    "CREATE TABLE metric (uid VARCHAR(40) NOT NULL, datasource VARCHAR(100), name VARCHAR(255), "
    "description VARCHAR(200), server VARCHAR(100), location VARCHAR(200), parameters TEXT, "
    "status INTEGER DEFAULT 0, message TEXT, collector_error TEXT, "
    "last_timestamp DATETIME NULL DEFAULT NULL, poll_interval INTEGER DEFAULT 60, "
    "tag_name VARCHAR(200), model_params TEXT, last_rowid INTEGER, PRIMARY KEY (uid), "
    "KEY datasource_idx (datasource), KEY location_idx (location), KEY server_idx (server)) "
    "ENGINE=InnoDB DEFAULT CHARSET=latin1",
    "CREATE TABLE metric_data (uid VARCHAR(40) NOT NULL DEFAULT '', "
    "rowid INTEGER NOT NULL DEFAULT 0, timestamp DATETIME NOT NULL, metric_value DOUBLE NOT NULL, "
    "raw_anomaly_score DOUBLE, anomaly_score DOUBLE, display_value INTEGER, "
    "multi_step_best_predictions TEXT, PRIMARY KEY (uid, rowid), KEY timestamp_idx (timestamp), "
    "KEY anomaly_score_idx (anomaly_score), CONSTRAINT metric_data_to_metric_fk FOREIGN KEY (uid) "
    "REFERENCES metric (uid) ON DELETE CASCADE ON UPDATE CASCADE) "
    "ENGINE=InnoDB DEFAULT CHARSET=latin1",
    "CREATE TABLE `lock` (name VARCHAR(40) NOT NULL, PRIMARY KEY (name)) "
    "ENGINE=InnoDB DEFAULT CHARSET=latin1",
    "INSERT INTO `lock` VALUES ('metrics')",
    "CREATE TABLE instance_status_history (server VARCHAR(100) NOT NULL DEFAULT '', "
    "timestamp DATETIME NOT NULL, status VARCHAR(32) DEFAULT '', PRIMARY KEY (server, timestamp)) "
    "ENGINE=InnoDB DEFAULT CHARSET=latin1",
    "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL, PRIMARY KEY (version_num))",
    "INSERT INTO alembic_version VALUES ('315d6ad6c19f')",
    "INSERT INTO metric (uid, datasource, name, description, server, location, status, "
    "poll_interval, last_rowid) VALUES ('u1', 'custom', 'old.metric', 'Custom metric old.metric', "
    "'old.metric', '', 0, 300, 1)",
    "INSERT INTO metric_data (uid, rowid, timestamp, metric_value) "
    "VALUES ('u1', 1, '2015-06-13 05:46:32', 12.5)",
]


def test_upgrade_adopts_a_database_of_the_original_htmengine(app, monkeypatch) -> None:
    monkeypatch.setenv("_NTA_UTILS_CONFIG__APPLICATION__REPOSITORY__DB", app.db_name + "_orig")
    migrate.drop_database()
    migrate.create_database()
    engine = sa.create_engine(migrate.build_url(), poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            for statement in ORIGINAL_DDL:
                conn.exec_driver_sql(statement)

        migrate.upgrade()

        assert migrate.current_revision() == "0002"
        inspector = sa.inspect(engine)
        for table, expected in EXPECTED_COLUMNS.items():
            columns = [
                (c["name"], _type_name(c["type"]), c["nullable"], _default(c["default"]))
                for c in inspector.get_columns(table)
            ]
            assert columns == expected, table
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), metadata) == []
            collations = conn.exec_driver_sql(
                "SELECT DISTINCT collation_name FROM information_schema.columns "
                "WHERE table_schema = DATABASE() AND table_name <> 'alembic_version' "
                "AND collation_name IS NOT NULL"
            ).scalars()
            assert list(collations) == ["utf8mb4_bin"]
            assert queries.get_custom_metric_by_name(conn, "old.metric").uid == "u1"
            (row,) = queries.get_metric_data(conn, "u1")
        assert (row.rowid, row.timestamp, row.metric_value) == (
            1,
            datetime.datetime(2015, 6, 13, 5, 46, 32),
            12.5,
        )
        with engine.begin() as conn:
            long_name = "n" * 255
            uid, _ = queries.create_custom_metric(conn, long_name)
            assert queries.get_metric(conn, uid).server == long_name
    finally:
        engine.dispose()
        migrate.drop_database()


def test_locking_metrics_for_append_leaves_their_data_rows_unlocked(
    engine: sa.Engine, uid: str
) -> None:
    with engine.begin() as conn:
        queries.add_metric_data(conn, uid, _samples(3))
    with engine.begin() as storer:
        locked = queries.lock_metrics_for_append(storer, [uid, "missing"])
        assert list(locked) == [uid]
        assert (locked[uid].status, locked[uid].last_rowid, locked[uid].last_timestamp) == (
            0,
            3,
            _samples(3)[-1][0],
        )
        # The anomaly service scores the newest row while the storer holds the metric lock.
        with engine.begin() as scorer:
            scorer.exec_driver_sql("SET SESSION innodb_lock_wait_timeout = 1")
            update = queries.ScoreUpdate(3, 0.5, 0.5, 1000, None)
            assert queries.update_metric_data_scores(scorer, uid, [update]) == 1
