"""Wire models of the declarative fleet: deployments, their status, rollouts and plans.

A :class:`DeploymentSpec` is the desired state of one model's replicas: the engine to run
(a typed :class:`~sage.unified.sdk.models.EngineSpec`, never free-form arguments: the
launch API is a security boundary), how many, where, and how to replace them. Like the
launch spec, it rejects unknown fields; the status models that come back are tolerant of
fields a newer control plane adds.

The control plane keeps each deployment with a *revision*: a change of the engine spec
bumps it, and replicas of older revisions are replaced within the
:class:`UpdateStrategy`'s bounds (a rolling update). Changing ``replicas``, placement or
the strategy alone keeps the revision.
"""

from __future__ import annotations

import enum
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from sage.unified.sdk.models import DeploymentName, EngineSpec, Label, Seconds

__all__ = [
    "Deployment",
    "DeploymentCondition",
    "DeploymentList",
    "DeploymentPlan",
    "DeploymentPlanEntry",
    "DeploymentPlanRequest",
    "DeploymentSpec",
    "DeploymentStatus",
    "HostDrain",
    "Placement",
    "PlannedAction",
    "ReplicaStatus",
    "RolloutState",
    "RolloutStatus",
    "RolloutUndoRequest",
    "UpdateStrategy",
]

HostName = Annotated[str, Meta(min_length=1, max_length=255)]
Count = Annotated[int, Meta(ge=0, le=1000)]


class Placement(Struct, kw_only=True, forbid_unknown_fields=True):
    """Where a deployment's replicas may run."""

    hosts: list[HostName] = msgspec.field(default_factory=list)
    """Agent ids or host addresses allowed (empty: any host)."""
    labels: dict[Label, Label] = msgspec.field(default_factory=dict)
    """Labels a host must carry, all of them (``{"gpu": "h100"}``)."""
    spread: bool = True
    """Prefer the eligible host with the fewest replicas of this deployment, so one host
    going down takes as few of them as possible. A preference: replicas still start
    when only one host can take them."""


class UpdateStrategy(Struct, kw_only=True, forbid_unknown_fields=True):
    """How replicas are replaced (rolling update, host drain, placement change).

    A new replica is brought to READY before an old one is drained, within
    ``max_surge`` replicas above ``replicas`` and ``max_unavailable`` below it.
    """

    max_surge: Annotated[int, Meta(ge=0, le=100)] = 1
    """Replicas that may run above the desired count while replacing."""
    max_unavailable: Annotated[int, Meta(ge=0, le=100)] = 0
    """Replicas that may be missing from READY while replacing."""
    drain_timeout_s: Seconds = 300.0
    """How long a replaced replica may take to finish its in-flight requests."""

    def __post_init__(self) -> None:
        if self.max_surge == 0 and self.max_unavailable == 0:
            raise ValueError("max_surge and max_unavailable cannot both be 0 (nothing could move)")


class DeploymentSpec(Struct, kw_only=True, forbid_unknown_fields=True):
    """The desired state of one deployment (``PUT /v1/management/deployments/{name}``)."""

    name: DeploymentName
    engine: EngineSpec
    """The engine every replica runs. ``tensor_parallel_size`` is the GPUs per replica."""
    replicas: Count = 1
    placement: Placement = msgspec.field(default_factory=Placement)
    strategy: UpdateStrategy = msgspec.field(default_factory=UpdateStrategy)

    def __post_init__(self) -> None:
        engine = self.engine
        if (
            engine.deployment is not None
            or engine.deployment_revision is not None
            or engine.replica is not None
        ):
            raise ValueError(
                "engine.deployment, engine.deployment_revision and engine.replica are set "
                "by the control plane, not in a deployment"
            )
        if engine.port is not None:
            raise ValueError(
                "engine.port cannot be fixed in a deployment (replicas may share a host); "
                "the agent picks a free port per replica"
            )


class RolloutState(enum.StrEnum):
    """Where a deployment's rollout stands."""

    COMPLETE = "complete"
    """Every replica runs the current revision and is READY."""
    PROGRESSING = "progressing"
    """Replicas of older revisions (or misplaced ones) are being replaced."""
    FAILED = "failed"
    """A replica of the new revision failed; the old replicas keep serving and no more
    are replaced until the spec is applied again or the rollout is undone."""


class RolloutStatus(Struct, kw_only=True):
    """The rollout of a deployment's current revision."""

    state: RolloutState = RolloutState.PROGRESSING
    revision: int = 1
    """The revision being rolled out (the deployment's current one)."""
    stable_revision: int | None = None
    """The last revision that completed; replicas missing while a rollout failed are
    started from it."""
    reason: str = ""
    started_at: float = 0.0
    finished_at: float | None = None


class DeploymentCondition(Struct, kw_only=True):
    """Why a deployment is not where its spec wants it (``no_placement``, ...)."""

    reason: str
    """A stable code: ``no_placement``, ``start_failed``, ``rollout_failed``,
    ``waiting_for_ready``, ``settling``, ``deleting``."""
    message: str
    hosts: dict[str, str] = msgspec.field(default_factory=dict)
    """Per host, why it cannot take a replica (for ``no_placement``)."""


class ReplicaStatus(Struct, kw_only=True):
    """One replica as the reconciler sees it."""

    replica: str
    engine_id: str | None = None
    """``None`` while the start is pending (the agent has not reported it yet)."""
    agent_id: str = ""
    revision: int = 0
    state: str = "PENDING"
    """An engine state, or ``PENDING``."""
    reason: str = ""
    updated: bool = True
    """Runs the current revision, on a host it may stay on."""


class DeploymentStatus(Struct, kw_only=True):
    """Desired against actual, per deployment (``sage llm deployments``)."""

    name: str
    revision: int
    desired: int
    ready: int = 0
    """READY replicas (any revision)."""
    updated: int = 0
    """Replicas of the current revision on a host they may stay on (any state)."""
    unavailable: int = 0
    """``desired`` minus READY replicas, at least 0."""
    rollout: RolloutStatus = msgspec.field(default_factory=RolloutStatus)
    conditions: list[DeploymentCondition] = msgspec.field(default_factory=list)
    replicas: list[ReplicaStatus] = msgspec.field(default_factory=list)
    deleting: bool = False


class Deployment(Struct, kw_only=True):
    """A deployment: its spec and status (``GET /v1/management/deployments/{name}``)."""

    spec: DeploymentSpec
    status: DeploymentStatus
    created_at: float = 0.0
    updated_at: float = 0.0


class DeploymentList(Struct, kw_only=True):
    deployments: list[Deployment]


class DeploymentPlanRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /v1/management/deployments/plan``: what applying would do (a dry run)."""

    deployments: list[DeploymentSpec] = msgspec.field(default_factory=list)
    delete: list[DeploymentName] = msgspec.field(default_factory=list)


class PlannedAction(Struct, kw_only=True):
    """One step the reconciler would take now."""

    deployment: str
    action: Literal["start", "drain", "stop", "wait"]
    host: str | None = None
    """The agent that would start, drain or stop it."""
    engine_id: str | None = None
    revision: int | None = None
    reason: str = ""


class DeploymentPlanEntry(Struct, kw_only=True):
    """What applying (or deleting) one deployment would change."""

    name: str
    change: Literal["create", "update", "scale", "unchanged", "delete"]
    revision_from: int | None = None
    revision_to: int | None = None
    replicas_from: int = 0
    replicas_to: int = 0
    start: int = 0
    """Replicas that would be started (new ones and replacements)."""
    remove: int = 0
    """Replicas that would be drained or stopped (extras and replaced ones)."""
    replace: int = 0
    """Of those, replicas replaced by a new one (older revision, leaving host)."""
    actions: list[PlannedAction] = msgspec.field(default_factory=list)
    """The first steps, with hosts (a rolling update takes several)."""
    conditions: list[DeploymentCondition] = msgspec.field(default_factory=list)


class DeploymentPlan(Struct, kw_only=True):
    entries: list[DeploymentPlanEntry]


class RolloutUndoRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /v1/management/deployments/{name}/rollout/undo``."""

    to_revision: Annotated[int, Meta(ge=1)] | None = None
    """The revision whose engine spec to bring back (default: the one before the current)."""


class HostDrain(Struct, kw_only=True):
    """What ``POST /v1/management/agents/{agent_id}/drain`` set in motion."""

    agent_id: str
    cordoned: bool = True
    draining: bool = True
    drained: list[str] = msgspec.field(default_factory=list)
    """Engines of no deployment that were asked to drain."""
    moving: list[str] = msgspec.field(default_factory=list)
    """Deployment replicas on the host, moved elsewhere by the reconciler."""
    remaining: int = 0
    """Engines on the host that are not STOPPED yet."""
