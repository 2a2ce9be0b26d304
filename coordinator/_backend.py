"""The seam between the coordinator's facade and where its state lives.

A :class:`ControlPlaneBackend` holds the registry and carries out what changes it:
agents' reports, operators' register/start/stop, the audit trail. Two implementations:

- :class:`~._local.LocalBackend`: one coordinator owns the state in memory and persists
  what must survive a restart in SQLite (or nothing, in memory). The default.
- :class:`~._ha.EtcdBackend`: the state lives in an etcd cluster shared by every gateway;
  each keeps a mirror of it, and work that must happen once runs on the elected leader.

The facade (:class:`~._service.Coordinator`) adds what is the same for both: tokens, the
table publisher, queries, metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import anyio

from sage.unified.coordinator._audit import Auditor
from sage.unified.coordinator._fleet_service import FleetService
from sage.unified.coordinator._reconciler import Reconciler
from sage.unified.coordinator._registry import Registry
from sage.unified.coordinator._store import StartRequestRecord
from sage.unified.sdk.models import (
    AgentReport,
    AgentReportReply,
    EngineInfo,
    EngineStartRequest,
    EngineStopRequest,
    RegisterEngineRequest,
)

__all__ = ["ControlPlaneBackend", "LeaderTask", "StoreStatus", "keep_running", "run_leader_tasks"]

log = logging.getLogger("sage.unified.coordinator")

_TASK_RESTART_S = 1.0


@dataclass(frozen=True, slots=True)
class StoreStatus:
    """Whether the store can be reached, as the coordinator last found it."""

    kind: str
    """``sqlite``, ``memory`` or ``etcd``."""
    reachable: bool = True
    error: str | None = None
    """Why not, for ``/readyz`` and logs (never a credential)."""
    since: float | None = None
    """Wall time the store was last found unreachable (``None`` while reachable)."""


class LeaderTask(Protocol):
    """Work that must run in one place only (a deployment reconciler, a sweep).

    ``run()`` is called when this coordinator starts to lead and cancelled when it stops
    leading (its etcd lease ended, or the coordinator stops); it is called again when it
    leads again. A coordinator with a local store always leads. ``run()`` should not
    return while there is work; if it raises, it is logged and started again after a
    second.
    """

    async def run(self) -> None: ...


class ControlPlaneBackend(Protocol):
    """Where a coordinator's state lives; entered and left with the coordinator."""

    @property
    def registry(self) -> Registry:
        """The registry the table is published from (read it; change it only here)."""
        ...

    @property
    def auditor(self) -> Auditor: ...

    @property
    def fleet(self) -> FleetService:
        """Deployments, cordons and what operators do with them (entered backends only)."""
        ...

    @property
    def reconciler(self) -> Reconciler: ...

    @property
    def settling(self) -> bool:
        """Just restarted; the table may lack serving engines for a moment."""
        ...

    @property
    def store_status(self) -> StoreStatus: ...

    @property
    def is_leader(self) -> bool:
        """Whether work that must happen once runs here now."""
        ...

    @property
    def ready(self) -> bool:
        """Whether the state is known (store open; etcd read at least once)."""
        ...

    async def __aenter__(self) -> ControlPlaneBackend: ...

    async def __aexit__(self, *exc_info: object) -> None: ...

    async def report(self, agent_id: str, report: AgentReport) -> AgentReportReply: ...

    async def register_engine(self, request: RegisterEngineRequest, who: str) -> EngineInfo: ...

    async def start_engine(self, request: EngineStartRequest, who: str) -> EngineInfo: ...

    async def stop_engine(self, request: EngineStopRequest, who: str) -> EngineInfo: ...

    def pending_starts(self) -> list[StartRequestRecord]:
        """Starts sent (or to be sent) to agents that no report has shown yet."""
        ...


async def keep_running(name: str, run: Callable[[], Awaitable[None]]) -> None:
    """Run a background loop until cancelled; when it raises or returns, log it and start
    it again after a second: one failure never stops a control plane's loop for good
    (a task group would otherwise take every other loop down with it)."""
    while True:
        try:
            await run()
            log.warning("%s returned; starting it again", name)
        except Exception:
            log.exception("%s failed; starting it again", name)
        await anyio.sleep(_TASK_RESTART_S)


async def run_leader_tasks(tasks: Sequence[LeaderTask]) -> None:
    """Run every task until cancelled, each under :func:`keep_running`."""
    async with anyio.create_task_group() as task_group:
        for task in tasks:
            task_group.start_soon(keep_running, f"leader task {task!r}", task.run)
