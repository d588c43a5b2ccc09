"""Configuration: INI files in $APPLICATION_CONFIG_PATH, an overrides/ layer, and env overrides.

The ground floor of the package: it imports nothing of ours. Every service reads its settings through
`Config`; there are no defaults in code, so a missing key is an error that names the file and key.

Precedence for an option that exists in the baseline file, highest first:
1. environment variable ``_NTA_UTILS_CONFIG__<CONFROOT>__<SECTION>__<OPTION>`` (upper case, ``-`` in the
   file stem becomes ``_``), e.g. ``_NTA_UTILS_CONFIG__APPLICATION__REPOSITORY__DB``;
2. ``<APPLICATION_CONFIG_PATH>/overrides/<file>``;
3. ``<APPLICATION_CONFIG_PATH>/<file>``.

The local secrets file (``secrets/local.cnf`` under ``$HTMENGINE_VAR``, default
``<APPLICATION_CONFIG_PATH>/../var``; written by ``scripts/servers.sh``) is a layer beneath all of these
for the servers' credentials only: where application.conf [repository] or rabbitmq.conf [credentials]
leave ``user`` empty, both the user and its password come from that file. An application that names
its own user (even with an empty password) gets exactly its own values, as in the original.
"""

from __future__ import annotations

import configparser
import functools
import os

CONFIG_PATH_ENV = "APPLICATION_CONFIG_PATH"
ENV_OVERRIDE_PREFIX = "_NTA_UTILS_CONFIG"
VAR_ENV = "HTMENGINE_VAR"
LOCAL_SECRETS_FILE = os.path.join("secrets", "local.cnf")

# What the local secrets file supplies: (config file, section) -> (its section, {key: its key}).
_LOCAL_CREDENTIALS = {
    ("application.conf", "repository"): ("client", {"user": "user", "passwd": "password"}),
    ("rabbitmq.conf", "credentials"): ("rabbitmq", {"user": "user", "password": "password"}),
}
# The environment conf/supervisord.conf expands into [inet_http_server] username/password.
SUPERVISOR_ENV = {
    "HTMENGINE_SUPERVISOR_USER": ("supervisor", "username"),
    "HTMENGINE_SUPERVISOR_PASSWORD": ("supervisor", "password"),
}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class ConfigError(Exception):
    """A configuration problem; the message names the variable, file, section or key at fault."""


class ApplicationNotConfiguredError(ConfigError):
    """APPLICATION_CONFIG_PATH is unset or does not point to a directory."""


def config_dir() -> str:
    """The application's configuration directory, validated."""
    path = os.environ.get(CONFIG_PATH_ENV)
    if not path:
        raise ApplicationNotConfiguredError(
            f"{CONFIG_PATH_ENV} is not set; export it to the directory holding application.conf, "
            "model-swapper.conf, model-checkpoint.conf and rabbitmq.conf"
        )
    if not os.path.isdir(path):
        raise ApplicationNotConfiguredError(f"{CONFIG_PATH_ENV}={path!r} is not a directory")
    return path


def local_secrets_path(base_dir: str | None = None) -> str:
    """Where scripts/servers.sh keeps the local servers' credentials."""
    var = os.environ.get(VAR_ENV) or os.path.join(
        base_dir if base_dir is not None else config_dir(), os.pardir, "var"
    )
    return os.path.normpath(os.path.join(var, LOCAL_SECRETS_FILE))


def read_local_secrets(base_dir: str | None = None) -> configparser.ConfigParser | None:
    """The local secrets file, or None when there is none; refused if others may read it."""
    path = local_secrets_path(base_dir)
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path) as handle:
            if os.fstat(handle.fileno()).st_mode & 0o077:
                raise ConfigError(f"{path} is readable by others; chmod 600 it")
            parser.read_file(handle, source=path)
    except FileNotFoundError:
        return None
    except configparser.Error as exc:
        raise ConfigError(f"cannot parse {path}: {exc}") from exc
    return parser


def supervisor_environ(base_dir: str | None = None) -> dict[str, str]:
    """The credentials supervisord.conf expands (``%(ENV_HTMENGINE_SUPERVISOR_...)s``), from the
    environment or else the local secrets file; names without a value are left out."""
    secrets = None
    environ = {}
    for name, (section, key) in SUPERVISOR_ENV.items():
        value = os.environ.get(name)
        if value is None:
            if secrets is None:
                secrets = read_local_secrets(base_dir) or configparser.ConfigParser()
            value = secrets.get(section, key, fallback=None)
        if value is not None:
            environ[name] = value
    return environ


class Config:
    """One INI file of the application's configuration directory, with overrides applied."""

    def __init__(self, file_name: str, base_dir: str | None = None) -> None:
        self.file_name = file_name
        self.base_dir = base_dir if base_dir is not None else config_dir()
        self.path = os.path.join(self.base_dir, file_name)
        self.override_path = os.path.join(self.base_dir, "overrides", file_name)
        stem = os.path.splitext(file_name)[0]
        self._env_root = stem.upper().replace("-", "_")
        self._parser = configparser.ConfigParser(interpolation=None)
        if not os.path.isfile(self.path):
            raise ConfigError(f"configuration file {self.path} is missing")
        try:
            self._parser.read(self.path)
            if os.path.isfile(self.override_path):
                self._parser.read(self.override_path)
        except configparser.Error as exc:
            raise ConfigError(f"cannot parse {self.path}: {exc}") from exc
        self._local_secrets: configparser.ConfigParser | None = None

    def _env_name(self, section: str, option: str) -> str:
        parts = (ENV_OVERRIDE_PREFIX, self._env_root, section, option)
        return "__".join(p.upper().replace("-", "_") for p in parts)

    def has_option(self, section: str, option: str) -> bool:
        return self._parser.has_option(section, option)

    def get(self, section: str, option: str) -> str:
        """The option's value as text; env overrides win for options that exist in the file."""
        if not self._parser.has_section(section):
            raise ConfigError(f"{self.path}: section [{section}] is missing")
        if not self._parser.has_option(section, option):
            raise ConfigError(f"{self.path}: key '{option}' is missing from section [{section}]")
        local = _LOCAL_CREDENTIALS.get((self.file_name, section))
        if local is not None and option in local[1] and not self._own(section, "user").strip():
            return self._local_secret(section, option, *local)
        return self._own(section, option)

    def _own(self, section: str, option: str) -> str:
        """The value of the application's own files and environment."""
        override = os.environ.get(self._env_name(section, option))
        if override is not None:
            return override
        return self._parser.get(section, option, fallback="")

    def _local_secret(
        self, section: str, option: str, secrets_section: str, keys: dict[str, str]
    ) -> str:
        if self._local_secrets is None:
            self._local_secrets = read_local_secrets(self.base_dir)
        path = local_secrets_path(self.base_dir)
        if self._local_secrets is None or not self._local_secrets.has_option(
            secrets_section, keys[option]
        ):
            raise ConfigError(
                f"{self.path}: [{section}] user is empty, so {option} comes from the local secrets "
                f"file, but {path} has no [{secrets_section}] {keys[option]} (run "
                f"scripts/servers.sh start, or set {' and '.join(keys)} in {self.file_name})"
            )
        return self._local_secrets.get(secrets_section, keys[option])

    def _convert(self, section: str, option: str, kind: str, convert):
        raw = self.get(section, option)
        try:
            return convert(raw.strip())
        except ValueError:
            raise ConfigError(
                f"{self.path}: [{section}] {option} = {raw!r} is not a valid {kind}"
            ) from None

    def getint(self, section: str, option: str) -> int:
        return self._convert(section, option, "integer", int)

    def getfloat(self, section: str, option: str) -> float:
        return self._convert(section, option, "number", float)

    def getboolean(self, section: str, option: str) -> bool:
        def to_bool(text: str) -> bool:
            lowered = text.lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
            raise ValueError(text)

        return self._convert(section, option, "boolean", to_bool)

    def items(self, section: str) -> dict[str, str]:
        if not self._parser.has_section(section):
            raise ConfigError(f"{self.path}: section [{section}] is missing")
        return {option: self.get(section, option) for option in self._parser.options(section)}

    def sections(self) -> list[str]:
        return self._parser.sections()


@functools.cache
def _cached(file_name: str, base_dir: str) -> Config:
    return Config(file_name, base_dir)


def _load(file_name: str) -> Config:
    return _cached(file_name, config_dir())


def get_app_config() -> Config:
    """application.conf (repository, listener, streamer, likelihood settings)."""
    return _load("application.conf")


def get_model_swapper_config() -> Config:
    """model-swapper.conf (queue names, runner and scheduler settings)."""
    return _load("model-swapper.conf")


def get_checkpoint_config() -> Config:
    """model-checkpoint.conf (checkpoint archive root)."""
    return _load("model-checkpoint.conf")


def get_rabbitmq_config() -> Config:
    """rabbitmq.conf (broker connection and credentials)."""
    return _load("rabbitmq.conf")


def clear_cache() -> None:
    """Forget loaded files (tests that rewrite config in-process)."""
    _cached.cache_clear()
