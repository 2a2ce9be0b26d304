"""The agent service: its engines, their supervisors, telemetry, the state file and reporting.

Independent of any HTTP server: ``sage agent run`` serves it with hypercorn
(:mod:`sage.unified.agent.main`), and the gateway can embed it in its own loop::

    async with Agent(settings) as agent:
        app = create_agent_app(agent)
        ...

What runs inside (one task group owned by the :class:`Agent`):

* one :class:`EngineSupervisor` per engine;
* the state saver (every change is written to the state file, coalesced);
* telemetry (GPUs through NVML, host metrics, log rotation) every heartbeat;
* GPU fault handling (:class:`GpuHealth`): NVML fault events and counters quarantine a
  GPU; its engines are drained and never restarted on it until an operator clears it;
* the reporter (pushes the full snapshot to the coordinator);
* a 1 s liveness tick (``/healthz``).

The parts, one job each: :class:`~sage.unified.agent.fleet.EngineFleet` starts, adopts
and drains engines; :class:`~sage.unified.agent.engine_table.EngineTable` lists them with
their ports and GPUs; :class:`~sage.unified.agent.engine_launch.EngineLauncher` checks
models and starts processes; :class:`~sage.unified.agent.host_telemetry.HostTelemetry`
holds the last GPU and host reading; :class:`~sage.unified.agent.state_saver.StateSaver`
keeps the state file current. The :class:`Agent` wires them and serves the API.

On entry the agent reconciles: engines in the state file whose process is still
alive (pid + start time) are adopted, not restarted; dead ones are restarted under
the restart policy. On exit engines keep running (a successor adopts them) unless
``settings.stop_engines_on_exit``.
"""

from __future__ import annotations

import functools
import logging
import time
from importlib import metadata
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import httpx

from sage.unified.agent.engine_launch import AdoptProcess, EngineLauncher, LaunchProcess
from sage.unified.agent.engine_table import EngineTable
from sage.unified.agent.errors import GpuNotFoundError
from sage.unified.agent.fleet import EngineFleet, engine_id_for
from sage.unified.agent.gpu_health import GpuHealth
from sage.unified.agent.host_telemetry import HostTelemetry
from sage.unified.agent.launcher import adopt
from sage.unified.agent.logfiles import engine_log_path, rotate_all, tail
from sage.unified.agent.reconcile import STOPPED_KEEP_COUNT, STOPPED_KEEP_S, engine_record
from sage.unified.agent.reporter import Reporter
from sage.unified.agent.settings import AgentSettings
from sage.unified.agent.state_saver import StateSaver
from sage.unified.agent.statefile import AgentState
from sage.unified.agent.supervisor import EngineSupervisor
from sage.unified.agent.telemetry import GpuReader
from sage.unified.agent.telemetry.gpu_faults import GpuFaultWatcher
from sage.unified.sdk.client import AsyncGatewayManagementClient, async_http_pool
from sage.unified.sdk.clock import Clock, SystemClock
from sage.unified.sdk.models import AgentReport, EngineInfo, EngineSpec, GpuInfo, Runtime

__all__ = ["STOPPED_KEEP_COUNT", "STOPPED_KEEP_S", "Agent", "engine_id_for"]

log = logging.getLogger(__name__)

_LIVENESS_TICK_S = 1.0
_REPORT_TIMEOUT_S = 5.0
_ADOPT_PROBE_WAIT_S = 5.0


def _version() -> str:
    try:
        return metadata.version("sage-unified-gateway")
    except metadata.PackageNotFoundError:
        return "0+unknown"


class Agent:
    """One host's agent. Use as an async context manager.

    Args:
        settings: the agent configuration.
        clock: time source (tests inject a fake one for pure logic).
        gpu_reader: NVML reader; tests inject a fake.
        http_transport: transport for probes and reports (tests can mock it).
        launch_process: starts a process for a plan (default: ``launcher.launch``).
        adopt_process: finds a process again (default: ``launcher.adopt``).
        fault_watcher: NVML fault events and counters; by default a real one when
            ``gpu_reader`` is not given, none when it is (tests pass a fake).
    """

    def __init__(
        self,
        settings: AgentSettings,
        *,
        clock: Clock | None = None,
        gpu_reader: Any | None = None,
        http_transport: httpx.AsyncBaseTransport | None = None,
        launch_process: LaunchProcess | None = None,
        adopt_process: AdoptProcess | None = None,
        fault_watcher: GpuFaultWatcher | None = None,
    ) -> None:
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self.incarnation = int(time.time() * 1000)
        """Boot epoch in ms: higher on every agent start, so stale reports are fenced."""
        self.version = _version()
        if fault_watcher is None and gpu_reader is None:
            fault_watcher = GpuFaultWatcher()
        self.gpu_health = GpuHealth(
            fault_watcher,
            critical_xids=settings.gpu_fault_xids,
            clock=self.clock,
            on_fault=self._gpu_fault,
            agent_id=settings.agent_id,
        )
        self._telemetry = HostTelemetry(
            gpu_reader if gpu_reader is not None else GpuReader(),
            self.gpu_health,
            settings.state_dir,
        )
        self._transport = http_transport
        self._engines = EngineTable(settings.agent_id, settings.engine_port_range)
        self._state = StateSaver(settings.state_dir, self._snapshot_state)
        self._fleet = EngineFleet(
            settings,
            clock=self.clock,
            engines=self._engines,
            launcher=EngineLauncher(settings, launch_process),
            adopt_process=adopt_process or adopt,
            telemetry=self._telemetry,
            gpu_health=self.gpu_health,
            state=self._state,
            on_change=self._changed,
        )
        self._tg: anyio.abc.TaskGroup | None = None
        self._client: httpx.AsyncClient | None = None
        self.reporter: Reporter | None = None
        self.ready = False
        """Reconciliation finished (engines adopted, first report attempted)."""
        self.alive_at = 0.0
        """``anyio.current_time()`` of the last liveness tick."""

    # ---- lifecycle ---------------------------------------------------------------

    async def __aenter__(self) -> Agent:
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        self._client = async_http_pool(
            max_connections=200, max_keepalive=50, transport=self._transport
        )
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._fleet.attach(self._tg, self._client)
        try:
            self.alive_at = anyio.current_time()
            self._tg.start_soon(self._liveness_loop)
            state = self._state.load()
            # Before the first reading: a quarantine the agent kept must not be lost to
            # a fault found in that reading.
            self.gpu_health.load(state.gpu_health)
            await self._telemetry.refresh()
            await self._reconcile(state)
            self._tg.start_soon(self._state.run)
            self._tg.start_soon(self._telemetry_loop)
            self._tg.start_soon(self.gpu_health.watch)
            token = self.settings.token.get_secret_value() if self.settings.token else None
            if self.settings.coordinator_urls:
                control_plane = AsyncGatewayManagementClient(
                    self.settings.coordinator_urls,
                    token,
                    timeout=_REPORT_TIMEOUT_S,
                    http=self._client,
                )
                self.reporter = Reporter(
                    control_plane,
                    self.settings.agent_id,
                    self.report,
                    interval_s=self.settings.heartbeat_interval_s,
                )
                # The first report goes out right after reconciliation: no
                # registration gap longer than one heartbeat.
                await self.reporter.send_once()
                self._tg.start_soon(self.reporter.run)
            self.ready = True
        except BaseException as exc:
            await self._close(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        return await self._close(exc_type, exc, tb)

    async def _close(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        self.ready = False
        assert self._tg is not None
        with anyio.CancelScope(shield=True):
            if self.settings.stop_engines_on_exit:
                await self.stop_all()
            # Engines keep running otherwise: the next agent adopts them from the file.
            await self._state.save()
        self._tg.cancel_scope.cancel()
        try:
            # Exited outside any scope opened after it (anyio requires strict nesting).
            result = await self._tg.__aexit__(exc_type, exc, tb)
        finally:
            with anyio.CancelScope(shield=True):
                if self._client is not None:
                    await self._client.aclose()
                await self._telemetry.aclose()
                await self.gpu_health.aclose()
        return result

    async def stop_all(self) -> None:
        """Stop every engine at once (no drain), in parallel, each within the grace."""
        async with anyio.create_task_group() as tg:
            for sup in self._engines.supervisors():
                if not sup.stopped:
                    tg.start_soon(sup.stop)

    # ---- commands ----------------------------------------------------------------

    async def start_engine(self, spec: EngineSpec, engine_id: str | None = None) -> EngineInfo:
        """Validate ``spec``, claim a port and GPUs, launch the engine.

        Returns the engine in STARTING. Nothing is spawned when the spec is rejected.
        With ``engine_id`` (the control plane's, which may send the same start twice
        across a leader change) an engine already under that id with the same spec is
        returned as it is, and nothing is spawned.

        Raises:
            ModelNotAllowedError: the model is not in the allowlist.
            PortUnavailableError: the requested port is taken or outside the range,
                or the range is full.
            NoFreeGpuError: not enough free GPUs.
            RuntimeUnavailableError, LaunchError: the process could not be started.
            EngineIdTakenError: ``engine_id`` belongs to an engine of another spec.
        """
        return await self._fleet.start(spec, engine_id)

    async def drain_engine(
        self, engine_id: str, *, wait: bool = True, timeout_s: float | None = None
    ) -> EngineInfo:
        """Drain an engine (see :meth:`EngineSupervisor.drain`).

        Raises:
            EngineNotFoundError: unknown id.
        """
        return await self._engines.get(engine_id).drain(timeout_s, wait=wait)

    async def stop_engine(self, engine_id: str) -> EngineInfo:
        """Stop an engine now; returns it STOPPED.

        Raises:
            EngineNotFoundError: unknown id.
        """
        return await self._engines.get(engine_id).stop()

    def engines(self) -> list[EngineInfo]:
        return self._engines.infos()

    def engine(self, engine_id: str) -> EngineInfo:
        """Raises: EngineNotFoundError."""
        return self._engines.get(engine_id).info()

    async def logs(self, engine_id: str, lines: int) -> list[str]:
        """The last ``lines`` lines of an engine's log. Raises: EngineNotFoundError."""
        self._engines.get(engine_id)
        path = engine_log_path(self.settings.log_dir, engine_id)
        return await anyio.to_thread.run_sync(tail, path, max(0, lines))

    def gpus(self) -> tuple[list[GpuInfo], str | None]:
        return list(self._telemetry.gpus), self._telemetry.gpu_error

    async def clear_gpu(self, index: int) -> GpuInfo:
        """Lift GPU ``index``'s quarantine; engines held back by it are restarted.

        Idempotent: clearing a healthy GPU changes nothing.

        Raises:
            GpuNotFoundError: NVML shows no GPU ``index`` and none is quarantined.
        """
        known = {gpu.index: gpu for gpu in self._telemetry.gpus}
        if index not in known and self.gpu_health.fault(index) is None:
            raise GpuNotFoundError(
                f"no GPU {index} on agent {self.settings.agent_id!r} (GPUs here: "
                f"{', '.join(str(i) for i in sorted(known)) or 'none'})"
            )
        if await self.gpu_health.clear(index):
            self._telemetry.reannotate()
            self._fleet.wake_on_gpu(index)
            self._changed()
        gpu = next((g for g in self._telemetry.gpus if g.index == index), None)
        return gpu if gpu is not None else GpuInfo(index=index)

    @property
    def coordinator_reachable(self) -> bool:
        """Whether the last report was accepted (``True`` when none is configured)."""
        return self.reporter is None or self.reporter.reachable

    def report(self) -> AgentReport:
        """The full snapshot pushed to the coordinator."""
        s = self.settings
        host = f"[{s.advertise_host}]" if ":" in s.advertise_host else s.advertise_host
        return AgentReport(
            agent_id=s.agent_id,
            host=s.advertise_host,
            url=f"http://{host}:{s.port}",
            version=self.version,
            incarnation=self.incarnation,
            sent_at=self.clock.time(),
            port_range=s.engine_port_range,
            gpus=list(self._telemetry.gpus),
            gpu_error=self._telemetry.gpu_error,
            host_metrics=self._telemetry.host_metrics,
            engines=self.engines(),
            gpu_free_runtimes=[r for r in Runtime if not s.runtime_config().needs_gpu(r)],
            labels=dict(s.labels),
        )

    @property
    def restarts_total(self) -> int:
        """Engine restarts since this agent started (a monotonic counter)."""
        return self._engines.restarts_total

    @property
    def probe_failures_total(self) -> int:
        """Failed engine probes since this agent started (a monotonic counter)."""
        return self._engines.probe_failures_total

    def supervisor(self, engine_id: str) -> EngineSupervisor:
        """Raises: EngineNotFoundError."""
        return self._engines.get(engine_id)

    # ---- internals ---------------------------------------------------------------

    def _gpu_fault(self, index: int, reason: str) -> None:
        """GPU ``index`` was just quarantined: drain its engines (a failed one is held
        back by the restart gate instead)."""
        self._telemetry.reannotate()
        self._fleet.drain_off_gpu(index, f"GPU {index} is quarantined: {reason}")
        self._changed()

    def _changed(self) -> None:
        self._state.mark_dirty()
        if self.reporter is not None:
            self.reporter.report_now()

    async def _reconcile(self, state: AgentState) -> None:
        adopted = await self._fleet.adopt(state)
        for index, reason in self.gpu_health.quarantined().items():
            self._gpu_fault(index, reason)  # nothing keeps running on a quarantined GPU
        # Let adopted engines pass one readiness probe before the first report, so a
        # healthy engine is never reported STARTING (and dropped from routing).
        with anyio.move_on_after(min(_ADOPT_PROBE_WAIT_S, self.settings.probe_timeout_s * 2 + 0.5)):
            for sup in adopted:
                await sup.first_round_done.wait()
        await self._state.save()

    def _snapshot_state(self) -> AgentState:
        return AgentState(
            agent_id=self.settings.agent_id,
            saved_at=self.clock.time(),
            engines=[engine_record(sup) for sup in self._engines.supervisors()],
            gpu_health=self.gpu_health.records(),
        )

    async def _liveness_loop(self) -> None:
        while True:
            self.alive_at = anyio.current_time()
            await anyio.sleep(_LIVENESS_TICK_S)

    async def _telemetry_loop(self) -> None:
        while True:
            interval = (
                self.reporter.interval_s if self.reporter else self.settings.heartbeat_interval_s
            )
            await anyio.sleep(interval)
            with anyio.move_on_after(max(10.0, interval * 3)):
                await self._telemetry.refresh()
            s = self.settings
            log_paths = [engine_log_path(s.log_dir, e) for e in self._engines.ids()]
            await anyio.to_thread.run_sync(
                functools.partial(
                    rotate_all, log_paths, max_bytes=s.log_max_bytes, backups=s.log_backups
                )
            )
            if self._engines.forget_old_stopped(self.clock.time()):
                self._state.mark_dirty()
