"""Command-line configuration of the simulator (pure: argparse only).

``--kind`` decides which endpoints the engine serves, as vLLM registers routes by
the model's supported tasks (every kind serves /tokenize, /detokenize, /v1/models,
/health, /metrics and the rest of the plain endpoints):

==============  =================================================================
kind            endpoints
==============  =================================================================
llm             /v1/chat/completions, /v1/completions, /v1/responses
embedding       /v1/embeddings, /pooling, /score, /v1/score, /rerank, /v1/rerank,
                /v2/rerank (a bi-encoder scores by cosine)
classify        /classify, /pooling
rerank          /classify, /pooling, /score, /v1/score, /rerank, /v1/rerank,
                /v2/rerank (a cross-encoder: one label)
transcription   /v1/audio/transcriptions and the llm endpoints (as Whisper)
==============  =================================================================

Any other inference path answers 404 ``{"detail": "Not Found"}``, vLLM's answer
for a route it did not register.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

from sage.unified.agent.simulator._kv_events import KVEventsConfig, parse_kv_events_config

__all__ = ["KINDS", "SimulatorConfig", "build_parser", "parse_args"]

KINDS: tuple[str, ...] = ("llm", "embedding", "classify", "rerank", "transcription")


@dataclass(frozen=True, slots=True, kw_only=True)
class SimulatorConfig:
    """Everything the simulator process is started with.

    Attributes mirror the command-line flags (``--ttft-ms`` -> ``ttft_ms``).
    ``served_model_name`` ``None`` means "same as ``model``".
    """

    model: str
    served_model_name: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    kind: str = "llm"
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
    ignore_sigterm: bool = False
    spawn_child: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {self.kind!r}")
        for name in (
            "max_num_seqs",
            "max_model_len",
            "output_tokens",
            "embedding_dim",
            "kv_blocks",
            "block_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        for name in (
            "ttft_ms",
            "itl_ms",
            "startup_delay_s",
            "shutdown_timeout",
            "prefill_tokens_per_s",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.kv_blocks * self.block_size < self.max_model_len:
            # vLLM refuses to start when one max_model_len sequence cannot fit either.
            raise ValueError(
                f"the KV cache ({self.kv_blocks} blocks of {self.block_size} tokens) "
                f"cannot hold one sequence of max_model_len={self.max_model_len} tokens"
            )
        if self.kv_events_config is not None:
            parse_kv_events_config(self.kv_events_config)
        if self.keep_alive_timeout <= 0:
            raise ValueError("keep_alive_timeout must be > 0")
        for name in ("failure_rate", "hang_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1]")
        if self.crash_after is not None and self.crash_after < 0:
            raise ValueError("crash_after must be >= 0")
        if not 0 <= self.port <= 65535:
            raise ValueError("port must lie in [0, 65535]")

    @property
    def served_name(self) -> str:
        """The model name clients must send (``served_model_name`` or ``model``)."""
        return self.served_model_name or self.model

    @property
    def kv_events(self) -> KVEventsConfig | None:
        """The parsed ``--kv-events-config``, if given."""
        if self.kv_events_config is None:
            return None
        return parse_kv_events_config(self.kv_events_config)


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser behind :func:`parse_args` (flags as vLLM spells them)."""
    p = argparse.ArgumentParser(
        prog="python -m sage.unified.agent.simulator",
        description="A vLLM-compatible OpenAI server that simulates an inference engine.",
    )
    p.add_argument("--model", required=True)
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--kind", choices=KINDS, default="llm", help="which endpoints it serves")
    p.add_argument(
        "--max-num-seqs", type=int, default=256, help="running cap; the rest wait (FIFO)"
    )
    p.add_argument("--max-model-len", type=int, default=4096, help="context length (tokens)")
    p.add_argument("--kv-blocks", type=int, default=2000, help="KV cache blocks")
    p.add_argument("--block-size", type=int, default=16, help="tokens per KV cache block")
    p.add_argument(
        "--prefill-tokens-per-s",
        type=float,
        default=0.0,
        help="prefill speed for uncached prompt tokens; 0 = prefill is free",
    )
    p.add_argument(
        "--enable-prompt-tokens-details",
        action="store_true",
        help="report usage.prompt_tokens_details.cached_tokens (as vLLM's flag)",
    )
    p.add_argument(
        "--kv-events-config",
        default=None,
        help="vLLM's KV events JSON; publishes BlockStored/BlockRemoved over ZMQ",
    )
    p.add_argument("--ttft-ms", type=float, default=0.0, help="time to first token")
    p.add_argument("--itl-ms", type=float, default=0.0, help="inter-token latency")
    p.add_argument(
        "--output-tokens",
        type=int,
        default=16,
        help="natural answer length in tokens (max_tokens lowers it, ignore_eos overrides it)",
    )
    p.add_argument("--startup-delay-s", type=float, default=0.0, help="port stays closed this long")
    p.add_argument("--embedding-dim", type=int, default=384)
    p.add_argument(
        "--shutdown-timeout",
        type=float,
        default=0.0,
        help="on SIGTERM, let in-flight requests finish for up to this many seconds, then abort",
    )
    p.add_argument(
        "--keep-alive-timeout", type=float, default=5.0, help="idle keep-alive close (s)"
    )
    p.add_argument("--failure-rate", type=float, default=0.0, help="fraction answered with a 500")
    p.add_argument(
        "--crash-after", type=int, default=None, help="os._exit(1) after N inference requests"
    )
    p.add_argument("--hang-rate", type=float, default=0.0, help="fraction that never answer")
    p.add_argument("--unhealthy", action="store_true", help="/health answers 503, the API stays up")
    p.add_argument(
        "--enable-control",
        action="store_true",
        help="serve /sim/config, /sim/stats, /sim/crash, /reset_prefix_cache",
    )
    p.add_argument("--ignore-sigterm", action="store_true")
    p.add_argument(
        "--spawn-child", action="store_true", help="spawn a sleeping child (like EngineCore)"
    )
    p.add_argument("--seed", type=int, default=0)
    return p


def parse_args(argv: Sequence[str] | None = None) -> SimulatorConfig:
    """Parse command-line flags into a :class:`SimulatorConfig`.

    Args:
        argv: the arguments without the program name; ``None`` reads ``sys.argv``.

    Raises:
        SystemExit: (from argparse) with status 2 on unknown or invalid flags,
            including values :class:`SimulatorConfig` rejects.
    """
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        return SimulatorConfig(**vars(ns))
    except ValueError as exc:
        parser.error(str(exc))
