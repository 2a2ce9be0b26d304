"""What ``sage gateway restart`` keeps of the running gateway: its configuration, never
its secrets (pure: no I/O).

``sage gateway start`` records, beside the pid, the gateway's effective settings without
the secret fields (:func:`snapshot`) and the names of the credentials it was started
with (:func:`configured_credentials`), never their values: a digest of a short token
on disk could be guessed offline, and a name is all the check below needs.

``restart`` then

- runs the new process with the recorded settings as ``SAGE_GATEWAY_*`` variables
  (:func:`restart_environment`; they beat TOML files, and ``null`` stands for an unset
  value), so a shell without ``SAGE_GATEWAY_AGENT_PORT`` or with another ``SAGE_HOME``
  still gets the gateway that was running;
- takes secrets where any start takes them (the environment, TOML files), and refuses,
  before stopping anything, when a credential of the running gateway would be missing
  (:func:`dropped_credentials`): a restart never opens what was protected. Rotating a
  token (another value) is allowed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sage.unified.gateway.settings import GatewaySettings

__all__ = [
    "CREDENTIALS",
    "RecordedConfig",
    "configured_credentials",
    "differences",
    "dropped_credentials",
    "known_fields",
    "restart_environment",
    "snapshot",
]

CREDENTIALS: dict[str, str] = {
    "api_keys": "API keys (SAGE_API_KEYS)",
    "admin_tokens": "an admin token (SAGE_ADMIN_TOKEN)",
    "agent_tokens": "an agent token (SAGE_AGENT_TOKEN)",
    "engine_api_key": "an engine key (SAGE_GATEWAY_ENGINE_API_KEY)",
}
"""The secret fields of :class:`GatewaySettings`, and how a message names each."""

_ENV_PREFIX = "SAGE_GATEWAY_"
_NONE = "null"  # GatewaySettings' env_parse_none_str


@dataclass(frozen=True)
class RecordedConfig:
    """What the daemon record of a started gateway keeps of its configuration.

    Attributes:
        settings: :func:`snapshot` of its effective settings.
        credentials: :func:`configured_credentials` (names only).
        flags: the settings its command line gave (to tell what the shell changed).
    """

    settings: dict[str, Any]
    credentials: list[str]
    flags: dict[str, Any]

    @classmethod
    def of(cls, settings: GatewaySettings, flags: Mapping[str, Any]) -> RecordedConfig:
        given = {k: str(v) if isinstance(v, Path) else v for k, v in flags.items()}
        return cls(snapshot(settings), configured_credentials(settings), given)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> RecordedConfig | None:
        """The recorded configuration, or ``None`` when absent or not of this shape."""
        if not isinstance(data, dict):
            return None
        settings, credentials, flags = (data.get(k) for k in ("settings", "credentials", "flags"))
        if not (isinstance(settings, dict) and isinstance(flags, dict)):
            return None
        if not (isinstance(credentials, list) and all(isinstance(c, str) for c in credentials)):
            return None
        return cls(settings, credentials, flags)


def snapshot(settings: GatewaySettings) -> dict[str, Any]:
    """The effective settings without the secret fields (JSON values)."""
    return settings.model_dump(mode="json", exclude=set(CREDENTIALS))


def configured_credentials(settings: GatewaySettings) -> list[str]:
    """The names of the secret fields that are set (no values)."""
    return [name for name in CREDENTIALS if getattr(settings, name)]


def known_fields(recorded: Mapping[str, Any]) -> dict[str, Any]:
    """``recorded`` without fields this version no longer has, nor secret ones."""
    fields = GatewaySettings.model_fields
    return {k: v for k, v in recorded.items() if k in fields and k not in CREDENTIALS}


def _env_value(value: Any) -> str:
    if value is None:
        return _NONE
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def restart_environment(recorded: Mapping[str, Any], environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` with every recorded setting as its ``SAGE_GATEWAY_<FIELD>`` variable.

    Variables of those fields already in ``environ`` (in any case: pydantic-settings
    reads them case-insensitively) are replaced; secrets and ``SAGE_GATEWAY_CONFIG``
    are left as they are.
    """
    values = {f"{_ENV_PREFIX}{name.upper()}": _env_value(v) for name, v in recorded.items()}
    kept = {k: v for k, v in environ.items() if k.upper() not in values}
    return {**kept, **values}


def dropped_credentials(recorded: list[str], settings: GatewaySettings) -> list[str]:
    """How each credential the running gateway had and ``settings`` lacks is named."""
    present = set(configured_credentials(settings))
    return [CREDENTIALS[name] for name in recorded if name in CREDENTIALS and name not in present]


def differences(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``"agent_port 8210 (this shell: 8200)"`` for each setting that differs."""
    return [
        f"{name} {json.dumps(value)} (this shell: {json.dumps(current.get(name))})"
        for name, value in recorded.items()
        if name in current and current[name] != value
    ]
