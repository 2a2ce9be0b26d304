"""``sage agent run|status``."""

from __future__ import annotations

import os
from typing import Any, Literal

from sage.unified.cli._common import make_console, print_json
from sage.unified.cli.errors import UsageError

__all__ = ["run", "status"]


def run(
    *,
    coordinator: str | None = None,
    port: int | None = None,
    token: str | None = None,
    bind_host: str | None = None,
    advertise_host: str | None = None,
    agent_id: str | None = None,
    insecure: bool = False,
    backend: Literal["asyncio", "trio"] = "asyncio",
) -> int:
    """Run the agent in the foreground (what systemd runs on every GPU host).

    Parameters
    ----------
    coordinator
        Coordinator (or gateway with an embedded coordinator) URL; default http://127.0.0.1:8000.
        Several, comma-separated, for a highly available deployment (every gateway's URL).
    port
        Port of the agent API (default 8200).
    token
        Agent token (prefer SAGE_AGENT_TOKEN: command lines are visible to other users).
    bind_host
        Address of the agent API (default 127.0.0.1; others need a token).
    advertise_host
        Address the gateway uses to reach this host's engines and agent.
    agent_id
        Name of this host in the control plane (default: the hostname).
    insecure
        Allow a non-loopback bind without a token.
    backend
        Event loop: asyncio or trio.
    """
    from pydantic import ValidationError

    from sage.unified.agent.main import run as serve
    from sage.unified.agent.settings import AgentSettings
    from sage.unified.sdk.config import ConfigFileError

    given: dict[str, Any] = {
        key: value
        for key, value in {
            "coordinator_url": coordinator,
            "port": port,
            "token": token,
            "bind_host": bind_host,
            "advertise_host": advertise_host,
            "agent_id": agent_id,
        }.items()
        if value is not None
    }
    if insecure:
        given["insecure"] = True
    try:
        settings = AgentSettings(**given)
        settings.check_bind_safety()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise UsageError(f"invalid agent configuration: {problems}") from None
    except (ConfigFileError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    return serve(settings, backend=backend)


def status(*, url: str = "http://127.0.0.1:8200", json: bool = False) -> int:
    """Show what an agent reports: liveness, readiness, engines and GPUs.

    Parameters
    ----------
    url
        Agent URL.
    json
        Print JSON for scripts.
    """
    from sage.unified.cli._common import client_errors
    from sage.unified.sdk.client import AgentClient

    with (
        client_errors(url, what="agent", start="sage agent run"),
        AgentClient(url, os.environ.get("SAGE_AGENT_TOKEN")) as client,
    ):
        health = client.healthz()
        ready = client.readyz()
        engines = client.engines()
        gpus = client.gpus()
    if json:
        print_json({"url": url, "health": health, "ready": ready, "engines": engines, "gpus": gpus})
        return 0
    from rich.table import Table

    console = make_console()
    console.print(f"Agent [bold]{url}[/bold]  alive: yes  ready: {'yes' if ready else 'no'}")
    table = Table(title="Engines")
    for column in ("ID", "MODEL", "STATE", "PORT", "PID", "GPUS", "REASON"):
        table.add_column(column)
    for e in engines:
        table.add_row(
            e.id,
            e.model,
            e.state.value,
            str(e.port),
            str(e.pid or "-"),
            ",".join(map(str, e.gpu_ids)) or "-",
            e.reason,
        )
    console.print(table)
    console.print(f"GPUs: {len(gpus)}")
    return 0
