"""``sage gateway start|run|stop|restart|status|logs``."""

from __future__ import annotations

import collections
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from cyclopts import Parameter

from sage.unified.cli._common import (
    admin_token,
    client_errors,
    make_console,
    not_sage,
    print_json,
    resolve_gateway,
)
from sage.unified.cli._daemon import (
    DaemonFiles,
    DaemonRecord,
    python_argv,
    running_record,
    spawn,
    tail_lines,
    terminate,
    wait_ready,
)
from sage.unified.cli._progress import WaitProgress
from sage.unified.cli._store import StoreOptions
from sage.unified.cli.errors import CliError, UsageError

if TYPE_CHECKING:
    from sage.unified.sdk.client import GatewayManagementClient

__all__ = ["logs", "restart", "run", "start", "status", "stop"]

FILES = DaemonFiles("gateway")


@Parameter(name="*")
@dataclass(kw_only=True)
class GatewayOptions:
    """The flags ``start`` and ``run`` share; only flags a user gave override env/TOML."""

    host: str | None = None
    """Address to listen on (default 127.0.0.1). Other addresses need API keys
    (SAGE_API_KEYS) and an admin token (SAGE_ADMIN_TOKEN), or --insecure."""
    port: int | None = None
    """Port to listen on (default 8000; SAGE_GATEWAY_PORT)."""
    agent_port: int | None = None
    """Port of the local agent's API, on 127.0.0.1 (default 8200; SAGE_GATEWAY_AGENT_PORT)."""
    coordinator: str | None = None
    """URL of a standalone coordinator to use instead of the embedded one."""
    backend: Annotated[list[str] | None, Parameter(consume_multiple=False, negative="")] = None
    """Serve these engine URLs with no control plane (repeatable)."""
    no_local_agent: Annotated[bool, Parameter(negative="")] = False
    """Do not run an agent for this host inside the gateway."""
    insecure: Annotated[bool, Parameter(negative="")] = False
    """Allow a non-loopback address without API keys."""
    policy: Literal["least_load", "round_robin", "session", "cache_aware"] | None = None
    """Routing policy (default cache_aware; docs/routing.md compares them)."""
    log_level: Literal["debug", "info", "warning", "error"] | None = None
    """Log level of the gateway process (default warning)."""
    storage: StoreOptions = field(default_factory=StoreOptions)

    def settings_kwargs(self) -> dict[str, Any]:
        given: dict[str, Any] = {
            key: value
            for key, value in {
                "host": self.host,
                "port": self.port,
                "agent_port": self.agent_port,
                "coordinator_url": self.coordinator,
                "backends": self.backend,
                "routing_policy": self.policy,
                "log_level": self.log_level,
            }.items()
            if value
        }
        if self.no_local_agent:
            given["local_agent"] = False
        if self.insecure:
            given["insecure"] = True
        given.update(self.storage.settings_kwargs())
        return given

    def flags(self) -> list[str]:
        flags: list[str] = []
        for name, value in (
            ("--host", self.host),
            ("--port", self.port),
            ("--agent-port", self.agent_port),
            ("--coordinator", self.coordinator),
            ("--policy", self.policy),
            ("--log-level", self.log_level),
        ):
            if value is not None:
                flags += [name, str(value)]
        for url in self.backend or []:
            flags += ["--backend", url]
        if self.no_local_agent:
            flags.append("--no-local-agent")
        if self.insecure:
            flags.append("--insecure")
        return flags + self.storage.flags()


def _settings(given: dict[str, Any]) -> Any:
    from pydantic import ValidationError

    from sage.unified.gateway.settings import GatewaySettings, InsecureBindError
    from sage.unified.sdk.config import ConfigFileError

    try:
        settings = GatewaySettings(**given)
        settings.check_bind_safety()
    except (InsecureBindError, ConfigFileError) as exc:
        raise UsageError(str(exc)) from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise UsageError(f"invalid gateway configuration: {problems}") from None
    return settings


def _await_ready(record: DaemonRecord, timeout_s: float) -> str | None:
    """Wait for ``/readyz``, showing what is awaited and for how long; why not, or None."""
    from sage.unified.sdk.client import GatewayManagementClient

    with (
        WaitProgress(f"waiting for the gateway at {record.url} to become ready") as progress,
        GatewayManagementClient(record.url, timeout=1.0, connect_timeout=1.0) as client,
    ):
        return wait_ready(
            record, lambda: _not_ready_because(client), timeout_s, on_poll=progress.update
        )


def _not_ready_because(client: GatewayManagementClient) -> str | None:
    """``None`` once the gateway's ``/readyz`` answers 2xx, else what it answered."""
    from sage.unified.sdk.client import APIStatusError, GatewayUnreachableError, SageClientError

    try:
        return None if client.readyz() else "/readyz answered 503"
    except GatewayUnreachableError as exc:
        return "not listening yet" if exc.connect_failed else exc.reason
    except APIStatusError as exc:
        return f"/readyz answered {exc.status_code}"
    except SageClientError as exc:
        return str(exc)


def start(options: GatewayOptions | None = None, *, timeout: float = 60.0) -> int:
    """Start the gateway in the background and wait until it is ready.

    By default it embeds the coordinator and a local agent, so on one GPU host
    ``sage gateway start`` and ``sage llm engine start MODEL`` are all you need.
    `sage gateway restart` later keeps this configuration.

    Parameters
    ----------
    timeout
        Seconds to wait for the gateway to become ready.
    """
    from sage.unified.cli._gateway_config import RecordedConfig

    options = options or GatewayOptions()
    given = {**options.settings_kwargs(), "log_file": FILES.log}
    settings = _settings(given)
    existing = running_record(FILES)
    if existing is not None:
        if existing.url != settings.url:
            raise UsageError(
                f"the gateway is already running at {existing.url} (pid {existing.pid}), "
                f"not at {settings.url}; stop it first (`sage gateway stop`) or use another "
                "SAGE_HOME"
            )
        print(f"The gateway is already running (pid {existing.pid}) at {existing.url}.")
        return 0
    from sage.unified.gateway.main import PortInUseError, check_ports_free

    try:
        check_ports_free(settings)
    except PortInUseError as exc:
        raise UsageError(str(exc)) from None
    argv = python_argv("gateway", "run", *options.flags(), "--log-file", str(FILES.log))
    config = RecordedConfig.of(settings, given)
    record = spawn(FILES, argv, url=settings.url, config=config.to_json())
    problem = _await_ready(record, timeout)
    if problem is not None:
        terminate(record, timeout_s=10)
        FILES.clear()
        lines = "\n".join(tail_lines(FILES.log, 15))
        raise CliError(f"the gateway did not start: {problem}. Last lines of {FILES.log}:\n{lines}")
    print(f"Gateway ready at {settings.url} (pid {record.pid}, mode {settings.mode}).")
    print(f"Logs: {FILES.log}. Stop it with `sage gateway stop`.")
    return 0


def run(options: GatewayOptions | None = None, *, log_file: Path | None = None) -> int:
    """Run the gateway in the foreground (what systemd runs). Same flags as ``start``.

    Parameters
    ----------
    log_file
        Write the log to this file, rotated by size (log_max_bytes, log_backups),
        instead of stderr.
    """
    given = (options or GatewayOptions()).settings_kwargs()
    if log_file is not None:
        given["log_file"] = log_file
    settings = _settings(given)
    from sage.unified.gateway.main import run as serve

    return int(serve(settings))


def stop(*, timeout: float = 90.0, keep_engines: bool = False) -> int:
    """Stop the gateway gracefully (in-flight requests finish first).

    Parameters
    ----------
    timeout
        Seconds to wait before the gateway is killed.
    keep_engines
        Leave the local agent's engines running; the next start adopts them.
    """
    record = running_record(FILES)
    if record is None:
        print("The gateway is not running.")
        return 0
    # SIGUSR1 asks the gateway to stop its own agent's engines before it exits; engines
    # that agents on other hosts run are never touched.
    terminate(record, timeout, signal.SIGTERM if keep_engines else signal.SIGUSR1)
    FILES.clear()
    suffix = "; its engines keep running" if keep_engines else " with its local engines"
    print(f"Gateway stopped (pid {record.pid}){suffix}.")
    return 0


def restart(*, timeout: float = 30.0) -> int:
    """Restart the gateway with the configuration it runs with; engines keep running.

    The running gateway's settings are kept, whatever this shell's SAGE_GATEWAY_*
    variables say; its secrets are never stored, so SAGE_API_KEYS, SAGE_ADMIN_TOKEN
    and the others it was started with must be set here too (the restart refuses
    otherwise, before stopping anything). To change the configuration:
    `sage gateway stop --keep-engines`, then `sage gateway start`.

    Parameters
    ----------
    timeout
        Seconds to wait for the old process to stop and the new one to be ready.
    """
    from sage.unified.cli._gateway_restart import plan_restart

    record = running_record(FILES)
    if record is None:
        print("The gateway is not running; starting it.")
        return start(timeout=max(timeout, 60.0))
    plan = plan_restart(record)
    for note in plan.notes:
        print(note)
    terminate(record, timeout)
    FILES.clear()
    print(f"Gateway stopped (pid {record.pid}); engines left running.")
    new = spawn(FILES, record.argv, url=record.url, env=plan.environment, config=record.config)
    problem = _await_ready(new, max(timeout, 30.0))
    if problem is not None:
        lines = "\n".join(tail_lines(FILES.log, 15))
        raise CliError(
            f"the gateway did not restart: {problem}; its engines keep running and "
            f"`sage gateway start` adopts them once the cause is fixed. Last lines of "
            f"{FILES.log}:\n{lines}"
        )
    print(f"Gateway ready at {record.url} (pid {new.pid}).")
    return 0


def _readiness(base: str) -> dict[str, Any]:
    """The gateway's ``/readyz`` body; a one-line error when nothing or something else
    answers there."""
    from sage.unified.sdk.client import GatewayManagementClient

    with client_errors(base), GatewayManagementClient(base, timeout=3.0) as client:
        _, body = client.readiness()
    if "mode" not in body:
        raise UsageError(not_sage(base, "gateway", "a /readyz body without a mode"))
    return body


def status(
    *,
    url: str | None = None,
    token: str | None = None,
    json: bool = False,
    verbose: Annotated[bool, Parameter(negative="")] = False,
) -> int:
    """Show gateway health, control-plane mode, agents, engines per state and models.

    Parameters
    ----------
    url
        Gateway URL (default: SAGE_GATEWAY_URL, else the gateway `sage gateway start`
        runs, else http://127.0.0.1:8000).
    token
        Admin token (default SAGE_ADMIN_TOKEN).
    json
        Print JSON for scripts.
    verbose
        Say which gateway is used and why (on stderr).
    """
    from sage.unified.sdk.client import GatewayManagementClient

    record = running_record(FILES)
    base = resolve_gateway(url, verbose=verbose).url
    if record is not None and record.url != base:
        record = None
    readiness = _readiness(base)
    engines: list[Any] = []
    agents: list[Any] = []
    deployments: list[Any] = []
    if readiness.get("mode") != "static":
        with (
            client_errors(base),
            GatewayManagementClient(base, admin_token(token), timeout=10.0) as client,
        ):
            engines = client.engines()
            agents = client.agents()
            deployments = _deployments(client)
    by_state = collections.Counter(e.state.value for e in engines)
    summary = {
        "url": base,
        "pid": record.pid if record else None,
        "status": readiness.get("status"),
        "mode": readiness.get("mode"),
        "control_plane_reachable": readiness.get("control_plane_reachable"),
        "store": readiness.get("store"),
        "leader": readiness.get("leader"),
        "models": readiness.get("models", []),
        "revision": readiness.get("revision"),
        "agents": [_agent_row(a) for a in agents],
        "engines_by_state": dict(by_state),
        "deployments": {
            d.spec.name: {"desired": d.status.desired, "ready": d.status.ready} for d in deployments
        },
    }
    if json:
        print_json(summary)
        return 0
    console = make_console()
    console.print(
        f"Gateway [bold]{base}[/bold]  status: {summary['status']}  mode: {summary['mode']}"
        + (f"  pid: {record.pid}" if record else "")
    )
    store = f"  store: {summary['store']}" if summary["store"] else ""
    if summary["leader"] is not None:
        store += f" ({'leader' if summary['leader'] else 'follower'})"
    console.print(
        f"Control plane reachable: {summary['control_plane_reachable']}  revision: "
        f"{summary['revision']}{store}"
    )
    console.print(f"Models served: {', '.join(summary['models']) or 'none'}")
    _print_fleet(console, agents, deployments)
    states = ", ".join(f"{k} {v}" for k, v in sorted(by_state.items())) or "none"
    console.print(f"Engines: {states}")
    return 0


def _agent_row(agent: Any) -> dict[str, Any]:
    fields = ("agent_id", "host", "lost", "engines", "cordoned", "draining")
    return {name: getattr(agent, name) for name in fields}


def _print_fleet(console: Any, agents: list[Any], deployments: list[Any]) -> None:
    cordoned = [
        f"{a.agent_id} (draining)" if a.draining else a.agent_id for a in agents if a.cordoned
    ]
    console.print(
        f"Agents: {len(agents)} ({sum(1 for a in agents if a.lost)} lost"
        + (f", cordoned: {', '.join(cordoned)}" if cordoned else "")
        + ")"
    )
    if deployments:
        shown = ", ".join(f"{d.spec.name} {d.status.ready}/{d.status.desired}" for d in deployments)
        console.print(f"Deployments (ready/desired): {shown}")


def _deployments(client: Any) -> list[Any]:
    from sage.unified.sdk.client import NotFoundError

    try:
        return list(client.deployments())
    except NotFoundError:  # a control plane older than deployments
        return []


def logs(
    *,
    follow: Annotated[bool, Parameter(name=["--follow", "-f"])] = False,
    lines: Annotated[int, Parameter(name=["--lines", "-n"])] = 50,
) -> int:
    """Print the gateway's log (started by `sage gateway start`).

    Parameters
    ----------
    follow
        Keep printing new lines until Ctrl-C.
    lines
        How many of the last lines to print.
    """
    path = FILES.log
    if not path.exists():
        raise UsageError(f"no gateway log at {path} — start the gateway with `sage gateway start`")
    for line in tail_lines(path, lines):
        print(line)
    if not follow:
        return 0
    try:
        _follow(path)
    except KeyboardInterrupt:
        return 0
    return 0


def _follow(path: Path) -> None:
    """Print what is appended to ``path``, across rotations, until interrupted."""
    handle = open(path, "rb")  # noqa: SIM115 (reopened when the file rotates)
    try:
        handle.seek(0, 2)
        while True:
            chunk = handle.read()
            if chunk:
                sys.stdout.write(chunk.decode("utf-8", errors="replace"))
                sys.stdout.flush()
                continue
            try:
                rotated = path.stat().st_ino != os.fstat(handle.fileno()).st_ino
            except FileNotFoundError:
                rotated = False  # between the rename and the new file
            if rotated:
                handle.close()
                handle = open(path, "rb")  # noqa: SIM115
            else:
                time.sleep(0.25)
    finally:
        handle.close()
