"""``sage llm preset list|show|apply``: named sets of deployments shipped with the package.

A preset is a fleet file (``cli/presets/NAME.toml``); applying one is ``sage llm apply`` of
its deployments, after showing the plan and asking (``--yes`` skips the question).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

from cyclopts import Parameter

from sage.unified.cli._common import (
    AdminTokenOpt,
    GatewayUrlOpt,
    VerboseOpt,
    client_errors,
    gateway_url,
    make_console,
    print_json,
)
from sage.unified.cli.errors import CliError, UsageError
from sage.unified.cli.fleet import apply_specs, management_client, print_plan

__all__ = ["apply", "list_presets", "show"]

_FileOpt = Annotated[Path | None, Parameter(name=["--file", "-f"])]


def _preset(name: str | None, file: Path | None) -> Any:
    from sage.unified.cli._fleet_file import load_fleet_file, read_preset

    if (name is None) == (file is None):
        raise UsageError("name a preset (see `sage llm preset list`) or pass -f FILE, not both")
    if file is not None:
        return load_fleet_file(file)
    return read_preset(name or "")


def _gpus(engine: Any) -> str:
    if engine.runtime.value == "simulated":
        return "no GPU"
    text = f"{engine.tensor_parallel_size} GPU(s) each"
    if engine.gpu_memory_utilization:
        text += f", {engine.gpu_memory_utilization:.0%} of their memory"
    return text


def list_presets(*, json: bool = False) -> int:
    """List the built-in presets.

    Parameters
    ----------
    json
        Print JSON for scripts.
    """
    from sage.unified.cli._fleet_file import preset_names, read_preset

    presets = [read_preset(name) for name in preset_names()]
    if json:
        print_json({"presets": presets})
        return 0
    from rich.table import Table

    table = Table(title="Presets")
    for column in ("NAME", "DEPLOYMENTS", "DESCRIPTION"):
        table.add_column(column)
    for preset in presets:
        deployments = ", ".join(
            f"{d.name} ({d.replicas} x {d.engine.model})" for d in preset.deployments
        )
        table.add_row(preset.name or "-", deployments, preset.description)
    make_console().print(table)
    return 0


def show(name: str | None = None, *, file: _FileOpt = None, json: bool = False) -> int:
    """Show a preset's deployments (a built-in one by name, or a file).

    Parameters
    ----------
    name
        A built-in preset (see `sage llm preset list`).
    file
        A preset or fleet file instead.
    json
        Print JSON for scripts.
    """
    preset = _preset(name, file)
    if json:
        print_json(preset)
        return 0
    console = make_console()
    console.print(f"[bold]{preset.name or file}[/bold]  {preset.description}")
    for d in preset.deployments:
        e = d.engine
        console.print(
            f"- {d.name}: {d.replicas} replica(s) of {e.model} ({e.runtime.value}, {e.kind.value}, "
            + _gpus(e)
            + f"); rolling update: max_surge {d.strategy.max_surge}, "
            f"max_unavailable {d.strategy.max_unavailable}"
        )
    return 0


def apply(
    name: str | None = None,
    *,
    file: _FileOpt = None,
    dry_run: bool = False,
    yes: Annotated[bool, Parameter(name=["--yes", "-y"])] = False,
    rollback: bool = True,
    url: GatewayUrlOpt = None,
    token: AdminTokenOpt = None,
    verbose: VerboseOpt = False,
) -> int:
    """Apply a preset's deployments: show the plan, ask, then apply them.

    Parameters
    ----------
    name
        A built-in preset (see `sage llm preset list`).
    file
        A preset or fleet file instead.
    dry_run
        Show the plan only.
    yes
        Apply without asking.
    rollback
        When one deployment fails to apply, put back those applied before it.
    """
    preset = _preset(name, file)
    base = gateway_url(url, verbose=verbose)
    with client_errors(base), management_client(base, token) as client:
        print_plan(client.plan_deployments(preset.deployments))
        if dry_run:
            return 0
        if not yes:
            if not sys.stdin.isatty():
                raise UsageError("pass --yes to apply without a question (stdin is not a terminal)")
            answer = input(f"Apply {len(preset.deployments)} deployment(s)? [y/N] ")
            if answer.strip().lower() not in {"y", "yes"}:
                raise CliError("not applied")
        applied = apply_specs(client, preset.deployments, rollback=rollback)
    for deployment in applied:
        print(f"{deployment.spec.name}: revision {deployment.status.revision} applied")
    return 0
