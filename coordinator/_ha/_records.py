"""What the highly available control plane keeps in etcd, and how reports are written (pure).

Key layout under the deployment's prefix ``P`` (``/sage/`` by default)::

    P state/agents/<agent id>       StoredAgent: the agent's last significant snapshot (no lease)
    P state/alive/<agent id>        AliveMarker, attached to the agent's etcd lease
    P state/registered/<engine id>  EngineInfo of an engine registered by URL (state from probes)
    P state/starts/<engine id>      StartIntent: an accepted engines/start, until an agent reports it
    P state/<kind>/<name>           other kinds (deployments, cordons) for the code that owns them
    P audit/<ns, 16 hex><4 hex>     AuditValue, oldest first
    P leader/<lease id>             the election of the leader (etcd's concurrency recipe)

An agent is alive while its ``alive`` key exists: etcd deletes it when the lease ends, which
is how every gateway learns of a host loss at the same revision. The snapshot stays (the
agent is then listed as lost) until the leader applies the retention.

Reports are written only when something an operator or the router relies on changed
(engines, states, URLs, incarnation, GPU health), or when the telemetry (load, GPU and host
figures) last written is older than the telemetry interval. A heartbeat that changes nothing
costs no write: the agent's lease is renewed in a batch with the others.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import msgspec

from sage.unified.sdk.models import (
    AgentReport,
    EngineInfo,
    EngineLoad,
    EngineSpec,
    decode,
    encode,
)

__all__ = [
    "AliveMarker",
    "AuditValue",
    "KeySpace",
    "KnownAgent",
    "StartError",
    "StartIntent",
    "StoredAgent",
    "WritePlan",
    "audit_key",
    "plan_report_write",
    "significant",
]

_NO_LOAD = EngineLoad()

Kind = str
"""The first path segment under ``P state/``: ``agents``, ``alive``, ``registered``, ``starts``..."""


@dataclass(frozen=True, slots=True)
class KeySpace:
    """The keys of one deployment in etcd (see the module docstring)."""

    prefix: str = "/sage/"

    @property
    def state(self) -> str:
        return f"{self.prefix}state/"

    @property
    def audit(self) -> str:
        return f"{self.prefix}audit/"

    @property
    def leader(self) -> str:
        return f"{self.prefix}leader/"

    def key(self, kind: Kind, name: str) -> str:
        return f"{self.state}{kind}/{name}"

    def agent(self, agent_id: str) -> str:
        return self.key("agents", agent_id)

    def alive(self, agent_id: str) -> str:
        return self.key("alive", agent_id)

    def registered(self, engine_id: str) -> str:
        return self.key("registered", engine_id)

    def start(self, engine_id: str) -> str:
        return self.key("starts", engine_id)

    def parse(self, key: bytes) -> tuple[Kind, str] | None:
        """``(kind, name)`` of a state key, or ``None`` for a key outside ``P state/``."""
        text = key.decode(errors="replace")
        if not text.startswith(self.state):
            return None
        kind, sep, name = text[len(self.state) :].partition("/")
        if not sep or not kind or not name:
            return None
        return kind, name


class StoredAgent(msgspec.Struct, kw_only=True):
    """``P state/agents/<id>``: an agent's snapshot as last written."""

    report: AgentReport
    written_at: float
    """Wall time of the write (telemetry is rewritten when this is old enough)."""
    by: str = ""
    """The coordinator that wrote it (for people debugging)."""


class AliveMarker(msgspec.Struct, kw_only=True):
    """``P state/alive/<id>``: exists while the agent's lease lives."""

    incarnation: int
    by: str = ""


class AuditValue(msgspec.Struct, kw_only=True):
    at: float
    who: str
    action: str
    target: str
    result: str


class StartError(msgspec.Struct, kw_only=True):
    """Why a start failed, as the coordinator's error it becomes again for the caller."""

    status: int
    code: str | None
    type: str
    message: str


StartPhase = Literal["requested", "placed", "started", "failed"]


class StartIntent(msgspec.Struct, kw_only=True):
    """``P state/starts/<engine id>``: an accepted ``engines/start`` and how far it got.

    ``requested`` (written by the gateway that took the request) -> ``placed`` (the
    leader chose the agent) -> ``started`` (the agent answered) or ``failed``. A new
    leader resumes from the recorded phase; the agent start carries the engine id, which
    makes a repeated call return the engine already started instead of a second one.
    """

    engine_id: str
    spec: EngineSpec
    host: str | None = None
    who: str = "admin"
    requested_at: float
    phase: StartPhase = "requested"
    agent_id: str | None = None
    agent_url: str | None = None
    result: EngineInfo | None = None
    error: StartError | None = None
    attempts: int = 0

    @property
    def done(self) -> bool:
        return self.phase in ("started", "failed")


def audit_key(keys: KeySpace, at_ns: int) -> str:
    """An audit key that sorts by time (random suffix: two gateways, same nanosecond)."""
    return f"{keys.audit}{at_ns:016x}{os.urandom(2).hex()}"


def decode_stored_agent(raw: bytes) -> StoredAgent:
    return decode(raw, StoredAgent)


def significant(report: AgentReport) -> bytes:
    """The report without its telemetry (load, heartbeat times, GPU and host figures), as
    bytes: two reports with the same bytes need no write."""
    gpus = [
        msgspec.structs.replace(
            gpu,
            memory_used_bytes=None,
            memory_free_bytes=None,
            memory_reserved_bytes=None,
            utilization_percent=None,
            memory_utilization_percent=None,
            temperature_c=None,
            power_w=None,
            processes=[],
        )
        for gpu in report.gpus
    ]
    engines = [
        msgspec.structs.replace(engine, load=_NO_LOAD, last_heartbeat=None)
        for engine in report.engines
    ]
    return encode(
        msgspec.structs.replace(report, sent_at=0.0, host_metrics=None, gpus=gpus, engines=engines)
    )


@dataclass(frozen=True, slots=True)
class KnownAgent:
    """What this gateway's mirror holds about an agent, for :func:`plan_report_write`."""

    record_revision: int
    """``mod_revision`` of its snapshot key (0: none)."""
    significant: bytes
    written_at: float
    lease_id: int | None
    """The lease of its ``alive`` key (``None``: lost, or the key is gone)."""
    lease_expired: bool = False
    """A renewal found the lease gone (the deletion may not have reached the mirror)."""


@dataclass(frozen=True, slots=True)
class WritePlan:
    put_record: bool
    grant_lease: bool
    renew_lease: int | None
    """The lease to renew in the next batch (when no new one is granted)."""
    telemetry_only: bool = False
    """The snapshot is written only because its telemetry is due: nothing waits for it."""

    @property
    def writes(self) -> bool:
        return self.put_record or self.grant_lease


def plan_report_write(
    known: KnownAgent | None,
    significant_now: bytes,
    *,
    now: float,
    telemetry_interval_s: float,
) -> WritePlan:
    """What a report costs in etcd: a snapshot write when something significant changed
    or the telemetry is due; a new lease when the agent has none alive; else only a
    renewal of its lease in the next batch."""
    if known is None:
        return WritePlan(put_record=True, grant_lease=True, renew_lease=None)
    telemetry_due = now - known.written_at >= telemetry_interval_s
    put_record = known.record_revision == 0 or known.significant != significant_now or telemetry_due
    grant = known.lease_id is None or known.lease_expired
    return WritePlan(
        put_record=put_record,
        grant_lease=grant,
        renew_lease=None if grant else known.lease_id,
    )
