"""``sage coordinator run``."""

from __future__ import annotations

from typing import Any

from sage.unified.cli._store import StoreOptions
from sage.unified.cli.errors import UsageError

__all__ = ["run"]


def run(
    storage: StoreOptions | None = None,
    *,
    host: str | None = None,
    port: int | None = None,
    insecure: bool = False,
) -> int:
    """Run a standalone coordinator in the foreground (for several gateways).

    Gateways use it with `sage gateway start --coordinator http://HOST:8100`; agents
    report to it with `sage agent run --coordinator http://HOST:8100`. With
    `--store etcd://...` it shares its state with the gateways started with the same
    store (any of them serves the management API and takes reports).

    Parameters
    ----------
    host
        Address to listen on (default 127.0.0.1; others need SAGE_ADMIN_TOKEN and SAGE_AGENT_TOKEN).
    port
        Port to listen on (default 8100).
    insecure
        Allow a non-loopback bind without tokens.
    """
    from pydantic import ValidationError

    from sage.unified.coordinator import ConfigError, CoordinatorSettings
    from sage.unified.coordinator.main import run as serve
    from sage.unified.sdk.config import ConfigFileError
    from sage.unified.sdk.ports import PortInUseError

    given: dict[str, Any] = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    if insecure:
        given["insecure"] = True
    given.update((storage or StoreOptions()).settings_kwargs())
    try:
        serve(CoordinatorSettings(**given))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise UsageError(f"invalid coordinator configuration: {problems}") from None
    except (ConfigError, ConfigFileError, PortInUseError) as exc:
        raise UsageError(str(exc)) from None
    return 0
