"""``sage llm engine list|start|stop|logs``, through the gateway."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from cyclopts import Parameter

from sage.unified.cli._common import (
    AdminTokenOpt,
    GatewayUrlOpt,
    VerboseOpt,
    admin_token,
    client_errors,
    make_console,
    print_json,
    resolve_gateway,
)
from sage.unified.cli._progress import WaitProgress
from sage.unified.cli.errors import CliError, UsageError

__all__ = ["list_engines", "logs", "start", "stop"]


_POLL_S = 0.5


def _client(base: str, token: str | None) -> Any:
    from sage.unified.sdk.client import GatewayManagementClient

    return GatewayManagementClient(base, admin_token(token), timeout=30.0)


def _find(client: Any, engine_id: str) -> Any:
    """The engine ``engine_id`` as the control plane lists it, or ``None``."""
    from sage.unified.sdk.client import NotFoundError

    try:
        return next((e for e in client.engines() if e.id == engine_id), None)
    except NotFoundError:
        return None


def list_engines(
    *,
    url: GatewayUrlOpt = None,
    token: AdminTokenOpt = None,
    json: bool = False,
    verbose: VerboseOpt = False,
) -> int:
    """List every engine the control plane knows, in all states.

    Parameters
    ----------
    json
        Print JSON for scripts.
    """
    base = resolve_gateway(url, verbose=verbose).url
    with client_errors(base), _client(base, token) as client:
        engines = client.engines()
    if json:
        print_json({"engines": engines, "count": len(engines)})
        return 0
    from rich.table import Table

    table = Table(title=f"Engines at {base}")
    for column in (
        "ID",
        "MODEL",
        "KIND",
        "RUNTIME",
        "STATE",
        "HOST:PORT",
        "GPUS",
        "INC",
        "LOAD",
        "REASON",
    ):
        table.add_column(column)
    for e in engines:
        load = (
            "-" if e.load.running is None else f"{e.load.running} run / {e.load.waiting or 0} wait"
        )
        table.add_row(
            e.id,
            e.model,
            e.kind.value,
            e.runtime.value,
            e.state.value,
            f"{e.host}:{e.port}",
            ",".join(map(str, e.gpu_ids)) or "-",
            str(e.incarnation),
            load,
            e.reason,
        )
    make_console().print(table)
    if not engines:
        print("No engines. Start one with `sage llm engine start MODEL`.")
    return 0


@Parameter(name="*")
@dataclass(kw_only=True)
class EngineOptions:
    """The flags of ``engine start`` that make the engine's spec."""

    runtime: Literal["vllm", "sglang", "simulated"] = "vllm"
    """vllm, sglang, or simulated (the built-in simulator, no GPU)."""
    kind: Literal["llm", "embedding"] = "llm"
    """llm or embedding."""
    served_model_name: str | None = None
    """Name clients use in `model` (default: the model id)."""
    gpus: str | None = None
    """GPU indices, e.g. 0,1."""
    tensor_parallel_size: int = 1
    """GPUs per engine."""
    gpu_memory_utilization: float | None = None
    """Fraction of each GPU's memory the engine may use."""
    max_model_len: int | None = None
    """Context length."""
    max_num_seqs: int | None = None
    """Requests the engine runs at once."""
    dtype: Literal["auto", "half", "float16", "bfloat16", "float", "float32"] | None = None
    """Weight and activation precision."""
    port: int | None = None
    """Engine port (default: a free one in the agent's range)."""
    startup_timeout: float | None = None
    """Seconds the engine may take to load before it counts as failed."""

    def spec(self, model: str) -> Any:
        """The :class:`EngineSpec` of ``model`` with these flags (unset ones left out)."""
        import msgspec

        from sage.unified.sdk.models import EngineSpec

        fields = {
            "model": model,
            "runtime": self.runtime,
            "kind": self.kind,
            "tensor_parallel_size": self.tensor_parallel_size,
            "served_model_name": self.served_model_name,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "max_model_len": self.max_model_len,
            "max_num_seqs": self.max_num_seqs,
            "dtype": self.dtype,
            "port": self.port,
            "startup_timeout_s": self.startup_timeout,
        }
        spec_fields = {k: v for k, v in fields.items() if v is not None}
        if self.gpus:
            try:
                spec_fields["gpu_ids"] = [int(p) for p in self.gpus.split(",") if p.strip()]
            except ValueError:
                raise UsageError(
                    f"--gpus must be comma-separated GPU indices like 0,1 (got {self.gpus!r})"
                ) from None
        try:
            return msgspec.convert(spec_fields, EngineSpec)
        except (msgspec.ValidationError, ValueError) as exc:
            raise UsageError(f"invalid engine spec: {exc}") from None


def start(
    model: str,
    *,
    options: EngineOptions | None = None,
    host: str | None = None,
    wait: bool = False,
    wait_timeout: float = 900.0,
    url: GatewayUrlOpt = None,
    token: AdminTokenOpt = None,
    json: bool = False,
    verbose: VerboseOpt = False,
) -> int:
    """Start an engine; prints its id. With --wait, follows it to READY.

    Parameters
    ----------
    model
        Model id or path (checked against the agent's allowlist).
    host
        Agent id or host to run on (default: the one with the most free GPU memory).
    wait
        Wait until the engine is READY (fails with the reason on ERROR); shows its state
        and the time waited on stderr.
    wait_timeout
        Seconds --wait waits.
    json
        Print the engine as JSON.
    """
    spec = (options or EngineOptions()).spec(model)
    base = resolve_gateway(url, verbose=verbose).url
    with client_errors(base), _client(base, token) as client:
        engine = client.start_engine(spec, host=host)
        if wait:
            engine = _wait_ready(client, engine.id, wait_timeout, quiet=json)
    if json:
        print_json(engine)
    elif wait:
        print(f"{engine.id} READY at {engine.url} (model {engine.model})")
    else:
        print(engine.id)
    return 0


def _wait_ready(client: Any, engine_id: str, timeout_s: float, *, quiet: bool) -> Any:
    deadline = time.monotonic() + timeout_s
    what = f"waiting for engine {engine_id} to become READY"
    with WaitProgress(what, quiet=quiet) as progress:
        while time.monotonic() < deadline:
            engine = _find(client, engine_id)
            if engine is None:
                progress.update("not listed yet")
            else:
                state = engine.state.value
                progress.update(f"{state} ({engine.reason})" if engine.reason else state)
                if state == "READY":
                    return engine
                if (state == "ERROR" and "exhausted" in engine.reason) or state == "STOPPED":
                    raise CliError(f"engine {engine_id} is {state}: {engine.reason}")
            time.sleep(_POLL_S)
    raise CliError(
        f"engine {engine_id} was not READY after {timeout_s:.0f} s; see `sage llm engine logs {engine_id}`"
    )


def _in_flight(engine: Any) -> str:
    running, waiting = engine.load.running, engine.load.waiting
    if running is None:
        return "in flight: unknown"
    return f"{running + (waiting or 0)} in flight"


def _wait_stopped(client: Any, engine: Any, deadline_s: float, *, quiet: bool) -> Any:
    """Follow a draining engine until STOPPED or ERROR, showing its in-flight requests."""
    deadline = time.monotonic() + deadline_s
    what = f"waiting for engine {engine.id} to drain and stop"
    with WaitProgress(what, quiet=quiet) as progress:
        while engine.state.value not in {"STOPPED", "ERROR"} and time.monotonic() < deadline:
            progress.update(f"{engine.state.value}, {_in_flight(engine)}")
            time.sleep(_POLL_S)
            found = _find(client, engine.id)
            if found is None:
                break
            engine = found
    return engine


def stop(
    engine_id: str,
    *,
    drain: bool = False,
    timeout: float | None = None,
    url: GatewayUrlOpt = None,
    token: AdminTokenOpt = None,
    json: bool = False,
    verbose: VerboseOpt = False,
) -> int:
    """Stop an engine; with --drain, returns once in-flight requests finished and it stopped.

    Parameters
    ----------
    engine_id
        The engine id (see `sage llm engine list`).
    drain
        Stop routing to it, wait for in-flight requests, then stop it; shows the
        requests still in flight and the time waited on stderr.
    timeout
        Drain deadline in seconds (default: the engine's, 300 s).
    json
        Print the engine as JSON.
    """
    base = resolve_gateway(url, verbose=verbose).url
    with client_errors(base), _client(base, token) as client:
        engine = client.stop_engine(engine_id, drain=drain, timeout_s=timeout)
        if drain:
            engine = _wait_stopped(client, engine, (timeout or 300.0) + 60.0, quiet=json)
    if json:
        print_json(engine)
    else:
        print(f"{engine_id} {engine.state.value}")
    return 0


def logs(
    engine_id: str,
    *,
    lines: Annotated[int, Parameter(name=["--lines", "-n"])] = 100,
    url: GatewayUrlOpt = None,
    token: AdminTokenOpt = None,
    verbose: VerboseOpt = False,
) -> int:
    """Print the last lines of an engine's log (from its agent).

    Parameters
    ----------
    engine_id
        The engine id.
    lines
        How many lines.
    """
    from sage.unified.sdk.client import AgentClient

    base = resolve_gateway(url, verbose=verbose).url
    with client_errors(base), _client(base, token) as client:
        engines = {e.id: e for e in client.engines()}
        agents = {a.agent_id: a for a in client.agents()}
    engine = engines.get(engine_id)
    if engine is None:
        raise UsageError(f"no engine {engine_id!r}; see `sage llm engine list`")
    agent = agents.get(engine.agent_id or "")
    if agent is None:
        raise CliError(
            f"engine {engine_id} is not managed by an agent (registered directly); it has no log here"
        )
    import os

    with (
        client_errors(agent.url, what="agent", start="sage agent run"),
        AgentClient(agent.url, os.environ.get("SAGE_AGENT_TOKEN")) as agent_client,
    ):
        for line in agent_client.logs(engine_id, tail=lines):
            print(line)
    return 0
