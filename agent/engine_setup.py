"""Build an :class:`~sage.unified.agent.supervisor.EngineSupervisor` from the agent's
settings: its HTTP probe, restart policy, timings and log tail."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread
import httpx

from sage.unified.agent.logfiles import engine_log_path, tail
from sage.unified.agent.portowner import port_taken_by_another
from sage.unified.agent.probes import HttpEngineProbe
from sage.unified.agent.restart_policy import RestartPolicy
from sage.unified.agent.runtimes import build_launch_plan
from sage.unified.agent.settings import AgentSettings
from sage.unified.agent.supervisor import EngineSupervisor, ProcessHandle, SupervisorTiming
from sage.unified.sdk.client import AsyncEngineClient
from sage.unified.sdk.clock import Clock
from sage.unified.sdk.models import EngineSpec
from sage.unified.sdk.states import EngineState

__all__ = ["EngineSlot", "build_supervisor"]


@dataclass(frozen=True, slots=True)
class EngineSlot:
    """What an engine keeps across restarts: its id, spec, port and GPUs."""

    engine_id: str
    spec: EngineSpec
    port: int
    gpu_ids: tuple[int, ...]


def build_supervisor(
    settings: AgentSettings,
    slot: EngineSlot,
    *,
    client: httpx.AsyncClient,
    clock: Clock,
    launch: Callable[[int], Awaitable[ProcessHandle]],
    on_change: Callable[[EngineSupervisor], None],
    restart_gate: Callable[[], str | None],
    process: ProcessHandle | None,
    state: EngineState,
    reason: str = "",
    incarnation: int = 0,
    restarts: int = 0,
    created_at: float | None = None,
) -> EngineSupervisor:
    """The supervisor of the engine in ``slot`` (see :class:`EngineSupervisor` for the
    arguments passed through)."""
    return EngineSupervisor(
        engine_id=slot.engine_id,
        spec=slot.spec,
        host=settings.advertise_host,
        port=slot.port,
        gpu_ids=slot.gpu_ids,
        launch=launch,
        probe=_engine_probe(settings, slot, client=client, clock=clock),
        policy=_restart_policy(settings),
        clock=clock,
        timing=_supervisor_timing(settings),
        on_change=on_change,
        log_tail=_log_tail(engine_log_path(settings.log_dir, slot.engine_id)),
        port_taken_by_another=_port_taken_by_another,
        restart_gate=restart_gate,
        process=process,
        state=state,
        reason=reason,
        incarnation=incarnation,
        restarts=restarts,
        created_at=created_at,
        agent_id=settings.agent_id,
    )


def _engine_probe(
    settings: AgentSettings, slot: EngineSlot, *, client: httpx.AsyncClient, clock: Clock
) -> HttpEngineProbe:
    """The HTTP checks of the engine in ``slot`` (the paths of the protocol's ``EngineApi``,
    which every runtime serves), on the agent's connection pool."""
    s = settings
    spec = slot.spec
    plan = build_launch_plan(
        spec,
        host=s.engine_bind_host,
        port=slot.port,
        gpu_ids=slot.gpu_ids,
        config=s.runtime_config(),
        drain_timeout_s=spec.drain_timeout_s,
    )
    probe_host = (
        s.engine_bind_host if s.engine_bind_host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    )
    probe_host = f"[{probe_host}]" if ":" in probe_host else probe_host
    engine = AsyncEngineClient(
        f"http://{probe_host}:{slot.port}", http=client, timeout=s.probe_timeout_s
    )
    return HttpEngineProbe(engine, spec.name, metrics_flavor=plan.metrics_flavor, clock=clock)


def _restart_policy(settings: AgentSettings) -> RestartPolicy:
    """A fresh restart policy (backoff and cap) for one engine."""
    return RestartPolicy(
        initial_s=settings.restart_backoff_initial_s,
        max_s=settings.restart_backoff_max_s,
        max_restarts=settings.restart_max,
        window_s=settings.restart_window_s,
    )


def _supervisor_timing(settings: AgentSettings) -> SupervisorTiming:
    """The supervisors' probe intervals, budgets and graces."""
    s = settings
    return SupervisorTiming(
        probe_interval_s=s.probe_interval_s,
        probe_timeout_s=s.probe_timeout_s,
        probe_failures=s.probe_failures,
        stop_grace_s=s.stop_grace_s,
        drain_propagation_s=s.drain_propagation_s,
        default_drain_timeout_s=s.default_drain_timeout_s,
        restart_window_s=s.restart_window_s,
    )


def _log_tail(log_path: Path) -> Callable[[int], Awaitable[list[str]]]:
    async def log_tail(n: int) -> list[str]:
        return await anyio.to_thread.run_sync(tail, log_path, n)

    return log_tail


async def _port_taken_by_another(pid: int, port: int) -> str | None:
    # psutil lists every socket of the host: off the event loop.
    return await anyio.to_thread.run_sync(port_taken_by_another, pid, port)
