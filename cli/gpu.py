"""``sage llm gpu`` and ``sage llm gpu clear HOST:INDEX``, through the gateway."""

from __future__ import annotations

from sage.unified.cli._common import (
    AdminTokenOpt,
    GatewayUrlOpt,
    VerboseOpt,
    client_errors,
    gateway_url,
    make_console,
    print_json,
)
from sage.unified.cli.errors import UsageError
from sage.unified.cli.fleet import management_client

__all__ = ["clear", "show"]


def _gib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**30:.1f}"


def show(
    *,
    url: GatewayUrlOpt = None,
    token: AdminTokenOpt = None,
    json: bool = False,
    verbose: VerboseOpt = False,
) -> int:
    """Show every host's GPUs (NVML) as reported by the agents, quarantined ones with their fault.

    Parameters
    ----------
    json
        Print JSON for scripts.
    """
    base = gateway_url(url, verbose=verbose)
    with client_errors(base), management_client(base, token) as client:
        hosts = client.gpus()
    if json:
        print_json({"hosts": hosts})
        return 0
    from rich.table import Table

    table = Table(title="GPUs")
    for column in (
        "HOST",
        "GPU",
        "NAME",
        "MEM USED/TOTAL GiB",
        "UTIL %",
        "TEMP C",
        "POWER W",
        "PROCS",
        "HEALTH",
    ):
        table.add_column(column)
    notes: list[str] = []
    for host in hosts:
        if host.gpu_error:
            notes.append(f"{host.agent_id}: {host.gpu_error}")
        for g in host.gpus:
            table.add_row(
                host.agent_id,
                str(g.index),
                g.name or "-",
                f"{_gib(g.memory_used_bytes)}/{_gib(g.memory_total_bytes)}",
                "-" if g.utilization_percent is None else f"{g.utilization_percent:.0f}",
                "-" if g.temperature_c is None else f"{g.temperature_c:.0f}",
                "-" if g.power_w is None else f"{g.power_w:.0f}",
                str(len(g.processes)),
                "ok" if g.healthy else f"QUARANTINED: {g.fault or 'fault'}",
            )
            if not g.healthy:
                notes.append(
                    f"{host.agent_id}:{g.index} is quarantined; once fixed: "
                    f"`sage llm gpu clear {host.agent_id}:{g.index}`"
                )
    make_console().print(table)
    for note in notes:
        print(note)
    return 0


def clear(
    target: str,
    *,
    url: GatewayUrlOpt = None,
    token: AdminTokenOpt = None,
    verbose: VerboseOpt = False,
) -> int:
    """Lift a GPU's fault quarantine after you fixed it (reset, reboot or replacement);
    engines held back by it restart.

    Parameters
    ----------
    target
        HOST:INDEX, HOST an agent id or host address (e.g. gpu-01:3).
    """
    host, sep, index = target.rpartition(":")
    if not sep or not host or not (index.isascii() and index.isdigit()):
        raise UsageError(f"name the GPU as HOST:INDEX, e.g. gpu-01:3 (got {target!r})")
    base = gateway_url(url, verbose=verbose)
    with client_errors(base), management_client(base, token) as client:
        gpu = client.clear_gpu(host, int(index))
    state = "healthy" if gpu.healthy else f"still quarantined: {gpu.fault}"
    print(f"{host}:{gpu.index} {state}")
    return 0
