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

_RUNNING = "Number of requests in model execution batches."
_WAITING = "Number of requests waiting to be processed."
_USAGE = "KV-cache usage. 1 means 100 percent usage."
_GPU_USAGE = "GPU KV-cache usage. 1 means 100 percent usage (deprecated name)."
_QUERIES = "Prefix cache queries, in terms of number of queried tokens."
_HITS = "Prefix cache hits, in terms of number of cached tokens."
_PREEMPTIONS = "Cumulative number of preemption from the engine."
_PROMPT = "Number of prefill tokens processed."
_GENERATION = "Number of generation tokens processed."


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

    The gauges (running, waiting, cache usage) and the prefix cache counters are not
    stored here; they are passed to :meth:`render` from the scheduler and the cache,
    so they can never drift.
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

    def render(
        self,
        *,
        running: int,
        waiting: int,
        kv_cache_usage: float,
        prefix_cache_queries: int,
        prefix_cache_hits: int,
        num_gpu_blocks: int,
        block_size: int,
    ) -> bytes:
        """Prometheus text exposition (format 0.0.4) of every series.

        The prefix cache counters are in tokens, as vLLM counts them; like every
        counter here they carry prometheus_client's ``_total`` suffix.
        """
        lab = self.labels
        out: list[str] = []

        def series(name: str, kind: str, help_: str, samples: list[str]) -> None:
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(samples)

        for name, kind, help_, value in (
            ("vllm:num_requests_running", "gauge", _RUNNING, running),
            ("vllm:num_requests_waiting", "gauge", _WAITING, waiting),
            ("vllm:kv_cache_usage_perc", "gauge", _USAGE, kv_cache_usage),
            ("vllm:gpu_cache_usage_perc", "gauge", _GPU_USAGE, kv_cache_usage),
            ("vllm:prefix_cache_queries_total", "counter", _QUERIES, prefix_cache_queries),
            ("vllm:prefix_cache_hits_total", "counter", _HITS, prefix_cache_hits),
            ("vllm:num_preemptions_total", "counter", _PREEMPTIONS, self.preemptions),
            ("vllm:prompt_tokens_total", "counter", _PROMPT, self.prompt_tokens),
            ("vllm:generation_tokens_total", "counter", _GENERATION, self.generation_tokens),
        ):
            series(name, kind, help_, [f"{name}{{{lab}}} {_fmt(value)}"])
        series(
            "vllm:cache_config_info",
            "gauge",
            "Information of the LLMEngine CacheConfig",
            [
                f'vllm:cache_config_info{{block_size="{block_size}",enable_prefix_caching="True",'
                f'engine="0",num_gpu_blocks="{num_gpu_blocks}"}} 1.0'
            ],
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
