"""``sage llm simulate``: run the built-in vLLM-compatible engine simulator in the foreground."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from cyclopts import Parameter

from sage.unified.cli.errors import UsageError

__all__ = ["SimulatorOptions", "simulate"]


@Parameter(name="*")
@dataclass(kw_only=True)
class SimulatorOptions:
    """The flags of ``sage llm simulate``: the simulator's configuration.

    Parameters
    ----------
    model
        Model id the engine pretends to serve.
    served_model_name
        Name clients send in ``model`` (defaults to the model id).
    host
        Address to listen on.
    port
        Port to listen on.
    kind
        Which endpoints it serves, as vLLM by model task: ``llm`` (chat, completions,
        responses), ``embedding`` (embeddings, pooling, score, rerank), ``classify``,
        ``rerank`` (a cross-encoder) or ``transcription``.
    max_num_seqs
        Requests running at once; the rest wait in a queue, as in vLLM.
    max_model_len
        Context length in tokens (reported by /v1/models).
    kv_blocks
        KV cache blocks; unreferenced cached blocks are evicted least recently used first.
    block_size
        Tokens per KV cache block; only full blocks are cached and shared.
    prefill_tokens_per_s
        Prefill speed for uncached prompt tokens, one request at a time (0: free).
    enable_prompt_tokens_details
        Report usage.prompt_tokens_details.cached_tokens, as vLLM's flag of that name.
    kv_events_config
        vLLM's KV events JSON: publish BlockStored/BlockRemoved/AllBlocksCleared on ZMQ.
    ttft_ms
        Time to first token in milliseconds.
    itl_ms
        Time between tokens in milliseconds.
    output_tokens
        Natural answer length in tokens (max_tokens lowers it; ignore_eos overrides it).
    startup_delay_s
        Seconds before the port opens, like a model loading.
    embedding_dim
        Length of embedding vectors.
    shutdown_timeout
        On SIGTERM, seconds in-flight requests may finish before they are aborted.
    keep_alive_timeout
        Idle keep-alive connections are closed after this many seconds.
    failure_rate
        Fraction of inference requests answered with a 5xx error.
    crash_after
        Exit abruptly after this many inference requests.
    hang_rate
        Fraction of inference requests that never get an answer.
    unhealthy
        Start with /health answering 503 while the API keeps serving.
    enable_control
        Serve /sim/config, /sim/stats, /sim/crash and /reset_prefix_cache at run time.
    seed
        Seed of the generated text.
    """

    model: str
    served_model_name: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    kind: Literal["llm", "embedding", "classify", "rerank", "transcription"] = "llm"
    max_num_seqs: int = 256
    max_model_len: int = 4096
    kv_blocks: int = 2000
    block_size: int = 16
    prefill_tokens_per_s: float = 0.0
    enable_prompt_tokens_details: bool = False
    kv_events_config: str | None = None
    ttft_ms: float = 0.0
    itl_ms: float = 0.0
    output_tokens: int = 16
    startup_delay_s: float = 0.0
    embedding_dim: int = 384
    shutdown_timeout: float = 0.0
    keep_alive_timeout: float = 5.0
    failure_rate: float = 0.0
    crash_after: int | None = None
    hang_rate: float = 0.0
    unhealthy: bool = False
    enable_control: bool = False
    seed: int = 0


def simulate(options: SimulatorOptions) -> int:
    """Serve a simulated vLLM engine (OpenAI API, /health, /metrics) until Ctrl-C or SIGTERM."""
    from sage.unified.agent.simulator import SimulatorConfig, run

    try:
        config = SimulatorConfig(**asdict(options))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return run(config)
