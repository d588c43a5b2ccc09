"""A throw-away htmengine application for integration tests.

Each test session gets its own app name, database, queue names, ports, checkpoint root and log
directory, written as an overrides/ layer on top of a copy of the repository's conf/ directory, so
several test runs (and the real suite) can share one MariaDB and one RabbitMQ.

The servers are the ones scripts/servers.sh runs for $HTMENGINE_VAR (default <repo>/var): the app logs
in with the credentials of its local secrets file, on the ports written there.
"""

from __future__ import annotations

import configparser
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
import xmlrpc.client
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SERVERS_SCRIPT = REPO / "scripts" / "servers.sh"
# App (and database) names start with this: the services' MariaDB user may only use htmengine*.
APP_NAME_PREFIX = "htmengine_t"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def servers_var() -> Path:
    """The servers' var/ directory, exported so the config layer (here and in every service the
    tests start) finds its secrets file from a test app's config directory too."""
    var = os.environ.setdefault("HTMENGINE_VAR", str(REPO / "var"))
    return Path(var)


def start_servers() -> None:
    """Start MariaDB and RabbitMQ with the project's own script (idempotent)."""
    servers_var()
    subprocess.run(["bash", str(SERVERS_SCRIPT), "start"], check=True)


def local_secrets() -> configparser.ConfigParser:
    from htmengine.config import local_secrets_path, read_local_secrets

    secrets = read_local_secrets()
    if secrets is None:
        raise RuntimeError(f"{local_secrets_path()} is missing: run scripts/servers.sh start")
    return secrets


def restart_rabbitmq() -> None:
    subprocess.run(["bash", str(SERVERS_SCRIPT), "restart-rabbitmq"], check=True)


def _write_overrides(conf_dir: Path, file_name: str, values: dict[str, dict[str, str]]) -> None:
    parser = configparser.ConfigParser(interpolation=None)
    path = conf_dir / "overrides" / file_name
    if path.exists():
        parser.read(path)
    for section, options in values.items():
        if not parser.has_section(section):
            parser.add_section(section)
        for key, value in options.items():
            parser.set(section, key, str(value))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        parser.write(fh)


@dataclass
class TestApp:
    """Paths, names and ports of one test application."""

    __test__ = False  # a fixture value, not a test class

    root: Path
    name: str
    ports: dict[str, int] = field(default_factory=dict)
    api_key: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def conf_dir(self) -> Path:
        return self.root / "conf"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def db_name(self) -> str:
        return self.name

    @property
    def data_queue(self) -> str:
        return f"{self.name}.metric.custom.data"

    @property
    def results_exchange(self) -> str:
        return f"{self.name}.model.results"

    @property
    def results_queue(self) -> str:
        return f"{self.name}.mswapper.results"

    @property
    def model_input_queue_prefix(self) -> str:
        return f"{self.name}.mswapper.model.input."

    @property
    def notification_queue(self) -> str:
        return f"{self.name}.mswapper.scheduler.notification"

    def override(self, file_name: str, values: dict[str, dict[str, str]]) -> None:
        """Add override keys (visible to services started afterwards and after config.clear_cache())."""
        _write_overrides(self.conf_dir, file_name, values)
        from htmengine import config

        config.clear_cache()

    def activate(self) -> None:
        os.environ["APPLICATION_CONFIG_PATH"] = str(self.conf_dir)
        from htmengine import config

        config.clear_cache()

    def log_tail(self, program: str, lines: int = 40) -> str:
        path = self.logs_dir / f"{program}.log"
        if not path.exists():
            return f"(no log {path})"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def create_test_app(root: Path) -> TestApp:
    """Copy conf/ into `root`, point every name and port at this app, and activate it."""
    name = APP_NAME_PREFIX + uuid.uuid4().hex[:10]
    conf_dir = root / "conf"
    conf_dir.mkdir(parents=True)
    for path in (REPO / "conf").iterdir():
        if path.suffix == ".conf":
            shutil.copy(path, conf_dir / path.name)
    (root / "logs").mkdir()
    (root / "var").mkdir()
    app = TestApp(root=root, name=name)
    servers_var()
    app.activate()  # the secrets file is found through the app's config
    secrets = local_secrets()
    app.ports = {
        "plaintext": free_port(),
        "udp": free_port(),
        "supervisor": free_port(),
        "listener_metrics": free_port(),
        "storer_metrics": free_port(),
        "scheduler_metrics": free_port(),
        "anomaly_metrics": free_port(),
        "webapp": free_port(),
    }
    _write_overrides(
        conf_dir,
        "application.conf",
        {
            "repository": {"db": app.db_name, "port": secrets.get("client", "port")},
            "metric_streamer": {"results_exchange_name": app.results_exchange},
            "metric_listener": {
                "plaintext_port": app.ports["plaintext"],
                "udp_port": app.ports["udp"],
                "queue_name": app.data_queue,
                "metrics_port": app.ports["listener_metrics"],
            },
            "metric_storer": {"metrics_port": app.ports["storer_metrics"]},
            "anomaly_service": {"metrics_port": app.ports["anomaly_metrics"]},
            "webapp": {"port": app.ports["webapp"], "api_key": app.api_key},
            # Tests written for the original's scoring and range rule pin its profile (conf/
            # selects another); test_nab_engine.py runs the suite in every profile.
            "anomaly_likelihood": {"profile": "htmengine"},
        },
    )
    _write_overrides(
        conf_dir,
        "model-swapper.conf",
        {
            "interface_bus": {
                "results_queue": app.results_queue,
                "model_input_queue_prefix": app.model_input_queue_prefix,
                "scheduler_notification_queue": app.notification_queue,
            },
            "model_scheduler": {"metrics_port": app.ports["scheduler_metrics"]},
        },
    )
    _write_overrides(
        conf_dir, "rabbitmq.conf", {"connection": {"port": secrets.get("rabbitmq", "port")}}
    )
    _write_overrides(
        conf_dir, "model-checkpoint.conf", {"storage": {"root": str(root / "var" / "checkpoints")}}
    )
    app.activate()
    return app


def drop_database(app: TestApp) -> None:
    from htmengine.repository import migrate

    app.activate()
    migrate.drop_database()


class Supervisor:
    """supervisord running the app's conf/supervisord.conf (which includes the base file)."""

    def __init__(
        self,
        app: TestApp,
        programs: Iterable[str] | None = None,
        environment: dict[str, dict[str, str]] | None = None,
    ) -> None:
        """`environment`: extra variables by program (e.g. config overrides for one service)."""
        self.app = app
        self.programs = list(programs) if programs is not None else None
        self.environment = environment or {}
        self.conf_path = app.conf_dir / "supervisord.conf"
        self.proc: subprocess.Popen | None = None
        supervisor = local_secrets()["supervisor"]
        self.credentials = (supervisor["username"], supervisor["password"])
        self.url = f"http://127.0.0.1:{app.ports['supervisor']}/RPC2"
        user, password = self.credentials
        self.server = xmlrpc.client.ServerProxy(
            f"http://{user}:{password}@127.0.0.1:{app.ports['supervisor']}/RPC2"
        )

    def write_config(self) -> None:
        shutil.copy(REPO / "conf" / "supervisord-base.conf", self.app.conf_dir)
        text = (REPO / "conf" / "supervisord.conf").read_text()
        text = text.replace("port=127.0.0.1:9001", f"port=127.0.0.1:{self.app.ports['supervisor']}")
        self.conf_path.write_text(text)
        if self.programs is not None:
            base = self.app.conf_dir / "supervisord-base.conf"
            base_text = base.read_text()
            start = base_text.index("programs=")
            end = base_text.index("\n", start)
            base.write_text(
                base_text[:start] + "programs=" + ",".join(self.programs) + base_text[end:]
            )
            self._drop_unlisted_programs(base)
        if self.environment:
            self._set_environment(self.app.conf_dir / "supervisord-base.conf")

    def _drop_unlisted_programs(self, base: Path) -> None:
        parser = configparser.RawConfigParser()
        parser.read(base)
        for section in parser.sections():
            if section.startswith("program:") and section[8:] not in self.programs:
                parser.remove_section(section)
        with open(base, "w") as fh:
            parser.write(fh)

    def _set_environment(self, base: Path) -> None:
        parser = configparser.RawConfigParser()
        parser.read(base)
        for program, variables in self.environment.items():
            value = ",".join(f'{key}="{val}"' for key, val in variables.items())
            parser.set(f"program:{program}", "environment", value)
        with open(base, "w") as fh:
            parser.write(fh)

    def start(self, timeout: float = 60.0) -> None:
        self.write_config()
        env = dict(os.environ)
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        from htmengine.config import supervisor_environ

        env.update(supervisor_environ(str(self.app.conf_dir)))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(self.conf_path)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        self.wait_running(timeout=timeout)
        if self.programs is None or "metric_listener" in self.programs:
            self.wait_listening(self.app.ports["plaintext"], timeout=timeout)

    def wait_listening(self, port: int, timeout: float = 60.0) -> None:
        """Wait until a TCP port on 127.0.0.1 accepts connections: RUNNING (2 s up) does not mean
        a service finished importing and bound its socket, which takes longer on a loaded host."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"nothing listens on port {port} after {timeout}s") from None
                time.sleep(0.2)

    def process_info(self) -> dict[str, dict]:
        return {info["name"]: info for info in self.server.supervisor.getAllProcessInfo()}

    def wait_running(self, names: Iterable[str] | None = None, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            try:
                infos = self.process_info()
                wanted = list(names) if names is not None else list(infos)
                if wanted and all(infos[n]["statename"] == "RUNNING" for n in wanted):
                    return
            except (OSError, xmlrpc.client.Fault) as exc:
                last_error = exc
            time.sleep(0.3)
        logs = "\n".join(
            f"--- {n} ---\n{self.app.log_tail(n)}" for n in (names or self.programs or [])
        )
        raise TimeoutError(
            f"supervised programs not RUNNING after {timeout}s ({last_error})\n{logs}"
        )

    def pid(self, name: str) -> int:
        return self.process_info()[name]["pid"]

    def kill(self, name: str, sig: int = signal.SIGKILL) -> int:
        """Send `sig` to a program behind supervisord's back (it restarts it: autorestart=true)."""
        pid = self.pid(name)
        os.kill(pid, sig)
        return pid

    def wait_restarted(self, name: str, old_pid: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.process_info()[name]
            if info["statename"] == "RUNNING" and info["pid"] != old_pid:
                return
            time.sleep(0.2)
        raise TimeoutError(f"{name} was not restarted within {timeout}s")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
