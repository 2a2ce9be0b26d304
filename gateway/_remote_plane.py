"""The management API of a standalone coordinator, served by a gateway in remote mode.

Each request is carried to the coordinator through the SDK's control-plane client with
the caller's own bearer token, so the coordinator authenticates and audits it exactly as
if it had been called directly; its answer, an error included, comes back unchanged in
status, type, code and message. An unreachable coordinator is 502
``coordinator_unreachable``.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx

from sage.unified.sdk.auth import bearer_token
from sage.unified.sdk.client import (
    APIStatusError,
    AsyncGatewayManagementClient,
    SageClientError,
)
from sage.unified.sdk.errors import WireError, error_type_for
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
    encode,
)
from sage.unified.sdk.protocol import AuditRecord, HostGpus

__all__ = ["RemoteControlPlane", "RemoteSession"]

_TIMEOUT_S = 90.0
"""Engine starts and drains can take a while on the coordinator's side."""


class CoordinatorAnswerError(WireError):
    """The standalone coordinator refused or failed a request (its status and body)."""


def _param(error: APIStatusError) -> str | None:
    body = error.body
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        param = body["error"].get("param")
        return param if isinstance(param, str) else None
    return None


def _translator(url: str) -> Callable[[SageClientError], WireError]:
    def translate(error: SageClientError) -> WireError:
        if isinstance(error, APIStatusError):
            return CoordinatorAnswerError(
                error.message,
                status=error.status_code,
                type_=error.error_type or error_type_for(error.status_code),
                code=error.error_code,
                param=_param(error),
                headers={"retry-after": "1"} if error.status_code == 503 else None,
            )
        return CoordinatorAnswerError(
            f"coordinator at {url} is unreachable: {error}",
            status=502,
            type_="upstream_error",
            code="coordinator_unreachable",
        )

    return translate


class RemoteControlPlane:
    """Hands out sessions that call the coordinator at ``url``.

    Args:
        url: the standalone coordinator's base URL.
        http: the connection pool the sessions share (owned by the caller).
    """

    def __init__(self, url: str, http: httpx.AsyncClient) -> None:
        self._url = url.rstrip("/")
        self._http = http
        self._translate = _translator(self._url)

    async def authorize(self, authorization: str | None, target: str) -> RemoteSession:
        client = AsyncGatewayManagementClient(
            self._url,
            bearer_token(authorization),
            timeout=_TIMEOUT_S,
            http=self._http,
            translate_error=self._translate,
        )
        return RemoteSession(client)


class RemoteSession:
    """One request's calls to the coordinator (which checks the token itself)."""

    who = "remote"

    def __init__(self, client: AsyncGatewayManagementClient) -> None:
        self._client = client

    async def backends_json(self, after: int | None, wait: float) -> bytes:
        table = await self._client.backends(after, wait if after is not None and wait > 0 else None)
        return encode(table)

    async def engines(self) -> list[EngineInfo]:
        return await self._client.engines()

    async def engine(self, engine_id: str) -> EngineInfo:
        return await self._client.engine(engine_id)

    async def register_engine(self, request: RegisterEngineRequest) -> EngineInfo:
        return await self._client.register_engine(
            request.model, request.url, request.kind, request.id
        )

    async def start_engine(self, request: EngineStartRequest) -> EngineInfo:
        return await self._client.start_engine(request.spec, request.host)

    async def stop_engine(self, request: EngineStopRequest) -> EngineInfo:
        return await self._client.stop_engine(request.engine_id, request.drain, request.timeout_s)

    async def gpu_hosts(self) -> list[HostGpus]:
        return await self._client.gpus()

    async def agents(self) -> list[AgentSummary]:
        return await self._client.agents()

    async def audit_log(self, limit: int) -> list[AuditRecord]:
        return await self._client.audit(limit)

    async def deployments(self) -> list[Deployment]:
        return await self._client.deployments()

    async def deployment(self, name: str) -> Deployment:
        return await self._client.deployment(name)

    async def apply_deployment(self, name: str, spec: DeploymentSpec) -> Deployment:
        if spec.name != name:
            # Carried as is, the body would be applied under its own name.
            raise CoordinatorAnswerError(
                f"the body's name {spec.name!r} is not the path's {name!r}",
                status=422,
                type_="invalid_request_error",
                code="invalid_request",
                param="name",
            )
        return await self._client.apply_deployment(spec)

    async def delete_deployment(self, name: str) -> Deployment:
        return await self._client.delete_deployment(name)

    async def plan_deployments(self, request: DeploymentPlanRequest) -> DeploymentPlan:
        return await self._client.plan_deployments(request.deployments, request.delete)

    async def rollout_status(self, name: str) -> DeploymentStatus:
        return await self._client.rollout_status(name)

    async def rollout_undo(self, name: str, to_revision: int | None) -> Deployment:
        return await self._client.rollout_undo(name, to_revision)

    async def cordon(self, host: str) -> AgentSummary:
        return await self._client.cordon(host)

    async def uncordon(self, host: str) -> AgentSummary:
        return await self._client.uncordon(host)

    async def drain_host(self, host: str) -> HostDrain:
        return await self._client.drain_host(host)

    async def clear_gpu(self, host: str, index: int) -> GpuInfo:
        return await self._client.clear_gpu(host, index)

    async def refused(self, action: str, error: WireError) -> None:
        # The body never reached the coordinator, so there is nothing to audit there.
        del action, error
