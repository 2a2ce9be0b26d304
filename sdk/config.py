"""What every component's settings share: where SAGE_HOME is, list parsing, TOML files.

Precedence for every component, highest first: constructor arguments (the CLI passes
only the flags a user gave), environment variables (``SAGE_<COMPONENT>_<FIELD>``),
TOML files (``/etc/sage/<component>.toml`` then ``~/.config/sage/<component>.toml``,
the later one winning, or the one file ``SAGE_<COMPONENT>_CONFIG`` names), defaults.

A default file that does not exist is skipped; the file ``SAGE_<COMPONENT>_CONFIG``
names must exist. A file that is not valid TOML is refused with its path
(:class:`ConfigFileError`).
"""

from __future__ import annotations

import json
import os
import tomllib
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, ClassVar

from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, TomlConfigSettingsSource

__all__ = ["ConfigFileError", "SageSettings", "sage_home", "split_list", "toml_files_for"]


class ConfigFileError(ValueError):
    """A configuration file is missing (named by ``SAGE_<COMPONENT>_CONFIG``) or is not
    valid TOML; ``str(error)`` names the file."""


class _TomlFiles(TomlConfigSettingsSource):
    """pydantic-settings' TOML source, with errors that name the file."""

    def _read_file(self, file_path: Path | Traversable) -> dict[str, Any]:
        try:
            return super()._read_file(file_path)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigFileError(f"{file_path} is not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigFileError(f"cannot read {file_path}: {exc.strerror or exc}") from None


def sage_home() -> Path:
    """``SAGE_HOME`` (all state, pid files and logs); ``~/.sage`` when unset."""
    return Path(os.environ.get("SAGE_HOME") or "~/.sage").expanduser()


def split_list(value: Any) -> Any:
    """Read a list given in the environment as JSON (``["a", "b"]``) or ``a,b``."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [item.strip() for item in text.split(",") if item.strip()]
    return value


def toml_files_for(component: str) -> tuple[Path, ...]:
    return (
        Path(f"/etc/sage/{component}.toml"),
        Path(f"~/.config/sage/{component}.toml").expanduser(),
    )


class SageSettings(BaseSettings):
    """Base of the agent, coordinator and gateway settings (see the module docstring).

    Subclasses set ``config_env`` (the variable naming one TOML file) and ``toml_files``.
    """

    config_env: ClassVar[str] = ""
    toml_files: ClassVar[tuple[Path, ...]] = ()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        explicit = os.environ.get(cls.config_env) if cls.config_env else None
        if explicit:
            named = Path(explicit).expanduser()
            if not named.is_file():
                raise ConfigFileError(
                    f"{cls.config_env} names {named}, which is not a file; create it or "
                    f"unset {cls.config_env} to use the default files"
                )
            files = [named]
        else:
            # Default files that do not exist are skipped by the TOML source.
            files = list(cls.toml_files)
        toml = _TomlFiles(settings_cls, toml_file=files)
        return (init_settings, env_settings, toml)
