"""Labelled counters and histograms the data plane updates on every request, cheaply.

prometheus_client's ``Counter.inc`` and ``Histogram.observe`` take a lock per update and
check their arguments (``observe`` also walks the buckets in Python): 1 µs of the data
plane's ~20 per request. Here an update is a plain addition (a histogram finds its bucket
with :func:`bisect.bisect_left`); only the event loop's thread writes, and a scrape reads
the numbers as they are, which is what prometheus_client's own per-value locks give too.
The exposition is prometheus_client's own, sample for sample: the same names, labels,
order, ``_created`` series (unless ``PROMETHEUS_DISABLE_CREATED_SERIES`` turned them off).
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client import metrics as prometheus_metrics
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = ["CountSeries", "CounterSeries", "HistogramSeries", "ObservedSeries"]


class CountSeries:
    """One labelled counter's value (add to ``value``)."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()


class ObservedSeries:
    """One labelled histogram's buckets (call :meth:`observe`)."""

    __slots__ = ("bounds", "counts", "created", "sum")

    def __init__(self, bounds: list[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        # The first bucket whose bound is >= amount, as prometheus_client's loop finds it.
        self.counts[bisect_left(self.bounds, amount)] += 1
        self.sum += amount


def _use_created() -> bool:
    # prometheus_client's switch (PROMETHEUS_DISABLE_CREATED_SERIES, disable_created_metrics).
    return bool(getattr(prometheus_metrics, "_use_created", True))


class CounterSeries(Collector):
    """A labelled counter, exported as ``prometheus_client.Counter`` exports one."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._series: dict[tuple[str, ...], CountSeries] = {}

    def labels(self, *values: str) -> CountSeries:
        series = self._series.get(values)
        if series is None:
            series = self._series[values] = CountSeries()
        return series

    def collect(self) -> Iterator[Metric]:
        metric = Metric(self._name, self._documentation, "counter")
        created = _use_created()
        for values, series in list(self._series.items()):
            labels = dict(zip(self._labelnames, values, strict=True))
            metric.add_sample(self._name + "_total", labels, series.value)
            if created:
                metric.add_sample(self._name + "_created", labels, series.created)
        yield metric


class HistogramSeries(Collector):
    """A labelled histogram, exported as ``prometheus_client.Histogram`` exports one."""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float]
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        bounds = [float(b) for b in buckets]
        if bounds[-1] != math.inf:
            bounds.append(math.inf)
        self._bounds = bounds
        self._le = [floatToGoString(b) for b in bounds]  # type: ignore[no-untyped-call]
        self._series: dict[tuple[str, ...], ObservedSeries] = {}

    def labels(self, *values: str) -> ObservedSeries:
        series = self._series.get(values)
        if series is None:
            series = self._series[values] = ObservedSeries(self._bounds)
        return series

    def collect(self) -> Iterator[Metric]:
        metric = Metric(self._name, self._documentation, "histogram")
        created = _use_created()
        name = self._name
        for values, series in list(self._series.items()):
            pairs = list(zip(self._labelnames, values, strict=True))
            labels = dict(pairs)
            total = 0.0
            for le, count in zip(self._le, list(series.counts), strict=True):
                total += count
                metric.add_sample(name + "_bucket", dict([*pairs, ("le", le)]), total)
            metric.add_sample(name + "_count", labels, total)
            if self._bounds[0] >= 0:
                metric.add_sample(name + "_sum", labels, series.sum)
            if created:
                metric.add_sample(name + "_created", labels, series.created)
        yield metric
