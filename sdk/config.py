"""What every component's settings share: where SAGE_HOME is, list parsing, TOML files.

Precedence for every component, highest first: constructor arguments (the CLI passes
only the flags a user gave), environment variables (``SAGE_<COMPONENT>_<FIELD>``),
TOML files (``/etc/sage/<component>.toml`` then ``~/.config/sage/<component>.toml``,
the later one winning, or the one file ``SAGE_<COMPONENT>_CONFIG`` names), defaults.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar

from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, TomlConfigSettingsSource

__all__ = ["SageSettings", "sage_home", "split_list", "toml_files_for"]


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
        files = [Path(explicit).expanduser()] if explicit else list(cls.toml_files)
        # Missing files are skipped by the TOML source.
        toml = TomlConfigSettingsSource(settings_cls, toml_file=files)
        return (init_settings, env_settings, toml)
