"""The local secrets file as the config layer's lowest layer for the servers' credentials."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from htmengine import config
from htmengine.config import Config, ConfigError

REPO = Path(__file__).resolve().parents[2]

SECRETS = """\
[client]
host=127.0.0.1
port=3399
user=htmengine
password=dbsecret

[rabbitmq]
user=htmengine
password=mqsecret

[supervisor]
username=htmengine
password=supsecret
"""


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the standalone conf/ at <tmp>/app/conf with a secrets file in <tmp>/app/var."""
    for name in list(os.environ):
        if name.startswith(config.ENV_OVERRIDE_PREFIX) or name.startswith("HTMENGINE_SUPERVISOR"):
            monkeypatch.delenv(name)
    monkeypatch.delenv(config.VAR_ENV, raising=False)
    conf = tmp_path / "app" / "conf"
    conf.mkdir(parents=True)
    for path in (REPO / "conf").glob("*.conf"):
        shutil.copy(path, conf / path.name)
    write_secrets(tmp_path / "app" / "var", SECRETS)
    return conf


def write_secrets(var: Path, body: str, mode: int = 0o600) -> Path:
    path = var / "secrets" / "local.cnf"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    path.chmod(mode)
    return path


def override(conf: Path, file_name: str, body: str) -> None:
    (conf / "overrides").mkdir(exist_ok=True)
    (conf / "overrides" / file_name).write_text(body)


def test_empty_user_takes_user_and_password_from_the_secrets_file(app: Path) -> None:
    repo = Config("application.conf", str(app))
    assert (repo.get("repository", "user"), repo.get("repository", "passwd")) == (
        "htmengine",
        "dbsecret",
    )
    rabbit = Config("rabbitmq.conf", str(app))
    assert rabbit.get("credentials", "user") == "htmengine"
    assert rabbit.get("credentials", "password") == "mqsecret"
    # Only credentials come from there: the port is the config's.
    assert repo.getint("repository", "port") == 3306


def test_the_applications_own_user_and_password_win(app: Path) -> None:
    override(app, "application.conf", "[repository]\nuser = appuser\npasswd = apppass\n")
    override(app, "rabbitmq.conf", "[credentials]\nuser = mquser\npassword = mqpass\n")
    repo = Config("application.conf", str(app))
    assert (repo.get("repository", "user"), repo.get("repository", "passwd")) == (
        "appuser",
        "apppass",
    )
    rabbit = Config("rabbitmq.conf", str(app))
    assert (rabbit.get("credentials", "user"), rabbit.get("credentials", "password")) == (
        "mquser",
        "mqpass",
    )


def test_an_own_user_with_an_empty_password_is_not_given_the_local_one(app: Path) -> None:
    # The original's application.conf: root, no password.
    override(app, "application.conf", "[repository]\nuser = root\npasswd =\n")
    repo = Config("application.conf", str(app))
    assert (repo.get("repository", "user"), repo.get("repository", "passwd")) == ("root", "")


def test_an_environment_override_of_the_user_wins(app: Path, monkeypatch) -> None:
    monkeypatch.setenv("_NTA_UTILS_CONFIG__APPLICATION__REPOSITORY__USER", "envuser")
    monkeypatch.setenv("_NTA_UTILS_CONFIG__APPLICATION__REPOSITORY__PASSWD", "envpass")
    repo = Config("application.conf", str(app))
    assert (repo.get("repository", "user"), repo.get("repository", "passwd")) == (
        "envuser",
        "envpass",
    )


def test_htmengine_var_names_the_secrets_file(app: Path, tmp_path: Path, monkeypatch) -> None:
    other = tmp_path / "servers"
    write_secrets(other, SECRETS.replace("dbsecret", "othersecret"))
    monkeypatch.setenv(config.VAR_ENV, str(other))
    assert Config("application.conf", str(app)).get("repository", "passwd") == "othersecret"


def test_no_secrets_file_and_no_user_is_a_clear_error(app: Path) -> None:
    (app.parent / "var" / "secrets" / "local.cnf").unlink()
    repo = Config("application.conf", str(app))
    with pytest.raises(ConfigError, match=r"\[repository\] user is empty.*local\.cnf.*servers\.sh"):
        repo.get("repository", "passwd")


def test_a_secrets_file_readable_by_others_is_refused(app: Path) -> None:
    write_secrets(app.parent / "var", SECRETS, mode=0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        Config("application.conf", str(app)).get("repository", "user")


def test_supervisor_credentials_come_from_the_environment_or_the_secrets_file(
    app: Path, monkeypatch
) -> None:
    assert config.supervisor_environ(str(app)) == {
        "HTMENGINE_SUPERVISOR_USER": "htmengine",
        "HTMENGINE_SUPERVISOR_PASSWORD": "supsecret",
    }
    monkeypatch.setenv("HTMENGINE_SUPERVISOR_PASSWORD", "fromenv")
    assert config.supervisor_environ(str(app))["HTMENGINE_SUPERVISOR_PASSWORD"] == "fromenv"


def test_the_cli_expands_supervisor_credentials_and_shows_urls_without_them(app: Path) -> None:
    from htmengine.cli.common import supervisor_url_from_config, without_credentials

    url = supervisor_url_from_config(str(app))
    assert url == "http://htmengine:supsecret@127.0.0.1:9001/RPC2"
    assert without_credentials(url) == "http://127.0.0.1:9001/RPC2"
    (app.parent / "var" / "secrets" / "local.cnf").unlink()
    with pytest.raises(ConfigError, match="HTMENGINE_SUPERVISOR_USER"):
        supervisor_url_from_config(str(app))
