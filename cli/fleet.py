"""``sage llm apply|deployments|delete`` and ``sage llm rollout status|undo``: the declarative fleet."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

from cyclopts import Parameter

from sage.unified.cli._common import (
    AdminTokenOpt,
    GatewayUrlOpt,
    VerboseOpt,
    admin_token,
    client_errors,
    gateway_url,
    make_console,
    print_json,
)
from sage.unified.cli.errors import CliError

__all__ = [
    "apply",
    "apply_specs",
    "delete",
    "deployments",
    "management_client",
    "print_plan",
    "rollout_status",
    "rollout_undo",
]

_FileOpt = Annotated[Path, Parameter(name=["--file", "-f"])]


def management_client(base: str, token: str | None) -> Any:
    """The control-plane client of the gateway at ``base`` (from :func:`gateway_url`)."""
    from sage.unified.sdk.client import GatewayManagementClient

    return GatewayManagementClient(base, admin_token(token), timeout=30.0)


def _conditions(conditions: Sequence[Any]) -> str:
    parts = []
    for c in conditions:
        hosts = "; ".join(f"{h}: {why}" for h, why in c.hosts.items())
        parts.append(f"{c.reason}: {c.message}" + (f" ({hosts})" if hosts else ""))
    return " | ".join(parts) or "-"


def print_plan(plan: Any) -> None:
    """Print a dry run: one row per deployment, then the steps the reconciler takes first."""
    from rich.table import Table

    summary = Table(title="Plan")
    for column in ("DEPLOYMENT", "CHANGE", "REVISION", "REPLICAS", "START", "REMOVE", "REPLACE"):
        summary.add_column(column)
    steps = Table(title="First steps (a rolling update takes several)")
    for column in ("DEPLOYMENT", "ACTION", "HOST", "ENGINE", "REASON"):
        steps.add_column(column)
    for entry in plan.entries:
        revision = f"{entry.revision_from or '-'} → {entry.revision_to or '-'}"
        summary.add_row(
            entry.name,
            entry.change,
            revision,
            f"{entry.replicas_from} → {entry.replicas_to}",
            str(entry.start),
            str(entry.remove),
            str(entry.replace),
        )
        for step in entry.actions:
            steps.add_row(
                step.deployment, step.action, step.host or "-", step.engine_id or "-", step.reason
            )
    console = make_console()
    console.print(summary)
    console.print(steps)


def apply_specs(client: Any, specs: Sequence[Any], *, rollback: bool) -> list[Any]:
    """Apply ``specs`` in order; on a failure, put back what this call changed (unless
    ``rollback`` is false) and raise. Returns the applied deployments."""
    from sage.unified.sdk.client import NotFoundError, SageClientError

    before: dict[str, Any] = {}
    done: list[Any] = []
    for spec in specs:
        try:
            try:
                before[spec.name] = client.deployment(spec.name).spec
            except NotFoundError:
                before[spec.name] = None
            done.append(client.apply_deployment(spec))
        except SageClientError as exc:
            if rollback and done:
                _roll_back(client, done, before)
                raise CliError(
                    f"applying {spec.name} failed: {exc}; the {len(done)} deployment(s) "
                    "applied before it were put back"
                ) from None
            raise
    return done


def _roll_back(client: Any, done: Sequence[Any], before: dict[str, Any]) -> None:
    from sage.unified.sdk.client import SageClientError

    for deployment in reversed(done):
        previous = before.get(deployment.spec.name)
        try:
            if previous is None:
                client.delete_deployment(deployment.spec.name)
            else:
                client.apply_deployment(previous)
        except SageClientError as exc:
            print(f"could not put back {deployment.spec.name}: {exc}", file=sys.stderr)


def apply(
    *,
    file: _FileOpt,
    dry_run: bool = False,
    rollback: bool = True,
    url: GatewayUrlOpt = None,
    token: AdminTokenOpt = None,
    json: bool = False,
    verbose: VerboseOpt = False,
) -> int:
    """Apply the deployments of a fleet file (TOML, YAML or JSON): the control plane starts,
    replaces or removes replicas until what runs matches.

    Parameters
    ----------
    file
        The fleet file ([[deployments]] in TOML, deployments: in YAML).
    dry_run
        Print what would start, stop or be replaced, and where; change nothing.
    rollback
        When one deployment fails to apply, put back those applied before it.
    json
        Print JSON for scripts.
    """
    from sage.unified.cli._fleet_file import load_fleet_file

    fleet = load_fleet_file(file)
    base = gateway_url(url, verbose=verbose)
    with client_errors(base), management_client(base, token) as client:
        if dry_run:
            plan = client.plan_deployments(fleet.deployments)
            if json:
                print_json(plan)
            else:
                print_plan(plan)
            return 0
        applied = apply_specs(client, fleet.deployments, rollback=rollback)
    if json:
        print_json({"deployments": applied})
        return 0
    for deployment in applied:
        status = deployment.status
        print(
            f"{deployment.spec.name}: revision {status.revision}, {status.desired} replicas "
            f"({status.ready} ready, rollout {status.rollout.state.value})"
        )
    return 0


def deployments(
    *,
    url: GatewayUrlOpt = None,
    token: AdminTokenOpt = None,
    json: bool = False,
    verbose: VerboseOpt = False,
) -> int:
    """List the deployments: desired against ready replicas, revision, rollout, why they wait.

    Parameters
    ----------
    json
        Print JSON for scripts.
    """
    base = gateway_url(url, verbose=verbose)
    with client_errors(base), management_client(base, token) as client:
        found = client.deployments()
    if json:
        print_json({"deployments": found})
        return 0
    from rich.table import Table

    table = Table(title=f"Deployments at {base}")
    for column in (
        "NAME",
        "MODEL",
        "REV",
        "DESIRED",
        "READY",
        "UPDATED",
        "UNAVAILABLE",
        "ROLLOUT",
        "WAITING",
    ):
        table.add_column(column)
    for d in found:
        s = d.status
        table.add_row(
            d.spec.name + (" (deleting)" if s.deleting else ""),
            d.spec.engine.name,
            str(s.revision),
            str(s.desired),
            str(s.ready),
            str(s.updated),
            str(s.unavailable),
            s.rollout.state.value,
            _conditions(s.conditions),
        )
    make_console().print(table)
    if not found:
        print("No deployments. Apply some with `sage llm apply -f fleet.toml`.")
    return 0


def delete(
    name: str,
    *,
    url: GatewayUrlOpt = None,
    token: AdminTokenOpt = None,
    verbose: VerboseOpt = False,
) -> int:
    """Delete a deployment: its replicas are drained, then it is forgotten.

    Parameters
    ----------
    name
        The deployment (see `sage llm deployments`).
    """
    base = gateway_url(url, verbose=verbose)
    with client_errors(base), management_client(base, token) as client:
        deployment = client.delete_deployment(name)
    print(f"{name}: deleting; draining {len(deployment.status.replicas)} replica(s)")
    return 0


def rollout_status(
    name: str,
    *,
    wait: bool = False,
    timeout: float = 1800.0,
    url: GatewayUrlOpt = None,
    token: AdminTokenOpt = None,
    json: bool = False,
    verbose: VerboseOpt = False,
) -> int:
    """Show a deployment's rollout: revision, replicas updated and ready, why it waits.

    Parameters
    ----------
    name
        The deployment.
    wait
        Wait until the rollout completes (exit 0) or fails (exit 1).
    timeout
        Seconds --wait waits.
    json
        Print JSON for scripts.
    """
    deadline = time.monotonic() + timeout
    base = gateway_url(url, verbose=verbose)
    with client_errors(base), management_client(base, token) as client:
        status = client.rollout_status(name)
        while wait and status.rollout.state.value == "progressing":
            if time.monotonic() >= deadline:
                raise CliError(f"{name}: the rollout did not finish within {timeout:.0f} s")
            time.sleep(1.0)
            status = client.rollout_status(name)
    if json:
        print_json(status)
    else:
        _print_status(status)
    if wait and status.rollout.state.value == "failed":
        raise CliError(
            f"{name}: rollout of revision {status.revision} failed: {status.rollout.reason}"
        )
    return 0


def _print_status(status: Any) -> None:
    from rich.table import Table

    rollout = status.rollout
    console = make_console()
    console.print(
        f"[bold]{status.name}[/bold]  revision {status.revision}  rollout {rollout.state.value}"
        f"  stable revision {rollout.stable_revision or '-'}"
        f"  desired {status.desired}  ready {status.ready}  updated {status.updated}"
    )
    if rollout.reason:
        console.print(f"Reason: {rollout.reason}")
    if status.conditions:
        console.print(f"Waiting: {_conditions(status.conditions)}")
    table = Table(title="Replicas")
    for column in ("REPLICA", "ENGINE", "HOST", "REVISION", "STATE", "UPDATED", "REASON"):
        table.add_column(column)
    for r in status.replicas:
        table.add_row(
            r.replica,
            r.engine_id or "-",
            r.agent_id,
            str(r.revision),
            r.state,
            "yes" if r.updated else "no",
            r.reason,
        )
    console.print(table)


def rollout_undo(
    name: str,
    *,
    to_revision: int | None = None,
    url: GatewayUrlOpt = None,
    token: AdminTokenOpt = None,
    verbose: VerboseOpt = False,
) -> int:
    """Roll a deployment back to an earlier revision's engine (as a new revision).

    Parameters
    ----------
    name
        The deployment.
    to_revision
        The revision to go back to (default: the one before the current).
    """
    base = gateway_url(url, verbose=verbose)
    with client_errors(base), management_client(base, token) as client:
        deployment = client.rollout_undo(name, to_revision)
    print(
        f"{name}: revision {deployment.status.revision} rolls out the engine of "
        f"{'revision ' + str(to_revision) if to_revision else 'the previous revision'}"
    )
    return 0
