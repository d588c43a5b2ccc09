"""Integration fixtures: real MariaDB, RabbitMQ and supervisord, started by the project's scripts."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.app import (
    Supervisor,
    TestApp,
    create_test_app,
    drop_database,
    servers_var,
    start_servers,
)


def pytest_configure(config: pytest.Config) -> None:
    # Every service a test starts, from any config directory, finds the local servers' secrets.
    servers_var()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def servers() -> None:
    start_servers()


@pytest.fixture(scope="session")
def app(servers: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestApp]:
    """One migrated test application per session (own DB, queues, ports)."""
    from htmengine.repository import migrate

    test_app = create_test_app(tmp_path_factory.mktemp("app"))
    migrate.upgrade()
    yield test_app
    drop_database(test_app)


@pytest.fixture
def clean_db(app: TestApp) -> TestApp:
    """Empty the metric tables before a test (queues are per-test unique or drained by the test)."""
    from sqlalchemy import text

    from htmengine.repository import get_engine

    with get_engine().begin() as conn:
        conn.execute(text("DELETE FROM metric_data"))
        conn.execute(text("DELETE FROM metric"))
    return app


@pytest.fixture
def supervisor_factory(app: TestApp) -> Iterator:
    """Start supervisord for this app with the given programs; stopped after the test."""
    started: list[Supervisor] = []

    def start(programs: list[str] | None = None) -> Supervisor:
        sup = Supervisor(app, programs)
        started.append(sup)
        sup.start()
        return sup

    yield start
    for sup in started:
        sup.stop()
