"""Prometheus metrics of one coordinator (``sage_coordinator_*``), on a private registry."""

from __future__ import annotations

from collections import Counter as TallyCounter
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from sage.unified.sdk.models import AgentSummary, EngineInfo
from sage.unified.sdk.states import EngineState

__all__ = ["CoordinatorMetrics"]


class CoordinatorMetrics:
    """The coordinator's metrics; gauges are refreshed from the registry at scrape time."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.agents = Gauge(
            "sage_coordinator_agents", "Known agents by state", ["state"], registry=self.registry
        )
        self.engines = Gauge(
            "sage_coordinator_engines", "Known engines by state", ["state"], registry=self.registry
        )
        self.revision = Gauge(
            "sage_coordinator_revision", "Routing table revision", registry=self.registry
        )
        self.report_latency = Histogram(
            "sage_coordinator_report_latency_seconds",
            "Time to handle one agent report",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=self.registry,
        )
        self.store_reachable = Gauge(
            "sage_coordinator_store_reachable",
            "1 while the store (SQLite, or the etcd cluster) answers, else 0",
            registry=self.registry,
        )
        self.leader = Gauge(
            "sage_coordinator_leader",
            "1 while this coordinator runs the work that must happen once (always with SQLite)",
            registry=self.registry,
        )
        self.reports = Counter(
            "sage_coordinator_reports",
            "Agent reports by result",
            ["result"],
            registry=self.registry,
        )

    def render(
        self,
        agents: Iterable[AgentSummary],
        engines: Iterable[EngineInfo],
        revision: int,
        *,
        store_reachable: bool = True,
        leader: bool = True,
    ) -> bytes:
        """Refresh the gauges and return the text exposition."""
        agent_states = TallyCounter("lost" if a.lost else "live" for a in agents)
        for state in ("live", "lost"):
            self.agents.labels(state=state).set(agent_states.get(state, 0))
        engine_states = TallyCounter(e.state for e in engines)
        for engine_state in EngineState:
            self.engines.labels(state=engine_state.value).set(engine_states.get(engine_state, 0))
        self.revision.set(revision)
        self.store_reachable.set(1 if store_reachable else 0)
        self.leader.set(1 if leader else 0)
        return generate_latest(self.registry)
