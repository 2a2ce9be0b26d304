"""The agent's engines at work: starting one, adopting a previous agent's, draining off a GPU.

:class:`EngineFleet` creates every :class:`EngineSupervisor` (a new engine or one found
again in the state file), gives each its port and GPUs through the :class:`EngineTable`,
and runs it in the :class:`~sage.unified.agent.service.Agent`'s task group.
"""

from __future__ import annotations

import functools
import logging
import re
import secrets
from collections.abc import Callable

import anyio
import anyio.abc
import anyio.to_thread
import httpx

from sage.unified.agent.engine_launch import AdoptProcess, EngineLauncher
from sage.unified.agent.engine_setup import EngineSlot, build_supervisor
from sage.unified.agent.engine_table import EngineTable
from sage.unified.agent.errors import EngineIdTakenError, SpecRejectedError
from sage.unified.agent.gpu_health import GpuHealth
from sage.unified.agent.gpus import assign_gpus
from sage.unified.agent.host_telemetry import HostTelemetry
from sage.unified.agent.launcher import ProcessRecord
from sage.unified.agent.reconcile import prune_records, resumed_state
from sage.unified.agent.settings import AgentSettings
from sage.unified.agent.state_saver import StateSaver
from sage.unified.agent.statefile import AgentState
from sage.unified.agent.supervisor import EngineSupervisor, ProcessHandle
from sage.unified.sdk.clock import Clock
from sage.unified.sdk.models import EngineInfo, EngineSpec, Runtime
from sage.unified.sdk.states import EngineState

__all__ = ["EngineFleet", "engine_id_for"]

log = logging.getLogger(__name__)


def engine_id_for(name: str) -> str:
    """``<served-name-slug>-<6 hex>``, e.g. ``qwen2-5-0-5b-1a2b3c``."""
    base = name.rsplit("/", 1)[-1] or name
    slug = re.sub(r"[^a-z0-9]+", "-", base.lower()).strip("-")[:48].strip("-") or "engine"
    return f"{slug}-{secrets.token_hex(3)}"


class EngineFleet:
    """Starts, adopts and drains engines; :meth:`attach` must be called before any of it.

    Args:
        settings: the agent configuration.
        clock: time source.
        engines: the table every engine is listed in.
        launcher: model checks and process starts.
        adopt_process: finds a process of a previous agent again.
        telemetry: the GPUs engines are placed on.
        gpu_health: which GPUs hold restarts back.
        state: the state file, saved before a start is answered.
        on_change: called after any engine changed (the agent saves and reports).
    """

    def __init__(
        self,
        settings: AgentSettings,
        *,
        clock: Clock,
        engines: EngineTable,
        launcher: EngineLauncher,
        adopt_process: AdoptProcess,
        telemetry: HostTelemetry,
        gpu_health: GpuHealth,
        state: StateSaver,
        on_change: Callable[[], None],
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._engines = engines
        self._launcher = launcher
        self._adopt_fn = adopt_process
        self._telemetry = telemetry
        self._gpu_health = gpu_health
        self._state = state
        self._on_change = on_change
        self._start_lock = anyio.Lock()
        self._tg: anyio.abc.TaskGroup | None = None
        self._client: httpx.AsyncClient | None = None

    def attach(self, task_group: anyio.abc.TaskGroup, client: httpx.AsyncClient) -> None:
        """Run supervisors in ``task_group``; they probe their engines through ``client``."""
        self._tg = task_group
        self._client = client

    async def start(self, spec: EngineSpec, engine_id: str | None) -> EngineInfo:
        """See :meth:`sage.unified.agent.service.Agent.start_engine`."""
        await self._launcher.check_model(spec)
        async with self._start_lock:
            if engine_id is not None and (known := self._engines.find(engine_id)):
                if known.spec != spec:
                    raise EngineIdTakenError(
                        f"engine id {engine_id!r} is taken by an engine of model "
                        f"{known.spec.name!r}; start without an id or choose another"
                    )
                log.info("engine %s is already started: start request repeated", engine_id)
                return known.info()
            gpu_ids = await self._gpus_for(spec)
            port = self._engines.reserve_port(spec.port)
            while engine_id is None or engine_id in self._engines:
                engine_id = engine_id_for(spec.name)
            try:
                process = await self._launcher.launch(engine_id, spec, port, gpu_ids)
            except BaseException:
                self._engines.release_port(port)
                raise
            self._engines.claim_gpus(engine_id, gpu_ids, spec.gpu_memory_utilization)
            sup = self._make_supervisor(
                EngineSlot(engine_id, spec, port, gpu_ids),
                process=process,
                state=EngineState.STARTING,
                reason=f"launched (pid {process.record.pid}); waiting for /health and the model list",
            )
            self._engines.add(sup)
            # Persist the pid before answering: a crash right now must not orphan it.
            await self._state.save()
            assert self._tg is not None
            self._tg.start_soon(sup.run)
        self._changed(sup)
        log.info(
            "engine %s (%s) launched on port %d, gpus %s", engine_id, spec.name, port, list(gpu_ids)
        )
        return sup.info()

    async def adopt(self, saved: AgentState) -> list[EngineSupervisor]:
        """Take over the engines of ``saved``: a live process is adopted, not restarted; a
        dead one is restarted under the restart policy; STOPPED ones are listed only.

        Returns:
            The supervisors started (every engine not STOPPED).
        """
        adopted: list[EngineSupervisor] = []
        now = self._clock.time()
        for rec in prune_records(saved.engines, now):
            if rec.engine_id in self._engines:
                continue  # a duplicate line must not produce a duplicate engine
            process: ProcessHandle | None = None
            if (
                rec.pid is not None
                and rec.pid_create_time is not None
                and rec.state is not EngineState.STOPPED
            ):
                process = await anyio.to_thread.run_sync(
                    self._adopt_fn,
                    ProcessRecord(
                        pid=rec.pid, create_time=rec.pid_create_time, pgid=rec.pgid or rec.pid
                    ),
                )
            state_, reason = resumed_state(rec, alive=process is not None)
            sup = self._make_supervisor(
                EngineSlot(rec.engine_id, rec.spec, rec.port, tuple(rec.gpu_ids)),
                process=process,
                state=state_,
                reason=reason,
                incarnation=rec.incarnation,
                restarts=rec.restarts,
                created_at=rec.created_at,
            )
            if state_ is EngineState.STOPPED:
                sup.state_changed_at = rec.state_changed_at or now
            else:
                self._engines.reserve_adopted(
                    rec.engine_id, rec.port, tuple(rec.gpu_ids), rec.spec.gpu_memory_utilization
                )
                adopted.append(sup)
            self._engines.add(sup)
            log.info("engine %s: %s (%s)", rec.engine_id, state_.value, reason)
        assert self._tg is not None
        for sup in adopted:
            self._tg.start_soon(sup.run)
        return adopted

    def drain_off_gpu(self, index: int, why: str) -> None:
        """Drain the engines on GPU ``index`` without waiting (a failed one is woken, so
        its restart gate holds it back instead)."""
        assert self._tg is not None
        for sup in self._engines.supervisors():
            if index not in sup.gpu_ids or sup.stopped:
                continue
            if sup.state is EngineState.ERROR:
                sup.wake()
            else:
                log.warning("engine %s: draining, %s", sup.engine_id, why)
                self._tg.start_soon(functools.partial(sup.drain, wait=False, why=why))

    def wake_on_gpu(self, index: int) -> None:
        """Wake the engines on GPU ``index`` (its quarantine was lifted)."""
        for sup in self._engines.supervisors():
            if index in sup.gpu_ids:
                sup.wake()

    async def _gpus_for(self, spec: EngineSpec) -> tuple[int, ...]:
        """The GPUs ``spec`` gets (none where its runtime runs on the CPU).

        Raises:
            NoFreeGpuError: not enough free GPUs.
            SpecRejectedError: ``gpu_ids`` given for a runtime that runs on the CPU.
        """
        if self._settings.runtime_config().needs_gpu(spec.runtime) or (
            spec.runtime is Runtime.SIMULATED
        ):
            if not self._telemetry.gpus_read:
                await self._telemetry.refresh_gpus()
            return assign_gpus(
                spec,
                self._telemetry.gpus,
                self._engines.gpu_claims(),
                gpu_error=self._telemetry.gpu_error,
            )
        if spec.gpu_ids:
            raise SpecRejectedError(
                "gpu_ids cannot be given: this agent runs vLLM on the CPU "
                "(SAGE_AGENT_VLLM_DEVICE=cpu)"
            )
        return ()

    def _make_supervisor(
        self,
        slot: EngineSlot,
        *,
        process: ProcessHandle | None,
        state: EngineState,
        reason: str = "",
        incarnation: int = 0,
        restarts: int = 0,
        created_at: float | None = None,
    ) -> EngineSupervisor:
        async def relaunch(_incarnation: int) -> ProcessHandle:
            # Checked again: a symlink under a root may have been turned elsewhere since.
            await self._launcher.check_model(slot.spec)
            return await self._launcher.launch(slot.engine_id, slot.spec, slot.port, slot.gpu_ids)

        assert self._client is not None
        return build_supervisor(
            self._settings,
            slot,
            client=self._client,
            clock=self._clock,
            launch=relaunch,
            on_change=self._changed,
            restart_gate=lambda: self._gpu_health.restart_held(slot.gpu_ids),
            process=process,
            state=state,
            reason=reason,
            incarnation=incarnation,
            restarts=restarts,
            created_at=created_at,
        )

    def _changed(self, sup: EngineSupervisor) -> None:
        # STOPPED engines give their port and GPUs back at once.
        self._engines.release_if_stopped(sup)
        self._on_change()
