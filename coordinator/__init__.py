"""Coordinator: registry of agents and engines, leases, revisions + watch, placement, persistence.

Embedded in the gateway by default (``async with Coordinator(settings)`` plus the two
routers), or standalone (:func:`sage.unified.coordinator.main.run`, port 8100). Its state
is in SQLite (default) or, with ``store = "etcd://..."``, in an etcd cluster shared by
several gateways (:mod:`sage.unified.coordinator._ha`); work that must happen once runs
as :class:`LeaderTask` objects on the elected leader.
"""

from __future__ import annotations

from sage.unified.coordinator._api import ControlPlane, ControlPlaneSession, LocalSession
from sage.unified.coordinator._app import (
    EXCEPTION_HANDLERS,
    create_agents_router,
    create_coordinator_app,
    create_management_router,
)
from sage.unified.coordinator._backend import ControlPlaneBackend, LeaderTask, StoreStatus
from sage.unified.coordinator._errors import (
    AgentRejectedError,
    AgentUnreachableError,
    AuthenticationError,
    ConfigError,
    ConflictError,
    ControlPlaneUnavailableError,
    CoordinatorError,
    InvalidRequestError,
    NotFoundError,
    PlacementError,
    ReportRejectedError,
    SettlingError,
    StaleIncarnationError,
    UrlPolicyError,
)
from sage.unified.coordinator._registry import AgentRecord, Registry
from sage.unified.coordinator._service import Coordinator
from sage.unified.coordinator._settings import CoordinatorSettings, default_db_path
from sage.unified.coordinator._store import (
    AuditEntry,
    MemoryStore,
    SqliteStore,
    StartRequestRecord,
    Store,
    StoredState,
)

__all__ = [
    "EXCEPTION_HANDLERS",
    "AgentRecord",
    "AgentRejectedError",
    "AgentUnreachableError",
    "AuditEntry",
    "AuthenticationError",
    "ConfigError",
    "ConflictError",
    "ControlPlane",
    "ControlPlaneBackend",
    "ControlPlaneSession",
    "ControlPlaneUnavailableError",
    "Coordinator",
    "CoordinatorError",
    "CoordinatorSettings",
    "InvalidRequestError",
    "LeaderTask",
    "LocalSession",
    "MemoryStore",
    "NotFoundError",
    "PlacementError",
    "Registry",
    "ReportRejectedError",
    "SettlingError",
    "SqliteStore",
    "StaleIncarnationError",
    "StartRequestRecord",
    "Store",
    "StoreStatus",
    "StoredState",
    "UrlPolicyError",
    "create_agents_router",
    "create_coordinator_app",
    "create_management_router",
    "default_db_path",
]
