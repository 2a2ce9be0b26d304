"""What the control plane keeps about deployments and cordoned hosts. Pure: no I/O.

A :class:`DeploymentRecord` is a deployment's spec at its current revision, the engine
specs of its recent revisions (for ``rollout undo`` and for replicas started while a
rollout failed) and its rollout. :func:`applied` and :func:`undone` compute the next
record; the :class:`~._fleet.Fleet` stores it. A :class:`CordonRecord` marks a host that
takes no new engines (and, when ``draining``, whose replicas move elsewhere).
"""

from __future__ import annotations

from typing import Literal

import msgspec

from sage.unified.coordinator._errors import InvalidRequestError
from sage.unified.sdk.fleet import DeploymentSpec, RolloutState, RolloutStatus
from sage.unified.sdk.models import EngineSpec

__all__ = [
    "HISTORY_LIMIT",
    "ApplyChange",
    "CordonRecord",
    "DeploymentRecord",
    "RevisionEntry",
    "applied",
    "undone",
]

HISTORY_LIMIT = 10
"""Revisions whose engine spec is kept (the stable one is always kept)."""

ApplyChange = Literal["create", "update", "scale", "unchanged"]


class RevisionEntry(msgspec.Struct, kw_only=True):
    """The engine spec of one revision."""

    revision: int
    engine: EngineSpec
    applied_at: float = 0.0


class DeploymentRecord(msgspec.Struct, kw_only=True):
    """One deployment as stored (JSON)."""

    spec: DeploymentSpec
    revision: int = 1
    history: list[RevisionEntry] = msgspec.field(default_factory=list)
    rollout: RolloutStatus = msgspec.field(default_factory=RolloutStatus)
    deleting: bool = False
    """Deleted by an operator: its replicas are drained, then the record is forgotten."""
    created_at: float = 0.0
    updated_at: float = 0.0

    @property
    def name(self) -> str:
        return self.spec.name

    def engine_of(self, revision: int | None) -> EngineSpec | None:
        """The engine spec of ``revision`` (``None`` when it is not kept)."""
        if revision == self.revision:
            return self.spec.engine
        return next((e.engine for e in self.history if e.revision == revision), None)


class CordonRecord(msgspec.Struct, kw_only=True):
    """A host that takes no new engines."""

    agent_id: str
    draining: bool = False
    """Its deployment replicas are being moved to other hosts."""
    at: float = 0.0
    who: str = ""


def _trimmed(history: list[RevisionEntry], keep: int | None) -> list[RevisionEntry]:
    newest = sorted(history, key=lambda e: e.revision)[-HISTORY_LIMIT:]
    if keep is not None and all(e.revision != keep for e in newest):
        newest = [e for e in history if e.revision == keep] + newest[1:]
    return newest


def _new_revision(
    record: DeploymentRecord, spec: DeploymentSpec, engine: EngineSpec, now: float
) -> DeploymentRecord:
    revision = record.revision + 1
    stable = record.rollout.stable_revision
    history = [*record.history, RevisionEntry(revision=revision, engine=engine, applied_at=now)]
    return DeploymentRecord(
        spec=msgspec.structs.replace(spec, engine=engine),
        revision=revision,
        history=_trimmed(history, stable),
        rollout=RolloutStatus(
            state=RolloutState.PROGRESSING,
            revision=revision,
            stable_revision=stable,
            started_at=now,
        ),
        created_at=record.created_at,
        updated_at=now,
    )


def applied(
    current: DeploymentRecord | None, spec: DeploymentSpec, now: float
) -> tuple[DeploymentRecord, ApplyChange]:
    """The record after applying ``spec``, and what kind of change it is.

    A different engine spec is a new revision (its rollout starts); a change of
    replicas, placement or strategy alone keeps the revision. Applying the same spec
    again changes nothing (``"unchanged"``), and applying to a deployment being deleted
    takes it back.
    """
    if current is None:
        record = DeploymentRecord(
            spec=spec,
            revision=1,
            history=[RevisionEntry(revision=1, engine=spec.engine, applied_at=now)],
            rollout=RolloutStatus(state=RolloutState.PROGRESSING, revision=1, started_at=now),
            created_at=now,
            updated_at=now,
        )
        return record, "create"
    if spec.engine != current.spec.engine:
        return _new_revision(current, spec, spec.engine, now), "update"
    if spec == current.spec and not current.deleting:
        return current, "unchanged"
    return msgspec.structs.replace(current, spec=spec, deleting=False, updated_at=now), "scale"


def undone(current: DeploymentRecord, to_revision: int | None, now: float) -> DeploymentRecord:
    """The record after rolling back to ``to_revision``'s engine spec (the revision before
    the current one by default), as a new revision.

    Raises:
        InvalidRequestError: no earlier revision is kept, or ``to_revision`` is not.
    """
    if to_revision is None:
        earlier = [e for e in current.history if e.revision < current.revision]
        if not earlier:
            raise InvalidRequestError(
                f"deployment {current.name!r} has no revision before {current.revision} to "
                "go back to",
                code="no_revision",
            )
        target = max(earlier, key=lambda e: e.revision)
    else:
        found = next((e for e in current.history if e.revision == to_revision), None)
        if found is None or to_revision == current.revision:
            kept = ", ".join(str(e.revision) for e in current.history) or "none"
            raise InvalidRequestError(
                f"deployment {current.name!r} cannot go back to revision {to_revision} "
                f"(current {current.revision}; kept: {kept})",
                code="no_revision",
                param="to_revision",
            )
        target = found
    return _new_revision(current, current.spec, target.engine, now)
