"""The data plane's own counters and histograms scrape exactly as prometheus_client's."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from sage.unified.gateway._metric_series import CounterSeries, HistogramSeries

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


def _without_creation_times(text: bytes) -> bytes:
    return re.sub(rb"(_created\{[^}]*\}) \S+", rb"\1 T", text)


def test_the_exposition_is_prometheus_clients_sample_for_sample() -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    counter = Counter(
        "sage_t_requests", "Requests", ["model", "backend", "status"], registry=theirs
    )
    histogram = Histogram("sage_t_seconds", "Seconds", ["model"], buckets=BUCKETS, registry=theirs)
    our_counter = CounterSeries("sage_t_requests", "Requests", ["model", "backend", "status"])
    our_histogram = HistogramSeries("sage_t_seconds", "Seconds", ["model"], BUCKETS)
    ours.register(our_counter)
    ours.register(our_histogram)
    assert generate_latest(ours) == generate_latest(theirs)  # no series yet
    # On a bound, between bounds, below the first, past the last, zero.
    for model, backend, status, seconds in [
        ("m", "e0", "2xx", 0.003),
        ("m", "e1", "5xx", 0.05),
        ("n", "e0", "2xx", 1e3),
        ("m", "e0", "2xx", 0.0051),
        ("m", "e0", "2xx", 300),
        ("m", "e0", "4xx", 0.0),
    ]:
        counter.labels(model, backend, status).inc()
        our_counter.labels(model, backend, status).value += 1
        histogram.labels(model).observe(seconds)
        our_histogram.labels(model).observe(seconds)
    assert _without_creation_times(generate_latest(ours)) == _without_creation_times(
        generate_latest(theirs)
    )
