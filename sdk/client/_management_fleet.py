"""The fleet methods of the control-plane clients: deployments, rollouts, hosts, GPU clear.

Mixed into :class:`~._management.GatewayManagementClient` and its async twin; each method
is one declared endpoint (:class:`~sage.unified.sdk.protocol.ControlPlaneApi`).
"""

from __future__ import annotations

from collections.abc import Sequence

from sage.unified.sdk.client._executor import AsyncCaller, SyncCaller
from sage.unified.sdk.fleet import (
    Deployment,
    DeploymentPlan,
    DeploymentPlanRequest,
    DeploymentSpec,
    DeploymentStatus,
    HostDrain,
    RolloutUndoRequest,
)
from sage.unified.sdk.models import AgentSummary, GpuInfo
from sage.unified.sdk.protocol import ControlPlaneApi

__all__ = ["AsyncFleetMethods", "SyncFleetMethods"]

_CP = ControlPlaneApi


class SyncFleetMethods:
    """Deployments and hosts, on a sync control-plane client."""

    _caller: SyncCaller

    def deployments(self) -> list[Deployment]:
        """Every deployment with its status (desired against ready, rollout)."""
        return self._caller.call(_CP.DEPLOYMENTS).deployments

    def deployment(self, name: str) -> Deployment:
        return self._caller.call(_CP.DEPLOYMENT, path={"name": name})

    def apply_deployment(self, spec: DeploymentSpec) -> Deployment:
        """Create or change a deployment (idempotent: the same spec changes nothing)."""
        return self._caller.call(_CP.APPLY_DEPLOYMENT, spec, path={"name": spec.name})

    def delete_deployment(self, name: str) -> Deployment:
        """Delete a deployment: its replicas are drained, then it is forgotten."""
        return self._caller.call(_CP.DELETE_DEPLOYMENT, path={"name": name})

    def plan_deployments(
        self, specs: Sequence[DeploymentSpec] = (), delete: Sequence[str] = ()
    ) -> DeploymentPlan:
        """What applying ``specs`` (and deleting ``delete``) would do now; changes nothing."""
        request = DeploymentPlanRequest(deployments=list(specs), delete=list(delete))
        return self._caller.call(_CP.PLAN_DEPLOYMENTS, request)

    def rollout_status(self, name: str) -> DeploymentStatus:
        return self._caller.call(_CP.ROLLOUT_STATUS, path={"name": name})

    def rollout_undo(self, name: str, to_revision: int | None = None) -> Deployment:
        """Bring back an earlier revision's engine spec (the previous one by default)."""
        request = RolloutUndoRequest(to_revision=to_revision)
        return self._caller.call(_CP.ROLLOUT_UNDO, request, path={"name": name})

    def cordon(self, host: str) -> AgentSummary:
        """No new engine on ``host`` (agent id or address)."""
        return self._caller.call(_CP.CORDON_AGENT, path={"agent_id": host})

    def uncordon(self, host: str) -> AgentSummary:
        return self._caller.call(_CP.UNCORDON_AGENT, path={"agent_id": host})

    def drain_host(self, host: str) -> HostDrain:
        """Cordon ``host``, move its deployment replicas elsewhere, drain its other engines."""
        return self._caller.call(_CP.DRAIN_AGENT, path={"agent_id": host})

    def clear_gpu(self, host: str, index: int) -> GpuInfo:
        """Lift the fault quarantine of GPU ``index`` on ``host`` (through its agent)."""
        return self._caller.call(_CP.CLEAR_GPU, path={"agent_id": host, "index": index})


class AsyncFleetMethods:
    """Deployments and hosts, on an async control-plane client (same as the sync ones)."""

    _caller: AsyncCaller

    async def deployments(self) -> list[Deployment]:
        return (await self._caller.call(_CP.DEPLOYMENTS)).deployments

    async def deployment(self, name: str) -> Deployment:
        return await self._caller.call(_CP.DEPLOYMENT, path={"name": name})

    async def apply_deployment(self, spec: DeploymentSpec) -> Deployment:
        return await self._caller.call(_CP.APPLY_DEPLOYMENT, spec, path={"name": spec.name})

    async def delete_deployment(self, name: str) -> Deployment:
        return await self._caller.call(_CP.DELETE_DEPLOYMENT, path={"name": name})

    async def plan_deployments(
        self, specs: Sequence[DeploymentSpec] = (), delete: Sequence[str] = ()
    ) -> DeploymentPlan:
        request = DeploymentPlanRequest(deployments=list(specs), delete=list(delete))
        return await self._caller.call(_CP.PLAN_DEPLOYMENTS, request)

    async def rollout_status(self, name: str) -> DeploymentStatus:
        return await self._caller.call(_CP.ROLLOUT_STATUS, path={"name": name})

    async def rollout_undo(self, name: str, to_revision: int | None = None) -> Deployment:
        request = RolloutUndoRequest(to_revision=to_revision)
        return await self._caller.call(_CP.ROLLOUT_UNDO, request, path={"name": name})

    async def cordon(self, host: str) -> AgentSummary:
        return await self._caller.call(_CP.CORDON_AGENT, path={"agent_id": host})

    async def uncordon(self, host: str) -> AgentSummary:
        return await self._caller.call(_CP.UNCORDON_AGENT, path={"agent_id": host})

    async def drain_host(self, host: str) -> HostDrain:
        return await self._caller.call(_CP.DRAIN_AGENT, path={"agent_id": host})

    async def clear_gpu(self, host: str, index: int) -> GpuInfo:
        return await self._caller.call(_CP.CLEAR_GPU, path={"agent_id": host, "index": index})
