"""What the CLI's commands share: locating config and scripts, one-line errors, tables, timestamps,
and scraping the services' Prometheus endpoints."""

from __future__ import annotations

import configparser
import datetime
import functools
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path

import click
import pika.exceptions
import sqlalchemy.exc
from prometheus_client.parser import text_string_to_metric_families

from htmengine import config as htm_config
from htmengine.config import ConfigError
from htmengine.exceptions import HTMEngineError, MetricAlreadyMonitored

# The source checkout holding this package (scripts/, conf/), when installed in develop mode.
CHECKOUT_ROOT = Path(__file__).resolve().parents[2]

SUPERVISOR_URL_ENV = "HTMENGINE_SUPERVISOR_URL"
DEFAULT_SUPERVISOR_URL = "http://127.0.0.1:9001/RPC2"

# Seconds the CLI waits for an unreachable broker or endpoint before it gives up (services retry
# for minutes; a person at a terminal should hear about it at once).
CONNECT_TIMEOUT_SEC = 3.0

# MySQL client error codes worth a specific message.
_MYSQL_CANNOT_CONNECT = {2002, 2003, 2006, 2013}
_MYSQL_UNKNOWN_DATABASE = 1049
_MYSQL_NO_SUCH_TABLE = 1146


def ensure_config_dir() -> str:
    """APPLICATION_CONFIG_PATH, defaulting to the checkout's conf/ as scripts/up.sh does."""
    path = os.environ.get(htm_config.CONFIG_PATH_ENV)
    if not path and (CHECKOUT_ROOT / "conf" / "application.conf").is_file():
        path = str(CHECKOUT_ROOT / "conf")
        os.environ[htm_config.CONFIG_PATH_ENV] = path
        htm_config.clear_cache()
    return htm_config.config_dir()


def checkout_script(name: str) -> Path:
    """A script of the source checkout (scripts/<name>); a one-line error when this htmengine was
    installed without one (the scripts install servers and a virtualenv into the checkout)."""
    path = CHECKOUT_ROOT / "scripts" / name
    if not (path.is_file() and (CHECKOUT_ROOT / "pyproject.toml").is_file()):
        raise click.ClickException(
            f"this command runs scripts/{name} of a source checkout, and htmengine is installed "
            f"at {Path(__file__).resolve().parents[1]} without one: run it from a checkout "
            "installed with `pip install -e <checkout>`, or run <checkout>/scripts/" + name
        )
    return path


_ENV_REFERENCE = re.compile(r"%\(ENV_(\w+)\)s")


def supervisor_url_from_config(conf_dir: str) -> str:
    """The XML-RPC URL of [inet_http_server] in <conf_dir>/supervisord.conf (or the default).

    Credentials written as ``%(ENV_NAME)s`` (as conf/supervisord.conf does) are expanded from the
    environment, or else from the local secrets file (htmengine.config.supervisor_environ).
    """
    path = Path(conf_dir) / "supervisord.conf"
    parser = configparser.RawConfigParser(strict=False)
    try:
        parser.read(path)
    except configparser.Error as exc:
        raise ConfigError(f"cannot parse {path}: {exc}") from exc
    if not parser.has_option("inet_http_server", "port"):
        return DEFAULT_SUPERVISOR_URL
    host, _, port = parser.get("inet_http_server", "port").strip().rpartition(":")
    host = host or "127.0.0.1"
    if host in {"*", "0.0.0.0"}:
        host = "127.0.0.1"
    credentials = ""
    if parser.has_option("inet_http_server", "username"):
        environ = htm_config.supervisor_environ(conf_dir)

        def expand(option: str) -> str:
            value = parser.get("inet_http_server", option, fallback="")
            for name in _ENV_REFERENCE.findall(value):
                if name not in environ:
                    raise ConfigError(
                        f"{path}: [inet_http_server] {option} needs ${name}, which is neither set "
                        f"nor in {htm_config.local_secrets_path(conf_dir)}"
                    )
            return _ENV_REFERENCE.sub(lambda match: environ[match.group(1)], value)

        quote = functools.partial(urllib.parse.quote, safe="")
        credentials = f"{quote(expand('username'))}:{quote(expand('password'))}@"
    return f"http://{credentials}{host}:{port}/RPC2"


def without_credentials(url: str) -> str:
    """`url` without its user:password@ part (for showing it)."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def describe_error(exc: BaseException) -> str | None:
    """A one-line explanation of an expected failure, or None for a bug (shown with a traceback)."""
    if isinstance(exc, ConfigError):
        return str(exc)
    if isinstance(exc, MetricAlreadyMonitored):
        return f"{exc} (use --force to recreate its model)"
    if isinstance(exc, HTMEngineError):
        return str(exc)
    if isinstance(exc, sqlalchemy.exc.DBAPIError):
        return _describe_db_error(exc)
    if isinstance(exc, pika.exceptions.AMQPConnectionError):
        rabbit = htm_config.get_rabbitmq_config()
        where = f"{rabbit.get('connection', 'host')}:{rabbit.get('connection', 'port')}"
        return (
            f"cannot connect to RabbitMQ at {where} ({exc!r}); is the suite running? (htmengine up)"
        )
    if isinstance(exc, BrokenPipeError):
        return None  # stdout piped into `head`: click ends quietly
    if isinstance(exc, OSError):
        return str(exc)
    return None


def _describe_db_error(exc: sqlalchemy.exc.DBAPIError) -> str:
    code = exc.orig.args[0] if exc.orig is not None and exc.orig.args else None
    repo = htm_config.get_app_config()
    if code in _MYSQL_CANNOT_CONNECT:
        where = f"{repo.get('repository', 'host')}:{repo.get('repository', 'port')}"
        return f"cannot connect to MySQL at {where}; is the suite running? (htmengine up)"
    if code == _MYSQL_UNKNOWN_DATABASE:
        return (
            f"database {repo.get('repository', 'db')!r} does not exist; "
            "create it with `htmengine db upgrade`"
        )
    if code == _MYSQL_NO_SUCH_TABLE:
        return (
            f"database {repo.get('repository', 'db')!r} is not migrated; run `htmengine db upgrade`"
        )
    detail = exc.orig.args[-1] if exc.orig is not None and exc.orig.args else exc
    return f"database error: {detail}"


def status_name(status: int | None) -> str:
    """The MetricStatus name of a metric.status value (the number itself if unknown)."""
    from htmengine.repository import MetricStatus

    try:
        return MetricStatus(status).name
    except ValueError:
        return str(status)


def parse_timestamp(text: str) -> datetime.datetime:
    """A naive-UTC datetime from epoch seconds or an ISO-8601 date/time (a zone is converted)."""
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
        return moment.replace(tzinfo=None)
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a timestamp (use epoch seconds or YYYY-MM-DD[ HH:MM:SS])"
        ) from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(datetime.UTC).replace(tzinfo=None)
    return moment


class TimestampType(click.ParamType):
    """A click parameter holding a naive-UTC timestamp."""

    name = "TIMESTAMP"

    def convert(self, value, param, ctx) -> datetime.datetime:
        if isinstance(value, datetime.datetime):
            return value
        try:
            return parse_timestamp(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def format_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Plain aligned columns; numbers right-aligned, text left-aligned, None shown as '-'."""
    rows = list(rows)
    numeric = [
        all(isinstance(row[i], int | float) or row[i] is None for row in rows)
        for i in range(len(headers))
    ]
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max([len(h), *(len(row[i]) for row in cells)]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), *(line(row) for row in cells)])


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, datetime.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


# -- Prometheus endpoints ------------------------------------------------------------------------


class ScrapeError(Exception):
    """A metrics endpoint did not answer or answered nonsense."""


def scrape_metrics(port: int, host: str = "127.0.0.1") -> dict[str, float]:
    """Sample values of http://host:port/metrics, summed over label sets, by sample name.

    Counters appear under their ``_total`` name, histograms as ``_sum`` / ``_count`` / ``_bucket``.
    """
    url = f"http://{host}:{port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=CONNECT_TIMEOUT_SEC) as response:
            text = response.read().decode("utf-8")
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ScrapeError(f"{url}: {reason}") from exc
    values: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            if not family.samples:
                # A labelled counter nothing has incremented yet: it exists, and it is zero.
                suffix = "_total" if family.type == "counter" else ""
                values[family.name + suffix] = 0.0
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    continue
                values[sample.name] = values.get(sample.name, 0.0) + sample.value
    except ValueError as exc:
        raise ScrapeError(f"{url}: not Prometheus text ({exc})") from exc
    return values
