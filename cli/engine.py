"""``sage llm engine list|start|stop|logs``, through the gateway."""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from cyclopts import Parameter

from sage.unified.cli._common import (
    admin_token,
    client_errors,
    gateway_url,
    make_console,
    print_json,
)
from sage.unified.cli.errors import CliError, UsageError

__all__ = ["list_engines", "logs", "start", "stop"]

_UrlOpt = Annotated[
    str | None, Parameter(help="Gateway URL (default SAGE_GATEWAY_URL or http://127.0.0.1:8000).")
]
_TokenOpt = Annotated[str | None, Parameter(help="Admin token (default SAGE_ADMIN_TOKEN).")]


def _client(url: str | None, token: str | None) -> Any:
    from sage.unified.sdk.client import GatewayManagementClient

    return GatewayManagementClient(gateway_url(url), admin_token(token), timeout=30.0)


def list_engines(*, url: _UrlOpt = None, token: _TokenOpt = None, json: bool = False) -> int:
    """List every engine the control plane knows, in all states.

    Parameters
    ----------
    json
        Print JSON for scripts.
    """
    base = gateway_url(url)
    with client_errors(base), _client(url, token) as client:
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


def start(
    model: str,
    *,
    runtime: Literal["vllm", "sglang", "simulated"] = "vllm",
    kind: Literal["llm", "embedding"] = "llm",
    served_model_name: str | None = None,
    host: str | None = None,
    gpus: str | None = None,
    tensor_parallel_size: int = 1,
    gpu_memory_utilization: float | None = None,
    max_model_len: int | None = None,
    max_num_seqs: int | None = None,
    dtype: Literal["auto", "half", "float16", "bfloat16", "float", "float32"] | None = None,
    port: int | None = None,
    startup_timeout: float | None = None,
    wait: bool = False,
    wait_timeout: float = 900.0,
    url: _UrlOpt = None,
    token: _TokenOpt = None,
    json: bool = False,
) -> int:
    """Start an engine; prints its id. With --wait, follows it to READY.

    Parameters
    ----------
    model
        Model id or path (checked against the agent's allowlist).
    runtime
        vllm, sglang, or simulated (the built-in simulator, no GPU).
    kind
        llm or embedding.
    served_model_name
        Name clients use in `model` (default: the model id).
    host
        Agent id or host to run on (default: the one with the most free GPU memory).
    gpus
        GPU indices, e.g. 0,1.
    tensor_parallel_size
        GPUs per engine.
    gpu_memory_utilization
        Fraction of each GPU's memory the engine may use.
    max_model_len
        Context length.
    max_num_seqs
        Requests the engine runs at once.
    dtype
        Weight and activation precision.
    port
        Engine port (default: a free one in the agent's range).
    startup_timeout
        Seconds the engine may take to load before it counts as failed.
    wait
        Wait until the engine is READY (fails with the reason on ERROR).
    wait_timeout
        Seconds --wait waits.
    json
        Print the engine as JSON.
    """
    import msgspec

    from sage.unified.sdk.models import EngineSpec

    spec_fields: dict[str, Any] = {
        "model": model,
        "runtime": runtime,
        "kind": kind,
        "tensor_parallel_size": tensor_parallel_size,
    }
    optional = {
        "served_model_name": served_model_name,
        "gpu_memory_utilization": gpu_memory_utilization,
        "max_model_len": max_model_len,
        "max_num_seqs": max_num_seqs,
        "dtype": dtype,
        "port": port,
        "startup_timeout_s": startup_timeout,
    }
    spec_fields.update({k: v for k, v in optional.items() if v is not None})
    if gpus:
        try:
            spec_fields["gpu_ids"] = [int(part) for part in gpus.split(",") if part.strip()]
        except ValueError:
            raise UsageError(
                f"--gpus must be comma-separated GPU indices like 0,1 (got {gpus!r})"
            ) from None
    try:
        spec = msgspec.convert(spec_fields, EngineSpec)
    except (msgspec.ValidationError, ValueError) as exc:
        raise UsageError(f"invalid engine spec: {exc}") from None
    base = gateway_url(url)
    with client_errors(base), _client(url, token) as client:
        engine = client.start_engine(spec, host=host)
        if not wait:
            if json:
                print_json(engine)
            else:
                print(engine.id)
            return 0
        engine = _wait_ready(client, engine.id, wait_timeout, quiet=json)
    if json:
        print_json(engine)
    else:
        print(f"{engine.id} READY at {engine.url} (model {engine.model})")
    return 0


def _wait_ready(client: Any, engine_id: str, timeout_s: float, *, quiet: bool) -> Any:
    from rich.console import Console

    from sage.unified.sdk.client import NotFoundError

    console = Console(stderr=True, quiet=quiet)
    deadline = time.monotonic() + timeout_s
    with console.status(f"waiting for {engine_id} to become READY") as spinner:
        while time.monotonic() < deadline:
            try:
                engine = next((e for e in client.engines() if e.id == engine_id), None)
            except NotFoundError:
                engine = None
            if engine is not None:
                spinner.update(f"{engine_id}: {engine.state.value} {engine.reason}")
                if engine.state.value == "READY":
                    return engine
                if (engine.state.value == "ERROR" and "exhausted" in engine.reason) or (
                    engine is not None and engine.state.value == "STOPPED"
                ):
                    raise CliError(f"engine {engine_id} is {engine.state.value}: {engine.reason}")
            time.sleep(0.5)
    raise CliError(
        f"engine {engine_id} was not READY after {timeout_s:.0f} s; see `sage llm engine logs {engine_id}`"
    )


def stop(
    engine_id: str,
    *,
    drain: bool = False,
    timeout: float | None = None,
    url: _UrlOpt = None,
    token: _TokenOpt = None,
    json: bool = False,
) -> int:
    """Stop an engine; with --drain, returns once in-flight requests finished and it stopped.

    Parameters
    ----------
    engine_id
        The engine id (see `sage llm engine list`).
    drain
        Stop routing to it, wait for in-flight requests, then stop it.
    timeout
        Drain deadline in seconds (default: the engine's, 300 s).
    json
        Print the engine as JSON.
    """
    base = gateway_url(url)
    with client_errors(base), _client(url, token) as client:
        engine = client.stop_engine(engine_id, drain=drain, timeout_s=timeout)
        if drain:
            deadline = time.monotonic() + (timeout or 300.0) + 60.0
            while engine.state.value not in {"STOPPED", "ERROR"} and time.monotonic() < deadline:
                time.sleep(0.5)
                found = next((e for e in client.engines() if e.id == engine_id), None)
                if found is None:
                    break
                engine = found
    if json:
        print_json(engine)
    else:
        print(f"{engine_id} {engine.state.value}")
    return 0


def logs(
    engine_id: str,
    *,
    lines: Annotated[int, Parameter(name=["--lines", "-n"])] = 100,
    url: _UrlOpt = None,
    token: _TokenOpt = None,
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

    base = gateway_url(url)
    with client_errors(base), _client(url, token) as client:
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
