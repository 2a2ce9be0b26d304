"""Prometheus metrics of one gateway (``sage_gateway_*``), on a per-app registry.

Label values are bounded: ``model`` and ``backend`` come from the routing table (a request
for a model the table does not know is answered before anything is recorded with a
model label), ``status`` is an HTTP status class (``2xx`` … ``5xx``, ``4xx`` includes the
499 of a client that left). Labelled children are cached so the hot path pays one dict lookup
and one addition per request (:mod:`._metric_series`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from sage.unified.gateway._metric_series import (
    CounterSeries,
    CountSeries,
    HistogramSeries,
    ObservedSeries,
)
from sage.unified.gateway.routing import SIGNALS, CacheAwarePolicy, RoutingLedger, RoutingState

__all__ = ["GatewayMetrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class _BackendCollector(Collector):
    """Backend state read at scrape time from the routing state (no background work)."""

    def __init__(
        self,
        state: RoutingState,
        source_status: dict[str, object],
        active: Callable[[], int],
        connections: Callable[[], int],
        refused: Callable[[], int],
    ) -> None:
        self._state = state
        self._source = source_status
        self._active = active
        self._connections = connections
        self._refused = refused

    def collect(self):  # type: ignore[no-untyped-def]
        in_flight = GaugeMetricFamily(
            "sage_gateway_backend_in_flight",
            "Requests this gateway has in flight per backend",
            labels=["model", "backend"],
        )
        ejected = GaugeMetricFamily(
            "sage_gateway_backend_ejected",
            "1 while a backend is passively ejected",
            labels=["model", "backend"],
        )
        for backend in self._state.backends():
            labels = [backend.backend.model, backend.key]
            in_flight.add_metric(labels, backend.in_flight)
            ejected.add_metric(labels, 1.0 if backend.ejected else 0.0)
        yield in_flight
        yield ejected
        yield GaugeMetricFamily(
            "sage_gateway_in_flight", "Requests being proxied", value=self._active()
        )
        yield GaugeMetricFamily(
            "sage_gateway_client_connections",
            "Open client connections (idle keep-alive ones included)",
            value=self._connections(),
        )
        yield CounterMetricFamily(
            "sage_gateway_connections_refused",
            "Client connections refused at max_connections (answered 503)",
            value=self._refused(),
        )
        yield GaugeMetricFamily(
            "sage_gateway_backends",
            "Routable backends in the current table",
            value=len(self._state),
        )
        yield GaugeMetricFamily(
            "sage_gateway_table_revision",
            "Revision of the routing table in use",
            value=self._state.revision,
        )
        reachable = self._source.get("reachable")
        yield GaugeMetricFamily(
            "sage_gateway_control_plane_reachable",
            "1 when the routing-table source answered recently",
            value=1.0 if reachable else 0.0,
        )


class _LedgerCollector(Collector):
    """The cache-capture ledger's sums and health, read at scrape time."""

    def __init__(self, ledger: RoutingLedger) -> None:
        self._ledger = ledger

    def collect(self):  # type: ignore[no-untyped-def]
        ledger = self._ledger
        labels = ["model", "backend"]
        decisions = CounterMetricFamily(
            "sage_gateway_routing_decisions",
            "Routing decisions by model, backend and reason (prefix, load, affinity, fallback, round_robin)",
            labels=[*labels, "reason"],
        )
        families = {
            name: CounterMetricFamily(f"sage_gateway_routing_{name}", text, labels=labels)
            for name, text in (
                ("usage_reported", "Answers that carried usage (their tokens are counted below)"),
                ("prompt_tokens", "Prompt tokens engines reported"),
                ("available_tokens", "Prefix tokens cached on any candidate, as the index saw it"),
                (
                    "captured_tokens",
                    "Prefix tokens cached on the chosen engine, as the index saw it",
                ),
                ("delivered_tokens", "Cached prompt tokens engines reported (cached_tokens)"),
            )
        }
        for model, backend, totals in ledger.totals():
            for reason, count in totals.reasons.items():
                decisions.add_metric([model, backend, reason], count)
            families["usage_reported"].add_metric([model, backend], totals.usage_reported)
            families["prompt_tokens"].add_metric([model, backend], totals.prompt_tokens)
            families["available_tokens"].add_metric([model, backend], totals.available_tokens)
            families["captured_tokens"].add_metric([model, backend], totals.captured_tokens)
            families["delivered_tokens"].add_metric([model, backend], totals.delivered_tokens)
        yield decisions
        yield from families.values()
        yield from self._health()
        policy = ledger.policy
        if isinstance(policy, CacheAwarePolicy):
            yield GaugeMetricFamily(
                "sage_gateway_routing_index_keys",
                "Prompt chunks the cache-aware index holds (all engines)",
                value=len(policy.index),
            )

    def _health(self) -> Iterator[GaugeMetricFamily]:
        ratios = {
            name: GaugeMetricFamily(f"sage_gateway_routing_{name}", text, labels=["model"])
            for name, text in (
                ("recent_hit_rate", "Delivered / prompt tokens over the recent decisions"),
                ("recent_capture_ratio", "Captured / available tokens over the recent decisions"),
                ("recent_delivery_ratio", "Delivered / captured tokens over the recent decisions"),
            )
        }
        signal = GaugeMetricFamily(
            "sage_gateway_routing_signal",
            "1 while a cache-capture health signal holds (docs/routing.md)",
            labels=["model", "signal"],
        )
        for model, health in self._ledger.health().items():
            for name, value in (
                ("recent_hit_rate", health.hit_rate),
                ("recent_capture_ratio", health.capture_ratio),
                ("recent_delivery_ratio", health.delivery_ratio),
            ):
                if value is not None:
                    ratios[name].add_metric([model], value)
            for name in SIGNALS:
                signal.add_metric([model, name], 1.0 if name in health.signals else 0.0)
        yield from ratios.values()
        yield signal


class GatewayMetrics:
    """The gateway's counters and histograms."""

    def __init__(self, state: RoutingState, source_status: dict[str, object]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # Updated on every request: plain numbers, exported as prometheus_client would.
        self._requests = CounterSeries(
            "sage_gateway_requests",
            "Proxied requests by model, backend and status class",
            ["model", "backend", "status"],
        )
        self.registry.register(self._requests)
        self._latency = HistogramSeries(
            "sage_gateway_request_duration_seconds",
            "Time from request to the last response byte",
            ["model"],
            _LATENCY_BUCKETS,
        )
        self.registry.register(self._latency)
        self._ttft = HistogramSeries(
            "sage_gateway_time_to_first_token_seconds",
            "Time from request to the first streamed chunk",
            ["model"],
            _TTFT_BUCKETS,
        )
        self.registry.register(self._ttft)
        # Read at scrape time from the data plane's own counter (set by the data plane): a
        # gauge updated twice per request costs two lock round-trips on the hot path.
        self.active_requests: Callable[[], int] = lambda: 0
        self.client_connections: Callable[[], int] = lambda: 0
        """Set by the server (read at scrape time, like ``active_requests``)."""
        self.connections_refused: Callable[[], int] = lambda: 0
        """Set by the server: its count of connections refused at ``max_connections``."""
        self._retries = Counter(
            "sage_gateway_retries",
            "Requests retried on another backend",
            ["model"],
            registry=self.registry,
        )
        self._ejections = Counter(
            "sage_gateway_ejections",
            "Backends passively ejected",
            ["model", "backend"],
            registry=self.registry,
        )
        self._rejections = Counter(
            "sage_gateway_rejected",
            "Requests answered by the gateway itself",
            ["reason"],
            registry=self.registry,
        )
        self._interrupted = Counter(
            "sage_gateway_streams_interrupted",
            "Streams ended with an in-band error event",
            ["model"],
            registry=self.registry,
        )
        self._continued = Counter(
            "sage_gateway_stream_continuations",
            "Broken streams continued on another engine, by outcome (completed, broken "
            "again, or why none could start)",
            ["model", "outcome"],
            registry=self.registry,
        )
        self.registry.register(
            _BackendCollector(
                state,
                source_status,
                lambda: self.active_requests(),
                lambda: self.client_connections(),
                lambda: self.connections_refused(),
            )
        )
        self._request_children: dict[tuple[str, str, int], CountSeries] = {}
        self._latency_children: dict[str, ObservedSeries] = {}
        self._ttft_children: dict[str, ObservedSeries] = {}

    def watch_ledger(self, ledger: RoutingLedger) -> None:
        """Export the cache-capture ledger (read at scrape time)."""
        self.registry.register(_LedgerCollector(ledger))

    def request_done(self, model: str, backend: str, status: int, seconds: float) -> None:
        key = (model, backend, status // 100)
        child = self._request_children.get(key)
        if child is None:
            child = self._requests.labels(model, backend, f"{status // 100}xx")
            self._request_children[key] = child
        child.value += 1
        latency = self._latency_children.get(model)
        if latency is None:
            latency = self._latency_children[model] = self._latency.labels(model)
        latency.observe(seconds)

    def first_token(self, model: str, seconds: float) -> None:
        child = self._ttft_children.get(model)
        if child is None:
            child = self._ttft_children[model] = self._ttft.labels(model)
        child.observe(seconds)

    def retried(self, model: str) -> None:
        self._retries.labels(model).inc()

    def ejected(self, model: str, backend: str) -> None:
        self._ejections.labels(model, backend).inc()

    def rejected(self, reason: str) -> None:
        self._rejections.labels(reason).inc()

    def stream_interrupted(self, model: str) -> None:
        self._interrupted.labels(model).inc()

    def stream_continued(self, model: str, outcome: str) -> None:
        self._continued.labels(model, outcome).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
