"""vLLM-named Prometheus metrics of the simulator (pure: counting and text rendering).

Names, labels and histogram buckets follow vLLM's v1 Prometheus logger, so scrapers
written for vLLM (the agent's load probe, the gateway's drain check) read ours
unchanged. Labels are ``engine="0"`` and ``model_name="<served name>"``.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

__all__ = ["E2E_BUCKETS", "FINISHED_REASONS", "TTFT_BUCKETS", "EngineMetrics", "Histogram"]

TTFT_BUCKETS: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
E2E_BUCKETS: tuple[float, ...] = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0,
    30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
FINISHED_REASONS: tuple[str, ...] = ("stop", "length", "abort")


def _fmt(value: float) -> str:
    return repr(float(value))


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


class Histogram:
    """A cumulative Prometheus histogram with fixed buckets (le semantics)."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        """Record one observation (seconds)."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def render(self, name: str, labels: str) -> list[str]:
        """The ``_bucket``/``_sum``/``_count`` sample lines."""
        lines: list[str] = []
        total = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            lines.append(f'{name}_bucket{{{labels},le="{_le(bound)}"}} {_fmt(total)}')
        lines.append(f"{name}_sum{{{labels}}} {_fmt(self.sum)}")
        lines.append(f"{name}_count{{{labels}}} {_fmt(self.count)}")
        return lines


class EngineMetrics:
    """Counters and histograms of one simulated engine.

    The gauges (running, waiting, cache usage) are not stored here; they are passed
    to :meth:`render` from the scheduler, so they can never drift.
    """

    def __init__(self, model_name: str) -> None:
        escaped = model_name.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        self.labels = f'engine="0",model_name="{escaped}"'
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.preemptions = 0
        self.success: dict[str, int] = dict.fromkeys(FINISHED_REASONS, 0)
        self.ttft = Histogram(TTFT_BUCKETS)
        self.e2e = Histogram(E2E_BUCKETS)

    def record_finished(
        self,
        *,
        prompt_tokens: int,
        generation_tokens: int,
        reason: str,
        ttft_s: float,
        e2e_s: float,
    ) -> None:
        """Count one finished request (``reason`` is a vLLM finished_reason)."""
        self.prompt_tokens += prompt_tokens
        self.generation_tokens += generation_tokens
        self.success[reason] = self.success.get(reason, 0) + 1
        self.ttft.observe(ttft_s)
        self.e2e.observe(e2e_s)

    def render(self, *, running: int, waiting: int, max_num_seqs: int) -> bytes:
        """Prometheus text exposition (format 0.0.4) of every series."""
        lab = self.labels
        usage = min(1.0, running / max_num_seqs) if max_num_seqs else 0.0
        out: list[str] = []

        def series(name: str, kind: str, help_: str, samples: list[str]) -> None:
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(samples)

        series(
            "vllm:num_requests_running",
            "gauge",
            "Number of requests in model execution batches.",
            [f"vllm:num_requests_running{{{lab}}} {_fmt(running)}"],
        )
        series(
            "vllm:num_requests_waiting",
            "gauge",
            "Number of requests waiting to be processed.",
            [f"vllm:num_requests_waiting{{{lab}}} {_fmt(waiting)}"],
        )
        series(
            "vllm:kv_cache_usage_perc",
            "gauge",
            "KV-cache usage. 1 means 100 percent usage.",
            [f"vllm:kv_cache_usage_perc{{{lab}}} {_fmt(usage)}"],
        )
        series(
            "vllm:gpu_cache_usage_perc",
            "gauge",
            "GPU KV-cache usage. 1 means 100 percent usage (deprecated name).",
            [f"vllm:gpu_cache_usage_perc{{{lab}}} {_fmt(usage)}"],
        )
        series(
            "vllm:num_preemptions_total",
            "counter",
            "Cumulative number of preemption from the engine.",
            [f"vllm:num_preemptions_total{{{lab}}} {_fmt(self.preemptions)}"],
        )
        series(
            "vllm:prompt_tokens_total",
            "counter",
            "Number of prefill tokens processed.",
            [f"vllm:prompt_tokens_total{{{lab}}} {_fmt(self.prompt_tokens)}"],
        )
        series(
            "vllm:generation_tokens_total",
            "counter",
            "Number of generation tokens processed.",
            [f"vllm:generation_tokens_total{{{lab}}} {_fmt(self.generation_tokens)}"],
        )
        series(
            "vllm:request_success_total",
            "counter",
            "Count of successfully processed requests.",
            [
                f'vllm:request_success_total{{{lab},finished_reason="{reason}"}} {_fmt(n)}'
                for reason, n in self.success.items()
            ],
        )
        series(
            "vllm:time_to_first_token_seconds",
            "histogram",
            "Histogram of time to first token in seconds.",
            self.ttft.render("vllm:time_to_first_token_seconds", lab),
        )
        series(
            "vllm:e2e_request_latency_seconds",
            "histogram",
            "Histogram of e2e request latency in seconds.",
            self.e2e.render("vllm:e2e_request_latency_seconds", lab),
        )
        out.append("")
        return "\n".join(out).encode("utf-8")
