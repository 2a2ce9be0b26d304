"""``sage agent cordon|drain|uncordon HOST``: take a host out of service and back."""

from __future__ import annotations

import time
from typing import Any

from sage.unified.cli._common import (
    AdminTokenOpt,
    GatewayUrlOpt,
    VerboseOpt,
    client_errors,
    gateway_url,
    print_json,
)
from sage.unified.cli.errors import CliError
from sage.unified.cli.fleet import management_client

__all__ = ["cordon", "drain", "uncordon"]


def cordon(
    host: str,
    *,
    url: GatewayUrlOpt = None,
    token: AdminTokenOpt = None,
    verbose: VerboseOpt = False,
) -> int:
    """Place no new engine on a host; what runs there keeps running.

    Parameters
    ----------
    host
        Agent id or host address (see `sage gateway status`).
    """
    base = gateway_url(url, verbose=verbose)
    with client_errors(base), management_client(base, token) as client:
        agent = client.cordon(host)
    print(f"{agent.agent_id} cordoned: no new engine is placed there ({agent.engines} running)")
    return 0


def uncordon(
    host: str,
    *,
    url: GatewayUrlOpt = None,
    token: AdminTokenOpt = None,
    verbose: VerboseOpt = False,
) -> int:
    """Let a cordoned or drained host take engines again.

    Parameters
    ----------
    host
        Agent id or host address.
    """
    base = gateway_url(url, verbose=verbose)
    with client_errors(base), management_client(base, token) as client:
        agent = client.uncordon(host)
    print(f"{agent.agent_id} uncordoned: it takes new engines again")
    return 0


def drain(
    host: str,
    *,
    wait: bool = False,
    timeout: float = 900.0,
    url: GatewayUrlOpt = None,
    token: AdminTokenOpt = None,
    json: bool = False,
    verbose: VerboseOpt = False,
) -> int:
    """Cordon a host and empty it: deployment replicas move to other hosts with their
    rolling rules (a new one READY before an old one drains); other engines drain now.

    Parameters
    ----------
    host
        Agent id or host address.
    wait
        Wait until no engine runs on the host any more.
    timeout
        Seconds --wait waits.
    json
        Print JSON for scripts.
    """
    base = gateway_url(url, verbose=verbose)
    with client_errors(base), management_client(base, token) as client:
        result = client.drain_host(host)
        if not json:
            print(
                f"{result.agent_id} draining: {len(result.drained)} engine(s) drain now, "
                f"{len(result.moving)} deployment replica(s) move to other hosts"
            )
        left = _running_on(client, result.agent_id)
        deadline = time.monotonic() + timeout
        while wait and left:
            if time.monotonic() >= deadline:
                raise CliError(
                    f"{result.agent_id} still runs {len(left)} engine(s) after {timeout:.0f} s: "
                    f"{', '.join(left)}; see `sage llm deployments` for why"
                )
            time.sleep(1.0)
            left = _running_on(client, result.agent_id)
    if json:
        print_json({"drain": result, "running": left})
    elif wait:
        print(f"{result.agent_id} is empty; `sage agent uncordon {host}` when it may serve again")
    return 0


def _running_on(client: Any, agent_id: str) -> list[str]:
    return [e.id for e in client.engines() if e.agent_id == agent_id and e.state.value != "STOPPED"]
