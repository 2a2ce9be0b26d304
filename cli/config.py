"""``sage config show``: the effective configuration of each component, secrets masked."""

from __future__ import annotations

from typing import Any

from sage.unified.cli._common import print_json
from sage.unified.cli.errors import UsageError

__all__ = ["show"]

_SECRET_HINTS = ("token", "key", "secret", "password")


def _mask(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _mask(v, k) for k, v in value.items()}
    if any(hint in key.lower() for hint in _SECRET_HINTS):
        if isinstance(value, list):
            return ["********" for _ in value]
        return None if value in (None, "") else "********"
    if isinstance(value, list):
        return [_mask(v, key) for v in value]
    return value


def show(*, component: str | None = None) -> int:
    """Print the effective configuration (flags aside: env SAGE_*, then TOML files, then defaults).

    Parameters
    ----------
    component
        Only this one: gateway, agent or coordinator.
    """
    from pydantic import ValidationError

    from sage.unified.agent.settings import AgentSettings
    from sage.unified.coordinator import CoordinatorSettings
    from sage.unified.gateway.settings import GatewaySettings
    from sage.unified.sdk.config import ConfigFileError

    classes: dict[str, Any] = {
        "gateway": GatewaySettings,
        "agent": AgentSettings,
        "coordinator": CoordinatorSettings,
    }
    if component is not None and component not in classes:
        raise UsageError(f"unknown component {component!r}; choose gateway, agent or coordinator")
    result: dict[str, Any] = {}
    for name, cls in classes.items():
        if component is not None and name != component:
            continue
        try:
            result[name] = _mask(cls().model_dump(mode="json"))
        except ValidationError as exc:
            result[name] = {"error": str(exc)}
        except ConfigFileError as exc:
            raise UsageError(str(exc)) from None
    print_json(result)
    return 0
