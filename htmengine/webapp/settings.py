"""What the webapp reads from application.conf ``[webapp]``, and its API key.

An application written for the original has no ``[webapp]`` section: for it the webapp is off
(``enabled`` returns False) rather than a configuration error, so including htmengine's
supervisord-base.conf keeps working unchanged. Every other key is required once the section exists.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass

from htmengine.config import Config, ConfigError
from htmengine.engine.model_input import configured_chunk_size

SECTION = "webapp"


def enabled(config: Config) -> bool:
    """Whether the webapp should serve: a ``[webapp]`` section with ``enabled = true``."""
    if SECTION not in config.sections():
        return False
    return config.getboolean(SECTION, "enabled")


@dataclass(frozen=True)
class WebappSettings:
    """The webapp's settings (see conf/application.conf [webapp] for their meaning)."""

    host: str
    port: int
    api_key: str
    open_reads: bool
    max_body_bytes: int
    client_buffer_bytes: int
    rank_refresh_sec: float
    # From [metric_listener]: posted lines get the listener's limits and go to its queue.
    data_queue: str
    max_line_bytes: int
    batch_max_lines: int
    batch_max_bytes: int
    max_future_seconds: int
    results_exchange: str
    chunk_size: int

    @classmethod
    def from_config(cls, config: Config) -> WebappSettings:
        settings = cls(
            host=config.get(SECTION, "host"),
            port=config.getint(SECTION, "port"),
            api_key=load_api_key(config),
            open_reads=config.getboolean(SECTION, "open_reads"),
            max_body_bytes=config.getint(SECTION, "max_body_bytes"),
            client_buffer_bytes=config.getint(SECTION, "client_buffer_bytes"),
            rank_refresh_sec=config.getfloat(SECTION, "rank_refresh_sec"),
            data_queue=config.get("metric_listener", "queue_name"),
            max_line_bytes=config.getint("metric_listener", "max_line_bytes"),
            batch_max_lines=config.getint("metric_listener", "batch_max_lines"),
            batch_max_bytes=config.getint("metric_listener", "batch_max_bytes"),
            max_future_seconds=config.getint("metric_listener", "max_future_seconds"),
            results_exchange=config.get("metric_streamer", "results_exchange_name"),
            chunk_size=configured_chunk_size(config),
        )
        for key in ("max_body_bytes", "client_buffer_bytes", "max_line_bytes", "batch_max_lines"):
            if getattr(settings, key) < 1:
                raise ConfigError(f"{config.path}: {key} must be >= 1")
        if settings.rank_refresh_sec <= 0:
            raise ConfigError(f"{config.path}: [{SECTION}] rank_refresh_sec must be > 0")
        return settings


def api_key_path(config: Config) -> str:
    """The file that holds a generated API key (``api_key_file``, variables expanded)."""
    raw = config.get(SECTION, "api_key_file").strip()
    path = os.path.expandvars(os.path.expanduser(raw))
    if not os.path.isabs(path):
        raise ConfigError(f"{config.path}: [{SECTION}] api_key_file must be absolute: {raw!r}")
    return os.path.normpath(path)


def load_api_key(config: Config, *, create: bool = True) -> str:
    """``api_key`` when set; otherwise the key in ``api_key_file``, generated there (mode 0600)
    on first use, so a fresh standalone install has a key nobody else can read."""
    key = config.get(SECTION, "api_key").strip()
    if key:
        return key
    path = api_key_path(config)
    try:
        with open(path) as fh:
            key = fh.read().strip()
    except FileNotFoundError:
        if not create:
            raise ConfigError(
                f"no API key yet: {path} is created when the webapp first starts"
            ) from None
        key = _create_key_file(path)
    if not key:
        raise ConfigError(f"{path} is empty: delete it to have a new API key generated")
    return key


def _create_key_file(path: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    key = secrets.token_urlsafe(24)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        # Another process created it first: use its key.
        with open(path) as fh:
            return fh.read().strip()
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    return key
