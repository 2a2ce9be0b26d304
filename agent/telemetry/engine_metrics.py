"""Read an engine's load from its Prometheus ``/metrics`` text. Pure.

vLLM: ``vllm:num_requests_running`` and ``vllm:num_requests_waiting`` summed over
label sets (one per engine core with data parallelism); KV-cache use from
``vllm:kv_cache_usage_perc``, or the deprecated ``vllm:gpu_cache_usage_perc`` on
older releases (the largest value over label sets: the fullest core limits
admission). SGLang: ``sglang:num_running_reqs``, ``sglang:num_queue_reqs`` and
``sglang:token_usage``, combined the same way.

A metric that is absent (or only NaN) is ``None``: "unknown", never 0, so a drain
never mistakes an unreadable scrape for an idle engine.

One compiled regular expression scans the text for the few series we need. On a
230-line vLLM exposition (tests/unit/agent/fixtures) it took about 70 µs against
2.5 ms for ``prometheus_client.parser.text_string_to_metric_families`` (measured
here), which matters when every engine is scraped every probe interval.
"""

from __future__ import annotations

import math
import re
from typing import Literal

from sage.unified.sdk.models import EngineLoad

__all__ = ["parse_engine_load"]

_NAMES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    # flavor: (running, waiting, kv-usage names in order of preference)
    "vllm": (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    ),
    "sglang": ("sglang:num_running_reqs", "sglang:num_queue_reqs", ("sglang:token_usage",)),
}


def _pattern(names: tuple[str, ...]) -> re.Pattern[str]:
    alternatives = "|".join(re.escape(n) for n in names)
    # Name at line start, optional label set (greedy to the last '}' so label
    # values may contain braces), whitespace, the sample value; a timestamp may follow.
    return re.compile(rf"^({alternatives})(?:\{{.*\}})?[ \t]+(\S+)", re.MULTILINE)


_PATTERNS = {
    flavor: _pattern((running, waiting, *kv)) for flavor, (running, waiting, kv) in _NAMES.items()
}


def parse_engine_load(
    text: str, *, flavor: Literal["vllm", "sglang"] = "vllm", now: float
) -> EngineLoad:
    """Extract running, waiting and KV-cache usage from a ``/metrics`` body.

    Args:
        text: the Prometheus text exposition (anything else yields all ``None``).
        flavor: which engine's metric names to read.
        now: stored as ``updated_at``.

    Never raises.
    """
    running_name, waiting_name, kv_names = _NAMES[flavor]
    sums: dict[str, float] = {}
    maxima: dict[str, float] = {}
    for match in _PATTERNS[flavor].finditer(text):
        name, raw = match.group(1), match.group(2)
        try:
            value = float(raw)
        except ValueError:
            continue
        if math.isnan(value):
            continue
        sums[name] = sums.get(name, 0.0) + value
        maxima[name] = max(maxima.get(name, value), value)
    kv: float | None = None
    for name in kv_names:
        if name in maxima:
            kv = maxima[name]
            break
    return EngineLoad(
        running=_count(sums.get(running_name)),
        waiting=_count(sums.get(waiting_name)),
        kv_cache_usage=kv,
        updated_at=now,
    )


def _count(value: float | None) -> int | None:
    if value is None or math.isinf(value):
        return None
    return max(0, round(value))
