"""The management routes of the fleet: deployments, rollouts, host cordon and drain, GPU clear.

Part of :func:`~._app.create_management_router`, written over the same
:class:`~._api.ControlPlaneSession` interface (a local or a remote control plane).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from litestar import Request
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath

from sage.unified.coordinator._api import ControlPlaneSession
from sage.unified.coordinator._errors import InvalidRequestError
from sage.unified.sdk.fleet import (
    Deployment,
    DeploymentList,
    DeploymentPlan,
    DeploymentStatus,
    HostDrain,
)
from sage.unified.sdk.models import AgentSummary, GpuInfo
from sage.unified.sdk.protocol import ControlPlaneApi, Endpoint
from sage.unified.sdk.protocol.server import route

__all__ = ["fleet_routes"]

T = TypeVar("T")
API = ControlPlaneApi
AnyRequest = Request[Any, Any, Any]
Session = Callable[[AnyRequest, str], Awaitable[ControlPlaneSession]]
Body = Callable[[AnyRequest, Endpoint[Any, Any], ControlPlaneSession, str], Awaitable[Any]]


def _gpu_index(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 4:
        raise InvalidRequestError(
            f"GPU index {text[:16]!r} is not a number (0, 1, ...)", param="index"
        )
    return int(text)


def fleet_routes(session: Session, body: Body) -> list[HTTPRouteHandler]:
    """The route handlers; ``session`` authorizes a request, ``body`` decodes its body."""
    return [*_deployment_routes(session, body), *_host_routes(session)]


def _deployment_routes(session: Session, body: Body) -> list[HTTPRouteHandler]:
    @route(API.DEPLOYMENTS)
    async def list_deployments(request: AnyRequest) -> DeploymentList:
        caller = await session(request, "deployments")
        return DeploymentList(deployments=await caller.deployments())

    @route(API.DEPLOYMENT)
    async def get_deployment(request: AnyRequest, name: FromPath[str]) -> Deployment:
        return await (await session(request, name)).deployment(name)

    @route(API.APPLY_DEPLOYMENT)
    async def apply(request: AnyRequest, name: FromPath[str]) -> Deployment:
        caller = await session(request, name)
        spec = await body(request, API.APPLY_DEPLOYMENT, caller, "deployment.apply")
        return await caller.apply_deployment(name, spec)

    @route(API.DELETE_DEPLOYMENT)
    async def delete(request: AnyRequest, name: FromPath[str]) -> Deployment:
        return await (await session(request, name)).delete_deployment(name)

    @route(API.PLAN_DEPLOYMENTS)
    async def plan(request: AnyRequest) -> DeploymentPlan:
        caller = await session(request, "deployments/plan")
        plan_request = await body(request, API.PLAN_DEPLOYMENTS, caller, "deployment.plan")
        return await caller.plan_deployments(plan_request)

    @route(API.ROLLOUT_STATUS)
    async def rollout_status(request: AnyRequest, name: FromPath[str]) -> DeploymentStatus:
        return await (await session(request, name)).rollout_status(name)

    @route(API.ROLLOUT_UNDO)
    async def rollout_undo(request: AnyRequest, name: FromPath[str]) -> Deployment:
        caller = await session(request, name)
        undo = await body(request, API.ROLLOUT_UNDO, caller, "deployment.undo")
        return await caller.rollout_undo(name, undo.to_revision)

    return [
        list_deployments,
        get_deployment,
        apply,
        delete,
        plan,
        rollout_status,
        rollout_undo,
    ]


def _host_routes(session: Session) -> list[HTTPRouteHandler]:
    @route(API.CORDON_AGENT)
    async def cordon(request: AnyRequest, agent_id: FromPath[str]) -> AgentSummary:
        return await (await session(request, agent_id)).cordon(agent_id)

    @route(API.UNCORDON_AGENT)
    async def uncordon(request: AnyRequest, agent_id: FromPath[str]) -> AgentSummary:
        return await (await session(request, agent_id)).uncordon(agent_id)

    @route(API.DRAIN_AGENT)
    async def drain(request: AnyRequest, agent_id: FromPath[str]) -> HostDrain:
        return await (await session(request, agent_id)).drain_host(agent_id)

    @route(API.CLEAR_GPU)
    async def clear_gpu(
        request: AnyRequest, agent_id: FromPath[str], index: FromPath[str]
    ) -> GpuInfo:
        caller = await session(request, f"{agent_id}:{index}")
        return await caller.clear_gpu(agent_id, _gpu_index(index))

    return [cordon, uncordon, drain, clear_gpu]
