"""Configuration: INI files in $APPLICATION_CONFIG_PATH, an overrides/ layer, and env overrides.

The ground floor of the package: it imports nothing of ours. Every service reads its settings through
`Config`; there are no defaults in code, so a missing key is an error that names the file and key.

Precedence for an option that exists in the baseline file, highest first:
1. environment variable ``_NTA_UTILS_CONFIG__<CONFROOT>__<SECTION>__<OPTION>`` (upper case, ``-`` in the
   file stem becomes ``_``), e.g. ``_NTA_UTILS_CONFIG__APPLICATION__REPOSITORY__DB``;
2. ``<APPLICATION_CONFIG_PATH>/overrides/<file>``;
3. ``<APPLICATION_CONFIG_PATH>/<file>``.
"""

from __future__ import annotations

import configparser
import functools
import os

CONFIG_PATH_ENV = "APPLICATION_CONFIG_PATH"
ENV_OVERRIDE_PREFIX = "_NTA_UTILS_CONFIG"

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
        override = os.environ.get(self._env_name(section, option))
        if override is not None:
            return override
        return self._parser.get(section, option)

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
