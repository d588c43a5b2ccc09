"""Options and fixtures shared by unit and integration tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEFAULT_NAB_DIR = REPO.parent / "shared" / "nab"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--nab-dir",
        default=os.environ.get("HTMENGINE_NAB_DIR", str(DEFAULT_NAB_DIR)),
        help="NAB corpus directory (data/, labels/, results/, traces/); default ../shared/nab",
    )


@pytest.fixture(scope="session")
def nab_dir(request: pytest.FixtureRequest) -> Path:
    """The NAB corpus, or skip: it is not ours to ship, so tests that need it are optional."""
    path = Path(request.config.getoption("--nab-dir"))
    if not (path / "data").is_dir():
        pytest.skip(f"NAB corpus not found at {path} (set --nab-dir or HTMENGINE_NAB_DIR)")
    return path
