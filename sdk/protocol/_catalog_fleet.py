"""The control plane's fleet endpoints: deployments, rollouts, host cordon and drain, GPU clear.

Declared here to keep the catalog readable; :class:`~._catalog.ControlPlaneApi` inherits
them, so they are part of :data:`~._catalog.ENDPOINTS` like every other endpoint.
"""

from __future__ import annotations

from sage.unified.sdk.fleet import (
    Deployment,
    DeploymentList,
    DeploymentPlan,
    DeploymentPlanRequest,
    DeploymentSpec,
    DeploymentStatus,
    HostDrain,
    RolloutUndoRequest,
)
from sage.unified.sdk.models import AgentSummary, GpuInfo
from sage.unified.sdk.protocol._endpoint import Component, Endpoint, Retry, Scope, declarer

__all__ = ["FleetApi"]

_DEPLOYMENTS = "/v1/management/deployments"
_AGENT = "/v1/management/agents/{agent_id}"
_cp = declarer(Component.CONTROL_PLANE, "control_plane", Scope.ADMIN)


class FleetApi:
    """Deployments and hosts (part of :class:`~._catalog.ControlPlaneApi`)."""

    DEPLOYMENTS: Endpoint[None, DeploymentList] = _cp(
        "deployments",
        "GET",
        _DEPLOYMENTS,
        None,
        DeploymentList,
        summary="Every deployment: spec, desired against ready, rollout.",
    )
    DEPLOYMENT: Endpoint[None, Deployment] = _cp(
        "deployment",
        "GET",
        f"{_DEPLOYMENTS}/{{name}}",
        None,
        Deployment,
        summary="One deployment.",
    )
    APPLY_DEPLOYMENT: Endpoint[DeploymentSpec, Deployment] = _cp(
        "apply_deployment",
        "PUT",
        f"{_DEPLOYMENTS}/{{name}}",
        DeploymentSpec,
        Deployment,
        summary="Create or change a deployment (idempotent); a new engine spec is a new revision.",
    )
    DELETE_DEPLOYMENT: Endpoint[None, Deployment] = _cp(
        "delete_deployment",
        "DELETE",
        f"{_DEPLOYMENTS}/{{name}}",
        None,
        Deployment,
        summary="Delete a deployment: its replicas are drained, then it is forgotten.",
    )
    PLAN_DEPLOYMENTS: Endpoint[DeploymentPlanRequest, DeploymentPlan] = _cp(
        "plan_deployments",
        "POST",
        f"{_DEPLOYMENTS}/plan",
        DeploymentPlanRequest,
        DeploymentPlan,
        summary="A dry run: what applying these specs would start, stop or replace, and where.",
    )
    ROLLOUT_STATUS: Endpoint[None, DeploymentStatus] = _cp(
        "rollout_status",
        "GET",
        f"{_DEPLOYMENTS}/{{name}}/rollout",
        None,
        DeploymentStatus,
        summary="A deployment's rollout: revision, replicas updated and ready, why it waits.",
    )
    ROLLOUT_UNDO: Endpoint[RolloutUndoRequest, Deployment] = _cp(
        "rollout_undo",
        "POST",
        f"{_DEPLOYMENTS}/{{name}}/rollout/undo",
        RolloutUndoRequest,
        Deployment,
        retry=Retry.UNSENT_ONLY,
        summary="Roll back to an earlier revision's engine spec (as a new revision).",
    )
    CORDON_AGENT: Endpoint[None, AgentSummary] = _cp(
        "cordon_agent",
        "POST",
        f"{_AGENT}/cordon",
        None,
        AgentSummary,
        summary="No new engine is placed on the host (agent id or address); idempotent.",
    )
    UNCORDON_AGENT: Endpoint[None, AgentSummary] = _cp(
        "uncordon_agent",
        "POST",
        f"{_AGENT}/uncordon",
        None,
        AgentSummary,
        summary="The host takes new engines again (ends a drain); idempotent.",
    )
    DRAIN_AGENT: Endpoint[None, HostDrain] = _cp(
        "drain_agent",
        "POST",
        f"{_AGENT}/drain",
        None,
        HostDrain,
        summary="Cordon the host, move its deployment replicas off, drain its other engines.",
    )
    CLEAR_GPU: Endpoint[None, GpuInfo] = _cp(
        "clear_gpu",
        "POST",
        f"{_AGENT}/gpus/{{index}}/clear",
        None,
        GpuInfo,
        summary="Lift a GPU's fault quarantine through its agent; idempotent.",
    )
