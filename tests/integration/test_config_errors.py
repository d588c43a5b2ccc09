"""A broken configuration stops every service with one clear message and exit code 2 (the one boot
of htmengine.boot), before it connects to anything."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# The module paths supervisord runs.
SERVICES = [
    "htmengine.runtime.metric_listener",
    "htmengine.runtime.metric_storer",
    "htmengine.model_swapper.model_scheduler_service",
    "htmengine.runtime.anomaly_service",
]


def run_service(module: str, env_changes: dict[str, str | None]) -> subprocess.CompletedProcess:
    env = {
        k: v
        for k, v in os.environ.items()
        if k != "APPLICATION_CONFIG_PATH" and not k.startswith("_NTA_UTILS_CONFIG__")
    }
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    for key, value in env_changes.items():
        if value is not None:
            env[key] = value
    return subprocess.run(
        [sys.executable, "-m", module], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def conf_dir(tmp_path: Path) -> Path:
    target = tmp_path / "conf"
    target.mkdir()
    for path in (REPO / "conf").glob("*.conf"):
        shutil.copy(path, target / path.name)
    return target


def assert_one_clear_error(result: subprocess.CompletedProcess, *mentions: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "configuration error" in lines[0]
    for mention in mentions:
        assert mention in lines[0]


@pytest.mark.parametrize("module", SERVICES)
def test_missing_application_config_path(module: str) -> None:
    result = run_service(module, {"APPLICATION_CONFIG_PATH": None})
    assert_one_clear_error(result, "APPLICATION_CONFIG_PATH")


@pytest.mark.parametrize("module", SERVICES)
def test_missing_config_file(module: str, conf_dir: Path) -> None:
    (conf_dir / "application.conf").unlink()
    result = run_service(module, {"APPLICATION_CONFIG_PATH": str(conf_dir)})
    assert_one_clear_error(result, "application.conf", "missing")


@pytest.mark.parametrize(
    ("module", "option"),
    [
        (SERVICES[0], "_NTA_UTILS_CONFIG__APPLICATION__METRIC_LISTENER__BATCH_MAX_LINES"),
        (SERVICES[1], "_NTA_UTILS_CONFIG__APPLICATION__METRIC_STORER__PREFETCH"),
        (SERVICES[2], "_NTA_UTILS_CONFIG__MODEL_SWAPPER__MODEL_SCHEDULER__CONCURRENCY"),
        (SERVICES[3], "_NTA_UTILS_CONFIG__APPLICATION__METRIC_STREAMER__CHUNK_SIZE"),
        (SERVICES[1], "_NTA_UTILS_CONFIG__APPLICATION__METRIC_STORER__METRICS_PORT"),
        (SERVICES[2], "_NTA_UTILS_CONFIG__RABBITMQ__CONNECTION__PORT"),
        (SERVICES[3], "_NTA_UTILS_CONFIG__APPLICATION__ANOMALY_SERVICE__METRICS_PORT"),
    ],
)
def test_bad_value(module: str, option: str, conf_dir: Path) -> None:
    result = run_service(module, {"APPLICATION_CONFIG_PATH": str(conf_dir), option: "lots"})
    key = option.rsplit("__", 1)[1].lower()
    assert_one_clear_error(result, key, "'lots'")


@pytest.mark.parametrize("module", SERVICES)
def test_missing_key(module: str, conf_dir: Path) -> None:
    path = conf_dir / "rabbitmq.conf"
    path.write_text(path.read_text().replace("virtual_host", "virtual_hostname"))
    result = run_service(module, {"APPLICATION_CONFIG_PATH": str(conf_dir)})
    assert_one_clear_error(result, "rabbitmq.conf", "virtual_host")
