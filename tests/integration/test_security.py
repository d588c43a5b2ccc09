"""Local security by default: the servers scripts/servers.sh runs, and the services on them.

The services log in as the dedicated MariaDB and RabbitMQ users of the local secrets file, never as
root or guest; mariadbd is not root and cannot touch files through SQL; nothing secret is readable by
others; supervisord's XML-RPC wants its credentials.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import time
import uuid
import xmlrpc.client
from pathlib import Path

import pika
import pika.exceptions
import psutil
import pymysql
import pytest
from sqlalchemy import text

from htmengine import config
from htmengine.bus import MessageBus
from htmengine.repository import get_engine
from tests.support.app import SERVERS_SCRIPT, Supervisor, TestApp, local_secrets


def servers(*args: str) -> str:
    return subprocess.run(
        ["bash", str(SERVERS_SCRIPT), *args], check=True, capture_output=True, text=True
    ).stdout


def server_pids() -> dict[str, int]:
    """Pids from `servers.sh status` (it knows where the data lives)."""
    found = dict(re.findall(r"^(mariadb|rabbitmq): running \(pid (\d+)", servers("status"), re.M))
    assert set(found) == {"mariadb", "rabbitmq"}, servers("status")
    return {name: int(pid) for name, pid in found.items()}


def assert_private(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode & 0o077 == 0, f"{path} has mode {oct(mode)}"


def mysql_port() -> int:
    return config.get_app_config().getint("repository", "port")


def test_services_log_in_to_mariadb_as_the_dedicated_user(app: TestApp) -> None:
    secrets = local_secrets()
    assert secrets.get("client", "user") == "htmengine"
    with get_engine().connect() as conn:
        assert conn.execute(text("SELECT CURRENT_USER()")).scalar() == "htmengine@localhost"
        grants = [row[0] for row in conn.execute(text("SHOW GRANTS"))]
    # Rights on the htmengine* databases only: no global right (FILE, PROCESS, SUPER, ...).
    assert any(grant.startswith("GRANT USAGE ON *.*") for grant in grants), grants
    assert all(" ON *.* " not in grant or grant.startswith("GRANT USAGE") for grant in grants)
    assert all("`htmengine%`" in grant for grant in grants if " ON *.* " not in grant), grants


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_mariadb_root_without_a_password_is_refused(app: TestApp, host: str) -> None:
    with pytest.raises(pymysql.err.OperationalError) as refused:
        pymysql.connect(host=host, port=mysql_port(), user="root", password="", connect_timeout=5)
    assert refused.value.args[0] == 1045  # access denied


def test_mariadb_cannot_read_or_write_files_and_does_not_run_as_root(app: TestApp) -> None:
    with get_engine().connect() as conn:
        priv = conn.execute(text("SELECT @@secure_file_priv")).scalar()
        local_infile = conn.execute(text("SELECT @@local_infile")).scalar()
    assert priv, "secure_file_priv is unset: SQL may read and write any file mariadbd can"
    assert Path(priv).is_dir() and not any(Path(priv).iterdir())
    assert local_infile == 0
    process = psutil.Process(server_pids()["mariadb"])
    assert process.uids().real != 0 and process.uids().effective != 0, process.username()
    if os.geteuid() == 0:
        assert process.username() == "htmengine"
    (data_dir,) = (arg.split("=", 1)[1] for arg in process.cmdline() if arg.startswith("--datadir="))
    assert_private(Path(data_dir))


def test_rabbitmq_does_not_run_as_root() -> None:
    process = psutil.Process(server_pids()["rabbitmq"])
    assert process.uids().effective != 0, process.username()


def connection_users() -> list[dict]:
    return json.loads(
        servers("rabbitmqctl", "-q", "list_connections", "user", "vhost", "peer_port",
                "--formatter", "json")  # fmt: skip
    )


def test_services_log_in_to_rabbitmq_as_the_dedicated_user_and_vhost(app: TestApp) -> None:
    with MessageBus() as bus:
        bus.declare_queue(f"{app.name}.security.{uuid.uuid4().hex[:8]}", exclusive=True)
        amqp_port = config.get_rabbitmq_config().getint("connection", "port")
        mine = {
            c.laddr.port
            for c in psutil.Process().net_connections(kind="tcp")
            if c.raddr and c.raddr.port == amqp_port
        }
        assert mine
        deadline = time.monotonic() + 30
        while True:  # the broker lists a connection a moment after it opened
            seen = {c["peer_port"]: c for c in connection_users() if c["peer_port"] in mine}
            if seen or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    assert seen, connection_users()
    assert {(c["user"], c["vhost"]) for c in seen.values()} == {("htmengine", "htmengine")}


@pytest.mark.parametrize("vhost", ["/", "htmengine"])
def test_rabbitmq_guest_is_refused(app: TestApp, vhost: str) -> None:
    port = config.get_rabbitmq_config().getint("connection", "port")
    parameters = pika.ConnectionParameters(
        "127.0.0.1", port, vhost, pika.PlainCredentials("guest", "guest"), connection_attempts=1
    )
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        pika.BlockingConnection(parameters).close()


def test_the_secrets_files_are_private() -> None:
    path = Path(config.local_secrets_path())
    assert_private(path.parent)
    for secrets_file in path.parent.iterdir():
        assert_private(secrets_file)


def test_supervisord_refuses_xmlrpc_without_credentials_and_checkpoints_are_private(
    clean_db: TestApp, supervisor_factory
) -> None:
    from htmengine.adapters.datasource import createDatasourceAdapter

    sup: Supervisor = supervisor_factory(["metric_storer", "model_scheduler", "anomaly_service"])
    anonymous = xmlrpc.client.ServerProxy(sup.url)
    with pytest.raises(xmlrpc.client.ProtocolError) as refused:
        anonymous.supervisor.getState()
    assert refused.value.errcode == 401
    wrong = xmlrpc.client.ServerProxy(sup.url.replace("http://", "http://htmengine:wrong@"))
    with pytest.raises(xmlrpc.client.ProtocolError):
        wrong.supervisor.getState()
    assert sup.server.supervisor.getState()["statename"] == "RUNNING"
    socket_path = clean_db.root / "var" / "supervisor.sock"
    assert stat.S_IMODE(socket_path.stat().st_mode) == 0o700

    # A model's checkpoint, written by a slot worker under supervisord: for its owner only.
    adapter = createDatasourceAdapter("custom")
    adapter.createMetric("security_probe")
    uid = adapter.monitorMetric(
        {"datasource": "custom", "metricSpec": {"metric": "security_probe"},
         "modelParams": {"min": 0, "max": 100}}  # fmt: skip
    )
    root = Path(config.get_checkpoint_config().get("storage", "root"))

    def written() -> list[Path]:
        """The models' checkpoints, which the slot worker writes (under supervisord's umask); the
        dot-directories (locks, scratch) may be made by the calling process, and the root's own
        mode keeps others out of those."""
        return [p for p in root.rglob("*") if not p.relative_to(root).parts[0].startswith(".")]

    deadline = time.monotonic() + 120
    while not any(p.is_file() for p in written()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert any(p.is_file() for p in written()), (
        f"no checkpoint of {uid} under {root}\n{clean_db.log_tail('model_scheduler')}"
    )
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    for path in written():
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, f"{path} is readable by others"

    # Nothing the services logged names a password.
    secrets = local_secrets()
    passwords = [secrets.get(s, "password") for s in ("client", "rabbitmq", "supervisor")]
    for log in clean_db.logs_dir.glob("*.log"):
        body = log.read_text(errors="replace")
        assert not [pw for pw in passwords if pw in body], f"a password is in {log}"
