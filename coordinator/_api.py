"""What the management routes serve, as an interface: a local coordinator or a remote one.

The routes (:mod:`._app`) only know :class:`ControlPlane`: per request they ask it for a
:class:`ControlPlaneSession` (which checks the caller's token, or carries it on) and call
the session. :class:`LocalSession` serves from the coordinator in this process; a gateway
in front of a standalone coordinator serves the same routes with a remote implementation
that calls it through the SDK (``gateway/_remote_plane.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from sage.unified.sdk.errors import WireError
from sage.unified.sdk.fleet import (
    Deployment,
    DeploymentPlan,
    DeploymentPlanRequest,
    DeploymentSpec,
    DeploymentStatus,
    HostDrain,
)
from sage.unified.sdk.models import (
    AgentSummary,
    EngineInfo,
    EngineStartRequest,
    EngineStopRequest,
    GpuInfo,
    RegisterEngineRequest,
)
from sage.unified.sdk.protocol import AuditRecord, HostGpus

if TYPE_CHECKING:
    from sage.unified.coordinator._service import Coordinator

__all__ = ["ControlPlane", "ControlPlaneSession", "LocalSession"]


class ControlPlaneSession(Protocol):
    """The management operations, on behalf of one authorized caller."""

    who: str
    """Who the caller is, for the audit trail (``admin``, ``anonymous``...)."""

    async def backends_json(self, after: int | None, wait: float) -> bytes: ...
    async def engines(self) -> list[EngineInfo]: ...
    async def engine(self, engine_id: str) -> EngineInfo: ...
    async def register_engine(self, request: RegisterEngineRequest) -> EngineInfo: ...
    async def start_engine(self, request: EngineStartRequest) -> EngineInfo: ...
    async def stop_engine(self, request: EngineStopRequest) -> EngineInfo: ...
    async def gpu_hosts(self) -> list[HostGpus]: ...
    async def agents(self) -> list[AgentSummary]: ...
    async def audit_log(self, limit: int) -> list[AuditRecord]: ...
    async def deployments(self) -> list[Deployment]: ...
    async def deployment(self, name: str) -> Deployment: ...
    async def apply_deployment(self, name: str, spec: DeploymentSpec) -> Deployment: ...
    async def delete_deployment(self, name: str) -> Deployment: ...
    async def plan_deployments(self, request: DeploymentPlanRequest) -> DeploymentPlan: ...
    async def rollout_status(self, name: str) -> DeploymentStatus: ...
    async def rollout_undo(self, name: str, to_revision: int | None) -> Deployment: ...
    async def cordon(self, host: str) -> AgentSummary: ...
    async def uncordon(self, host: str) -> AgentSummary: ...
    async def drain_host(self, host: str) -> HostDrain: ...
    async def clear_gpu(self, host: str, index: int) -> GpuInfo: ...

    async def refused(self, action: str, error: WireError) -> None:
        """A request of this caller was refused for its body (audited where possible)."""
        ...


class ControlPlane(Protocol):
    """Hands out sessions; raises a :class:`WireError` (401) for a bad token."""

    async def authorize(self, authorization: str | None, target: str) -> ControlPlaneSession: ...


class LocalSession:
    """A session on the coordinator in this process."""

    def __init__(self, coordinator: Coordinator, who: str) -> None:
        self._coordinator = coordinator
        self.who = who

    async def backends_json(self, after: int | None, wait: float) -> bytes:
        return await self._coordinator.backends_json(after, wait)

    async def engines(self) -> list[EngineInfo]:
        return self._coordinator.engines()

    async def engine(self, engine_id: str) -> EngineInfo:
        return self._coordinator.engine(engine_id)

    async def register_engine(self, request: RegisterEngineRequest) -> EngineInfo:
        return await self._coordinator.register_engine(request, self.who)

    async def start_engine(self, request: EngineStartRequest) -> EngineInfo:
        return await self._coordinator.start_engine(request, self.who)

    async def stop_engine(self, request: EngineStopRequest) -> EngineInfo:
        return await self._coordinator.stop_engine(request, self.who)

    async def gpu_hosts(self) -> list[HostGpus]:
        return self._coordinator.gpu_hosts()

    async def agents(self) -> list[AgentSummary]:
        return self._coordinator.agents()

    async def audit_log(self, limit: int) -> list[AuditRecord]:
        return await self._coordinator.audit_log(limit)

    async def deployments(self) -> list[Deployment]:
        return self._coordinator.fleet.deployments()

    async def deployment(self, name: str) -> Deployment:
        return self._coordinator.fleet.deployment(name)

    async def apply_deployment(self, name: str, spec: DeploymentSpec) -> Deployment:
        return await self._coordinator.fleet.apply(name, spec, self.who)

    async def delete_deployment(self, name: str) -> Deployment:
        return await self._coordinator.fleet.delete(name, self.who)

    async def plan_deployments(self, request: DeploymentPlanRequest) -> DeploymentPlan:
        return self._coordinator.fleet.plan(request)

    async def rollout_status(self, name: str) -> DeploymentStatus:
        return self._coordinator.fleet.rollout_status(name)

    async def rollout_undo(self, name: str, to_revision: int | None) -> Deployment:
        return await self._coordinator.fleet.undo(name, to_revision, self.who)

    async def cordon(self, host: str) -> AgentSummary:
        return await self._coordinator.fleet.cordon(host, self.who)

    async def uncordon(self, host: str) -> AgentSummary:
        return await self._coordinator.fleet.uncordon(host, self.who)

    async def drain_host(self, host: str) -> HostDrain:
        return await self._coordinator.fleet.drain(host, self.who)

    async def clear_gpu(self, host: str, index: int) -> GpuInfo:
        return await self._coordinator.fleet.clear_gpu(host, index, self.who)

    async def refused(self, action: str, error: WireError) -> None:
        # A control action refused for its body (unknown fields such as command/env,
        # a path or a flag as the model name) is as much an attempt as one refused
        # later, so it is audited too; only authenticated callers get this far.
        await self._coordinator.audit(
            self.who, action, "request body", f"rejected: {error.message}"
        )
