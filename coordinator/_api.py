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
from sage.unified.sdk.models import (
    AgentSummary,
    EngineInfo,
    EngineStartRequest,
    EngineStopRequest,
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

    async def refused(self, action: str, error: WireError) -> None:
        # A control action refused for its body (unknown fields such as command/env,
        # a path or a flag as the model name) is as much an attempt as one refused
        # later, so it is audited too; only authenticated callers get this far.
        await self._coordinator.audit(
            self.who, action, "request body", f"rejected: {error.message}"
        )
