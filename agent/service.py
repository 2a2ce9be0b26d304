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

On entry the agent reconciles: engines in the state file whose process is still
alive (pid + start time) are adopted, not restarted; dead ones are restarted under
the restart policy. On exit engines keep running (a successor adopts them) unless
``settings.stop_engines_on_exit``.
"""

from __future__ import annotations

import functools
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import httpx

from sage.unified.agent.allowlist import model_allowed, outside_model_roots
from sage.unified.agent.engine_setup import EngineSlot, build_supervisor
from sage.unified.agent.errors import (
    EngineIdTakenError,
    EngineNotFoundError,
    GpuNotFoundError,
    ModelNotAllowedError,
    SpecRejectedError,
)
from sage.unified.agent.gpu_health import GpuHealth
from sage.unified.agent.gpus import GpuClaim, assign_gpus
from sage.unified.agent.launcher import ProcessRecord, adopt, launch
from sage.unified.agent.logfiles import engine_log_path, rotate_if_needed, tail
from sage.unified.agent.ports import PortAllocator
from sage.unified.agent.reconcile import (
    STOPPED_KEEP_COUNT,
    STOPPED_KEEP_S,
    engine_record,
    prune_records,
    resumed_state,
)
from sage.unified.agent.reporter import Reporter
from sage.unified.agent.runtimes import LaunchPlan, build_launch_plan
from sage.unified.agent.settings import AgentSettings
from sage.unified.agent.statefile import AgentState, StateFile, StateFileError
from sage.unified.agent.supervisor import EngineSupervisor, ProcessHandle
from sage.unified.agent.telemetry import GpuReader, read_host_metrics
from sage.unified.agent.telemetry.gpu_faults import GpuFaultWatcher
from sage.unified.sdk.client import AsyncGatewayManagementClient, async_http_pool
from sage.unified.sdk.clock import Clock, SystemClock
from sage.unified.sdk.models import (
    AgentReport,
    EngineInfo,
    EngineSpec,
    GpuInfo,
    HostMetrics,
    Runtime,
)
from sage.unified.sdk.states import EngineState

__all__ = ["STOPPED_KEEP_COUNT", "STOPPED_KEEP_S", "Agent", "engine_id_for"]

log = logging.getLogger(__name__)

_LIVENESS_TICK_S = 1.0
_REPORT_TIMEOUT_S = 5.0
_ADOPT_PROBE_WAIT_S = 5.0


LaunchProcess = Callable[[LaunchPlan, Path, Path], Awaitable[ProcessHandle]]
"""``launch(plan, log_path, cwd)``."""
AdoptProcess = Callable[[ProcessRecord], ProcessHandle | None]


async def _default_launch(plan: LaunchPlan, log_path: Path, cwd: Path) -> ProcessHandle:
    return await launch(plan, log_path=log_path, cwd=cwd)


def engine_id_for(name: str) -> str:
    """``<served-name-slug>-<6 hex>``, e.g. ``qwen2-5-0-5b-1a2b3c``."""
    base = name.rsplit("/", 1)[-1] or name
    slug = re.sub(r"[^a-z0-9]+", "-", base.lower()).strip("-")[:48].strip("-") or "engine"
    return f"{slug}-{secrets.token_hex(3)}"


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
        self._launch_fn: LaunchProcess = launch_process or _default_launch
        self._adopt_fn: AdoptProcess = adopt_process or adopt
        self.clock: Clock = clock or SystemClock()
        self.incarnation = int(time.time() * 1000)
        """Boot epoch in ms: higher on every agent start, so stale reports are fenced."""
        self.version = _version()
        self._gpu_reader = gpu_reader if gpu_reader is not None else GpuReader()
        if fault_watcher is None and gpu_reader is None:
            fault_watcher = GpuFaultWatcher()
        self.gpu_health = GpuHealth(
            fault_watcher,
            critical_xids=settings.gpu_fault_xids,
            clock=self.clock,
            on_fault=self._gpu_fault,
            agent_id=settings.agent_id,
        )
        self._transport = http_transport
        self._supervisors: dict[str, EngineSupervisor] = {}
        self._ports = PortAllocator(*settings.engine_port_range)
        self._claims: dict[str, GpuClaim] = {}
        self._statefile = StateFile.in_dir(settings.state_dir)
        self._gpus: list[GpuInfo] = []
        self._gpu_error: str | None = "not read yet"
        self._gpus_read = False
        self._host_metrics: HostMetrics | None = None
        self._start_lock = anyio.Lock()
        self._dirty = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None
        self._client: httpx.AsyncClient | None = None
        self.reporter: Reporter | None = None
        self.ready = False
        """Reconciliation finished (engines adopted, first report attempted)."""
        self.alive_at = 0.0
        self._forgotten_restarts = 0
        self._forgotten_probe_failures = 0
        """``anyio.current_time()`` of the last liveness tick."""

    # ---- lifecycle ---------------------------------------------------------------

    async def __aenter__(self) -> Agent:
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        self._client = async_http_pool(
            max_connections=200, max_keepalive=50, transport=self._transport
        )
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        try:
            self.alive_at = anyio.current_time()
            self._tg.start_soon(self._liveness_loop)
            state = self._load_state()
            # Before the first reading: a quarantine the agent kept must not be lost to
            # a fault found in that reading.
            self.gpu_health.load(state.gpu_health)
            await self._refresh_telemetry()
            await self._reconcile(state)
            self._tg.start_soon(self._save_loop)
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
            await self._save_state()
        self._tg.cancel_scope.cancel()
        try:
            # Exited outside any scope opened after it (anyio requires strict nesting).
            result = await self._tg.__aexit__(exc_type, exc, tb)
        finally:
            with anyio.CancelScope(shield=True):
                if self._client is not None:
                    await self._client.aclose()
                await self._gpu_reader.aclose()
                await self.gpu_health.aclose()
        return result

    async def stop_all(self) -> None:
        """Stop every engine at once (no drain), in parallel, each within the grace."""
        async with anyio.create_task_group() as tg:
            for sup in list(self._supervisors.values()):
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
        await self._check_model(spec)
        async with self._start_lock:
            if engine_id is not None and (known := self._supervisors.get(engine_id)):
                if known.spec != spec:
                    raise EngineIdTakenError(
                        f"engine id {engine_id!r} is taken by an engine of model "
                        f"{known.spec.name!r}; start without an id or choose another"
                    )
                log.info("engine %s is already started: start request repeated", engine_id)
                return known.info()
            if self.settings.runtime_config().needs_gpu(spec.runtime) or (
                spec.runtime is Runtime.SIMULATED
            ):
                if not self._gpus_read:
                    await self._refresh_gpus()
                gpu_ids = assign_gpus(
                    spec, self._gpus, list(self._claims.values()), gpu_error=self._gpu_error
                )
            elif spec.gpu_ids:
                raise SpecRejectedError(
                    "gpu_ids cannot be given: this agent runs vLLM on the CPU "
                    "(SAGE_AGENT_VLLM_DEVICE=cpu)"
                )
            else:
                gpu_ids = ()
            port = self._ports.reserve(spec.port)
            while engine_id is None or engine_id in self._supervisors:
                engine_id = engine_id_for(spec.name)
            try:
                process = await self._launch_process(engine_id, spec, port, gpu_ids)
            except BaseException:
                self._ports.release(port)
                raise
            self._claims[engine_id] = GpuClaim(
                engine_id, tuple(gpu_ids), spec.gpu_memory_utilization
            )
            sup = self._make_supervisor(
                engine_id=engine_id,
                spec=spec,
                port=port,
                gpu_ids=tuple(gpu_ids),
                process=process,
                state=EngineState.STARTING,
                reason=f"launched (pid {process.record.pid}); waiting for /health and the model list",
            )
            self._supervisors[engine_id] = sup
            # Persist the pid before answering: a crash right now must not orphan it.
            await self._save_state()
            assert self._tg is not None
            self._tg.start_soon(sup.run)
        self._changed(sup)
        log.info(
            "engine %s (%s) launched on port %d, gpus %s", engine_id, spec.name, port, list(gpu_ids)
        )
        return sup.info()

    async def drain_engine(
        self, engine_id: str, *, wait: bool = True, timeout_s: float | None = None
    ) -> EngineInfo:
        """Drain an engine (see :meth:`EngineSupervisor.drain`).

        Raises:
            EngineNotFoundError: unknown id.
        """
        return await self._get(engine_id).drain(timeout_s, wait=wait)

    async def stop_engine(self, engine_id: str) -> EngineInfo:
        """Stop an engine now; returns it STOPPED.

        Raises:
            EngineNotFoundError: unknown id.
        """
        return await self._get(engine_id).stop()

    def engines(self) -> list[EngineInfo]:
        return [sup.info() for sup in self._supervisors.values()]

    def engine(self, engine_id: str) -> EngineInfo:
        """Raises: EngineNotFoundError."""
        return self._get(engine_id).info()

    async def logs(self, engine_id: str, lines: int) -> list[str]:
        """The last ``lines`` lines of an engine's log. Raises: EngineNotFoundError."""
        self._get(engine_id)
        path = engine_log_path(self.settings.log_dir, engine_id)
        return await anyio.to_thread.run_sync(tail, path, max(0, lines))

    def gpus(self) -> tuple[list[GpuInfo], str | None]:
        return list(self._gpus), self._gpu_error

    async def clear_gpu(self, index: int) -> GpuInfo:
        """Lift GPU ``index``'s quarantine; engines held back by it are restarted.

        Idempotent: clearing a healthy GPU changes nothing.

        Raises:
            GpuNotFoundError: NVML shows no GPU ``index`` and none is quarantined.
        """
        known = {gpu.index: gpu for gpu in self._gpus}
        if index not in known and self.gpu_health.fault(index) is None:
            raise GpuNotFoundError(
                f"no GPU {index} on agent {self.settings.agent_id!r} (GPUs here: "
                f"{', '.join(str(i) for i in sorted(known)) or 'none'})"
            )
        if await self.gpu_health.clear(index):
            self._gpus = self.gpu_health.annotate(self._gpus)
            for sup in self._supervisors.values():
                if index in sup.gpu_ids:
                    sup.wake()
            self._dirty.set()
            if self.reporter is not None:
                self.reporter.report_now()
        gpu = next((g for g in self._gpus if g.index == index), None)
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
            gpus=list(self._gpus),
            gpu_error=self._gpu_error,
            host_metrics=self._host_metrics,
            engines=self.engines(),
            gpu_free_runtimes=[r for r in Runtime if not s.runtime_config().needs_gpu(r)],
            labels=dict(s.labels),
        )

    @property
    def restarts_total(self) -> int:
        """Engine restarts since this agent started (a monotonic counter)."""
        return self._forgotten_restarts + sum(s.restarts for s in self._supervisors.values())

    @property
    def probe_failures_total(self) -> int:
        """Failed engine probes since this agent started (a monotonic counter)."""
        return self._forgotten_probe_failures + sum(
            s.probe_failures for s in self._supervisors.values()
        )

    def supervisor(self, engine_id: str) -> EngineSupervisor:
        """Raises: EngineNotFoundError."""
        return self._get(engine_id)

    # ---- internals ---------------------------------------------------------------

    def _get(self, engine_id: str) -> EngineSupervisor:
        try:
            return self._supervisors[engine_id]
        except KeyError:
            raise EngineNotFoundError(
                f"no engine {engine_id!r} on agent {self.settings.agent_id!r}"
            ) from None

    async def _check_model(self, spec: EngineSpec) -> None:
        """Raises: ModelNotAllowedError (allowlist, or a path outside the model roots)."""
        if not model_allowed(spec.model, self.settings.model_allowlist):
            raise ModelNotAllowedError(
                f"model {spec.model!r} is not allowed on this agent (allowlist: "
                f"{', '.join(self.settings.model_allowlist) or 'empty'})"
            )
        roots = self.settings.model_root_dirs()
        # realpath may touch a slow (network) filesystem: off the event loop.
        why = await anyio.to_thread.run_sync(outside_model_roots, spec.model, roots)
        if why is not None:
            raise ModelNotAllowedError(why)

    async def _launch_process(
        self, engine_id: str, spec: EngineSpec, port: int, gpu_ids: tuple[int, ...] | list[int]
    ) -> ProcessHandle:
        plan = build_launch_plan(
            spec,
            host=self.settings.engine_bind_host,
            port=port,
            gpu_ids=gpu_ids,
            config=self.settings.runtime_config(),
            drain_timeout_s=spec.drain_timeout_s,
        )
        log_path = engine_log_path(self.settings.log_dir, engine_id)
        return await self._launch_fn(plan, log_path, self.settings.state_dir)

    def _make_supervisor(
        self,
        *,
        engine_id: str,
        spec: EngineSpec,
        port: int,
        gpu_ids: tuple[int, ...],
        process: ProcessHandle | None,
        state: EngineState,
        reason: str = "",
        incarnation: int = 0,
        restarts: int = 0,
        created_at: float | None = None,
    ) -> EngineSupervisor:
        async def relaunch(_incarnation: int) -> ProcessHandle:
            # Checked again: a symlink under a root may have been turned elsewhere since.
            await self._check_model(spec)
            return await self._launch_process(engine_id, spec, port, gpu_ids)

        assert self._client is not None
        return build_supervisor(
            self.settings,
            EngineSlot(engine_id, spec, port, gpu_ids),
            client=self._client,
            clock=self.clock,
            launch=relaunch,
            on_change=self._changed,
            restart_gate=lambda: self.gpu_health.restart_held(gpu_ids),
            process=process,
            state=state,
            reason=reason,
            incarnation=incarnation,
            restarts=restarts,
            created_at=created_at,
        )

    def _gpu_fault(self, index: int, reason: str) -> None:
        """GPU ``index`` was just quarantined: drain its engines (a failed one is held
        back by the restart gate instead)."""
        self._gpus = self.gpu_health.annotate(self._gpus)
        why = f"GPU {index} is quarantined: {reason}"
        assert self._tg is not None
        for sup in list(self._supervisors.values()):
            if index not in sup.gpu_ids or sup.stopped:
                continue
            if sup.state is EngineState.ERROR:
                sup.wake()
            else:
                log.warning("engine %s: draining, %s", sup.engine_id, why)
                self._tg.start_soon(functools.partial(sup.drain, wait=False, why=why))
        self._dirty.set()
        if self.reporter is not None:
            self.reporter.report_now()

    def _changed(self, sup: EngineSupervisor) -> None:
        if sup.stopped and sup.engine_id in self._claims:
            # STOPPED engines give their port and GPUs back at once.
            del self._claims[sup.engine_id]
            self._ports.release(sup.port)
        self._dirty.set()
        if self.reporter is not None:
            self.reporter.report_now()

    def _load_state(self) -> AgentState:
        try:
            return self._statefile.load()
        except StateFileError as exc:
            log.error("%s; starting with no engines", exc)
            return AgentState()

    async def _reconcile(self, state: AgentState) -> None:
        adopted: list[EngineSupervisor] = []
        now = self.clock.time()
        for rec in prune_records(state.engines, now):
            if rec.engine_id in self._supervisors:
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
                engine_id=rec.engine_id,
                spec=rec.spec,
                port=rec.port,
                gpu_ids=tuple(rec.gpu_ids),
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
                self._ports.mark_reserved(rec.port)
                self._claims[rec.engine_id] = GpuClaim(
                    rec.engine_id, tuple(rec.gpu_ids), rec.spec.gpu_memory_utilization
                )
                adopted.append(sup)
            self._supervisors[rec.engine_id] = sup
            log.info("engine %s: %s (%s)", rec.engine_id, state_.value, reason)
        assert self._tg is not None
        for sup in adopted:
            self._tg.start_soon(sup.run)
        for index, reason in self.gpu_health.quarantined().items():
            self._gpu_fault(index, reason)  # nothing keeps running on a quarantined GPU
        # Let adopted engines pass one readiness probe before the first report, so a
        # healthy engine is never reported STARTING (and dropped from routing).
        with anyio.move_on_after(min(_ADOPT_PROBE_WAIT_S, self.settings.probe_timeout_s * 2 + 0.5)):
            for sup in adopted:
                await sup.first_round_done.wait()
        await self._save_state()

    def _forget_old_stopped(self) -> None:
        now = self.clock.time()
        stopped = sorted(
            (s for s in self._supervisors.values() if s.stopped),
            key=lambda s: s.state_changed_at,
            reverse=True,
        )
        for index, sup in enumerate(stopped):
            if index >= STOPPED_KEEP_COUNT or now - sup.state_changed_at >= STOPPED_KEEP_S:
                self._forgotten_restarts += sup.restarts
                self._forgotten_probe_failures += sup.probe_failures
                del self._supervisors[sup.engine_id]
                self._dirty.set()

    def _snapshot_state(self) -> AgentState:
        return AgentState(
            agent_id=self.settings.agent_id,
            saved_at=self.clock.time(),
            engines=[engine_record(sup) for sup in self._supervisors.values()],
            gpu_health=self.gpu_health.records(),
        )

    async def _save_state(self) -> None:
        try:
            await self._statefile.save(self._snapshot_state())
        except OSError as exc:
            log.error("could not write the state file %s: %s", self._statefile.path, exc)

    async def _save_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty = anyio.Event()
            await self._save_state()

    async def _liveness_loop(self) -> None:
        while True:
            self.alive_at = anyio.current_time()
            await anyio.sleep(_LIVENESS_TICK_S)

    async def _refresh_gpus(self) -> None:
        gpus, error = await self._gpu_reader.read()
        self._gpus, self._gpu_error = self.gpu_health.annotate(gpus), error
        self._gpus_read = True

    async def _refresh_telemetry(self) -> None:
        await self._refresh_gpus()
        await self.gpu_health.check_counters()
        try:
            self._host_metrics = await read_host_metrics(self.settings.state_dir)
        except OSError as exc:
            log.warning("host metrics unavailable: %s", exc)

    async def _rotate_logs(self) -> None:
        s = self.settings
        paths = [engine_log_path(s.log_dir, e) for e in self._supervisors]

        def rotate_all() -> None:
            for path in paths:
                try:
                    rotate_if_needed(path, max_bytes=s.log_max_bytes, backups=s.log_backups)
                except OSError as exc:
                    log.warning("could not rotate %s: %s", path, exc)

        await anyio.to_thread.run_sync(rotate_all)

    async def _telemetry_loop(self) -> None:
        while True:
            interval = (
                self.reporter.interval_s if self.reporter else self.settings.heartbeat_interval_s
            )
            await anyio.sleep(interval)
            with anyio.move_on_after(max(10.0, interval * 3)):
                await self._refresh_telemetry()
            await self._rotate_logs()
            self._forget_old_stopped()
