"""Fleet files and presets: deployments written in TOML, YAML or JSON, and the built-in presets.

A fleet file holds a list of deployments (``[[deployments]]`` in TOML, ``deployments:`` in
YAML or JSON) and, for a preset, a ``name`` and a ``description``. Each entry is a
:class:`~sage.unified.sdk.fleet.DeploymentSpec`; unknown keys are refused at every level,
so a typo is an error rather than a silently ignored setting.

TOML is read with the standard library (``tomllib``); YAML with PyYAML's ``safe_load``
(plain data only: no tags, no objects).
"""

from __future__ import annotations

import json
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import msgspec

from sage.unified.cli.errors import UsageError
from sage.unified.sdk.fleet import DeploymentSpec

__all__ = ["FleetFile", "load_fleet_file", "parse_fleet", "preset_names", "read_preset"]

PRESETS_PACKAGE = "sage.unified.cli"
PRESETS_FOLDER = "presets"


class FleetFile(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A fleet file or a preset."""

    deployments: list[DeploymentSpec]
    name: str | None = None
    description: str = ""


def parse_fleet(text: str, source: str, suffix: str) -> FleetFile:
    """Parse a fleet file's text; ``suffix`` (``.toml``, ``.yaml``, ``.yml``, ``.json``)
    names its format.

    Raises:
        UsageError: not parseable, or not a valid fleet (the message names the field).
    """
    data = _load(text, source, suffix)
    try:
        fleet = msgspec.convert(data, FleetFile)
    except (msgspec.ValidationError, ValueError) as exc:
        raise UsageError(f"{source}: {exc}") from None
    names = [d.name for d in fleet.deployments]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"{source}: deployment {', '.join(twice)} is given more than once")
    if not fleet.deployments:
        raise UsageError(f"{source}: no deployments (add a [[deployments]] table)")
    return fleet


def _load(text: str, source: str, suffix: str) -> Any:
    if suffix in {".yaml", ".yml"}:
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise UsageError(f"{source} is not valid YAML: {exc}") from None
    try:
        if suffix == ".toml":
            return tomllib.loads(text)
        if suffix == ".json":
            return json.loads(text)
    except ValueError as exc:  # TOMLDecodeError and JSONDecodeError are ValueErrors
        raise UsageError(f"{source} is not valid {suffix[1:].upper()}: {exc}") from None
    raise UsageError(f"{source}: use a .toml, .yaml, .yml or .json file")


def load_fleet_file(path: Path) -> FleetFile:
    """Read and parse a fleet file. Raises :class:`UsageError` (missing, unreadable, invalid)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    return parse_fleet(text, str(path), path.suffix.lower())


def preset_names() -> list[str]:
    """The built-in presets shipped with the package."""
    folder = resources.files(PRESETS_PACKAGE) / PRESETS_FOLDER
    return sorted(
        p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml")
    )


def read_preset(name: str) -> FleetFile:
    """A built-in preset. Raises :class:`UsageError` for an unknown name."""
    if name not in preset_names():
        raise UsageError(
            f"no preset {name!r}; built-in presets: {', '.join(preset_names())} (or pass -f FILE)"
        )
    resource = resources.files(PRESETS_PACKAGE) / PRESETS_FOLDER / f"{name}.toml"
    return parse_fleet(resource.read_text(encoding="utf-8"), f"preset {name}", ".toml")
