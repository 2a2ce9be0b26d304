"""The planner's inputs and outputs (see :mod:`._reconcile_plan`). Pure: no I/O."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from sage.unified.coordinator._fleet_records import DeploymentRecord
from sage.unified.coordinator._placement import Candidate
from sage.unified.sdk.fleet import DeploymentStatus, RolloutStatus
from sage.unified.sdk.models import EngineSpec
from sage.unified.sdk.states import EngineState

__all__ = [
    "Action",
    "HostView",
    "Outcome",
    "Plan",
    "PlanInputs",
    "RemoveReplica",
    "ReplicaView",
    "StartReplica",
]


@dataclass(frozen=True, slots=True)
class HostView:
    """An agent as the planner sees it."""

    candidate: Candidate
    labels: Mapping[str, str] = field(default_factory=dict)
    cordoned: bool = False
    draining: bool = False

    @property
    def agent_id(self) -> str:
        return self.candidate.agent_id


@dataclass(frozen=True, slots=True)
class ReplicaView:
    """A replica: an engine an agent reported, or a start it has not reported yet."""

    deployment: str
    revision: int
    replica: str
    engine_id: str
    agent_id: str
    state: EngineState | None
    """``None``: the agent took the start but has not reported the engine yet."""
    since: float
    """Wall time it was created (engine) or requested (pending start)."""
    state_since: float = 0.0
    reason: str = ""
    startup_timeout_s: float = 900.0
    leaving: bool = False
    """Asked to drain or stop in a recent pass (the report may not show it yet)."""


@dataclass(frozen=True, slots=True)
class StartReplica:
    deployment: str
    agent_id: str
    spec: EngineSpec
    """The engine spec with ``deployment``, ``deployment_revision`` and ``replica`` set."""
    reason: str


@dataclass(frozen=True, slots=True)
class RemoveReplica:
    deployment: str
    engine_id: str
    agent_id: str
    drain: bool
    """Drain (READY replicas) or stop at once (the others)."""
    timeout_s: float | None
    reason: str
    pending: bool = False
    """Not reported yet: the agent must be called directly."""


Action = StartReplica | RemoveReplica


@dataclass(frozen=True, slots=True)
class PlanInputs:
    deployments: Sequence[DeploymentRecord]
    hosts: Sequence[HostView]
    replicas: Sequence[ReplicaView]
    now: float
    """Wall time (replicas' times are agents' wall times)."""
    error_timeout_s: float = 600.0
    pending_timeout_s: float = 30.0
    settling: bool = False
    start_blocked: Mapping[str, str] = field(default_factory=dict)
    """Deployments whose starts wait (backing off after a failed start), and why."""
    replica_ids: Callable[[], str] = field(default=lambda: "r")


@dataclass(slots=True)
class Outcome:
    """One deployment's part of a plan."""

    status: DeploymentStatus
    start: int = 0
    """Replicas still to start, in this pass and later ones."""
    remove: int = 0
    replace: int = 0


@dataclass(slots=True)
class Plan:
    actions: list[Action] = field(default_factory=list)
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    rollouts: dict[str, RolloutStatus] = field(default_factory=dict)
    """Rollout changes to record (completed or failed)."""
    forget: list[str] = field(default_factory=list)
    """Deleted deployments with no replica left."""
